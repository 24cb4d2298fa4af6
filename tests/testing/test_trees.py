"""Tiny seeded weight trees (portrait.testing): determinism, completeness, non-trivial weights, layouts."""

from __future__ import annotations

import json
import pickletools
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from portrait.layout import COMPONENTS, EMOTIONS_DIR, MANIFEST_FILE, RELEASE_EMOTIONS
from portrait.testing.configs import TINY_CLASSIFIER_SHAPES
from portrait.testing.trees import write_tiny_weights


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(portrait_tree: Path, tmp_path: Path) -> None:
    again = _files(write_tiny_weights(tmp_path / "again", layout="portrait", seed=0))
    first = _files(portrait_tree)
    assert again.keys() == first.keys()
    assert [k for k in first if first[k] != again[k]] == []


def test_other_seed_gives_other_weights(portrait_tree: Path, tmp_path: Path) -> None:
    other = write_tiny_weights(tmp_path / "other", layout="portrait", seed=1)
    name = "pose_guider/diffusion_pytorch_model.safetensors"
    a, b = load_file(portrait_tree / name), load_file(other / name)
    assert not torch.equal(a["conv_out.weight"], b["conv_out.weight"])


def test_release_layout_is_deterministic(release_tree: Path, tmp_path: Path) -> None:
    again = _files(write_tiny_weights(tmp_path / "again", layout="dice-talk", seed=0))
    first = _files(release_tree)
    assert len([k for k in first if k.endswith((".safetensors", ".npy", ".pth"))]) == 4 + 8 + 4
    assert again.keys() == first.keys()
    assert [k for k in first if first[k] != again[k]] == []


def test_portrait_tree_has_every_component_and_a_valid_manifest(portrait_tree: Path) -> None:
    for comp in COMPONENTS:
        assert (portrait_tree / comp.name / comp.config_file).is_file(), comp.name
        if comp.weights_file:
            assert (portrait_tree / comp.name / comp.weights_file).is_file(), comp.name
    assert (portrait_tree / "audio_encoder" / "preprocessor_config.json").is_file()
    manifest = json.loads((portrait_tree / MANIFEST_FILE).read_text())
    assert manifest["format"] == "portrait-weights" and manifest["version"] == 1
    on_disk = {k for k in _files(portrait_tree) if k != MANIFEST_FILE}
    assert set(manifest["files"]) == on_disk
    from portrait.weights.load import verify_manifest

    assert verify_manifest(portrait_tree) == []


def test_portrait_tree_loads_and_gives_non_trivial_outputs(portrait_tree: Path) -> None:
    from portrait.models.audio import AudioProjector
    from portrait.models.emotion_model import EmotionModel
    from portrait.models.pose_guider import PoseGuider

    guider = PoseGuider.from_pretrained(portrait_tree / "pose_guider")
    assert guider.conv_out.weight.abs().sum() > 0  # zero-initialised at construction, randomised here
    out = guider(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 32, 8, 8)
    assert 0.01 < out.std() < 10
    projector = AudioProjector.from_pretrained(portrait_tree / "audio_projector")
    tokens = projector(torch.randn(2, 10, 3, 16))
    assert tokens.shape == (2, 4, 32) and torch.isfinite(tokens).all()
    assert (tokens[0] - tokens[1]).abs().max() > 1e-3
    emotion = EmotionModel.from_pretrained(portrait_tree / "emotion_model")
    prior = load_file(portrait_tree / EMOTIONS_DIR / "happy.safetensors")["mu"]
    cond, uncond = emotion(prior), emotion(torch.zeros_like(prior))
    assert cond.shape == (1, 4, 32)
    assert (cond - uncond).abs().max() > 1e-3


def test_priors_are_zero_mean_with_release_like_spread(portrait_tree: Path) -> None:
    names = sorted(p.stem for p in (portrait_tree / EMOTIONS_DIR).glob("*.safetensors"))
    assert names == sorted(RELEASE_EMOTIONS)
    for name in names:
        mu = load_file(portrait_tree / EMOTIONS_DIR / f"{name}.safetensors")["mu"]
        assert mu.shape == (1, 256) and mu.dtype == torch.float32
        assert abs(float(mu.mean())) < 1e-5
        assert float(mu.std(unbiased=False)) == pytest.approx(0.85, abs=1e-4)


def test_release_tree_matches_the_release_layout(release_tree: Path) -> None:
    unet = torch.load(release_tree / "DICE-Talk" / "unet.pth", map_location="cpu", weights_only=True)
    ip = [k for k in unet if ".processor.to_k_ip." in k or ".processor.to_v_ip." in k]
    assert len(ip) == 32 and len(unet) == 456  # 8 attn2 × {k, v} × 2 streams
    emo = torch.load(release_tree / "DICE-Talk" / "emo_model.pth", map_location="cpu", weights_only=True)
    assert {k: tuple(emo[k].shape) for k in TINY_CLASSIFIER_SHAPES} == TINY_CLASSIFIER_SHAPES
    svd = release_tree / "stable-video-diffusion-img2vid-xt"
    base = load_file(svd / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    assert len(base) == 456 - 32 and not any("_ip." in k for k in base)
    assert {t.dtype for t in base.values()} == {torch.float16}
    assert {t.dtype for t in load_file(svd / "image_encoder" / "model.fp16.safetensors").values()} == {
        torch.float16
    }
    whisper = load_file(release_tree / "whisper-tiny" / "model.safetensors")
    assert all(k.startswith("model.") for k in whisper)
    assert (release_tree / "whisper-tiny" / "preprocessor_config.json").is_file()
    scheduler = json.loads((svd / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["use_karras_sigmas"] is True


def test_release_priors_are_pickled_dicts_referencing_only_numpy(release_tree: Path) -> None:
    path = release_tree / "examples" / "emo" / "sad.npy"
    with path.open("rb") as f:
        assert np.lib.format.read_magic(f) == (1, 0)
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        payload = f.read()
    assert shape == () and dtype == np.dtype(object)
    strings = [arg for op, arg, _ in pickletools.genops(payload) if op.name in ("SHORT_BINUNICODE", "GLOBAL")]
    assert "mu" in strings
    assert {"_reconstruct", "ndarray", "dtype"} <= set(strings)
    assert not {"system", "posix", "builtins", "eval"} & set(strings)


def test_bad_layout_and_non_empty_root_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        write_tiny_weights(tmp_path / "x", layout="sonic")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(ValueError, match="not empty"):
        write_tiny_weights(tmp_path / "full")


def test_script_writes_a_tree(tmp_path: Path) -> None:
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_weights.py"
    spec = importlib.util.spec_from_file_location("make_tiny_weights", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "t"), "--layout", "dice-talk", "--seed", "2"]) == 0
    assert (tmp_path / "t" / "DICE-Talk" / "unet.pth").is_file()
    assert module.main([str(tmp_path / "t")]) == 1  # not empty


def test_writing_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    write_tiny_weights(tmp_path / "t", layout="dice-talk", seed=0)
    assert torch.equal(torch.rand(3), expected)
