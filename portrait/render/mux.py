"""Add the audio track to the silent video (compat §7.3), safely.

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
from portrait.ffmpeg import AUDIO_FORMATS, MUX_VIDEO_FORMATS, media_path, run_ffmpeg
from portrait.files import durable_replace, partial_path

logger = logging.getLogger(__name__)

__all__ = ["mux_audio"]


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
    options = _output_options(crf, audio_codec, size, copy_video)
    # Local files only, and no playlist/concat demuxer that could pull another file into the output.
    video_in = ffmpeg.input(
        media_path(video), protocol_whitelist="file", format_whitelist=",".join(MUX_VIDEO_FORMATS)
    )
    audio_in = ffmpeg.input(
        media_path(audio), protocol_whitelist="file", format_whitelist=",".join(AUDIO_FORMATS)
    )
    stream = ffmpeg.output(
        video_in["v:0"], audio_in["a:0"], media_path(partial), **options
    ).overwrite_output()
    try:
        _run_mux(stream.get_args(), audio)
        durable_replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    logger.info("muxed %s + %s -> %s", video, audio, output)
    return output


def _output_options(
    crf: int, audio_codec: str, size: tuple[int, int] | None, copy_video: bool
) -> dict[str, Any]:
    """ffmpeg-python output options of :func:`mux_audio` (checked: crf, encoder name, even size)."""
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
        return options
    options.update(vcodec="libx264", crf=crf, pix_fmt="yuv420p")
    if size is not None:
        width, height = size
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise InputError(f"mux_audio: size must be even for H.264 4:2:0, got {width}x{height}")
        options["s"] = f"{width}x{height}"
    return options


def _run_mux(args: list[str], audio: Path) -> None:
    """Run the mux; an audio input outside the allowed formats is an :class:`InputError` naming it."""
    try:
        run_ffmpeg(args)
    except FFmpegError as exc:
        if "Format not on whitelist" in str(exc):
            raise InputError(
                f"{audio}: is not an allowed audio format (wav, mp3, flac, ogg, m4a/mp4, ...); "
                "playlists and lists of other files are refused"
            ) from None
        raise


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
