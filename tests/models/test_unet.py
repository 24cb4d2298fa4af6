"""PortraitUNet: adapter layout, equivalence with upstream diffusers, condition routing, save/load."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0

from portrait.models.attention import window_mean_context
from portrait.models.unet import PortraitUNet
from portrait.testing.configs import tiny_unet_config

B, F, H = 3, 5, 8


@pytest.fixture(scope="module")
def unet() -> PortraitUNet:
    torch.manual_seed(0)
    return PortraitUNet(**tiny_unet_config()).eval()


def _inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(B, F, 8, H, H, generator=gen)
    clip = torch.randn(B, 1, 32, generator=gen)
    ids = torch.tensor([[12.5, 8.0, 16.0]]).repeat(B, 1)
    tokens = tuple(torch.randn(B * F, 4, 32, generator=gen) for _ in range(2))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    return sample, torch.tensor(1.2), clip, ids, tokens, mask


def test_adapter_processors_installed_on_every_cross_attention(unet):
    procs = unet.attn_processors
    cross = [n for n in procs if n.endswith("attn2.processor")]
    assert cross and all(isinstance(procs[n], IPAdapterAttnProcessor2_0) for n in cross)
    assert all(isinstance(procs[n], AttnProcessor2_0) for n in procs if n.endswith("attn1.processor"))
    assert any("temporal_transformer_blocks" in n for n in cross) and any(
        ".transformer_blocks" in n for n in cross
    )
    ip_keys = [k for k in unet.state_dict() if ".processor.to_" in k]
    assert len(ip_keys) == len(cross) * 4  # to_k_ip.{0,1}, to_v_ip.{0,1}
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.1.weight" in ip_keys


def test_adapter_weights_start_as_copies_of_to_k_and_to_v(unet):
    attn = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    for stream in range(2):
        assert torch.equal(attn.processor.to_k_ip[stream].weight, attn.to_k.weight)
        assert torch.equal(attn.processor.to_v_ip[stream].weight, attn.to_v.weight)


def test_real_size_key_count_matches_release_unet_pth():
    with torch.device("meta"):
        model = PortraitUNet()
    state = model.state_dict()
    assert len(state) == 1556  # 1428 SVD keys + 128 adapter keys (compat §4.7)
    assert sum(t.numel() for t in state.values()) == 1_626_859_242


def test_neutral_adapters_equal_upstream_unet(unet):
    """Adapter scales 0, no pose: only the window-mean temporal context differs, and it is a no-op here."""
    upstream = UNetSpatioTemporalConditionModel(**tiny_unet_config()).eval()
    missing, unexpected = upstream.load_state_dict(unet.state_dict(), strict=False)
    assert not missing and all(".processor." in k for k in unexpected)
    sample, t, clip, ids, tokens, mask = _inputs()
    with torch.no_grad():
        expected = upstream(sample, t, clip, ids).sample
        plain = unet(sample, t, clip, ids).sample
        unet.set_adapter_scales((0.0, 0.0))
        try:
            neutral = unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=mask).sample
        finally:
            unet.set_adapter_scales((1.0, 1.0))
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(neutral, expected, atol=1e-5, rtol=1e-5)


def test_each_condition_changes_the_output(unet):
    sample, t, clip, ids, tokens, mask = _inputs()
    pose = torch.randn(1, 1, 32, H, H)
    with torch.no_grad():
        base = unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=mask, pose_features=pose).sample
        variants = {
            "audio": unet(
                sample,
                t,
                clip,
                ids,
                adapter_tokens=(tokens[0] + 1, tokens[1]),
                face_mask=mask,
                pose_features=pose,
            ),
            "emotion": unet(
                sample,
                t,
                clip,
                ids,
                adapter_tokens=(tokens[0], tokens[1] + 1),
                face_mask=mask,
                pose_features=pose,
            ),
            "mask": unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=1 - mask, pose_features=pose),
            "pose": unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=mask, pose_features=pose * 2),
        }
    for name, out in variants.items():
        assert (out.sample - base).abs().max() > 1e-4, name


def test_pose_features_broadcast_equals_explicit_per_frame(unet):
    sample, t, clip, ids, tokens, mask = _inputs()
    pose = torch.randn(1, 1, 32, H, H)
    with torch.no_grad():
        broadcast = unet(
            sample, t, clip, ids, adapter_tokens=tokens, face_mask=mask, pose_features=pose
        ).sample
        explicit = unet(
            sample,
            t,
            clip,
            ids,
            adapter_tokens=tokens,
            face_mask=mask,
            pose_features=pose.expand(B, F, -1, -1, -1).clone(),
        ).sample
    torch.testing.assert_close(broadcast, explicit, atol=0, rtol=0)


def test_masked_streams_do_not_reach_positions_outside_a_zero_mask(unet):
    """With an all-zero mask the spatial streams vanish; only the temporal (unmasked) streams act."""
    sample, t, clip, ids, tokens, _ = _inputs()
    zero = torch.zeros(1, 1, 64, 64)
    with torch.no_grad():
        a = unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=zero).sample
        b = unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=zero * 2).sample
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_window_mean_context_layout():
    ctx = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).reshape(2 * 3, 1, 2)  # B=2, F=3, T=1, D=2
    out = window_mean_context(ctx, batch=2, repeats=4)
    assert out.shape == (8, 1, 2)
    torch.testing.assert_close(out[0], ctx[:3].mean(0))
    torch.testing.assert_close(out[4], ctx[3:].mean(0))
    torch.testing.assert_close(out[3], out[0])


def test_save_load_round_trip(unet, tmp_path):
    unet.save_pretrained(tmp_path, safe_serialization=True)
    loaded = PortraitUNet.from_pretrained(tmp_path, low_cpu_mem_usage=False).eval()
    assert list(loaded.config.adapter_scales) == list(unet.config.adapter_scales)
    sample, t, clip, ids, tokens, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(sample, t, clip, ids, adapter_tokens=tokens, face_mask=mask).sample,
            unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=mask).sample,
            atol=0,
            rtol=0,
        )


def test_set_adapter_scales_checks_length(unet):
    with pytest.raises(ValueError, match="adapter scales"):
        unet.set_adapter_scales((1.0,))


def test_compact_temporal_context_and_cached_mask_match_the_reference_routing(unet):
    sample, t, clip, ids, tokens, mask = _inputs()
    pose = torch.randn(1, 1, 32, H, H)
    with torch.no_grad():
        ref = unet(sample, t, clip, ids, adapter_tokens=tokens, face_mask=mask, pose_features=pose).sample
        fast = unet(
            sample,
            t,
            clip,
            ids,
            adapter_tokens=tokens,
            face_mask=mask,
            pose_features=pose,
            compact_temporal_context=True,
        ).sample
        # a different mask object must not hit the cached downsample of the previous one
        other = unet(
            sample,
            t,
            clip,
            ids,
            adapter_tokens=tokens,
            face_mask=1 - mask,
            pose_features=pose,
            compact_temporal_context=True,
        ).sample
        ref_other = unet(
            sample, t, clip, ids, adapter_tokens=tokens, face_mask=1 - mask, pose_features=pose
        ).sample
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other, ref_other, atol=1e-5, rtol=1e-5)
