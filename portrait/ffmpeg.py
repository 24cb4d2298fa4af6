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
import os
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from portrait.errors import FFmpegError

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_FORMATS",
    "durable_replace",
    "FFMPEG_TIMEOUT_S",
    "MUX_VIDEO_FORMATS",
    "STDERR_TAIL_LINES",
    "ffmpeg_binary",
    "format_failure",
    "locked_input",
    "media_path",
    "owned_prefix",
    "owner_state",
    "partial_path",
    "run_ffmpeg",
    "stderr_tail",
    "sweep_dead_owners",
]

#: How many trailing stderr lines an :class:`FFmpegError` carries.
STDERR_TAIL_LINES = 15
#: Seconds an ffmpeg call may run before it is killed (:func:`run_ffmpeg`'s default).
FFMPEG_TIMEOUT_S = 1800.0

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


def partial_path(output: str | Path) -> Path:
    """Where an output is written before its atomic rename: ``<stem>.partial.mp4`` next to ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.partial.mp4")


def durable_replace(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` over ``target`` so that a crash leaves either the old or the whole new file.

    ``source`` is fsynced before the rename and the folder after it (where the platform allows).
    """
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(source, target)
    try:
        folder = os.open(Path(target).parent, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


#: ``-<host>-<pid>-`` inside a work folder's name: the process that owns it (:func:`owned_prefix`).
_OWNER_RE = re.compile(r"-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-")


def _host_tag() -> str:
    """This host's name with every character outside ``[A-Za-z0-9_.]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def owned_prefix(prefix: str) -> str:
    """``<prefix><host>-<pid>-``: a work-folder name prefix naming this process as its owner.

    Give it to ``tempfile.mkdtemp(prefix=...)``; :func:`owner_state` reads the owner back, so a sweep can
    remove the folders of dead processes at once.
    """
    return f"{prefix}{_host_tag()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def owner_state(name: str) -> str | None:
    """``"alive"`` / ``"dead"`` for a work-folder name made by :func:`owned_prefix` on this host, else None.

    None: the name carries no owner, or one on another host (whose processes cannot be checked).
    """
    match = _OWNER_RE.search(name)
    if match is None or match["host"] != _host_tag():
        return None
    return "alive" if _pid_alive(int(match["pid"])) else "dead"


def sweep_dead_owners(folder: str | Path, prefixes: Sequence[str]) -> list[Path]:
    """Remove the folders directly in ``folder`` named ``<prefix>...`` whose owner process is dead.

    Only names made by :func:`owned_prefix` on this host are considered; files and folders of live or
    unknown owners are kept. Returns what was removed.
    """
    removed: list[Path] = []
    try:
        entries = sorted(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(tuple(prefixes)) or entry.is_symlink() or not entry.is_dir():
            continue
        if owner_state(entry.name) == "dead":
            shutil.rmtree(entry, ignore_errors=True)
            logger.info("removed %s, left by a process that is gone", entry)
            removed.append(entry)
    return removed


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
