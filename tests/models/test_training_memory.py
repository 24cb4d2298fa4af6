"""Training through the UNet never materialises an attention matrix: every attention is SDPA (the face mask
scales the adapter outputs, it is no attention mask), so the fused kernels run, with gradients, also under
gradient checkpointing; checkpointing recomputes exactly."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0
from torch.nn.attention import SDPBackend, sdpa_kernel

from portrait.models.attention import FastAdapterAttnProcessor
from portrait.models.unet import PortraitUNet
from portrait.testing.configs import tiny_unet_config

B, F, H = 1, 4, 8


def _unet(checkpointing: bool) -> PortraitUNet:
    torch.manual_seed(0)
    unet = PortraitUNet(**tiny_unet_config()).requires_grad_(False)
    if checkpointing:
        unet.enable_gradient_checkpointing()
    return unet.train()


def _loss_and_grad(unet: PortraitUNet, compact: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A training call as ``train motion`` makes it: frozen UNet, gradient into the pose features only."""
    gen = torch.Generator().manual_seed(1)
    pose = torch.randn(1, F, 32, H, H, generator=gen).requires_grad_()
    mask = torch.zeros(1, 1, 8 * H, 8 * H)
    mask[..., 16:48, 16:48] = 1
    out = unet(
        torch.randn(B, F, 8, H, H, generator=gen),
        torch.tensor(0.3),
        encoder_hidden_states=torch.randn(B * F, 1, 32, generator=gen),
        added_time_ids=torch.tensor([[12.5, 8.0, 16.0]]),
        adapter_tokens=tuple(torch.randn(B * F, 4, 32, generator=gen) for _ in range(2)),
        face_mask=mask,
        pose_features=pose,
        compact_temporal_context=compact,
    ).sample
    loss = out.square().mean()
    loss.backward()
    return loss.detach(), pose.grad


def test_every_attention_of_the_unet_is_sdpa() -> None:
    procs = _unet(False).attn_processors
    assert all(isinstance(p, (AttnProcessor2_0, FastAdapterAttnProcessor)) for p in procs.values())


@pytest.mark.parametrize("compact", [False, True])
def test_training_step_runs_on_the_fused_kernel_alone(compact: bool) -> None:
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):  # the math fallback (a full matrix) would raise
        loss, grad = _loss_and_grad(_unet(checkpointing=True), compact)
    assert torch.isfinite(loss) and grad.abs().sum() > 0


def test_checkpointing_recomputes_exactly() -> None:
    plain = _loss_and_grad(_unet(checkpointing=False), compact=True)
    checkpointed = _loss_and_grad(_unet(checkpointing=True), compact=True)
    assert torch.equal(plain[0], checkpointed[0]) and torch.equal(plain[1], checkpointed[1])


def _saved_bytes(unet: PortraitUNet) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one training call."""
    saved = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        _loss_and_grad(unet, compact=True)
    return sum(saved)


def test_checkpointing_keeps_a_fraction_of_the_activations() -> None:
    """The spatio-temporal transformers (our forward, not diffusers') are checkpointed too: without that the
    true-size UNet kept its attention and feed-forward activations (12.4 GB for one step at 128² on a CPU)."""
    assert _saved_bytes(_unet(checkpointing=True)) < 0.25 * _saved_bytes(_unet(checkpointing=False))
