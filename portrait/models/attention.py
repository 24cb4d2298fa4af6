"""Audio/emotion adapter attention for the spatio-temporal UNet (DICE-Talk, spec sections 4.3, 4.5, 4.6).

Every cross-attention (``attn2``, spatial and temporal) of the UNet gets diffusers'
:class:`~diffusers.models.attention_processor.IPAdapterAttnProcessor2_0` with two token streams
(index 0 = audio, index 1 = emotion). The spatial ones are masked by the bicubic-downsampled face mask, the
temporal ones are not, and the temporal context is the per-window mean of the per-frame context.

This module holds the small value that carries those conditions through diffusers' blocks
(:class:`AdapterContext`) and the pure functions that shape it; the processors themselves are diffusers'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import AttnProcessor2_0, IPAdapterAttnProcessor2_0
from torch import nn


@dataclass(frozen=True)
class AdapterContext:
    """Cross-attention conditions of one UNet call.

    Attributes:
        clip: (B·F, T0, D) per-frame image context (T0 = 1 CLIP token).
        streams: per-frame adapter tokens, one (B·F, T, D) tensor per stream (audio, emotion).
        face_mask: (1, 1, H, W) face-region mask in [0, 1] at image resolution, or ``None`` for no mask.
    """

    clip: torch.Tensor
    streams: tuple[torch.Tensor, ...]
    face_mask: torch.Tensor | None = None

    def spatial(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Context tuple for the spatial ``attn2``: (clip, [stream (B·F, 1, T, D), ...]) when masked."""
        if self.face_mask is None:
            return self.clip, list(self.streams)
        return self.clip, [s.unsqueeze(1) for s in self.streams]

    def spatial_kwargs(self) -> dict[str, list[torch.Tensor]]:
        """``cross_attention_kwargs`` for the spatial block: the face mask once per stream."""
        if self.face_mask is None or not self.streams:
            return {}
        return {"ip_adapter_masks": [self.face_mask] * len(self.streams)}

    def temporal(self, batch: int, tokens_per_frame: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Context tuple for the temporal ``attn2``: window means repeated for every spatial position."""
        return (
            window_mean_context(self.clip, batch, tokens_per_frame),
            [window_mean_context(s, batch, tokens_per_frame) for s in self.streams],
        )


def window_mean_context(context: torch.Tensor, batch: int, repeats: int) -> torch.Tensor:
    """Mean over the frames of each window, repeated for the temporal attention's batch layout.

    The reference's ``spatial2time`` (spec 4.3 step 1): (B·F, T, D) → (B, F, T, D) → mean over F →
    repeated ``repeats`` (= h·w) times → (B·h·w, T, D), batch-major.

    Args:
        context: (B·F, T, D) per-frame tokens.
        batch: B, the number of videos in the call.
        repeats: h·w, the number of spatial positions at this resolution.
    """
    tokens, dim = context.shape[-2:]
    mean = context.reshape(batch, -1, tokens, dim).mean(dim=1, keepdim=True)
    return mean.expand(batch, repeats, tokens, dim).reshape(batch * repeats, tokens, dim)


def adapter_processors(
    unet: nn.Module, cross_attention_dim: int, scales: tuple[float, ...], tokens: tuple[int, ...]
) -> dict[str, nn.Module]:
    """Processors for every attention of ``unet``: plain SDPA on ``attn1``, 2-stream adapters on ``attn2``.

    The adapter projections start as copies of the attention's own ``to_k`` / ``to_v`` (the reference's
    initialisation, spec 4.5); trained weights are loaded over them.
    """
    processors: dict[str, nn.Module] = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            processors[name] = AttnProcessor2_0()
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attention.to_k.out_features
        proc = IPAdapterAttnProcessor2_0(hidden, cross_attention_dim, num_tokens=list(tokens), scale=list(scales))
        proc.to(dtype=attention.to_k.weight.dtype, device=attention.to_k.weight.device)
        with torch.no_grad():
            for k_ip, v_ip in zip(proc.to_k_ip, proc.to_v_ip):
                k_ip.weight.copy_(attention.to_k.weight)
                v_ip.weight.copy_(attention.to_v.weight)
        processors[name] = proc
    return processors
