"""The learned audio-visual emotion embedder (portrait.models.emotion_embedder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from portrait.models.emotion_embedder import EmotionEmbedder
from portrait.weights.load import load_component

TINY = dict(audio_blocks=2, audio_channels=12, visual_dim=7, dim=16, heads=2, bank_size=8, prior_dim=6)


def _model(**extra) -> EmotionEmbedder:
    torch.manual_seed(0)
    return EmotionEmbedder(**(TINY | extra)).eval()


def test_forward_shapes_with_either_or_both_modalities() -> None:
    model = _model()
    audio, visual = torch.randn(3, 20, 2, 12), torch.randn(3, 5, 7)
    for a, v in ((audio, visual), (audio, None), (None, visual)):
        out = model(a, v)
        assert out["weights"].shape == (3, 8) and out["intensity"].shape == (3,)
        assert out["residual"].shape == (3, 6) and out["log_var"].shape == (3, 6)
        assert torch.allclose(out["weights"].sum(-1), torch.ones(3))
        assert ((out["intensity"] > 0) & (out["intensity"] < 2)).all()
        assert (out["residual"].abs() <= 0.5).all()
    both, audio_only = model(audio, visual), model(audio, None)
    assert not torch.allclose(both["weights"], audio_only["weights"])  # the video matters
    with pytest.raises(ValueError, match="needs audio, video or both"):
        model()
    with pytest.raises(ValueError, match="audio must be"):
        model(torch.randn(3, 20, 3, 12))
    with pytest.raises(ValueError, match="visual must be"):
        model(None, torch.randn(3, 5, 4))


def test_modality_dropout_only_in_training() -> None:
    model = _model(modality_dropout=1.0)
    audio, visual = torch.randn(64, 10, 2, 12), torch.randn(64, 5, 7)
    ref_audio_only, ref_video_only = model(audio, None), model(None, visual)
    model.train()
    torch.manual_seed(1)
    out = model(audio, visual)
    is_audio = torch.isclose(out["weights"], ref_audio_only["weights"], atol=1e-6).all(-1)
    is_video = torch.isclose(out["weights"], ref_video_only["weights"], atol=1e-6).all(-1)
    assert (is_audio | is_video).all() and is_audio.any() and is_video.any()  # every row lost one modality
    model.eval()
    assert torch.equal(model(audio, visual)["weights"], model(audio, visual)["weights"])


def test_one_hot_intensity_one_zero_residual_is_the_bank_entry() -> None:
    bank = torch.randn(8, 6)
    weights = torch.eye(8)[[4, 2]]
    prior = EmotionEmbedder.prior(weights, torch.ones(2), torch.zeros(2, 6), bank, neutral_index=5)
    assert torch.equal(prior[0], bank[4]) and torch.equal(prior[1], bank[2])
    mixed = EmotionEmbedder.prior(
        torch.tensor([[0.0, 0, 0, 0, 0.5, 0, 0.5, 0]]), torch.tensor([1.5]), torch.full((1, 6), 0.1), bank, 5
    )
    n = bank[5]
    expected = n + 1.5 * (0.5 * (bank[4] - n) + 0.5 * (bank[6] - n)) + 0.1
    assert torch.allclose(mixed[0], expected, atol=1e-6)


def test_save_load_round_trip_through_the_weights_layout(tmp_path: Path) -> None:
    model = _model()
    folder = tmp_path / "emotion_embedder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(model.config)))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    loaded = load_component("emotion_embedder", tmp_path)
    assert isinstance(loaded, EmotionEmbedder) and loaded.config.dim == 16
    # What must be equal is equal bit for bit: every tensor of the state dict.
    saved, back = model.state_dict(), loaded.state_dict()
    assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    # The outputs of two separately allocated copies may differ in the last bits (memory alignment picks
    # the kernels): within 1e-6.
    audio, visual = torch.randn(2, 7, 2, 12), torch.randn(2, 3, 7)
    for key, value in model(audio, visual).items():
        torch.testing.assert_close(loaded(audio, visual)[key], value, rtol=1e-6, atol=1e-6)
