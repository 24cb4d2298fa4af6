"""Add the audio track to the silent video (spec 7.3), safely, and describe media files without ffprobe.

The reference runs ``ffmpeg -i noaudio.mp4 -i audio -s WxH -vcodec libx264 -acodec aac -crf 18 -shortest
-y out.mp4`` through ``os.system``. Here the same encode runs from an argument list (file names are never
seen by a shell), picks its streams explicitly (video of the first input, first audio stream of the second),
writes ``<stem>.partial.mp4`` and renames it to the output only when ffmpeg succeeded.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import ffmpeg

from portrait.errors import FFmpegError, InputError
from portrait.ffmpeg import media_path, partial_path, run_ffmpeg, stderr_tail

logger = logging.getLogger(__name__)

__all__ = ["mux_audio", "probe_media"]


def mux_audio(
    video: Path,
    audio: Path,
    output: Path,
    crf: int = 18,
    audio_codec: str = "aac",
    size: tuple[int, int] | None = None,
    copy_video: bool = False,
) -> Path:
    """Mux ``audio`` into ``video`` and write ``output`` atomically.

    Default (the reference): the video is re-encoded with libx264 at ``crf`` 18 (a second x264 encode),
    the audio encoded with ``audio_codec``, ``-shortest`` trims to the shorter stream.

    Args:
        video: the silent H.264 video (its first video stream is used).
        audio: any file with an audio stream (its first audio stream is used).
        output: the result; written as ``<stem>.partial.mp4`` next to it, then renamed over it.
        crf: libx264 quality of the re-encode, 0..51.
        audio_codec: ffmpeg audio encoder name.
        size: ``(width, height)`` to scale to (the reference's ``keep_resolution``), both even; ``None``
            keeps the video's size.
        copy_video: copy the H.264 stream instead of re-encoding it (no second generation loss, faster;
            not the reference's bytes). Cannot be combined with ``size``.

    Returns:
        ``output``.

    Raises:
        InputError: a missing input, ``output`` (or its partial file) equal to an input, a missing output
            folder, an odd ``size``, ``size`` with ``copy_video``, or a bad ``crf``/``audio_codec``.
        FFmpegError: ffmpeg failed; no partial file is left behind.
    """
    video, audio, output = Path(video), Path(audio), Path(output)
    partial = partial_path(output)
    _check_mux_paths(video, audio, output, partial)
    if not 0 <= crf <= 51:
        raise InputError(f"crf must be in 0..51, got {crf}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", audio_codec):
        raise InputError(f"audio_codec must be an ffmpeg encoder name such as aac, got {audio_codec!r}")
    options: dict[str, Any] = {"acodec": audio_codec, "shortest": None, "format": "mp4"}
    if copy_video:
        if size is not None:
            raise InputError(
                "mux_audio: size cannot be combined with copy_video (a copied stream is not scaled)"
            )
        options["vcodec"] = "copy"
    else:
        options.update(vcodec="libx264", crf=crf, pix_fmt="yuv420p")
        if size is not None:
            width, height = size
            if width < 2 or height < 2 or width % 2 or height % 2:
                raise InputError(f"mux_audio: size must be even for H.264 4:2:0, got {width}x{height}")
            options["s"] = f"{width}x{height}"
    video_in = ffmpeg.input(media_path(video), protocol_whitelist="file,pipe")
    audio_in = ffmpeg.input(media_path(audio), protocol_whitelist="file,pipe")
    stream = ffmpeg.output(
        video_in["v:0"], audio_in["a:0"], media_path(partial), **options
    ).overwrite_output()
    try:
        run_ffmpeg(stream.get_args())
        os.replace(partial, output)
    except BaseException:
        _remove(partial)
        raise
    logger.info("muxed %s + %s -> %s", video, audio, output)
    return output


def _check_mux_paths(video: Path, audio: Path, output: Path, partial: Path) -> None:
    for kind, path in (("video", video), ("audio", audio)):
        if not path.is_file():
            raise InputError(f"{path}: {kind} file not found")
    if not output.parent.is_dir():
        raise InputError(f"{output}: the output folder {output.parent} does not exist")
    for target in (output, partial):
        for source in (video, audio):
            if _same_file(target, source):
                raise InputError(
                    f"{target}: the output would overwrite the input {source}; choose another output path"
                )


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------------------
# Probing (no ffprobe: parse what `ffmpeg -i` prints, optionally decode each stream to count)
# --------------------------------------------------------------------------------------------------------

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
