"""Audio/emotion adapter attention for the spatio-temporal UNet (DICE-Talk, compat §4.3, 4.5, 4.6).

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
import torch.nn.functional as F
from diffusers.image_processor import IPAdapterMaskProcessor
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
    compact: bool = False

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

    def temporal(
        self, batch: int, repeats: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | CompactTemporalContext:
        """Context for the temporal ``attn2``: window means repeated for every spatial position.

        With ``compact`` the means are not repeated (:class:`CompactTemporalContext`); the adapter
        processor broadcasts them instead (same maths, fewer FLOPs and much less memory).
        """
        if self.compact:
            return CompactTemporalContext(
                window_mean(self.clip, batch), tuple(window_mean(s, batch) for s in self.streams), repeats
            )
        return (
            window_mean_context(self.clip, batch, repeats),
            [window_mean_context(s, batch, repeats) for s in self.streams],
        )


def window_mean_context(context: torch.Tensor, batch: int, repeats: int) -> torch.Tensor:
    """Mean over the frames of each window, repeated for the temporal attention's batch layout.

    The reference's ``spatial2time`` (compat §4.3 step 1): (B·F, T, D) → (B, F, T, D) → mean over F →
    repeated ``repeats`` (= h·w) times → (B·h·w, T, D), batch-major.

    Args:
        context: (B·F, T, D) per-frame tokens.
        batch: B, the number of videos in the call.
        repeats: h·w, the number of spatial positions at this resolution.
    """
    mean = window_mean(context, batch)  # (B, T, D)
    return mean[:, None].expand(batch, repeats, *mean.shape[1:]).reshape(batch * repeats, *mean.shape[1:])


def adapter_processors(
    unet: nn.Module, cross_attention_dim: int, scales: tuple[float, ...], tokens: tuple[int, ...]
) -> dict[str, nn.Module]:
    """Processors for every attention of ``unet``: plain SDPA on ``attn1``, 2-stream adapters on ``attn2``.

    The adapter projections start as copies of the attention's own ``to_k`` / ``to_v`` (the reference's
    initialisation, compat §4.5); trained weights are loaded over them.
    """
    processors: dict[str, nn.Module] = {}
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            processors[name] = AttnProcessor2_0()
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden = attention.to_k.out_features
        proc = FastAdapterAttnProcessor(
            hidden, cross_attention_dim, num_tokens=list(tokens), scale=list(scales)
        )
        proc.to(dtype=attention.to_k.weight.dtype, device=attention.to_k.weight.device)
        with torch.no_grad():
            for k_ip, v_ip in zip(proc.to_k_ip, proc.to_v_ip, strict=False):
                k_ip.weight.copy_(attention.to_k.weight)
                v_ip.weight.copy_(attention.to_v.weight)
        processors[name] = proc
    return processors


@dataclass(frozen=True)
class CompactTemporalContext:
    """Temporal cross-attention context kept per video instead of repeated for every spatial position.

    Attributes:
        clip: (B, T0, D) window-mean image context.
        streams: window-mean adapter tokens, each (B, T, D).
        repeats: h·w, the spatial positions sharing this context (the query batch is B·h·w, batch-major).
    """

    clip: torch.Tensor
    streams: tuple[torch.Tensor, ...]
    repeats: int


def window_mean(context: torch.Tensor, batch: int) -> torch.Tensor:
    """(B·F, T, D) per-frame tokens → (B, T, D) mean over each window's frames."""
    tokens, dim = context.shape[-2:]
    return context.reshape(batch, -1, tokens, dim).mean(dim=1)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads·d) → (B, heads, T, d)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


class FastAdapterAttnProcessor(IPAdapterAttnProcessor2_0):
    """Same parameters and maths as diffusers' IP-adapter processor, with two savings (compat §10, 12).

    * Temporal ``attn2`` with a :class:`CompactTemporalContext`: the K/V projections run once per video
      instead of once per spatial position, and the h·w query groups that share the keys are folded into
      one attention call (identical softmax rows; about 9 % of a window call's FLOPs at 512²).
    * Spatial ``attn2`` with a face mask: the mask is downsampled once per resolution and broadcast
      instead of being materialised as a (B·F, S, C) tensor in every call.

    Any other context falls back to the parent's implementation.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._cached_mask: torch.Tensor | None = None
        self._mask_cache: dict[tuple, torch.Tensor] = {}

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        scale: float = 1.0,
        ip_adapter_masks=None,
    ):
        plain = attn.residual_connection or attn.rescale_output_factor != 1 or attn.norm_cross
        if plain or hidden_states.ndim != 3 or attention_mask is not None:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks
            )
        if isinstance(encoder_hidden_states, CompactTemporalContext):
            out = self._compact(attn, hidden_states, encoder_hidden_states)
        elif isinstance(encoder_hidden_states, tuple) and ip_adapter_masks is not None:
            out = self._masked(attn, hidden_states, encoder_hidden_states, ip_adapter_masks)
        else:
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks
            )
        return attn.to_out[1](attn.to_out[0](out))

    def _compact(self, attn, hidden: torch.Tensor, ctx: CompactTemporalContext) -> torch.Tensor:
        batch, repeats, frames = ctx.clip.shape[0], ctx.repeats, hidden.shape[1]
        heads = attn.heads
        q = attn.to_q(hidden)  # (B·hw, F, C)
        # (B·hw, F, heads, d) → (B, heads, hw·F, d): every query of one video attends to the same keys.
        q = q.unflatten(-1, (heads, -1)).unflatten(0, (batch, repeats)).permute(0, 3, 1, 2, 4).flatten(2, 3)

        def attend(context: torch.Tensor, to_k, to_v) -> torch.Tensor:
            o = F.scaled_dot_product_attention(q, _heads(to_k(context), heads), _heads(to_v(context), heads))
            # (B, heads, hw·F, d) → (B·hw, F, heads·d)
            return (
                o.unflatten(2, (repeats, frames)).permute(0, 2, 3, 1, 4).flatten(3).flatten(0, 1).to(q.dtype)
            )

        out = attend(ctx.clip, attn.to_k, attn.to_v)
        streams = zip(ctx.streams, self.scale, self.to_k_ip, self.to_v_ip, strict=False)
        for tokens, weight, to_k_ip, to_v_ip in streams:
            if weight != 0:
                out = out + weight * attend(tokens, to_k_ip, to_v_ip)
        return out

    def _masked(self, attn, hidden: torch.Tensor, ctx: tuple, masks: list[torch.Tensor]) -> torch.Tensor:
        clip, streams = ctx
        heads = attn.heads
        q = _heads(attn.to_q(hidden), heads)

        def attend(context: torch.Tensor, to_k, to_v) -> torch.Tensor:
            o = F.scaled_dot_product_attention(q, _heads(to_k(context), heads), _heads(to_v(context), heads))
            return o.transpose(1, 2).flatten(2).to(q.dtype)

        out = attend(clip, attn.to_k, attn.to_v)
        for tokens, weight, to_k_ip, to_v_ip, mask in zip(
            streams, self.scale, self.to_k_ip, self.to_v_ip, masks, strict=False
        ):
            if weight != 0:
                tokens = tokens[:, 0] if tokens.ndim == 4 else tokens
                out = out + weight * (attend(tokens, to_k_ip, to_v_ip) * self._mask(mask, hidden))
        return out

    def _mask(self, mask: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """(1, S, 1) bicubic-downsampled face mask, as diffusers' IPAdapterMaskProcessor.downsample computes.

        Cached for the mask *object* (held by reference, so its identity cannot be reused by another
        tensor): one job's mask is downsampled once per resolution instead of once per call.
        """
        key = (hidden.shape[1], hidden.dtype, hidden.device)
        if self._cached_mask is not mask:
            self._cached_mask, self._mask_cache = mask, {}
        if key not in self._mask_cache:
            down = IPAdapterMaskProcessor.downsample(mask[:, 0], 1, hidden.shape[1], 1)
            self._mask_cache[key] = down.to(dtype=hidden.dtype, device=hidden.device)
        return self._mask_cache[key]
