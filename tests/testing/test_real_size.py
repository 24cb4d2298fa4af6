"""The release's true sizes (portrait.testing.real_configs) checked on the meta device, and the tree writer
holding one component at a time (what keeps a true-size tree within 1× its largest component)."""

from __future__ import annotations

import weakref
from pathlib import Path

import pytest
import torch

from portrait.testing import components, trees
from portrait.testing.components import empty_component, random_component, randomize_
from portrait.testing.configs import classifier_shapes, tiny_configs, tree_configs


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_true_size_unet_has_the_release_parameter_counts() -> None:
    real = tree_configs("real")
    unet, svd = empty_component("unet", real), empty_component("svd_unet", real)
    # compat §4.1 / §4.7 [RUN]: the SVD-XT UNet, and with the DICE-Talk adapters
    assert (_count(svd), len(svd.state_dict())) == (1_524_623_082, 1428)
    assert (_count(unet), len(unet.state_dict())) == (1_626_859_242, 1556)
    assert unet.device.type == "meta"


def test_true_size_encoders_are_svd_xt_and_whisper_tiny() -> None:
    real = tree_configs("real")
    vae = empty_component("vae", real)
    assert list(vae.config.block_out_channels) == [128, 256, 512, 512]  # not the class defaults
    assert vae.config.scaling_factor == 0.18215 and 97e6 < _count(vae) < 98e6
    clip = empty_component("image_encoder", real)
    assert 630e6 < _count(clip) < 635e6 and clip.config.projection_dim == 1024  # ViT-H/14: 632 M
    whisper = empty_component("audio_encoder", real)
    assert 37e6 < _count(whisper) < 38e6 and whisper.config.d_model == 384  # whisper-tiny: 37.8 M


def test_true_size_adapters_are_what_the_converter_infers_from_release_files() -> None:
    from portrait.weights import release_config as rel

    real = tree_configs("real")
    file, whisper = Path("x.pth"), real.audio_encoder

    def state(name: str) -> dict[str, torch.Tensor]:
        return empty_component(name, real).state_dict()

    assert rel.audio_projector_config(state("audio_projector"), file, whisper) == real.audio_projector
    assert rel.emotion_model_config(state("emotion_model"), file) == real.emotion_model
    inferred = rel.pose_guider_config(state("pose_guider"), file)
    assert {**inferred, "block_out_channels": tuple(inferred["block_out_channels"])} == real.pose_guider
    assert classifier_shapes(real.emotion_classifier)["classifier.fc1.weight"] == (512, 1280)
    assert empty_component("interpolation", real).config.channels == 90


@pytest.mark.parametrize("name", ["unet", "image_encoder", "pose_guider"])
def test_built_on_meta_equals_built_then_randomised(name: str) -> None:
    tiny = tiny_configs()
    with torch.random.fork_rng(devices=[]):
        built = components.build_component(name, tiny)
    fp16 = components.COMPONENTS[name][1]
    expected = randomize_(built, 3, name, fp16_values=fp16).state_dict()
    got = random_component(name, tiny, seed=3).state_dict()
    assert got.keys() == expected.keys()
    assert [k for k in got if not torch.equal(got[k], expected[k])] == []


@pytest.mark.parametrize("layout", ["portrait", "dice-talk"])
def test_the_writer_holds_one_component_at_a_time(layout: str, tmp_path: Path, monkeypatch) -> None:
    alive: weakref.WeakSet = weakref.WeakSet()
    most = []

    def tracked(*args, **kwargs):
        module = random_component(*args, **kwargs)
        alive.add(module)
        most.append(len(alive))
        return module

    monkeypatch.setattr(trees, "random_component", tracked)
    trees.write_weights(tmp_path / "t", layout=layout, size="tiny")
    assert len(most) == (8 if layout == "portrait" else 9) and max(most) == 1


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        trees.write_weights(tmp_path / "t", size="huge")


def test_script_flag_asks_for_the_true_sizes(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    calls = []
    monkeypatch.setattr(trees, "write_weights", lambda *a, **k: calls.append((a, k)))
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_weights.py"
    spec = importlib.util.spec_from_file_location("make_tiny_weights", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "t"), "--real-size", "--layout", "dice-talk"]) == 0
    assert calls == [((tmp_path / "t",), {"layout": "dice-talk", "seed": 0, "size": "real"})]
