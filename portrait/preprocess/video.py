"""Read video files frame by frame through ffmpeg (rawvideo rgb24 on a pipe; memory flat in length).

:func:`probe_video` parses ``ffmpeg -i`` (the static imageio-ffmpeg build has no ffprobe);
:func:`iter_frames` streams ``(seconds, (H, W, 3) uint8 RGB)`` pairs, optionally resampled to a frame
rate, capped in count and shrunk so the longer side is at most ``max_side``; :func:`media_kind` tells an
image (anything Pillow identifies) from a video.

ffmpeg is locked down for untrusted files: it may open local files only (``-protocol_whitelist file``,
so playlists and concat lists cannot reach the network or other protocols), only the container formats of
:data:`VIDEO_FORMATS` (``-format_whitelist``; no ``image2``, so a name such as ``%03d.png`` is never read
as an image sequence), only the first video stream, and it is killed when it produces nothing for
``stall_timeout`` seconds. A corrupt or non-video file is an :class:`~portrait.errors.InputError` with one
readable line.

The work of a decode is bounded before it starts: frames larger than the image caps
(:data:`~portrait.preprocess.image.MAX_PIXELS`, :data:`~portrait.preprocess.image.MAX_SIDE`) are refused at
the probe and by the decoder itself (``-max_pixels``, also for a stream that grows mid-way), the decoder
runs :data:`DECODE_THREADS` threads, frames come at most :data:`MAX_DECODE_FPS` per second (ffmpeg's
``fps`` filter when the stream declares more) and ``max_seconds`` caps the length read.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from portrait.errors import FFmpegError, InputError
from portrait.ffmpeg import FFmpegProcess, ffmpeg_binary, locked_input, parse_duration, run_ffmpeg
from portrait.preprocess.image import MAX_PIXELS, MAX_SIDE

logger = logging.getLogger(__name__)

#: Demuxers ffmpeg may use (``-format_whitelist``): common video containers, raw streams and single
#: pictures (``*_pipe``; never ``image2``, which expands ``%d`` patterns into other files).
VIDEO_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "flv",
    "mpegts",
    "mpeg",
    "mpegvideo",
    "m4v",
    "h264",
    "hevc",
    "asf",
    "ogg",
    "gif",
    "mjpeg",
    "png_pipe",
    "jpeg_pipe",
    "webp_pipe",
    "nut",
    "ivf",
    "yuv4mpegpipe",
)
#: Seconds a probe may take.
PROBE_TIMEOUT_S = 30.0
#: Decoder threads of one video read (ffmpeg's default, one per core, multiplies its frame buffers).
DECODE_THREADS = 2
#: Most frames per second a read delivers: a stream declaring more goes through ``fps=MAX_DECODE_FPS``.
MAX_DECODE_FPS = 30.0
#: Rate assumed for a stream that declares none.
DEFAULT_FPS = 25.0
#: Lines of the frame reader's stderr searched for the reason of a failure.
_STDERR_LINES = 40
#: Pillow formats that identify but are really video streams (raw MPEG-1/2 starts like an MPEG "image").
_PIL_VIDEO_FORMATS = frozenset({"MPEG"})

_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (?P<rest>.*)")
_SIZE_RE = re.compile(r"(?<![0-9a-fx])(\d{1,5})x(\d{1,5})(?![0-9a-fx])")
_FPS_RE = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_ROTATION_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


@dataclass(frozen=True)
class VideoInfo:
    """What ``ffmpeg -i`` says about a file's first video stream (after rotation metadata).

    Attributes:
        width, height: frame size in pixels as frames are delivered (a 90° rotation swaps them).
        fps: average frame rate (0.0 when unknown).
        frames_estimate: ``round(duration · fps)`` (0 when either is unknown); not an exact count.
        duration: seconds (0.0 when unknown, e.g. a still image).
    """

    width: int
    height: int
    fps: float
    frames_estimate: int
    duration: float


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"video {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"video {path} is empty (0 bytes)")


def _last_error_line(stderr: str) -> str:
    """The most telling ffmpeg stderr line (``Error opening input: ...`` wins), without ``[in#0 @ 0x...]``."""
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.startswith("At least one output file")]
    for line in lines:
        if line.startswith("Format not on whitelist"):
            return "its container is not one of the allowed video formats (mp4/mov, mkv/webm, avi, ...)"
        if line.startswith("Error opening input:"):
            return line
    return lines[-1] if lines else "no error message"


def parse_probe(stderr: str) -> VideoInfo | None:
    """``VideoInfo`` from ``ffmpeg -i`` stderr, or ``None`` when it lists no (non-cover-art) video stream."""
    for line in stderr.splitlines():
        match = _STREAM_RE.search(line)
        if match is None or "(attached pic)" in line:
            continue
        rest = match.group("rest")
        size = _SIZE_RE.search(rest)
        if size is None:
            continue
        width, height = int(size.group(1)), int(size.group(2))
        fps = 0.0
        for value, kilo, _ in _FPS_RE.findall(rest):  # "fps" comes before "tbr": the first is kept
            fps = float(value) * (1000 if kilo else 1)
            break
        duration = parse_duration(stderr) or 0.0
        rotation = _ROTATION_RE.search(stderr)
        if rotation is not None and round(abs(float(rotation.group(1)))) % 180 == 90:
            width, height = height, width
        frames = round(duration * fps) if duration > 0 and fps > 0 else 0
        return VideoInfo(width, height, fps, frames, duration)
    return None


def probe_video(path: str | Path, timeout: float = PROBE_TIMEOUT_S) -> VideoInfo:
    """Size, rate and duration of the first video stream of ``path``.

    Raises:
        InputError: missing/empty file, not a readable video (one line naming ffmpeg's reason), no video
            stream, or frames over the image caps.
        FFmpegError: ffmpeg is missing or did not answer within ``timeout`` seconds.
    """
    path = Path(path)
    _check_file(path)
    result = run_ffmpeg(locked_input(path, VIDEO_FORMATS), check=False, timeout=timeout)
    stderr = result.stderr.decode("utf-8", errors="replace")
    info = parse_probe(stderr)
    if info is None:
        if "Input #0" in stderr:
            raise InputError(f"{path} has no video stream")
        raise InputError(f"{path} is not a readable video: {_last_error_line(stderr)}")
    if info.width <= 0 or info.height <= 0:
        raise InputError(f"{path} reports an empty frame size {info.width}x{info.height}")
    if max(info.width, info.height) > MAX_SIDE or info.width * info.height > MAX_PIXELS:
        raise InputError(
            f"video {path} is too large ({info.width}x{info.height} frames; limits: {MAX_SIDE} px per side, "
            f"{MAX_PIXELS} pixels); downscale it first"
        )
    return info


def output_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """``(w, h)`` shrunk so ``max(w, h) <= max_side`` (aspect kept, half-to-even rounding, at least 1)."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side < 1:
        raise InputError(f"max_side must be at least 1, got {max_side}")
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _frame_command(
    path: Path, info: VideoInfo, fps: float | None, max_frames: int | None, size: tuple[int, int]
) -> list[str]:
    filters = [f"fps={fps!r}"] if fps is not None else []
    flags = "area" if size[0] < info.width else "bicubic"
    filters.append(f"scale={size[0]}:{size[1]}:flags={flags}")
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-loglevel", "error"]
    command += ["-threads", str(DECODE_THREADS), "-max_pixels", str(MAX_PIXELS)]
    command += locked_input(path, VIDEO_FORMATS)
    command += ["-map", "0:v:0", "-an", "-sn", "-dn", "-vf", ",".join(filters)]
    if max_frames is not None:
        command += ["-frames:v", str(max_frames)]
    return command + ["-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]


def iter_frames(
    path: str | Path,
    fps: float | None = None,
    max_frames: int | None = None,
    max_side: int | None = None,
    *,
    max_seconds: float | None = None,
    stall_timeout: float = 60.0,
) -> Iterator[tuple[float, np.ndarray]]:
    """Decode ``path`` frame by frame: yields ``(t, frame)`` with ``frame`` (H, W, 3) uint8 RGB.

    One frame is in memory at a time; stopping the iteration early kills ffmpeg.

    Args:
        path: a video file (or any file of :data:`VIDEO_FORMATS`, e.g. a single PNG or JPEG picture).
        fps: resample to this rate with ffmpeg's ``fps`` filter (drops/duplicates frames), at most
            :data:`MAX_DECODE_FPS`; ``None`` keeps every decoded frame of a stream declaring up to
            :data:`MAX_DECODE_FPS` (a faster one is resampled to it, see :func:`decode_rate`).
        max_frames: stop after this many frames (``None``: all).
        max_side: shrink frames so their longer side is at most this (area filter); ``None``: full size.
        max_seconds: read at most this many seconds (a warning names a longer file); ``None``: all.
        stall_timeout: kill ffmpeg and raise when no frame arrives for this many seconds.

    Timestamps are ``i / rate`` seconds from the first frame (:func:`decode_rate`; a constant-rate
    assumption: variable-rate clips get evenly spaced times).

    Raises:
        InputError: missing, corrupt or non-video file, frames over the image caps; decoding failed; no
            frame decoded.
        FFmpegError: ffmpeg missing, or it stalled for ``stall_timeout`` seconds.
    """
    path = Path(path)
    _check_frame_request(fps, max_frames)
    info = probe_video(path)
    width, height = output_size(info.width, info.height, max_side)
    fps, rate = decode_rate(info, fps)
    if max_seconds is not None:
        limit = math.ceil(max_seconds * rate) + 1
        max_frames = limit if max_frames is None else min(max_frames, limit)
        if info.duration > max_seconds:
            logger.warning("%s lasts %.1f s: only its first %g s are read", path, info.duration, max_seconds)
    command = _frame_command(path, info, fps, max_frames, (width, height))
    count = 0
    with FFmpegProcess(command, stdout=True, stall_timeout=stall_timeout) as ffmpeg:
        for frame in _read_frames(ffmpeg, path, (width, height)):
            yield count / rate, frame
            count += 1
        returncode = ffmpeg.finish(timeout=stall_timeout)
    if ffmpeg.timed_out:
        raise FFmpegError(f"ffmpeg produced no frame of {path} for {stall_timeout} s and was stopped")
    if returncode != 0:
        stderr = ffmpeg.stderr_text(lines=_STDERR_LINES)
        raise InputError(f"could not decode video {path}: {_last_error_line(stderr)}")
    if count == 0:
        raise InputError(f"no video frame could be decoded from {path}")


def decode_rate(info: VideoInfo, fps: float | None = None) -> tuple[float | None, float]:
    """``(fps filter rate or None, rate of the delivered frames)`` of a read of a stream like ``info``.

    A requested ``fps`` is capped at :data:`MAX_DECODE_FPS`. Without one the stream's declared rate is
    kept (no filter: the frames are exactly the decoded ones) up to :data:`MAX_DECODE_FPS`; a stream that
    declares more (a crafted 1000 fps, a browser recording's ``1k tbr``, a 60 fps phone clip) is
    resampled to :data:`MAX_DECODE_FPS`. An unknown rate counts as :data:`DEFAULT_FPS`.
    """
    if fps is not None:
        rate = min(float(fps), MAX_DECODE_FPS)
        return rate, rate
    declared = info.fps if info.fps > 0 else DEFAULT_FPS
    if declared > MAX_DECODE_FPS:
        return MAX_DECODE_FPS, MAX_DECODE_FPS
    return None, declared


def checked_frames(
    frames: Iterator[tuple[float, np.ndarray]], check: Callable[[], None] | None
) -> Iterator[tuple[float, np.ndarray]]:
    """``frames`` with ``check()`` called before each one (it raises to stop, e.g. a cancelled request).

    Closing the result closes ``frames`` (and so stops its ffmpeg).
    """
    if check is None:
        yield from frames
        return
    try:
        for item in frames:
            check()
            yield item
    finally:
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def _check_frame_request(fps: float | None, max_frames: int | None) -> None:
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise InputError(f"frame rate must be a positive number, got {fps}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be at least 1, got {max_frames}")


def _read_frames(ffmpeg: FFmpegProcess, path: Path, size: tuple[int, int]) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 frames from ffmpeg's rawvideo stdout until it ends (a truncated last one dropped)."""
    width, height = size
    frame_bytes = width * height * 3
    while True:
        data = ffmpeg.read(frame_bytes)
        if len(data) < frame_bytes:
            if data:
                logger.warning("%s: dropped a truncated last frame (%d bytes)", path, len(data))
            return
        yield np.frombuffer(data, np.uint8).reshape(height, width, 3)


def media_kind(path: str | Path) -> Literal["image", "video"]:
    """``"image"`` when Pillow identifies the file (first frame of animated images), else ``"video"``.

    Only the header is read. Raises InputError for a missing or empty file; anything Pillow rejects is
    left to the video reader to accept or refuse.
    """
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as opened:
            return "video" if opened.format in _PIL_VIDEO_FORMATS else "image"
    except Image.DecompressionBombError:
        return "image"  # an image, too large: load_image refuses it with its size limits
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "video"
