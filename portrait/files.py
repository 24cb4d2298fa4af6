"""Files written safely: atomic, durable replaces; owned work folders and their sweep; file digests.

* :func:`durable_replace` renames a finished temporary file over its target so a crash leaves either the
  old or the whole new file; :func:`write_json_atomic` writes JSON that way (``<name>.partial`` first);
  :func:`write_bytes_durable` writes bytes through a unique temporary name, exclusively when asked (an
  existing file is never replaced); :func:`exclusive_lock` serialises writers of one tree.
* :func:`partial_path` and :func:`sidecar_path` name the files next to an output: ``<stem>.partial.mp4``
  while it is written, ``<output>.json`` (the sidecar) once it is done.
* :func:`owned_prefix` names a work folder after the process that owns it; :func:`owner_state` reads the
  owner back and :func:`sweep_dead_owners` removes the folders whose owner is gone.
* :func:`sha256_file` digests a file in 1 MiB blocks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = [
    "durable_replace",
    "exclusive_lock",
    "owned_prefix",
    "owner_state",
    "partial_path",
    "sha256_file",
    "sidecar_path",
    "sweep_dead_owners",
    "write_bytes_durable",
    "write_json_atomic",
]

#: Bytes read at a time when a file is digested.
_HASH_BLOCK = 1 << 20
#: ``-<host>-<pid>-`` inside a work folder's name: the process that owns it (:func:`owned_prefix`).
_OWNER_RE = re.compile(r"-(?P<host>[A-Za-z0-9_.]+)-(?P<pid>\d+)-")


# --------------------------------------------------------------------------------------------------------
# Names next to an output
# --------------------------------------------------------------------------------------------------------


def partial_path(output: str | Path) -> Path:
    """Where an output is written before its atomic rename: ``<stem>.partial.mp4`` next to ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.partial.mp4")


def sidecar_path(output: str | Path) -> Path:
    """The sidecar JSON of an output: ``<output>.json`` next to it (``out.mp4`` → ``out.mp4.json``)."""
    output = Path(output)
    return output.with_name(output.name + ".json")


# --------------------------------------------------------------------------------------------------------
# Atomic, durable writes
# --------------------------------------------------------------------------------------------------------


def _fsync_folder(folder: Path) -> None:
    """fsync a folder so a rename inside it survives a crash (where the platform allows it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def durable_replace(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` over ``target`` so that a crash leaves either the old or the whole new file.

    ``source`` is fsynced before the rename and the folder after it (where the platform allows).
    """
    with open(source, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(source, target)
    _fsync_folder(Path(target).parent)


def write_json_atomic(
    path: str | Path,
    data: Any,
    *,
    indent: int = 2,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``data`` as JSON (plus a newline) to ``path`` atomically and durably.

    The text goes to ``<name>.partial`` next to ``path``, is fsynced and renamed over ``path``, then the
    folder is fsynced: a crash leaves the old file or the whole new one. On an ``OSError`` (a full disk)
    the partial file is removed and the error re-raised. ``indent``, ``sort_keys`` and ``default`` are
    :func:`json.dumps`'s.
    """
    path = Path(path)
    text = json.dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n"
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_bytes_durable(path: str | Path, data: bytes, *, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` through a unique temporary file, fsynced, then the folder fsynced.

    ``exclusive``: the file is put in place with a hard link, which fails when ``path`` exists (an existing
    file is never replaced, even by a concurrent writer); otherwise it is renamed over ``path``. On any
    error (a full disk, ``FileExistsError``) the temporary file is removed, ``path`` is untouched and the
    error re-raised.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if exclusive:
            _link_exclusive(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _link_exclusive(source: str, target: Path) -> None:
    """Put ``source`` at ``target`` unless ``target`` exists (``FileExistsError``): a hard link, or where
    the file system has none, an exclusively created placeholder replaced by a rename."""
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares)
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.replace(source, target)


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on the file ``path`` (created if needed) for the block.

    Writers of the same tree that take the same lock run one after the other; readers are not blocked.
    Where ``fcntl`` does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+b") as stream:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(stream.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------------
# Work folders owned by a process
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()
