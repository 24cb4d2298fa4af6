"""AudioProjector, audio windows, Whisper hidden states, EmotionModel and PoseGuider (compat §2, 3, 5, 8)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F
from transformers import WhisperConfig, WhisperModel

from portrait.models.audio import AudioProjector, frame_audio_windows, whisper_hidden_states
from portrait.models.emotion_model import EmotionBank, EmotionModel, QKVAttention
from portrait.models.pose_guider import PoseGuider

TINY_AUDIO = dict(seq_len=10, blocks=3, channels=16, intermediate_dim=32, output_dim=32, context_tokens=4)
TINY_EMOTION = dict(
    prior_dim=256, dim=32, intermediate_dim=32, context_tokens=4, codebook_size=8, num_heads=8
)
TINY_POSE = dict(
    conditioning_embedding_channels=32, conditioning_channels=3, block_out_channels=(4, 8, 8, 16)
)


def _seeded(cls, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return cls(**kwargs).eval()


def _randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Overwrite every parameter with N(0, 0.3²) so zero-initialised layers matter too."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


def _mlp(proj: AudioProjector, flat: torch.Tensor) -> torch.Tensor:
    """The reference AudioProjModel written out on an already-flattened input (..., in_dim)."""
    cfg = proj.config
    h = F.relu(F.linear(flat, proj.proj1.weight, proj.proj1.bias))
    h = F.relu(F.linear(h, proj.proj2.weight, proj.proj2.bias))
    h = F.linear(h, proj.proj3.weight, proj.proj3.bias).reshape(
        *flat.shape[:-1], cfg.context_tokens, cfg.output_dim
    )
    return F.layer_norm(h, (cfg.output_dim,), proj.norm.weight, proj.norm.bias, eps=1e-5)


# -------------------------------------------------------------------------------------- real sizes


def _layers(weights: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """``<name>.weight`` of each given shape and ``<name>.bias`` of its first axis."""
    return {
        f"{name}.{p}": shape if p == "weight" else shape[:1]
        for name, shape in weights.items()
        for p in ("weight", "bias")
    }


#: The release's training-only classifier (compat §3): in ``emo_model.pth``, unused at inference.
CLASSIFIER_SHAPES = {"fc1": (512, 1280), "fc2": (256, 512), "fc3": (22, 256)}
AUDIO_SHAPES = _layers(
    {"proj1": (1024, 19200), "proj2": (1024, 1024), "proj3": (32768, 1024), "norm": (1024,)}
)
POSE_SHAPES = _layers(
    {"conv_in": (16, 3, 3, 3)}
    | {
        f"blocks.{i}": (o, c, 3, 3)
        for i, (o, c) in enumerate([(16, 16), (32, 16), (32, 32), (96, 32), (96, 96), (256, 96)])
    }
    | {"conv_out": (320, 256, 3, 3)}
)
EMOTION_SHAPES = {
    **{f"emo_linear.{k}": (v if k != "proj1.weight" else (1024, 256)) for k, v in AUDIO_SHAPES.items()},
    **{
        f"kv_tokens_linear.{k}": (v if k != "proj1.weight" else (1024, 1024)) for k, v in AUDIO_SHAPES.items()
    },
    **_layers({"codebook.fc": (1024, 256), **{f"attention.fc_{n}": (1024, 1024) for n in "qkv"}}),
    "codebook.codebook.weight": (64, 1024),
}


@pytest.mark.parametrize(
    ("cls", "shapes", "params"),
    [
        (AudioProjector, AUDIO_SHAPES, 54_300_672),
        (PoseGuider, POSE_SHAPES, 1_086_480),
        (EmotionModel, EMOTION_SHAPES, 74_860_822 - sum(o * i + o for o, i in CLASSIFIER_SHAPES.values())),
    ],
)
def test_real_size_state_dict_matches_reference(cls, shapes, params):
    with torch.device("meta"):
        model = cls()
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert state == shapes
    assert sum(p.numel() for p in model.parameters()) == params


# ---------------------------------------------------------------------------------- AudioProjector


def test_audio_projector_shapes():
    proj = _seeded(AudioProjector, **TINY_AUDIO)
    assert proj(torch.randn(2, 5, 10, 3, 16)).shape == (2, 5, 4, 32)
    assert proj(torch.randn(10, 3, 16)).shape == (4, 32)


def test_audio_projector_rejects_wrong_shape():
    proj = _seeded(AudioProjector, **TINY_AUDIO)
    with pytest.raises(ValueError, match=r"\(\.\.\., 10, 3, 16\), got \(2, 10, 16, 3\)"):
        proj(torch.randn(2, 10, 16, 3))


def test_audio_projector_flattens_window_then_block_then_channel():
    proj = _seeded(AudioProjector, **TINY_AUDIO)
    x = torch.randn(2, 10, 3, 16)
    flat = torch.empty(2, 10 * 3 * 16)
    for t in range(10):
        for k in range(3):
            for c in range(16):
                flat[:, t * 3 * 16 + k * 16 + c] = x[:, t, k, c]
    torch.testing.assert_close(proj(x), _mlp(proj, flat), rtol=0, atol=1e-6)


def test_audio_projector_unconditional_tokens_are_not_zero():
    proj = _seeded(AudioProjector, **TINY_AUDIO)
    _randomize(proj)
    uncond = proj(torch.zeros(10, 3, 16))
    assert uncond.abs().max() > 0.1
    torch.testing.assert_close(uncond, _mlp(proj, torch.zeros(480)))


# ----------------------------------------------------------------------------------- audio windows


def _numbered_tokens(total: int, blocks: int = 2, channels: int = 3) -> torch.Tensor:
    """Token t holds the value t + 1 everywhere (0 is reserved for padding)."""
    return (
        (torch.arange(total, dtype=torch.float32) + 1)[:, None, None].expand(total, blocks, channels).clone()
    )


def _window_ids(windows: torch.Tensor) -> list[list[int]]:
    """Token index (−1 for padding) of every slot of every frame window."""
    return (windows[:, :, 0, 0] - 1).long().tolist()


def test_frame_audio_windows_slicing():
    audio_len = 7  # 14 tokens kept; hidden holds 20, the last 6 must be dropped
    windows = frame_audio_windows(_numbered_tokens(20), audio_len, num_frames=4)
    assert windows.shape == (4, 10, 2, 3)
    ids = _window_ids(windows)
    assert ids[0] == [-1, -1, -1, -1, 0, 1, 2, 3, 4, 5]
    for i, row in enumerate(ids):
        assert row == [t if 0 <= t < 14 else -1 for t in range(4 * i - 4, 4 * i + 6)]
    assert ids[2] == list(range(4, 14))  # last frame of N = audio_len // 2 = 3 is fully in range
    assert ids[3] == [8, 9, 10, 11, 12, 13, -1, -1, -1, -1]  # tokens beyond 2·audio_len are padding
    # every slot of a window carries the same token across blocks and channels
    torch.testing.assert_close(windows, windows[:, :, :1, :1].expand_as(windows))


def test_frame_audio_windows_single_frame():
    windows = frame_audio_windows(_numbered_tokens(4), audio_len=2, num_frames=1)
    assert windows.shape == (1, 10, 2, 3)
    assert _window_ids(windows) == [[-1, -1, -1, -1, 0, 1, 2, 3, -1, -1]]


def test_frame_audio_windows_other_step():
    windows = frame_audio_windows(_numbered_tokens(12), audio_len=6, num_frames=2, units_per_frame=3)
    assert _window_ids(windows)[1] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]  # stride 2·3 = 6 tokens


@pytest.mark.parametrize(
    ("total", "audio_len", "num_frames", "message"),
    [
        (20, 7, 0, "num_frames >= 1"),
        (13, 7, 3, "needs 14 hidden-state tokens, got 13"),
        (20, 7, 5, "5 frames need 26 padded tokens, only 24"),
    ],
)
def test_frame_audio_windows_errors(total, audio_len, num_frames, message):
    with pytest.raises(ValueError, match=message):
        frame_audio_windows(_numbered_tokens(total), audio_len, num_frames)


# ----------------------------------------------------------------------------------------- Whisper


@pytest.fixture(scope="module")
def tiny_whisper_encoder():
    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=16,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_mel_bins=80,
        max_source_positions=1500,
    )
    return WhisperModel(config).encoder.eval()


@torch.no_grad()
def test_whisper_encoder_hidden_states_are_stem_layers_and_final_norm(tiny_whisper_encoder):
    """What compat §2.1 relies on in transformers: layers + 1 states, the last after the final LayerNorm."""
    enc = tiny_whisper_encoder
    mel = torch.randn(1, 80, 3000)
    states = enc(mel, output_hidden_states=True).hidden_states
    assert len(states) == enc.config.encoder_layers + 1
    stem = F.gelu(enc.conv2(F.gelu(enc.conv1(mel)))).permute(0, 2, 1) + enc.embed_positions.weight
    torch.testing.assert_close(states[0], stem)
    torch.testing.assert_close(states[1], enc.layers[0](states[0], None))  # before the final LayerNorm
    torch.testing.assert_close(states[2], enc.layer_norm(enc.layers[1](states[1], None)))
    assert not torch.allclose(states[2], enc.layers[1](states[1], None), atol=1e-3)


def test_whisper_hidden_states_two_slices(tiny_whisper_encoder):
    enc = tiny_whisper_encoder
    mel = torch.randn(1, 80, 6000)
    hidden = whisper_hidden_states(enc, mel)
    assert hidden.shape == (3000, 3, 16)
    assert not hidden.requires_grad
    with torch.no_grad():
        for k in range(2):
            states = enc(mel[..., 3000 * k : 3000 * (k + 1)], output_hidden_states=True).hidden_states
            for j in range(3):
                torch.testing.assert_close(hidden[1500 * k : 1500 * (k + 1), j], states[j][0])
    # positional embeddings restart at every slice: the same mel twice gives the same tokens twice
    twice = whisper_hidden_states(enc, torch.cat([mel[..., :3000], mel[..., :3000]], dim=-1))
    torch.testing.assert_close(twice[:1500], twice[1500:])


@pytest.mark.parametrize("shape", [(1, 80, 4500), (1, 80, 0), (2, 80, 3000), (1, 40, 3000), (80, 3000)])
def test_whisper_hidden_states_rejects_bad_mel(tiny_whisper_encoder, shape):
    with pytest.raises(ValueError, match="whisper_hidden_states expects"):
        whisper_hidden_states(tiny_whisper_encoder, torch.zeros(shape))


# ----------------------------------------------------------------------------------------- emotion


def _reference_attention(att: QKVAttention, q_in: torch.Tensor, kv_in: torch.Tensor) -> torch.Tensor:
    """Spec 3 step 4 with an explicit loop over heads (channels head-major)."""
    q, k, v = att.fc_q(q_in), att.fc_k(kv_in), att.fc_v(kv_in)
    hd = q.shape[-1] // att.num_heads
    outs = []
    for h in range(att.num_heads):
        sl = slice(h * hd, (h + 1) * hd)
        weights = torch.softmax(q[..., sl] @ k[..., sl].transpose(-1, -2) / math.sqrt(hd), dim=-1)
        outs.append(weights @ v[..., sl])
    return torch.cat(outs, dim=-1)


def _tiny_emotion(**overrides) -> EmotionModel:
    model = _seeded(EmotionModel, **{**TINY_EMOTION, **overrides})
    _randomize(model)
    return model


@torch.no_grad()
def test_emotion_non_retrieval_matches_hand_written_algorithm():
    model = _tiny_emotion()
    prior = torch.randn(3, 256)
    out = model(prior)
    assert out.shape == (3, 4, 32)
    codes = model.codebook.codebook.weight
    kv = torch.cat([_mlp(model.kv_tokens_linear, codes[e]) for e in range(8)], dim=0)[None]  # (1, 32, 32)
    queries = _mlp(model.emo_linear, prior)
    expected = _reference_attention(model.attention, queries, kv.expand(3, -1, -1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.kv_tokens(), kv, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_emotion_non_retrieval_ignores_codebook_fc_and_accepts_cached_kv():
    model = _tiny_emotion()
    prior = torch.randn(2, 256)
    out = model(prior)
    torch.testing.assert_close(model(prior, kv=model.kv_tokens()), out)
    model.codebook.fc.weight.mul_(5.0)
    torch.testing.assert_close(model(prior), out)
    with pytest.raises(ValueError, match="retrieval=False"):
        model(prior, retrieval=True, kv=model.kv_tokens())


@torch.no_grad()
def test_emotion_retrieval_uses_nearest_code():
    model = _tiny_emotion()
    target = torch.randn(32)
    model.codebook.fc.weight.zero_()
    model.codebook.fc.bias.copy_(target)  # z = target for every prior
    codes = torch.randn(8, 32) * 3 + 10.0  # all far from target ...
    codes[5] = target + 0.01  # ... except entry 5
    model.codebook.codebook.weight.copy_(codes)
    prior = torch.randn(2, 256)
    _, index = model.codebook.quantize(model.codebook.fc(prior))
    assert index.tolist() == [5, 5]
    out = model(prior, retrieval=True)
    kv = _mlp(model.kv_tokens_linear, codes[5]).expand(2, -1, -1)
    expected = _reference_attention(model.attention, _mlp(model.emo_linear, prior), kv)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out, model(prior, retrieval=False), atol=1e-4)
    configured = _tiny_emotion(retrieval=True)
    configured.load_state_dict(model.state_dict())
    torch.testing.assert_close(configured(prior), out)


def test_quantize_matches_brute_force_and_is_straight_through():
    torch.manual_seed(3)
    bank = EmotionBank(prior_dim=4, dim=6, codebook_size=10)
    with torch.no_grad():
        bank.codebook.weight.normal_()
    z = torch.randn(7, 6, requires_grad=True)
    q_st, index = bank.quantize(z)
    assert index.shape == (7,) and index.dtype == torch.int64
    assert index.tolist() == torch.cdist(z.detach(), bank.codebook.weight.detach()).argmin(dim=1).tolist()
    torch.testing.assert_close(q_st, bank.codebook.weight[index], rtol=0, atol=1e-6)
    q_st.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_qkv_attention_broadcasts_kv_batch():
    torch.manual_seed(0)
    att = QKVAttention(dim=16, num_heads=4)
    q, kv = torch.randn(3, 5, 16), torch.randn(1, 7, 16)
    out = att(q, kv)
    assert out.shape == (3, 5, 16)
    torch.testing.assert_close(out, att(q, kv.expand(3, -1, -1)))
    torch.testing.assert_close(out, _reference_attention(att, q, kv.expand(3, -1, -1)))
    with pytest.raises(ValueError, match="batch 2 must be 1 or the query batch 3"):
        att(q, torch.randn(2, 7, 16))
    with pytest.raises(ValueError, match="not divisible"):
        QKVAttention(dim=10, num_heads=4)


@torch.no_grad()
def test_emotion_unconditional_tokens_are_not_zero():
    model = _seeded(EmotionModel, **TINY_EMOTION)  # freshly initialised, like the reference before loading
    uncond = model(torch.zeros(1, 256))
    assert uncond.shape == (1, 4, 32)
    assert uncond.abs().max() > 1e-3


def test_emotion_rejects_wrong_prior_shape():
    model = _seeded(EmotionModel, **TINY_EMOTION)
    with pytest.raises(ValueError, match=r"\(B, 256\), got \(1, 1, 1, 256\)"):
        model(torch.zeros(1, 1, 1, 256))


# -------------------------------------------------------------------------------------- PoseGuider


@torch.no_grad()
def test_pose_guider_shapes_zero_init_and_layers():
    guider = _seeded(PoseGuider, **TINY_POSE)
    cond = torch.rand(2, 3, 64, 64)
    out = guider(cond)
    assert out.shape == (2, 32, 8, 8)
    assert torch.count_nonzero(out) == 0  # zero-initialised conv_out
    _randomize(guider)
    h = F.silu(F.conv2d(cond, guider.conv_in.weight, guider.conv_in.bias, padding=1))
    for i, conv in enumerate(guider.blocks):
        h = F.silu(F.conv2d(h, conv.weight, conv.bias, padding=1, stride=1 + i % 2))
    expected = F.conv2d(h, guider.conv_out.weight, guider.conv_out.bias, padding=1)
    torch.testing.assert_close(guider(cond), expected)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(2, 1, 64, 64\)"):
        guider(torch.rand(2, 1, 64, 64))


# ------------------------------------------------------------------------------------- save / load


@pytest.mark.parametrize(
    ("cls", "kwargs", "make_input"),
    [
        (AudioProjector, TINY_AUDIO, lambda: torch.randn(2, 10, 3, 16)),
        (EmotionModel, TINY_EMOTION, lambda: torch.randn(2, 256)),
        (PoseGuider, TINY_POSE, lambda: torch.rand(2, 3, 64, 64)),
    ],
)
@torch.no_grad()
def test_save_pretrained_round_trip(tmp_path, cls, kwargs, make_input):
    model = _seeded(cls, **kwargs)
    _randomize(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    loaded = cls.from_pretrained(tmp_path, low_cpu_mem_usage=False).eval()
    for key, value in kwargs.items():
        assert loaded.config[key] == (list(value) if isinstance(value, tuple) else value)
    x = make_input()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
