"""Strict loading of a weights tree: root resolution, named errors for bad tensors, dtype/device placement."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from portrait.constants import PRECISIONS, RUNTIME_DTYPES, STORE_DTYPES
from portrait.errors import ConfigError, WeightsError
from portrait.layout import OPTIONAL_COMPONENTS
from portrait.weights.load import (
    WEIGHTS_ENV,
    check_tree,
    load_component,
    load_emotion_bank,
    load_pipeline,
    resolve_weights_root,
    verify_manifest,
)

POSE = Path("pose_guider") / "diffusion_pytorch_model.safetensors"


def test_root_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    assert resolve_weights_root(None) == Path("weights")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "env"))
    assert resolve_weights_root(None) == tmp_path / "env"
    assert resolve_weights_root(tmp_path / "arg") == tmp_path / "arg"


def test_pipeline_loads_strictly_with_the_reference_precision_map(tiny_weights):
    pipe = load_pipeline(tiny_weights, dtype=torch.float16)
    assert pipe.unet.dtype == pipe.vae.dtype == pipe.pose_guider.dtype == torch.float16
    assert pipe.image_encoder.dtype == torch.float16
    for name in ("audio_projector", "emotion_model", "audio_encoder"):  # fp32 in the reference (compat §11)
        assert next(getattr(pipe, name).parameters()).dtype == torch.float32
    assert not any(p.is_meta for p in pipe.unet.parameters())


def _corrupt(tiny_weights: Path, tmp_path: Path, edit) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(tiny_weights, root)
    tensors = load_file(str(root / POSE))
    edit(tensors)
    save_file(tensors, str(root / POSE))
    return root


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda t: t.pop("conv_out.weight"), "missing: conv_out.weight"),
        (lambda t: t.update(extra=torch.zeros(1)), "unexpected: extra"),
        (lambda t: t.update({"conv_in.bias": torch.zeros(5)}), r"wrong shape: conv_in.bias \(5,\)"),
    ],
)
def test_bad_tensor_is_a_weights_error_naming_file_and_key(tiny_weights, tmp_path, edit, fragment):
    root = _corrupt(tiny_weights, tmp_path, edit)
    with pytest.raises(WeightsError, match=fragment) as info:
        load_component("pose_guider", root)
    assert "pose_guider" in str(info.value)


def test_missing_files_and_manifest_mismatch_are_named(tiny_weights, tmp_path):
    root = tmp_path / "tree"
    shutil.copytree(tiny_weights, root)
    (root / "vae" / "config.json").unlink()
    with pytest.raises(WeightsError, match="vae/config.json"):
        check_tree(root)
    with pytest.raises(WeightsError, match="does not exist"):
        check_tree(tmp_path / "nowhere")
    (root / "emotions" / "sad.safetensors").write_bytes(b"changed")
    assert set(verify_manifest(root)) == {"vae/config.json", "emotions/sad.safetensors"}


def test_emotion_bank(tiny_weights):
    bank = load_emotion_bank(tiny_weights)
    assert sorted(bank) == ["angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised"]
    assert all(v.shape == (1, 256) and v.dtype == torch.float32 for v in bank.values())


def test_precision_names_map_to_torch_dtypes():
    from portrait.weights.load import torch_dtype

    assert [torch_dtype(name) for name in PRECISIONS] == [torch.float16, torch.bfloat16, torch.float32]
    assert RUNTIME_DTYPES == ("auto", *PRECISIONS) and set(STORE_DTYPES) <= set(PRECISIONS)
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        torch_dtype("fp8")


def test_has_component_looks_for_the_config_file(tmp_path):
    from portrait.weights.load import has_component

    assert not any(has_component(tmp_path, comp.name) for comp in OPTIONAL_COMPONENTS)
    (tmp_path / "landmark_guider").mkdir()
    assert not has_component(tmp_path, "landmark_guider")  # a folder alone is no component
    (tmp_path / "landmark_guider" / "config.json").write_text("{}")
    assert has_component(tmp_path, "landmark_guider") and not has_component(tmp_path, "interpolation")
    with pytest.raises(KeyError, match="unknown component"):
        has_component(tmp_path, "nope")


_CAST_LOAD = """
import resource, sys, torch
from portrait.weights.load import read_state

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

before = peak()
state = read_state(sys.argv[1], "cpu", getattr(torch, sys.argv[2]))
assert all(v.dtype == getattr(torch, sys.argv[2]) for v in state.values())
print(peak() - before)
"""


def test_a_cast_load_holds_the_model_and_a_tensor_not_the_file_and_the_model(tmp_path):
    """A 256 MiB float32 file loaded as float16 grows the process by the 128 MiB model and about one 32 MiB
    tensor: the file is read tensor by tensor (``pread``), not mapped whole beside the cast copies (that
    grew it by ≈ 390 MiB here, and peaked at 1.9× the model loading the true-size UNet in float16)."""
    import subprocess
    import sys

    path = tmp_path / "big.safetensors"
    save_file({f"w{i}": torch.ones(2**23) for i in range(8)}, str(path))  # 8 × 32 MiB of float32
    out = subprocess.run(
        [sys.executable, "-c", _CAST_LOAD, str(path), "float16"], capture_output=True, text=True, check=True
    )
    grown = float(out.stdout.strip())
    assert grown < 128 + 2 * 32, f"loading a 128 MiB model grew the process by {grown:.0f} MiB"


def test_pipeline_without_the_encoders_a_cache_replaces(tiny_weights):
    pipe = load_pipeline(tiny_weights, skip=("audio_encoder", "vae", "image_encoder"))
    assert pipe.vae is None and pipe.image_encoder is None and pipe.audio_encoder is None
    assert pipe.unet is not None and pipe.emotion_model is not None
