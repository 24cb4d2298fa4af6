"""Locate the ffmpeg binary and run it safely.

Every ffmpeg call in portrait goes through here: an argument list (never a shell, so file names with
``$(...)``, quotes or spaces are taken literally), ``-nostdin`` so ffmpeg never eats the terminal's input,
stdout and stderr captured, and a failure turned into :class:`~portrait.errors.FFmpegError` carrying the
last lines of stderr.

File names are passed to ffmpeg as absolute paths (:func:`media_path`): a relative name such as
``concat:a|b`` or ``-y.wav`` could otherwise be read as a protocol or an option.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from portrait.errors import FFmpegError

logger = logging.getLogger(__name__)

__all__ = [
    "STDERR_TAIL_LINES",
    "ffmpeg_binary",
    "format_failure",
    "media_path",
    "partial_path",
    "run_ffmpeg",
    "stderr_tail",
]

#: How many trailing stderr lines an :class:`FFmpegError` carries.
STDERR_TAIL_LINES = 15

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


def partial_path(output: str | Path) -> Path:
    """Where an output is written before its atomic rename: ``<stem>.partial.mp4`` next to ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.partial.mp4")


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


def run_ffmpeg(
    args: Sequence[str],
    *,
    check: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg with ``args`` (everything after the binary) and capture stdout and stderr as bytes.

    The command is ``[ffmpeg_binary(), "-hide_banner", "-nostdin", *args]``, run without a shell. Build
    ``args`` with ffmpeg-python's ``get_args()`` or by hand, and give file names through
    :func:`media_path`.

    Args:
        args: ffmpeg arguments, without the binary.
        check: raise :class:`FFmpegError` when ffmpeg exits with a non-zero status; with ``False`` the
            caller inspects ``returncode`` and ``stderr`` itself.
        timeout: seconds before ffmpeg is killed (``None``: no limit).

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
