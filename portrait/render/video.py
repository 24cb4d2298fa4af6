"""Stream frames to an H.264 encoder (compat §7.2), chunk by chunk, never holding the whole video.

The encoder is ffmpeg reading raw RGB from a pipe::

    ffmpeg -f rawvideo -pix_fmt rgb24 -r FPS -s WxH -i pipe: -f mp4 -vcodec libx264 -crf 17
           -pix_fmt yuv420p -r FPS -sws_flags full_chroma_int+bitexact+accurate_rnd OUTPUT

(the reference's scikit-video command with RGB instead of BGR input, which is the same picture). The file is
written as ``<stem>.partial.mp4`` and renamed to the output when the writer closes cleanly; on an exception
inside the ``with`` block ffmpeg is killed and the partial file removed.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol

import ffmpeg
import numpy as np
import torch

from portrait.errors import FFmpegError, InputError
from portrait.ffmpeg import FFmpegProcess, ffmpeg_binary, media_path
from portrait.files import partial_path

logger = logging.getLogger(__name__)

__all__ = ["SWS_FLAGS", "VideoWriter", "encode_video", "to_uint8_frames"]

#: Scaler flags of the reference's RGB → YUV 4:2:0 conversion.
SWS_FLAGS = "full_chroma_int+bitexact+accurate_rnd"


class Progress(Protocol):
    """Anything with tqdm's ``update(n)``."""

    def update(self, n: int = 1) -> object: ...


def to_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Frames as a contiguous ``(n, H, W, 3)`` uint8 RGB array.

    Args:
        frames: uint8 numpy RGB ``(H, W, 3)`` or ``(n, H, W, 3)``; or a torch tensor ``(3, H, W)`` or
            ``(n, 3, H, W)``: float in [0, 1] (clamped to it, then converted as the reference does,
            ``(x·255).astype(uint8)``, i.e. by **truncation**: 0.999 → 254) or uint8.

    Raises:
        InputError: another dtype or shape.
    """
    if isinstance(frames, torch.Tensor):
        if frames.ndim == 3:
            frames = frames.unsqueeze(0)
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise InputError(f"frame tensors must be (n, 3, H, W) or (3, H, W), got {tuple(frames.shape)}")
        frames = frames.detach().to("cpu").permute(0, 2, 3, 1)
        if frames.dtype == torch.uint8:
            return np.ascontiguousarray(frames.numpy())
        if not frames.is_floating_point():
            raise InputError(f"frame tensors must be float in [0, 1] or uint8, got {frames.dtype}")
        scaled = (frames.to(torch.float32).clamp(0.0, 1.0) * 255).numpy()
        return np.ascontiguousarray(scaled.astype(np.uint8))
    if not isinstance(frames, np.ndarray):
        raise InputError(f"frames must be a numpy array or a torch tensor, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise InputError(
            f"numpy frames must be uint8 RGB (H, W, 3) or (n, H, W, 3), got dtype {frames.dtype}"
        )
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"numpy frames must be (H, W, 3) or (n, H, W, 3) RGB, got {frames.shape}")
    return np.ascontiguousarray(frames)


class VideoWriter:
    """Encode RGB frames to an H.264 mp4 as they arrive (a context manager).

    Example::

        with VideoWriter(path, fps=12.5) as writer:
            for chunk in decoded_chunks:  # (n, 3, H, W) float in [0, 1]
                writer.write(chunk)

    ffmpeg starts at the first :meth:`write` (the frame size is taken from it unless ``size`` is given), as
    an :class:`~portrait.ffmpeg.FFmpegProcess`: its stderr is drained by a thread, so a chatty encoder
    never blocks the pipe.

    Args:
        path: the mp4 to write; its folder must exist. The data goes to ``<stem>.partial.mp4`` first.
        fps: frames per second (12.5, or 25 after frame interpolation).
        crf: libx264 quality, 0..51 (17 as the reference).
        size: ``(width, height)``; both must be even (H.264 4:2:0). ``None``: from the first frame.
        progress: optional tqdm-like bar; ``progress.update(n)`` is called for every ``n`` frames written.
    """

    def __init__(
        self,
        path: Path,
        fps: float,
        *,
        crf: int = 17,
        size: tuple[int, int] | None = None,
        progress: Progress | None = None,
    ) -> None:
        if not fps > 0:
            raise InputError(f"fps must be > 0, got {fps}")
        if not 0 <= crf <= 51:
            raise InputError(f"crf must be in 0..51, got {crf}")
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path}: the output folder {self.path.parent} does not exist")
        self.partial = partial_path(self.path)
        self.fps = fps
        self.crf = crf
        self.size = size
        if size is not None:
            _check_even(size, self.path)
        self.progress = progress
        self.frames_written = 0
        self._encoder: FFmpegProcess | None = None
        self._closed = False

    @property
    def _process(self) -> subprocess.Popen[bytes] | None:
        """The running ffmpeg (None before the first frame)."""
        return None if self._encoder is None else self._encoder.process

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Encode one frame or a chunk of frames (see :func:`to_uint8_frames` for the accepted forms).

        Raises:
            InputError: bad frames, odd or changing frame size, or the writer is closed.
            FFmpegError: ffmpeg could not start or died while encoding.
        """
        if self._closed:
            raise InputError(f"{self.path}: the video writer is already closed")
        chunk = to_uint8_frames(frames)
        if chunk.shape[0] == 0:
            return
        height, width = chunk.shape[1:3]
        if self.size is None:
            _check_even((width, height), self.path)
            self.size = (width, height)
        if (width, height) != tuple(self.size):
            raise InputError(
                f"{self.path}: frame size {width}x{height} differs from the video size "
                f"{self.size[0]}x{self.size[1]}"
            )
        encoder = self._encoder or self._start()
        try:
            encoder.write(chunk.tobytes())
        except FFmpegError:
            self._closed = True
            self.partial.unlink(missing_ok=True)
            raise
        self.frames_written += chunk.shape[0]
        if self.progress is not None:
            self.progress.update(chunk.shape[0])

    def close(self) -> Path:
        """Finish the stream, wait for ffmpeg and move the partial file to :attr:`path`.

        Returns:
            The output path.

        Raises:
            InputError: no frame was written.
            FFmpegError: ffmpeg failed (the partial file is removed).
        """
        if self._closed:
            return self.path
        self._closed = True
        if self._encoder is None:
            raise InputError(f"{self.path}: no frames were written")
        try:
            self._encoder.finish(check=True)
        except FFmpegError:
            self.partial.unlink(missing_ok=True)
            raise
        os.replace(self.partial, self.path)
        logger.info("wrote %s (%d frames at %g fps)", self.path, self.frames_written, self.fps)
        return self.path

    def abort(self) -> None:
        """Kill ffmpeg (if running) and remove the partial file; the output is not created."""
        self._closed = True
        if self._encoder is not None:
            self._encoder.stop()
        self.partial.unlink(missing_ok=True)

    def _start(self) -> FFmpegProcess:
        width, height = self.size  # type: ignore[misc]
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{width}x{height}", r=self.fps)
        stream = ffmpeg.output(
            stream,
            media_path(self.partial),
            format="mp4",
            vcodec="libx264",
            crf=self.crf,
            pix_fmt="yuv420p",
            r=self.fps,
            sws_flags=SWS_FLAGS,
        )
        stream = stream.global_args("-hide_banner", "-nostats").overwrite_output()
        self._encoder = FFmpegProcess(stream.compile(cmd=ffmpeg_binary()), stdin=True)
        return self._encoder


def _check_even(size: tuple[int, int], path: Path) -> None:
    width, height = size
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise InputError(
            f"{path}: H.264 with yuv420p needs an even width and height, got {width}x{height}; "
            "crop or pad the frames by one pixel"
        )


class Paster(Protocol):
    """Puts one working-size frame (1, 3, h, w) in [0, 1] back into a photo: (1, H, W, 3) uint8."""

    def paste(self, frame: torch.Tensor) -> np.ndarray: ...


#: ``on_frames(frames, index)``: called with each (n, H, W, 3) uint8 block before it is written.
FrameSink = Callable[[np.ndarray, int], None]


def encode_video(
    chunks: Iterable[torch.Tensor],
    path: Path,
    *,
    fps: float,
    crf: int = 17,
    paster: Paster | None = None,
    on_frames: FrameSink | None = None,
    progress: Progress | None = None,
) -> int:
    """Stream frame chunks (n, 3, h, w) in [0, 1] to an H.264 file; returns the frames written.

    With a ``paster`` (full-frame mode) each frame is pasted into the photo one at a time, so memory stays
    flat in the video length and in the chunk size. ``path`` appears only when every frame was written.
    """
    with VideoWriter(path, fps=fps, crf=crf, progress=progress) as writer:
        for chunk in chunks:
            for frames in _output_frames(chunk, paster):
                if on_frames is not None:
                    on_frames(frames, writer.frames_written)
                writer.write(frames)
        return writer.frames_written


def _output_frames(chunk: torch.Tensor, paster: Paster | None) -> Iterator[np.ndarray]:
    """uint8 (n, H, W, 3) frames to write: the working-size chunk, or its frames pasted one by one."""
    if paster is None:
        yield to_uint8_frames(chunk)
        return
    for i in range(len(chunk)):
        yield paster.paste(chunk[i : i + 1])
