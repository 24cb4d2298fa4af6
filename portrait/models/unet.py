"""The DICE-Talk UNet: diffusers' SVD UNet with pose residual and audio/emotion adapters (compat §4).

:class:`PortraitUNet` subclasses :class:`~diffusers.UNetSpatioTemporalConditionModel`; its parameters are
exactly the SVD UNet's plus the adapter projections (``...attn2.processor.to_{k,v}_ip.{0,1}.weight``), so the
release ``unet.pth`` keys load unchanged. What differs from upstream is only the routing of conditions:

* ``pose_features`` are added right after ``conv_in`` (before the first skip connection is recorded);
* ``encoder_hidden_states`` are per frame; every ``attn2`` also attends to the adapter streams;
* spatial ``attn2`` streams are masked with the face mask, temporal ones are not;
* temporal cross-attention sees the per-window mean of the per-frame context (upstream: frame 0's).

The diffusers blocks are reused as they are: the conditions travel through them as one
:class:`~portrait.models.attention.AdapterContext` in the ``encoder_hidden_states`` slot, and only the 16
transformer modules get a forward that knows how to unpack it (:class:`AdapterTransformer`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModelOutput,
)
from diffusers.models.unets.unet_spatio_temporal_condition import (
    UNetSpatioTemporalConditionModel,
    UNetSpatioTemporalConditionOutput,
)

from portrait.models.attention import AdapterContext, CompactTemporalContext, adapter_processors


class AdapterTransformer(TransformerSpatioTemporalModel):
    """diffusers' spatio-temporal transformer, taking an :class:`AdapterContext` as its context.

    Same parameters as the parent (instances are re-classed in place by :class:`PortraitUNet`, no new
    state). A plain tensor context falls back to the upstream forward.
    """

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: AdapterContext | torch.Tensor | None = None,
        image_only_indicator: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        """Args: hidden_states (B·F, C, h, w); image_only_indicator (B, F). Returns (B·F, C, h, w)."""
        if not isinstance(encoder_hidden_states, AdapterContext):
            return super().forward(hidden_states, encoder_hidden_states, image_only_indicator, return_dict)
        ctx = encoder_hidden_states
        batch_frames, _, height, width = hidden_states.shape
        num_frames = image_only_indicator.shape[-1]
        batch = batch_frames // num_frames
        time_context = ctx.temporal(batch, height * width)
        spatial_context, spatial_kwargs = ctx.spatial(), ctx.spatial_kwargs()

        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        channels = hidden_states.shape[1]
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        hidden_states = self.proj_in(hidden_states)

        # Window-relative frame positions 0..F-1 for every video of the batch.
        positions = torch.arange(num_frames, device=hidden_states.device).repeat(batch, 1).reshape(-1)
        frame_emb = self.time_pos_embed(self.time_proj(positions).to(dtype=hidden_states.dtype))[:, None, :]

        pairs = zip(self.transformer_blocks, self.temporal_transformer_blocks, strict=False)
        checkpoint = torch.is_grad_enabled() and self.gradient_checkpointing
        for block, temporal_block in pairs:
            args = (block, temporal_block, hidden_states, frame_emb, num_frames, spatial_context,
                    spatial_kwargs, time_context, image_only_indicator)  # fmt: skip
            if checkpoint:  # recompute the pair in the backward pass instead of keeping its activations
                hidden_states = self._gradient_checkpointing_func(self._block_pair, *args)
            else:
                hidden_states = self._block_pair(*args)

        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)
        output = hidden_states.contiguous() + residual
        if not return_dict:
            return (output,)
        return TransformerTemporalModelOutput(sample=output)

    def _block_pair(
        self, block: torch.nn.Module, temporal_block: torch.nn.Module, hidden_states: torch.Tensor,
        frame_emb: torch.Tensor, num_frames: int, spatial_context: tuple, spatial_kwargs: dict,
        time_context: tuple | CompactTemporalContext, image_only_indicator: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """One spatial block, its temporal block and their mix: (B·F, h·w, C) → (B·F, h·w, C).

        Under ``enable_gradient_checkpointing()`` a training forward keeps only each pair's input and
        recomputes the pair in the backward pass (diffusers' own forward checkpoints the spatial block alone).
        """
        hidden_states = block(
            hidden_states, encoder_hidden_states=spatial_context, cross_attention_kwargs=spatial_kwargs
        )
        mixed = temporal_block(
            hidden_states + frame_emb, num_frames=num_frames, encoder_hidden_states=time_context
        )
        return self.time_mixer(
            x_spatial=hidden_states, x_temporal=mixed, image_only_indicator=image_only_indicator
        )


class PortraitUNet(UNetSpatioTemporalConditionModel):
    """SVD UNet with the DICE-Talk pose residual and 2-stream audio/emotion adapters.

    ``compile_repeated_blocks()`` (diffusers) compiles the repeated transformer and residual blocks one
    class at a time: a short compile for most of the speed of compiling the whole graph.

    Takes every argument of :class:`~diffusers.UNetSpatioTemporalConditionModel` plus:

    Args:
        adapter_scales: scale of each adapter stream (audio, emotion); a stream with scale 0 is skipped.
        adapter_tokens: tokens per frame of each stream (informational; the processors read the shapes).
    """

    _repeated_blocks = ["BasicTransformerBlock", "TemporalBasicTransformerBlock", "SpatioTemporalResBlock"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int] = 2,
        cross_attention_dim: int | tuple[int] = 1024,
        transformer_layers_per_block: int | tuple[int, tuple[tuple]] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 25,
        adapter_scales: tuple[float, ...] = (1.0, 1.0),
        adapter_tokens: tuple[int, ...] = (32, 32),
    ):
        super().__init__(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=down_block_types,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            addition_time_embed_dim=addition_time_embed_dim,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            num_attention_heads=num_attention_heads,
            num_frames=num_frames,
        )
        if len(adapter_scales) != len(adapter_tokens):
            raise ValueError(
                f"adapter_scales {adapter_scales} and adapter_tokens {adapter_tokens} differ in length"
            )
        for module in self.modules():
            if type(module) is TransformerSpatioTemporalModel:
                module.__class__ = AdapterTransformer
        if not isinstance(cross_attention_dim, int):
            raise ValueError(f"PortraitUNet needs one cross_attention_dim, got {cross_attention_dim}")
        self.set_attn_processor(
            adapter_processors(self, cross_attention_dim, tuple(adapter_scales), tuple(adapter_tokens))
        )

    @contextlib.contextmanager
    def adapter_scales(self, scales: tuple[float, ...]) -> Iterator[None]:
        """Use ``scales`` (audio, emotion) inside the ``with`` block; the previous ones come back after it."""
        previous = [list(proc.scale) for proc in self.attn_processors.values() if hasattr(proc, "to_k_ip")]
        self.set_adapter_scales(scales)
        try:
            yield
        finally:
            procs = [proc for proc in self.attn_processors.values() if hasattr(proc, "to_k_ip")]
            for proc, scale in zip(procs, previous, strict=True):
                proc.scale = scale

    def set_adapter_scales(self, scales: tuple[float, ...]) -> None:
        """Set the per-stream adapter scales (audio, emotion) of every ``attn2``; 0 disables a stream."""
        for proc in self.attn_processors.values():
            if hasattr(proc, "to_k_ip"):
                if len(scales) != len(proc.scale):
                    raise ValueError(f"expected {len(proc.scale)} adapter scales, got {len(scales)}")
                proc.scale = list(scales)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        adapter_tokens: tuple[torch.Tensor, ...] = (),
        face_mask: torch.Tensor | None = None,
        pose_features: torch.Tensor | None = None,
        compact_temporal_context: bool = False,
        return_dict: bool = True,
    ) -> UNetSpatioTemporalConditionOutput | tuple[torch.Tensor]:
        """Predict the denoiser output for a batch of windows.

        Args:
            sample: (B, F, C_in, h, w) scaled noisy latents concatenated with the conditioning latents.
            timestep: 0-d tensor or float (the EDM ``0.25·ln σ``).
            encoder_hidden_states: (B·F, T0, D) per-frame image context, or (B, T0, D) repeated per frame.
            added_time_ids: (B, 3) added time ids (the reference's [fps, motion bucket, motion bucket exp]).
            adapter_tokens: per-frame tokens of each adapter stream, each (B·F, T, D) (audio, emotion).
                Empty: no adapter attention (what remains differs from upstream diffusers only by the
                window-mean temporal context, identical for a context that is the same on every frame).
            face_mask: (1, 1, H, W) mask in [0, 1] for the spatial adapter streams, or ``None`` (unmasked).
            pose_features: (B or 1, F or 1, C0, h, w) residual added after ``conv_in``, or ``None``.
            compact_temporal_context: broadcast the temporal cross-attention context instead of repeating
                it h·w times (same maths, not bit-identical to the reference's kernels; faster, less memory).

        Returns:
            (B, F, C_out, h, w) model output (``.sample``).
        """
        batch, num_frames = sample.shape[:2]
        emb = self._conditioning_embedding(timestep, added_time_ids, batch, sample)
        emb = emb.repeat_interleave(num_frames, dim=0, output_size=emb.shape[0] * num_frames)

        if encoder_hidden_states.shape[0] == batch and num_frames > 1:
            encoder_hidden_states = encoder_hidden_states.repeat_interleave(num_frames, dim=0)
        context = AdapterContext(
            encoder_hidden_states, tuple(adapter_tokens), face_mask, compact_temporal_context
        )

        hidden = self.conv_in(sample.flatten(0, 1))
        if pose_features is not None:
            hidden = (hidden.unflatten(0, (batch, num_frames)) + pose_features).flatten(0, 1)
        indicator = torch.zeros(batch, num_frames, dtype=hidden.dtype, device=hidden.device)
        hidden = self._blocks(hidden, emb, indicator, context)

        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        out = hidden.reshape(batch, num_frames, *hidden.shape[1:])
        if not return_dict:
            return (out,)
        return UNetSpatioTemporalConditionOutput(sample=out)

    def _blocks(
        self, hidden: torch.Tensor, emb: torch.Tensor, indicator: torch.Tensor, context: AdapterContext
    ) -> torch.Tensor:
        """Down blocks, mid block and up blocks as upstream, ``context`` in the cross-attention slot.

        Args:
            hidden: (B·F, C0, h, w) after ``conv_in`` (and the pose residual); emb: (B·F, 1280);
                indicator: (B, F) zeros.

        Returns:
            (B·F, C0, h, w) before ``conv_norm_out``.
        """

        def cross(block: torch.nn.Module) -> dict[str, AdapterContext]:
            return {"encoder_hidden_states": context} if getattr(block, "has_cross_attention", False) else {}

        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            hidden, res = block(
                hidden_states=hidden, temb=emb, image_only_indicator=indicator, **cross(block)
            )
            skips += res
        hidden = self.mid_block(
            hidden_states=hidden, temb=emb, encoder_hidden_states=context, image_only_indicator=indicator
        )
        for block in self.up_blocks:
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            hidden = block(
                hidden_states=hidden,
                temb=emb,
                res_hidden_states_tuple=res,
                image_only_indicator=indicator,
                **cross(block),
            )
        return hidden

    def _conditioning_embedding(
        self, timestep: torch.Tensor | float, added_time_ids: torch.Tensor, batch: int, sample: torch.Tensor
    ) -> torch.Tensor:
        """Time + added-time-id embedding (B, 1280) exactly as upstream (compat §4.2)."""
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float32, device=sample.device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(sample.device)
        t_emb = self.time_proj(timestep.expand(batch)).to(dtype=sample.dtype)
        emb = self.time_embedding(t_emb)
        time_embeds = self.add_time_proj(added_time_ids.flatten()).reshape((batch, -1)).to(emb.dtype)
        return emb + self.add_embedding(time_embeds)
