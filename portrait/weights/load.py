"""Loading a portrait weights tree: root resolution, strict checks, components straight to device/dtype.

No network here (``hub.py`` downloads). Every component is checked against its safetensors header before
anything is loaded: a missing, unexpected or mis-shaped tensor is a :class:`WeightsError` naming the file and
the key, never a silently random or stale weight (the reference loads two checkpoints with strict=False).
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from portrait.constants import PRECISIONS
from portrait.errors import ConfigError, WeightsError
from portrait.files import sha256_file
from portrait.layout import (
    COMPONENTS,
    EMOTION_PRIOR_KEY,
    EMOTIONS_DIR,
    MANIFEST_FILE,
    RELEASE_EMOTIONS,
    Component,
    component,
)

logger = logging.getLogger(__name__)

#: Environment variable naming the weights root when no argument is given.
WEIGHTS_ENV = "PORTRAIT_WEIGHTS"
#: Keys a component's model may define that its file may lack (fnmatch patterns). Empty lists are the rule.
EXPECTED_MISSING: dict[str, tuple[str, ...]] = {"image_encoder": ("*.position_ids",)}
#: Components that run in float32 whatever the pipeline dtype (the reference's precision map, compat §11).
FP32_COMPONENTS = frozenset({"audio_encoder", "audio_projector", "emotion_model"})

_PORTRAIT_CLASSES = {
    "PortraitUNet": "portrait.models.unet",
    "AudioProjector": "portrait.models.audio",
    "EmotionModel": "portrait.models.emotion_model",
    "PoseGuider": "portrait.models.pose_guider",
    "LandmarkGuider": "portrait.models.landmark_guider",
    "IFNet": "portrait.models.interpolation",
    "EmotionEmbedder": "portrait.models.emotion_embedder",
    "EmotionClassifier": "portrait.models.emotion_classifier",
}

_FIX = (
    "convert the release with `portrait-gen convert --from-dice-talk SRC --weights DIR` "
    "or run `portrait-gen download`"
)


def resolve_weights_root(root: str | Path | None = None) -> Path:
    """The weights folder: ``root`` if given, else ``$PORTRAIT_WEIGHTS``, else ``./weights``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else Path("weights")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a precision name (``fp16``, ``bf16``, ``fp32``; see ``constants.PRECISIONS``)."""
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return getattr(torch, PRECISIONS[name])


def has_component(root: Path, name: str) -> bool:
    """Whether the tree (or training output) at ``root`` holds the component ``name``: its config file is
    there (loading it checks the rest). Used for the optional components of ``layout.OPTIONAL_COMPONENTS``."""
    comp = component(name)
    return (Path(root) / comp.name / comp.config_file).is_file()


def missing_files(root: Path) -> list[str]:
    """Relative paths of the files a complete tree needs and ``root`` lacks."""
    needed = []
    for comp in COMPONENTS:
        needed.append(f"{comp.name}/{comp.config_file}")
        if comp.weights_file:
            needed.append(f"{comp.name}/{comp.weights_file}")
    return [rel for rel in needed if not (root / rel).is_file()]


def check_tree(root: Path) -> None:
    """Raise :class:`WeightsError` naming every missing file of the weights tree at ``root``."""
    if not root.is_dir():
        raise WeightsError(f"weights folder {root} does not exist; {_FIX}")
    missing = missing_files(root)
    if missing:
        raise WeightsError(f"weights tree {root} is incomplete, missing: {', '.join(missing)}; {_FIX}")


def verify_manifest(root: Path) -> list[str]:
    """Files of ``root`` whose sha256 differs from ``manifest.json`` (or are missing). Reads every file."""
    manifest_path = root / MANIFEST_FILE
    if not manifest_path.is_file():
        raise WeightsError(f"{manifest_path} is missing; {_FIX}")
    try:
        files = json.loads(manifest_path.read_text())["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError("'files' is not a map of file names to digests")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{manifest_path} is not a readable weights manifest ({err}); {_FIX}") from err
    bad = []
    for rel, digest in sorted(files.items()):
        path = root / rel
        if not path.is_file() or sha256_file(path) != digest:
            bad.append(rel)
    return bad


def _model_class(comp: Component) -> type:
    if comp.library == "portrait":
        return getattr(importlib.import_module(_PORTRAIT_CLASSES[comp.class_name]), comp.class_name)
    return getattr(importlib.import_module(comp.library), comp.class_name)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read {path}: {err}; {_FIX}") from err


def _empty_model(comp: Component, folder: Path) -> torch.nn.Module:
    """The component's architecture from its config, on the meta device (no memory, no init)."""
    cls = _model_class(comp)
    try:
        if comp.library == "transformers":
            config = cls.config_class.from_pretrained(folder)
            with torch.device("meta"):
                return cls(config)
        config = _read_config(folder / comp.config_file)
        with torch.device("meta"):
            return cls.from_config(config)
    except (TypeError, ValueError, KeyError, OSError) as err:
        raise WeightsError(
            f"{folder / comp.config_file} does not describe a {comp.class_name}: {err}"
        ) from err


def check_state_dict(
    model: torch.nn.Module, weights_path: Path, expected_missing: tuple[str, ...] = ()
) -> None:
    """Compare a model's tensors with a safetensors header; raise :class:`WeightsError` on any mismatch."""
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{weights_path} is not a readable safetensors file ({err}); {_FIX}") from err
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = [
        k for k in expected if k not in shapes and not any(fnmatch.fnmatch(k, p) for p in expected_missing)
    ]
    unexpected = [k for k in shapes if k not in expected]
    wrong = [
        f"{k} {shapes[k]} (expected {expected[k]})"
        for k in expected
        if k in shapes and shapes[k] != expected[k]
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(
                f"{label}: {', '.join(keys[:8])}" + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
            )
    if problems:
        raise WeightsError(f"{weights_path} does not match its config: {'; '.join(problems)}")


#: safetensors' dtype names of the floating dtypes a tree may store.
_FILE_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


def read_state(
    weights_path: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file on ``device``, floating ones in ``dtype``, read one at a time.

    Memory: a file already in ``dtype`` loaded on the CPU is mapped (no copy: its pages are shared with the
    page cache); otherwise each tensor is read into its own host buffer (``pread``), cast, moved to
    ``device`` and dropped before the next, so the host holds one tensor, not the file and the model.
    """
    device = torch.device(device)
    with safe_open(str(weights_path), framework="pt") as handle:
        stored = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    cast = any(_FILE_DTYPES.get(name, dtype) != dtype for name in stored)
    backend = "mmap" if device.type == "cpu" and not cast else "pread"
    state = {}
    with safe_open(str(weights_path), framework="pt", backend=backend) as handle:
        for key in handle.keys():
            value = handle.get_tensor(key)
            state[key] = value.to(device, dtype) if value.is_floating_point() else value.to(device)
    return state


def load_component(
    name: str, root: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Any:
    """Load one component of the tree strictly, straight onto ``device`` in ``dtype``."""
    comp = component(name)
    folder = root / comp.name
    if comp.weights_file is None:  # the scheduler
        cls = _model_class(comp)
        return cls.from_config(_read_config(folder / comp.config_file))
    weights_path = folder / comp.weights_file
    if not weights_path.is_file():
        raise WeightsError(f"{weights_path} is missing; {_FIX}")
    model = _empty_model(comp, folder)
    check_state_dict(model, weights_path, EXPECTED_MISSING.get(name, ()))
    if comp.library == "transformers":
        cls = _model_class(comp)
        loaded = cls.from_pretrained(folder, dtype=dtype, device_map=str(torch.device(device)))
        return loaded.eval()
    model.load_state_dict(read_state(weights_path, device, dtype), strict=True, assign=True)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:
        raise WeightsError(f"{weights_path} left tensors uninitialised: {', '.join(leftover[:8])}")
    return model.eval()


def emotion_names(root: Path) -> list[str]:
    """Names of the emotion priors in ``root/emotions`` (the release's eight when the tree has none yet)."""
    return sorted(p.stem for p in (root / EMOTIONS_DIR).glob("*.safetensors")) or list(RELEASE_EMOTIONS)


def _read_prior(path: Path) -> torch.Tensor:
    """The (1, D) float32 prior ``mu`` of one bank file (WeightsError: unreadable, no ``mu``, not finite)."""
    try:
        tensors = load_file(str(path))
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a corrupt file
        raise WeightsError(
            f"{path} is not a readable safetensors file ({' '.join(str(err).split())})"
        ) from err
    if EMOTION_PRIOR_KEY not in tensors:
        raise WeightsError(f"{path} has no tensor {EMOTION_PRIOR_KEY!r}")
    prior = tensors[EMOTION_PRIOR_KEY].float().reshape(1, -1)
    if prior.shape[-1] == 0 or not torch.isfinite(prior).all():
        raise WeightsError(f"{path}: its prior is empty or not finite")
    return prior


def load_emotion_bank(root: Path) -> dict[str, torch.Tensor]:
    """All priors of ``root/emotions``: name → (1, D) float32 tensor.

    A release prior (:data:`~portrait.layout.RELEASE_EMOTIONS`) that cannot be read is a
    :class:`WeightsError`; a custom one that cannot be read, or whose size differs from the release
    priors', is left out with a warning (one bad ``emotions add`` never stops every render).
    """
    folder = root / EMOTIONS_DIR
    read: dict[str, torch.Tensor] = {}  # in file order, as before
    for path in sorted(folder.glob("*.safetensors")):
        try:
            read[path.stem] = _read_prior(path)
        except WeightsError as err:
            if path.stem in RELEASE_EMOTIONS:
                raise WeightsError(f"{err}; {_FIX}") from err
            logger.warning("custom emotion %r left out: %s (remove or re-add it)", path.stem, err)
    sizes = {p.shape[-1] for n, p in read.items() if n in RELEASE_EMOTIONS} or {
        p.shape[-1] for p in read.values()
    }
    bank = {}
    for name, prior in read.items():
        if name in RELEASE_EMOTIONS or (len(sizes) == 1 and prior.shape[-1] in sizes):
            bank[name] = prior
        else:
            logger.warning("custom emotion %r left out: its prior has %d values, the bank's have %s",
                           name, prior.shape[-1], sorted(sizes))  # fmt: skip
    if not bank:
        raise WeightsError(f"no emotion priors in {folder}; {_FIX}")
    return bank


def load_pipeline(
    root: str | Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    with_audio_encoder: bool = True,
    skip: Collection[str] = (),
):
    """Build a :class:`~portrait.pipeline.PortraitPipeline` from a weights tree.

    The UNet, VAE, image encoder and pose guider are loaded in ``dtype``; the audio encoder, audio
    projector and emotion model in float32 (compat §11). Components named in ``skip`` (or the audio
    encoder without ``with_audio_encoder``) are not loaded and left ``None``: for a caller that uses the
    others only (training from a cache of their outputs), a pipeline that cannot render.
    """
    from portrait.pipeline import PortraitPipeline

    root = resolve_weights_root(root)
    check_tree(root)
    parts = {}
    for comp in COMPONENTS:
        if comp.name in skip or (comp.name == "audio_encoder" and not with_audio_encoder):
            parts[comp.name] = None
            continue
        part_dtype = torch.float32 if comp.name in FP32_COMPONENTS else dtype
        logger.info("loading %s from %s", comp.name, root / comp.name)
        parts[comp.name] = load_component(comp.name, root, device, part_dtype)
    return PortraitPipeline(**parts)
