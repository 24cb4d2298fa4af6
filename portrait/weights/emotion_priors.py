"""The release's pickled emotion priors, read without running pickled code (compat §1.6, 10).

``examples/emo/<emotion>.npy`` are 0-d object arrays: they are parsed with numpy's header readers and an
allow-list unpickler that resolves nothing but numpy's array reconstruction, every array size checked
against :data:`MAX_PRIOR_BYTES` before it is allocated (:func:`load_emotion_prior`).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait.errors import InputError, WeightsError
from portrait.weights.release import RELEASE_DIR

logger = logging.getLogger(__name__)

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


def load_prior_file(path: Path) -> torch.Tensor:
    """A custom emotion prior (1, D): safetensors holding ``mu``, or a release ``.npy`` (safe reader)."""
    if not path.is_file():
        raise InputError(f"emotion prior file {path} does not exist")
    if path.suffix.lower() == ".npy":
        prior = torch.from_numpy(load_emotion_prior(path))
    else:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises several types for a corrupt file
            raise InputError(f"cannot read emotion prior {path}: {err}") from err
        if "mu" not in tensors:
            raise InputError(f"emotion prior {path} has no tensor 'mu'")
        prior = tensors["mu"]
    return prior.float().reshape(1, -1)
