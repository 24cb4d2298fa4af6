"""Custom entries of the emotion bank: add, list and remove priors in ``emotions/`` of a weights tree.

A custom entry is ``emotions/<NAME>.safetensors`` holding ``mu`` (1, D) float32, exactly like the release
priors, so it works wherever a name does (``--emotion``, timelines, batch, app): the bank is read from the
folder. The manifest records its sha256 under ``files`` and its name under ``custom_emotions``; release
entries (:data:`~portrait.layout.RELEASE_EMOTIONS`) can be neither overwritten nor removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from portrait.errors import InputError, WeightsError
from portrait.files import sha256_file
from portrait.layout import EMOTION_PRIOR_KEY, EMOTIONS_DIR, MANIFEST_FILE, RELEASE_EMOTIONS
from portrait.weights.load import load_emotion_bank

logger = logging.getLogger(__name__)

#: Longest accepted emotion name.
MAX_NAME_LENGTH = 40
#: Letters first, then letters, digits, ``_`` and ``-`` (no path characters, no dots, no ``:`` / ``+`` /
#: ``,`` which the ``--emotion`` grammar uses).
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
MANIFEST_CUSTOM_KEY = "custom_emotions"


def check_emotion_name(name: str) -> str:
    """Return ``name`` when it is a valid new bank name; InputError naming the rule otherwise."""
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise InputError(
            f"invalid emotion name {name!r}: use 1 to {MAX_NAME_LENGTH} letters, digits, '_' or '-', "
            "starting with a letter (no path characters)"
        )
    return name


def _prior_path(root: Path, name: str) -> Path:
    return root / EMOTIONS_DIR / f"{name}.safetensors"


def _read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read {path}: {err}") from err


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST_FILE)


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


def add_emotion(root: Path, name: str, prior: torch.Tensor, *, overwrite: bool = False) -> Path:
    """Write ``emotions/NAME.safetensors`` (``mu`` = ``prior`` as (1, D) float32) and record it.

    Raises:
        InputError: invalid name, a release name, an existing name without ``overwrite``, or a prior whose
        size differs from the bank's.
    """
    check_emotion_name(name)
    if name in RELEASE_EMOTIONS:
        raise InputError(f"{name!r} is a release emotion and cannot be replaced; choose another name")
    bank = load_emotion_bank(root)
    prior = prior.detach().float().reshape(1, -1).contiguous().cpu()
    dim = next(iter(bank.values())).shape[-1]
    if prior.shape[-1] != dim or not torch.isfinite(prior).all():
        raise InputError(f"the new prior must be {dim} finite values, got {tuple(prior.shape)}")
    path = _prior_path(root, name)
    if path.exists() and not overwrite:
        raise InputError(f"emotion {name!r} already exists ({path}); pass --overwrite to replace it")
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({EMOTION_PRIOR_KEY: prior}, str(tmp))
    os.replace(tmp, path)
    manifest = _read_manifest(root)
    if manifest is not None:
        manifest.setdefault("files", {})[path.relative_to(root).as_posix()] = sha256_file(path)
        manifest["files"] = dict(sorted(manifest["files"].items()))
        manifest[MANIFEST_CUSTOM_KEY] = sorted(set(manifest.get(MANIFEST_CUSTOM_KEY, [])) | {name})
        _write_manifest(root, manifest)
    else:
        logger.warning("%s has no %s; the new emotion is not recorded in it", root, MANIFEST_FILE)
    return path


def remove_emotion(root: Path, name: str) -> None:
    """Delete a custom entry (InputError for a release entry or an unknown name)."""
    if name in RELEASE_EMOTIONS:
        raise InputError(f"{name!r} is a release emotion and cannot be removed")
    check_emotion_name(name)
    path = _prior_path(root, name)
    if not path.is_file():
        raise InputError(f"no emotion {name!r} in {root / EMOTIONS_DIR}")
    path.unlink()
    manifest = _read_manifest(root)
    if manifest is not None:
        manifest.get("files", {}).pop(path.relative_to(root).as_posix(), None)
        manifest[MANIFEST_CUSTOM_KEY] = sorted(set(manifest.get(MANIFEST_CUSTOM_KEY, [])) - {name})
        _write_manifest(root, manifest)
