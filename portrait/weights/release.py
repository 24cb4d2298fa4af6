"""Safe readers and shape inference for the DICE-Talk research release (compat §3, 4.7, 8, 10).

Used by :mod:`portrait.weights.convert`. Nothing here executes code from a weights file:

* ``.pth`` / ``.bin`` files are read only with ``torch.load(..., weights_only=True)`` and must be flat
  state dicts of tensors;
* pickled emotion priors (``examples/emo/*.npy``) are parsed with numpy's header readers and an allow-list
  unpickler that resolves nothing but numpy's array reconstruction (:func:`load_emotion_prior`);
* module sizes are inferred from tensor shapes, then checked against a model built on the meta device.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from portrait.errors import WeightsError

logger = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]

RELEASE_DIR = "DICE-Talk"
SVD_DIR = "stable-video-diffusion-img2vid-xt"
WHISPER_DIR = "whisper-tiny"

#: Head count of the release ``EmotionModel`` attention (a constant of the reference code, not in the file).
EMOTION_NUM_HEADS = 8
#: Tokens per adapter stream (audio, emotion) of the release UNet (constants of the reference code).
ADAPTER_TOKENS = (32, 32)
ADAPTER_SCALES = (1.0, 1.0)
#: What ``torch.load(weights_only=True)`` raises on a corrupt file or a pickle of anything but tensors.
_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError)
#: Config keys of a diffusers config file that are bookkeeping, not constructor arguments.
_CONFIG_BOOKKEEPING = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


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


def require_shape(tensors: Mapping[str, torch.Tensor], key: str, file: Path, ndim: int) -> torch.Size:
    """Shape of ``tensors[key]`` with ``ndim`` axes, or a WeightsError naming the key and file."""
    if key not in tensors:
        raise WeightsError(
            f"{file}: missing key {key}; the file is incomplete or not the expected release file"
        )
    shape = tensors[key].shape
    if len(shape) != ndim:
        raise WeightsError(f"{file}: key {key} has shape {tuple(shape)}, expected {ndim} dimensions")
    return shape


def _exact_div(num: int, den: int, what: str, file: Path) -> int:
    if den <= 0 or num % den:
        raise WeightsError(f"{file}: cannot infer {what}: {num} is not a multiple of {den}")
    return num // den


def audio_projector_config(tensors: StateDict, file: Path, whisper: Mapping[str, Any]) -> dict[str, Any]:
    """``AudioProjector`` arguments from ``audio_linear.pth`` shapes and the Whisper config (compat §2.3).

    ``channels = d_model``, ``blocks = encoder_layers + 1``, ``seq_len = in_features / (blocks·channels)``,
    ``output_dim = norm.weight`` size, ``context_tokens = proj3.out / output_dim``.
    """
    intermediate, in_features = require_shape(tensors, "proj1.weight", file, 2)
    output_dim = require_shape(tensors, "norm.weight", file, 1)[0]
    proj3_out = require_shape(tensors, "proj3.weight", file, 2)[0]
    channels, blocks = int(whisper["d_model"]), int(whisper["encoder_layers"]) + 1
    return {
        "seq_len": _exact_div(
            in_features, blocks * channels, "seq_len (proj1 in / (Whisper layers+1)·d_model)", file
        ),
        "blocks": blocks,
        "channels": channels,
        "intermediate_dim": intermediate,
        "output_dim": output_dim,
        "context_tokens": _exact_div(proj3_out, output_dim, "context_tokens (proj3 out / norm size)", file),
    }


def emotion_model_config(tensors: StateDict, file: Path) -> dict[str, Any]:
    """``EmotionModel`` arguments from ``emo_model.pth`` shapes (compat §3); ``num_heads`` is always 8."""
    intermediate, prior_dim = require_shape(tensors, "emo_linear.proj1.weight", file, 2)
    dim = require_shape(tensors, "emo_linear.norm.weight", file, 1)[0]
    proj3_out = require_shape(tensors, "emo_linear.proj3.weight", file, 2)[0]
    codebook_size = require_shape(tensors, "codebook.codebook.weight", file, 2)[0]
    if dim % EMOTION_NUM_HEADS:
        raise WeightsError(f"{file}: emotion token width {dim} is not divisible by {EMOTION_NUM_HEADS} heads")
    return {
        "prior_dim": prior_dim,
        "dim": dim,
        "intermediate_dim": intermediate,
        "context_tokens": _exact_div(
            proj3_out, dim, "context_tokens (emo_linear.proj3 out / norm size)", file
        ),
        "codebook_size": codebook_size,
        "num_heads": EMOTION_NUM_HEADS,
    }


def pose_guider_config(tensors: StateDict, file: Path) -> dict[str, Any]:
    """``PoseGuider`` arguments from ``pose_guider.pth`` shapes (compat §5): conv_in, blocks.{i}, conv_out."""
    first, cond_channels = require_shape(tensors, "conv_in.weight", file, 4)[:2]
    widths = [first]
    index = 1
    while f"blocks.{index}.weight" in tensors:
        widths.append(require_shape(tensors, f"blocks.{index}.weight", file, 4)[0])
        index += 2
    embedding = require_shape(tensors, "conv_out.weight", file, 4)[0]
    return {"conditioning_embedding_channels": embedding, "conditioning_channels": cond_channels,
            "block_out_channels": widths}  # fmt: skip


def unet_config(base: Mapping[str, Any]) -> dict[str, Any]:
    """``PortraitUNet`` arguments: the SVD ``unet/config.json`` plus the release adapter constants."""
    config = {k: v for k, v in base.items() if k not in _CONFIG_BOOKKEEPING}
    config["adapter_scales"] = list(ADAPTER_SCALES)
    config["adapter_tokens"] = list(ADAPTER_TOKENS)
    return config


#: Largest emotion prior file and largest array one may describe (the release's are ~1 KB).
MAX_PRIOR_BYTES = 16 * 1024 * 1024


def _check_allocation(shape: Any, dtype: Any, source: Path) -> None:
    """Refuse an array of ``shape``/``dtype`` bigger than :data:`MAX_PRIOR_BYTES` (before allocating it)."""
    dims = (shape,) if isinstance(shape, int) else shape
    try:
        dims = tuple(int(d) for d in dims)
        itemsize = np.dtype(dtype).itemsize
    except (TypeError, ValueError, OverflowError) as exc:
        raise WeightsError(f"{source}: not an emotion prior (bad array shape {shape!r})") from exc
    if any(d < 0 for d in dims):
        raise WeightsError(f"{source}: not an emotion prior (negative array shape {dims})")
    total = max(itemsize, 1)
    for d in dims:
        total *= d
        if total > MAX_PRIOR_BYTES:
            raise WeightsError(
                f"{source}: describes an array of shape {dims} (more than {MAX_PRIOR_BYTES} bytes); an "
                "emotion prior is one small vector, refusing to allocate it"
            )


class _NdarrayGuard:
    """Stands for ``numpy.ndarray`` in a pickle: calling it checks the size before constructing."""

    def __init__(self, source: Path) -> None:
        self._source = source

    def __call__(self, shape: Any, dtype: Any = float, *args: Any, **kwargs: Any) -> np.ndarray:
        _check_allocation(shape, dtype, self._source)
        return np.ndarray(shape, dtype, *args, **kwargs)


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickler resolving only numpy's ndarray reconstruction; anything else is refused."""

    def __init__(self, file, source: Path) -> None:
        super().__init__(file)
        self._source = source
        reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, whatever its module is called

        # Every array constructor a pickle can reach checks the size it would allocate first, so a tiny
        # file naming a huge shape is refused before numpy allocates anything.
        def checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
            _check_allocation(shape, "b", source)
            return reconstruct(np.ndarray if subtype is guard else subtype, shape, dtype)

        guard = _NdarrayGuard(source)
        self._allowed = {
            ("numpy.core.multiarray", "_reconstruct"): checked_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): checked_reconstruct,
            ("numpy", "ndarray"): guard,
            ("numpy", "dtype"): np.dtype,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise WeightsError(
                f"refusing to unpickle {module}.{name} from {self._source}: an emotion prior may only hold "
                "numpy arrays; the file is not a DICE-Talk prior (or was tampered with)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise WeightsError(f"refusing to unpickle a persistent id from {self._source}")


def _read_npy_object(path: Path) -> Any:
    """The object stored in a ``.npy`` file, unpickling object arrays with the allow-list unpickler."""
    size = path.stat().st_size
    if size > MAX_PRIOR_BYTES:
        raise WeightsError(
            f"{path}: {size} bytes is too big for an emotion prior (limit {MAX_PRIOR_BYTES} bytes)"
        )
    with path.open("rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise WeightsError(f"{path}: unsupported .npy format version {version}")
            if not dtype.hasobject:
                _check_allocation(shape, dtype, path)
                f.seek(0)
                return np.lib.format.read_array(f, allow_pickle=False)
            obj = _AllowListUnpickler(f, path).load()
        except (ValueError, EOFError, pickle.UnpicklingError, TypeError, IndexError) as err:
            raise WeightsError(f"{path}: not a readable .npy emotion prior ({err}); re-download it") from err
    if not isinstance(obj, np.ndarray) or obj.shape != shape:
        raise WeightsError(f"{path}: pickled payload does not match its .npy header {shape}")
    return obj.item() if obj.shape == () else obj


def load_emotion_prior(path: Path) -> np.ndarray:
    """Read a release emotion prior without running pickled code.

    The release file is a 0-d object array holding ``{'mu': float32 (1, 256)}`` (compat §1.6); a plain float
    ``.npy`` holding the vector is accepted too.

    Returns:
        ``(1, D)`` float32 array.

    Raises:
        WeightsError: disallowed pickle content, no ``'mu'`` entry, non-float, non-finite or not one vector.
    """
    obj = _read_npy_object(path)
    if isinstance(obj, dict):
        if "mu" not in obj:
            raise WeightsError(f"{path}: the prior dict has no 'mu' entry (keys: {sorted(map(str, obj))})")
        obj = obj["mu"]
    if not isinstance(obj, np.ndarray) or not np.issubdtype(obj.dtype, np.floating):
        raise WeightsError(f"{path}: 'mu' must be a float array, found {type(obj).__name__}")
    if obj.size == 0 or obj.size != obj.shape[-1]:
        raise WeightsError(f"{path}: 'mu' must be one vector of shape (1, D), found shape {obj.shape}")
    if not np.isfinite(obj).all():
        raise WeightsError(f"{path}: 'mu' holds NaN or infinite values")
    return np.ascontiguousarray(obj.reshape(1, -1), dtype=np.float32)


def find_emotion_folder(src: Path, emotions_dir: Path | None = None) -> Path:
    """``emotions_dir``, else the first of ``src/emo``, ``src/examples/emo``, ``src/DICE-Talk/emo``,
    ``src/../examples/emo`` that exists (the release keeps its priors in its repository's examples/emo)."""
    if emotions_dir is not None:
        if not Path(emotions_dir).is_dir():
            raise WeightsError(
                f"emotions folder {emotions_dir} does not exist; pass the folder of the .npy priors"
            )
        return Path(emotions_dir)
    candidates = [
        src / "emo",
        src / "examples" / "emo",
        src / RELEASE_DIR / "emo",
        src.parent / "examples/emo",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise WeightsError(
        f"no emotion priors in {', '.join(map(str, candidates))}; pass --emotions-dir with the release's "
        "examples/emo folder"
    )


def load_emotion_priors(folder: Path, names: Iterable[str], dim: int) -> dict[str, tuple[np.ndarray, Path]]:
    """``<name>.npy`` of every name in ``folder`` → ``((1, dim) float32 prior, source path)``.

    Raises:
        WeightsError: listing the missing priors, or naming an unsafe / malformed / mis-sized one.
    """
    names = list(names)
    missing = [n for n in names if not (folder / f"{n}.npy").is_file()]
    if missing:
        raise WeightsError(
            f"{folder}: missing emotion prior(s) {', '.join(missing)} (.npy); use the release's "
            "examples/emo folder or pass --emotions-dir"
        )
    extra = sorted(p.stem for p in folder.glob("*.npy") if p.stem not in names)
    if extra:
        logger.warning("%s: ignoring priors outside the release set: %s", folder, ", ".join(extra))
    priors = {}
    for name in names:
        path = folder / f"{name}.npy"
        mu = load_emotion_prior(path)
        if mu.shape[1] != dim:
            raise WeightsError(f"{path}: prior has {mu.shape[1]} values, the emotion model expects {dim}")
        priors[name] = (mu, path)
    return priors
