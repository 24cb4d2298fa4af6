"""Safe readers and strict key checks for the DICE-Talk research release (compat §4.7, 8, 10).

Used by :mod:`portrait.weights.convert` (with :mod:`portrait.weights.release_config` for the shape
inference and :mod:`portrait.weights.emotion_priors` for the pickled priors). Nothing here executes code
from a weights file: ``.pth`` / ``.bin`` files are read only with ``torch.load(..., weights_only=True)``
and must be flat state dicts of tensors; safetensors files are read through their header.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from portrait.errors import WeightsError

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

RELEASE_DIR = "DICE-Talk"
SVD_DIR = "stable-video-diffusion-img2vid-xt"
WHISPER_DIR = "whisper-tiny"

#: What ``torch.load(weights_only=True)`` raises on a corrupt file or a pickle of anything but tensors.
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError)


def _list_keys(keys: Iterable[str], limit: int = 10) -> str:
    """``"a, b, c (+N more)"`` for error messages (sorted, first ``limit``)."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_pth(path: Path) -> tuple[StateDict, list[str]]:
    """Read a plain state dict from a ``.pth`` / ``.bin`` file without executing pickled code.

    Accepts a flat ``{name: tensor}`` dict, optionally wrapped as ``{"state_dict": {...}}`` and optionally
    with a ``module.`` prefix on every key (stripped; both are reported in the returned notes).

    Returns:
        ``(state_dict, notes)``.

    Raises:
        WeightsError: unreadable file, pickled objects other than tensors, or a non-flat dict.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as err:
        glob = re.search(r"GLOBAL ([\w.]+)", str(err))
        why = f"it pickles {glob[1]}" if glob else (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise WeightsError(
            f"{path}: refusing to load: not a plain tensor state dict readable with torch.load("
            f"weights_only=True) ({why}). Use the original release file, or re-save it as "
            "torch.save(model.state_dict(), path)"
        ) from err
    notes: list[str] = []
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
        notes.append("unwrapped the 'state_dict' entry")
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: expected a dict of tensors (a state dict), found a {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; the file must be a flat "
                "state dict (torch.save(model.state_dict(), path))"
            )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
        notes.append("stripped the 'module.' prefix present on every key")
    for note in notes:
        logger.info("%s: %s", path, note)
    return dict(obj), notes


def find_weights_file(folder: Path, stem: str) -> Path:
    """The weights file of a diffusers/transformers folder, fp16 variant first.

    Looks for ``<stem>.fp16.safetensors``, ``<stem>.safetensors``, then the ``.bin`` files (``stem`` is
    ``diffusion_pytorch_model`` or ``model``; transformers' ``.bin`` is ``pytorch_model``).

    Raises:
        WeightsError: none of them exists (the message lists the names tried).
    """
    bin_stem = "pytorch_model" if stem == "model" else stem
    names = [f"{stem}.fp16.safetensors", f"{stem}.safetensors", f"{bin_stem}.fp16.bin", f"{bin_stem}.bin"]
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if any(folder.glob("*.index.json")):
        raise WeightsError(f"{folder}: sharded checkpoints are not supported; merge the shards into one file")
    raise WeightsError(f"{folder}: no weights file found (tried {', '.join(names)}); re-download this folder")


def file_shapes(path: Path) -> dict[str, torch.Size]:
    """Key → shape of a weights file: a safetensors header only, or the whole ``.bin`` / ``.pth``."""
    if path.suffix != ".safetensors":
        return {k: v.shape for k, v in load_pth(path)[0].items()}
    try:
        with safe_open(path, framework="pt") as f:
            return {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path}: unreadable safetensors file ({err}); re-download it") from err


def read_tensors(path: Path, keys: Iterable[str] | None = None) -> tuple[StateDict, list[str]]:
    """Tensors of a safetensors or ``.bin``/``.pth`` file (all of them, or only ``keys``).

    Returns:
        ``(tensors, notes)`` (notes from :func:`load_pth`).
    """
    if path.suffix == ".safetensors":
        try:
            with safe_open(path, framework="pt") as f:
                names = list(f.keys()) if keys is None else list(keys)
                return {k: f.get_tensor(k) for k in names}, []
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"{path}: unreadable safetensors file ({err}); re-download it") from err
    tensors, notes = load_pth(path)
    if keys is not None:
        tensors = {k: tensors[k] for k in keys}
    return tensors, notes


def check_keys(
    shapes: Mapping[str, torch.Size],
    expected: Mapping[str, torch.Size],
    file: Path,
    what: str,
    allow_missing=False,
) -> None:
    """Strict key and shape check of ``shapes`` (a file's tensors) against ``expected`` (the architecture).

    Args:
        allow_missing: accept a subset of the expected keys (an overlay); unexpected keys are still errors.

    Raises:
        WeightsError: naming the unexpected keys (first 10 + count), the missing keys, or the first key with a
            wrong shape and both shapes.
    """
    unexpected = set(shapes) - set(expected)
    if unexpected:
        raise WeightsError(
            f"{file}: {len(unexpected)} key(s) that {what} does not have: {_list_keys(unexpected)}"
            f"{_prefix_hint(unexpected, expected)}; the file does not belong to {what} (wrong file or prefix)"
        )
    missing = set(expected) - set(shapes)
    if missing and not allow_missing:
        raise WeightsError(
            f"{file}: {len(missing)} key(s) of {what} missing: {_list_keys(missing)}; the file is incomplete "
            "or from another model version, re-download it"
        )
    for key, shape in shapes.items():
        if tuple(shape) != tuple(expected[key]):
            raise WeightsError(
                f"{file}: key {key} has shape {tuple(shape)} but {what} expects {tuple(expected[key])}; "
                "the file does not match the architecture inferred from the release"
            )


def _prefix_hint(unexpected: set[str], expected: Mapping[str, Any]) -> str:
    """`` (they look prefixed with 'unet.')`` when stripping one common first segment makes keys match."""
    prefixes = {k.split(".", 1)[0] for k in unexpected if "." in k}
    if len(prefixes) == 1:
        prefix = prefixes.pop() + "."
        if all(k.removeprefix(prefix) in expected for k in unexpected):
            return f" (they look prefixed with {prefix!r})"
    return ""
