"""Locate the ffmpeg binary and run it safely.

Every ffmpeg call in portrait goes through here: an argument list (never a shell, so file names with
``$(...)``, quotes or spaces are taken literally), ``-nostdin`` so ffmpeg never eats the terminal's input,
stdout and stderr captured, and a failure turned into :class:`~portrait.errors.FFmpegError` carrying the
last lines of stderr. :func:`run_ffmpeg` runs a command to its end; :class:`FFmpegProcess` streams through
pipes (audio decoding, the frame reader, the encoder) with a deadline and a bounded stderr tail.

File names are passed to ffmpeg as absolute paths (:func:`media_path`): a relative name such as
``concat:a|b`` or ``-y.wav`` could otherwise be read as a protocol or an option.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from portrait.errors import FFmpegError

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_FORMATS",
    "FFMPEG_TIMEOUT_S",
    "FFmpegProcess",
    "MUX_VIDEO_FORMATS",
    "STDERR_KEEP_BYTES",
    "STDERR_TAIL_LINES",
    "ffmpeg_binary",
    "format_failure",
    "locked_input",
    "media_path",
    "parse_duration",
    "run_ffmpeg",
    "stderr_tail",
]

#: How many trailing stderr lines an :class:`FFmpegError` carries.
STDERR_TAIL_LINES = 15
#: Seconds an ffmpeg call may run before it is killed (:func:`run_ffmpeg`'s default).
FFMPEG_TIMEOUT_S = 1800.0
#: Bytes of stderr an :class:`FFmpegProcess` keeps (its last ones).
STDERR_KEEP_BYTES = 64 * 1024

_STDERR_CHUNK = 1 << 16
#: Seconds between two looks at a read that may have stalled.
_WATCH_INTERVAL_S = 0.2
#: Seconds to wait for the stderr reader once ffmpeg has exited.
_JOIN_TIMEOUT_S = 10.0
_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")

#: Demuxers ffmpeg may use to read an untrusted audio input (``-format_whitelist``): audio files, the
#: containers whose audio track is used, and single-image pipes (so a picture reads as "no audio stream").
#: Playlists and lists of other files (hls/m3u8, concat/ffconcat, image2 sequences, ...) are not here, so
#: an upload can never make ffmpeg open another file on the server.
AUDIO_FORMATS = (
    "wav",
    "w64",
    "mp3",
    "flac",
    "ogg",
    "aac",
    "aiff",
    "caf",
    "au",
    "wv",
    "tta",
    "ape",
    "amr",
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "flv",
    "mpegts",
    "asf",
    "png_pipe",
    "jpeg_pipe",
    "webp_pipe",
)
#: Demuxers for the silent video that :mod:`portrait.render.mux` muxes (portrait writes it as mp4).
MUX_VIDEO_FORMATS = ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm")

_INSTALL_ADVICE = (
    "install ffmpeg (e.g. `apt-get install ffmpeg`, `brew install ffmpeg`, `conda install ffmpeg`) "
    "or the Python package that bundles a static build: `pip install imageio-ffmpeg`"
)


def ffmpeg_binary() -> str:
    """Path of the ffmpeg executable to run.

    The ``ffmpeg`` on ``PATH`` wins; otherwise the static binary of ``imageio-ffmpeg`` (which also honours
    the ``IMAGEIO_FFMPEG_EXE`` environment variable).

    Raises:
        FFmpegError: neither is available; the message says how to install one.
    """
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        raise FFmpegError(
            f"ffmpeg is not on PATH and imageio-ffmpeg is not installed; {_INSTALL_ADVICE}"
        ) from exc
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError as exc:  # imageio-ffmpeg raises RuntimeError when its binary is missing
        raise FFmpegError(
            f"ffmpeg is not on PATH and imageio-ffmpeg has no binary ({exc}); {_INSTALL_ADVICE}"
        ) from exc


def media_path(path: str | Path) -> str:
    """The absolute form of ``path`` as a string, safe to hand to ffmpeg as a file name."""
    return str(Path(path).expanduser().absolute())


def locked_input(path: str | Path, formats: Sequence[str]) -> list[str]:
    """ffmpeg input arguments that read ``path`` as a local file with one of ``formats`` only.

    ``-protocol_whitelist file`` (no network, no nested protocols) and ``-format_whitelist`` (no playlist
    or concat demuxer that would follow references to other files), then ``-i <absolute path>``.
    """
    return [
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        ",".join(formats),
        "-i",
        media_path(path),
    ]


def stderr_tail(stderr: bytes | str | None, lines: int = STDERR_TAIL_LINES) -> str:
    """The last ``lines`` non-empty lines of ffmpeg's stderr (progress ``\\r`` updates split too)."""
    if not stderr:
        return ""
    text = stderr.decode("utf-8", errors="replace") if isinstance(stderr, bytes) else stderr
    kept = [line.rstrip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def format_failure(command: Sequence[str], returncode: int | None, stderr: bytes | str | None) -> str:
    """Message of an :class:`FFmpegError`: the command, the exit status and the tail of stderr."""
    status = "was killed" if returncode is None or returncode < 0 else f"exited with status {returncode}"
    tail = stderr_tail(stderr)
    message = f"ffmpeg {status}: {shlex.join(command)}"
    return f"{message}\nlast lines of its stderr:\n{tail}" if tail else f"{message} (no stderr output)"


def parse_duration(stderr: str) -> float | None:
    """Seconds of the input's ``Duration: HH:MM:SS.ss`` line in ffmpeg's stderr (None when absent or N/A)."""
    match = _DURATION_RE.search(stderr)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def run_ffmpeg(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = FFMPEG_TIMEOUT_S,
) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg with ``args`` (everything after the binary) and capture stdout and stderr as bytes.

    The command is ``[ffmpeg_binary(), "-hide_banner", "-nostdin", *args]``, run without a shell. Build
    ``args`` with ffmpeg-python's ``get_args()`` or by hand, and give file names through
    :func:`media_path`.

    Args:
        args: ffmpeg arguments, without the binary.
        check: raise :class:`FFmpegError` when ffmpeg exits with a non-zero status; with ``False`` the
            caller inspects ``returncode`` and ``stderr`` itself.
        timeout: seconds before ffmpeg is killed (default :data:`FFMPEG_TIMEOUT_S`; ``None``: no limit).

    Returns:
        The completed process (``stdout`` and ``stderr`` are bytes).

    Raises:
        FFmpegError: no ffmpeg binary, it could not be started, it timed out, or (``check``) it failed.
    """
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", *map(str, args)]
    logger.debug("running %s", shlex.join(command))
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except OSError as exc:
        raise FFmpegError(f"could not start ffmpeg ({command[0]}): {exc}; {_INSTALL_ADVICE}") from exc
    except subprocess.TimeoutExpired as exc:
        raise FFmpegError(
            f"ffmpeg did not finish within {timeout} s: {shlex.join(command)}\n{stderr_tail(exc.stderr)}"
        ) from exc
    if check and result.returncode != 0:
        raise FFmpegError(format_failure(command, result.returncode, result.stderr))
    return result


class FFmpegProcess:
    """A running ffmpeg that streams through pipes; a context manager that always leaves it stopped.

    Example::

        with FFmpegProcess([ffmpeg_binary(), "-nostdin", ..., "pipe:1"], stdout=True, timeout=60) as ff:
            data = ff.read(frame_bytes)
            status = ff.finish()
        if ff.timed_out or status != 0:
            raise ff.failure()

    ``command`` is the whole argument list, binary included, run without a shell. stdin and stdout are
    pipes when asked for, else ``/dev/null``; stderr is read on a thread into a tail of its last
    ``keep_bytes`` bytes (:meth:`stderr_text`), so a chatty ffmpeg never blocks on it. Two deadlines, each
    optional: ``timeout`` seconds from the start, and ``stall_timeout`` seconds that one :meth:`read` /
    :meth:`read1` may wait for data. Past either, ffmpeg is killed and :attr:`timed_out` is set. Leaving
    the ``with`` block kills ffmpeg if it still runs, waits for it and closes its pipes.

    Raises:
        FFmpegError: ffmpeg could not be started.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        stdin: bool = False,
        stdout: bool = False,
        timeout: float | None = None,
        stall_timeout: float | None = None,
        keep_bytes: int = STDERR_KEEP_BYTES,
    ) -> None:
        self.command = [str(arg) for arg in command]
        self.timed_out = False
        self._keep = keep_bytes
        self._tail = bytearray()
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._stall = stall_timeout
        self._waiting_since: float | None = None
        self._stop = threading.Event()
        logger.debug("starting %s", shlex.join(self.command))
        pipe, null = subprocess.PIPE, subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                self.command, stdin=pipe if stdin else null, stdout=pipe if stdout else null, stderr=pipe
            )
        except OSError as exc:
            raise FFmpegError(f"could not start ffmpeg ({self.command[0]}): {exc}") from exc
        self._reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._reader.start()
        if timeout is not None or stall_timeout is not None:
            threading.Thread(target=self._watch, daemon=True).start()

    def __enter__(self) -> FFmpegProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def returncode(self) -> int | None:
        """ffmpeg's exit status (None while it runs; negative: killed by that signal)."""
        return self.process.returncode

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of stdout, fewer only at its end (the stall deadline runs meanwhile)."""
        assert self.process.stdout is not None, "FFmpegProcess was started without stdout=True"
        return self._timed_read(self.process.stdout.read, size)

    def read1(self, size: int) -> bytes:
        """What stdout has ready, at most ``size`` bytes; ``b""`` at its end (the stall deadline runs)."""
        assert self.process.stdout is not None, "FFmpegProcess was started without stdout=True"
        return self._timed_read(self.process.stdout.read1, size)  # type: ignore[attr-defined]

    def write(self, data: bytes) -> None:
        """Send ``data`` to ffmpeg's stdin.

        Raises:
            FFmpegError: ffmpeg has exited (it is waited for; the message carries its stderr tail).
        """
        assert self.process.stdin is not None, "FFmpegProcess was started without stdin=True"
        try:
            self.process.stdin.write(data)
        except (BrokenPipeError, ValueError) as exc:
            self.process.wait()
            self._reader.join(timeout=_JOIN_TIMEOUT_S)
            raise self.failure() from exc

    def finish(self, timeout: float | None = None, *, check: bool = False) -> int:
        """End the input (close stdin), wait for ffmpeg to exit and for the rest of its stderr.

        Args:
            timeout: seconds to wait (``subprocess.TimeoutExpired`` past them); ``None``: no limit.
            check: raise :meth:`failure` when the exit status is not 0.

        Returns:
            The exit status.
        """
        self._stop.set()
        self._close_stdin()
        returncode = self.process.wait(timeout=timeout)
        self._reader.join(timeout=_JOIN_TIMEOUT_S)
        if check and returncode != 0:
            raise self.failure()
        return returncode

    def stop(self) -> int:
        """Kill ffmpeg if it still runs, close its pipes and wait for it; returns the exit status."""
        self._stop.set()
        if self.process.poll() is None:
            self.process.kill()
        self._close_stdin()
        returncode = self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._reader.join(timeout=_JOIN_TIMEOUT_S)
        return returncode

    def stderr_text(self, lines: int | None = None) -> str:
        """The kept tail of stderr as text (its last ``lines`` lines when given)."""
        text = bytes(self._tail).decode("utf-8", errors="replace")
        return text if lines is None else "\n".join(text.splitlines()[-lines:])

    def failure(self) -> FFmpegError:
        """An :class:`FFmpegError` naming the command, its exit status and the tail of its stderr."""
        return FFmpegError(format_failure(self.command, self.returncode, self.stderr_text()))

    def _timed_read(self, read: Callable[[int], bytes], size: int) -> bytes:
        self._waiting_since = time.monotonic()
        try:
            return read(size)
        finally:
            self._waiting_since = None

    def _close_stdin(self) -> None:
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg already exited; its status says why

    def _drain_stderr(self) -> None:
        stream = self.process.stderr
        assert stream is not None
        for chunk in iter(lambda: stream.read1(_STDERR_CHUNK), b""):
            self._tail += chunk
            if len(self._tail) > self._keep:
                del self._tail[: len(self._tail) - self._keep]
        stream.close()

    def _watch(self) -> None:
        """Kill ffmpeg once a deadline has passed (the whole run, or one read waiting too long)."""
        while True:
            now = time.monotonic()
            wait = _WATCH_INTERVAL_S if self._stall is not None else float("inf")
            if self._deadline is not None:
                wait = min(wait, self._deadline - now)
            if self._stop.wait(max(wait, 0.0)):
                return
            if self._expired(time.monotonic()):
                if self.process.poll() is None:
                    self.timed_out = True
                    self.process.kill()
                return

    def _expired(self, now: float) -> bool:
        if self._deadline is not None and now >= self._deadline:
            return True
        since = self._waiting_since
        return since is not None and self._stall is not None and now - since > self._stall
