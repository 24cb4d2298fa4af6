"""Custom entries of the emotion bank: add, list and remove priors in ``emotions/`` of a weights tree.

A custom entry is ``emotions/<NAME>.safetensors`` holding ``mu`` (1, D) float32, exactly like the release
priors, so it works wherever a name does (``--emotion``, timelines, batch, app): the bank is read from the
folder. The manifest records its sha256 under ``files`` and its name under ``custom_emotions``; release
entries (:data:`~portrait.layout.RELEASE_EMOTIONS`) can be neither overwritten nor removed, and no other
record of the manifest is touched.

Writers hold the tree's lock (:data:`TREE_LOCK`, also taken by ``train install``), so concurrent adds are
all recorded; a new entry is written exclusively (an existing file is never replaced without
``overwrite``), fsynced with its folder, and a failure part-way (a full disk while the manifest is
rewritten) puts the tree back as it was. Names are matched without regard to case: ``Happy`` is refused
next to ``happy`` (on a case-insensitive file system it would replace it).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from portrait.errors import InputError, WeightsError
from portrait.files import exclusive_lock, sha256_file, write_bytes_durable, write_json_atomic
from portrait.layout import EMOTION_PRIOR_KEY, EMOTIONS_DIR, MANIFEST_FILE, RELEASE_EMOTIONS
from portrait.weights.load import load_emotion_bank

logger = logging.getLogger(__name__)

#: Longest accepted emotion name.
MAX_NAME_LENGTH = 40
#: Letters first, then letters, digits, ``_`` and ``-`` (no path characters, no dots, no ``:`` / ``+`` /
#: ``,`` which the ``--emotion`` grammar uses); matched against the whole name (no trailing newline).
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
#: File names Windows reserves for devices (in any case): never an emotion name.
WINDOWS_DEVICE_NAMES = frozenset(
    {"con", "prn", "aux", "nul"} | {f"{kind}{n}" for kind in ("com", "lpt") for n in range(1, 10)}
)
MANIFEST_CUSTOM_KEY = "custom_emotions"
#: Lock file of a weights tree's writers (custom emotions, ``train install``), in the tree's root.
TREE_LOCK = ".portrait-tree.lock"


def check_emotion_name(name: str) -> str:
    """Return ``name`` when it is a valid new bank name; InputError naming the rule otherwise."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InputError(
            f"invalid emotion name {name!r}: use 1 to {MAX_NAME_LENGTH} letters, digits, '_' or '-', "
            "starting with a letter (no path characters)"
        )
    if name.lower() in WINDOWS_DEVICE_NAMES:
        raise InputError(f"invalid emotion name {name!r}: it is a reserved device name on Windows")
    return name


def check_new_name(name: str, existing: Iterable[str], *, overwrite: bool = False) -> str:
    """Return ``name`` when it may join a bank holding ``existing`` names (InputError otherwise).

    Refused: an invalid name, a release name in any case, a name that differs from an entry only in case,
    and an existing name unless ``overwrite``.
    """
    check_emotion_name(name)
    if name.lower() in {release.lower() for release in RELEASE_EMOTIONS}:
        raise InputError(f"{name!r} is a release emotion and cannot be replaced; choose another name")
    for other in existing:
        if other.lower() == name.lower() and other != name:
            raise InputError(
                f"emotion {name!r} differs from the existing {other!r} only in case; choose another name"
            )
        if other == name and not overwrite:
            raise InputError(f"emotion {name!r} already exists in the bank; pass --overwrite to replace it")
    return name


def _prior_path(root: Path, name: str) -> Path:
    return root / EMOTIONS_DIR / f"{name}.safetensors"


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read {path}: {err}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise WeightsError(f"{path} is not a portrait weights manifest")
    return manifest


def custom_emotions(root: Path) -> list[str]:
    """Names recorded as custom in the manifest, plus any non-release prior file of the folder."""
    manifest = _read_manifest(root) or {}
    recorded = set(manifest.get(MANIFEST_CUSTOM_KEY, []))
    present = {p.stem for p in (root / EMOTIONS_DIR).glob("*.safetensors")}
    return sorted((recorded & present) | (present - set(RELEASE_EMOTIONS)))


def list_emotions(root: Path) -> list[tuple[str, str, int]]:
    """``(name, "release" | "custom", prior size)`` for every entry of the bank, sorted by name."""
    bank = load_emotion_bank(root)
    custom = set(custom_emotions(root))
    return [(n, "custom" if n in custom else "release", int(p.shape[-1])) for n, p in bank.items()]


def _record(root: Path, name: str, digest: str | None) -> None:
    """Set (``digest``) or drop (None) the manifest record of custom entry ``name``; nothing else changes."""
    manifest = _read_manifest(root)
    if manifest is None:
        logger.warning("%s has no %s; the emotion %r is not recorded in it", root, MANIFEST_FILE, name)
        return
    key = _prior_path(root, name).relative_to(root).as_posix()
    files = manifest.setdefault("files", {})
    names = set(manifest.get(MANIFEST_CUSTOM_KEY, []))
    if digest is None:
        files.pop(key, None)
        names.discard(name)
    else:
        files[key] = digest
        names.add(name)
    manifest["files"] = dict(sorted(files.items()))
    manifest[MANIFEST_CUSTOM_KEY] = sorted(names)
    write_json_atomic(root / MANIFEST_FILE, manifest)


def add_emotion(root: Path, name: str, prior: torch.Tensor, *, overwrite: bool = False) -> Path:
    """Write ``emotions/NAME.safetensors`` (``mu`` = ``prior`` as (1, D) float32) and record it.

    Raises:
        InputError: invalid name, a release name, a case variant of an entry, an existing name without
            ``overwrite``, or a prior whose size differs from the bank's.
        OSError: the file or the manifest could not be written (the tree is left as it was).
    """
    check_emotion_name(name)
    prior = prior.detach().float().reshape(1, -1).contiguous().cpu()
    path = _prior_path(root, name)
    with exclusive_lock(root / TREE_LOCK):
        bank = load_emotion_bank(root)
        present = {p.stem for p in path.parent.glob("*.safetensors")}
        check_new_name(name, present, overwrite=overwrite)
        dim = next(iter(bank.values())).shape[-1]
        if prior.shape[-1] != dim or not torch.isfinite(prior).all():
            raise InputError(f"the new prior must be {dim} finite values, got {tuple(prior.shape)}")
        old = path.read_bytes() if path.is_file() else None
        try:
            write_bytes_durable(path, save({EMOTION_PRIOR_KEY: prior}), exclusive=not overwrite)
        except FileExistsError:
            raise InputError(
                f"emotion {name!r} already exists in the bank; pass --overwrite to replace it"
            ) from None
        try:
            _record(root, name, sha256_file(path))
        except BaseException:
            _restore(path, old)
            raise
    return path


def _restore(path: Path, old: bytes | None) -> None:
    """Put back what ``path`` held before a failed change (``None``: it did not exist)."""
    if old is None:
        path.unlink(missing_ok=True)
    else:
        write_bytes_durable(path, old)


def remove_emotion(root: Path, name: str) -> None:
    """Delete a custom entry (InputError for a release entry or an unknown name)."""
    if name.lower() in {release.lower() for release in RELEASE_EMOTIONS}:
        raise InputError(f"{name!r} is a release emotion and cannot be removed")
    check_emotion_name(name)
    path = _prior_path(root, name)
    with exclusive_lock(root / TREE_LOCK):
        if not path.is_file() or name not in {p.stem for p in path.parent.glob("*.safetensors")}:
            raise InputError(f"no emotion {name!r} in {root / EMOTIONS_DIR}")
        old = path.read_bytes()
        path.unlink()
        try:
            _record(root, name, None)
        except BaseException:
            _restore(path, old)
            raise
