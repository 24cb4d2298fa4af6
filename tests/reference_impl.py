"""An independent, literal transcription of the reference's sampling path (spec sections 2–6), for tests.

This is the oracle the parity tests compare :class:`portrait.pipeline.PortraitPipeline` against. It follows
the spec's description of the DICE-Talk code step by step, *including its waste* (per-frame projector and
emotion calls, three-branch tables over all L frames, the pose guider over all L frames, two VAE encodes,
the stateful scheduler with its step index reset before every window, a hand-written UNet traversal with
``repeat``-based temporal context), so that it shares as little as possible with the optimised pipeline:
only the diffusers building blocks and the weights.
"""

from __future__ import annotations

import torch


def _spatial2time(x: torch.Tensor, batch: int, frames: int, repeats: int) -> torch.Tensor:
    tokens, dim = x.shape[-2], x.shape[-1]
    x = x.reshape(batch, frames, tokens, dim).mean(dim=1, keepdim=True)
    return x.repeat(1, repeats, 1, 1).reshape(batch * repeats, tokens, dim)


def _transformer(mod, hidden, context, masks, indicator):
    """Spec 4.3 steps 1–7 on one diffusers TransformerSpatioTemporalModel's parameters."""
    batch_frames, _, h, w = hidden.shape
    frames = indicator.shape[-1]
    batch = batch_frames // frames
    clip, ips = context
    time_ctx = (
        _spatial2time(clip, batch, frames, h * w),
        [_spatial2time(x, batch, frames, h * w) for x in ips],
    )
    residual = hidden
    hidden = mod.norm(hidden)
    channels = hidden.shape[1]
    hidden = mod.proj_in(hidden.permute(0, 2, 3, 1).reshape(batch_frames, h * w, channels))
    frame_ids = torch.arange(frames).repeat(batch, 1).reshape(-1)
    emb = mod.time_pos_embed(mod.time_proj(frame_ids).to(hidden.dtype))[:, None, :]
    spatial_ips = [x if x.ndim == 4 else x[:, None] for x in ips]  # the reference's in-place unsqueeze
    hidden = mod.transformer_blocks[0](
        hidden, encoder_hidden_states=(clip, spatial_ips), cross_attention_kwargs={"ip_adapter_masks": masks}
    )
    mixed = mod.temporal_transformer_blocks[0](
        hidden + emb, num_frames=frames, encoder_hidden_states=time_ctx
    )
    hidden = mod.time_mixer(x_spatial=hidden, x_temporal=mixed, image_only_indicator=indicator)
    hidden = mod.proj_out(hidden).reshape(batch_frames, h, w, channels).permute(0, 3, 1, 2).contiguous()
    return hidden + residual


def reference_unet(unet, sample, t, context, added_time_ids, spatial_condition, masks):
    """Spec 4.4: the reference UNet forward, traversing diffusers' blocks by hand."""
    batch, frames = sample.shape[:2]
    emb = unet.time_embedding(unet.time_proj(t[None].expand(batch)).to(sample.dtype))
    emb = emb + unet.add_embedding(
        unet.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
    )
    emb = emb.repeat_interleave(frames, dim=0)
    x = unet.conv_in(sample.flatten(0, 1)) + spatial_condition.flatten(0, 1)
    ind = torch.zeros(batch, frames, dtype=x.dtype)
    skips = [x]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", [None] * len(block.resnets))
        for resnet, attn in zip(block.resnets, attentions, strict=False):
            x = resnet(x, emb, image_only_indicator=ind)
            if attn is not None:
                x = _transformer(attn, x, context, masks, ind)
            skips.append(x)
        for down in block.downsamplers or []:
            x = down(x)
            skips.append(x)
    mid = unet.mid_block
    x = mid.resnets[0](x, emb, image_only_indicator=ind)
    for attn, resnet in zip(mid.attentions, mid.resnets[1:], strict=False):
        x = resnet(_transformer(attn, x, context, masks, ind), emb, image_only_indicator=ind)
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", [None] * len(block.resnets))
        for resnet, attn in zip(block.resnets, attentions, strict=False):
            x = resnet(torch.cat([x, skips.pop()], dim=1), emb, image_only_indicator=ind)
            if attn is not None:
                x = _transformer(attn, x, context, masks, ind)
        for up in block.upsamplers or []:
            x = up(x)
    x = unet.conv_out(unet.conv_act(unet.conv_norm_out(x)))
    return x.reshape(batch, frames, *x.shape[1:])


@torch.no_grad()
def reference_generate(
    pipe,
    ref_img,
    clip_img,
    face_mask,
    windows,
    prior,
    noise,
    steps,
    ref_scale=3.0,
    emo_scale=6.0,
    frames_per_window=25,
    shift_offset=7,
    decode_chunk_size=10,
):
    """Spec section 6 end to end; returns (N, 3, H, W) frames in [0, 1].

    ``windows`` (N, 10, blocks, channels), ``prior`` (1, D), ``noise`` (1, N + F, 4, h, w) injected draw #2.
    """
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    n, win = windows.shape[0], frames_per_window
    length = n + win
    dtype = unet.dtype
    # Per-frame tokens, each computed with batch 1 (spec 2.3, 3).
    audio = [pipe.audio_projector(windows[i][None, None]).squeeze(0).squeeze(0) for i in range(n)]
    audio_u = [
        pipe.audio_projector(torch.zeros_like(windows[:1][None])).squeeze(0).squeeze(0) for _ in range(n)
    ]
    emo = [pipe.emotion_model(prior)[0] for _ in range(n)]
    emo_u = [pipe.emotion_model(torch.zeros_like(prior))[0] for _ in range(n)]
    # CLIP tokens and VAE encodes (6.3, 6.4).
    img_emb = pipe.image_encoder(clip_img.to(dtype)).image_embeds[:, None]  # (1, 1, D)
    img = img_emb[:, None].repeat(1, length, 1, 1)
    image_tables = torch.cat([torch.zeros_like(img), img, img])
    ref_latent = vae.encode(ref_img).latent_dist.mean * 0.18215
    cond_latent = vae.encode(ref_img + 0.0 * torch.zeros_like(ref_img)).latent_dist.mode()
    cond_all = cond_latent[:, None].repeat(1, length, 1, 1, 1)
    latent_tables = torch.cat([torch.zeros_like(cond_all), cond_all, cond_all]).to(dtype)
    # Token tables with padding frames (6.3).
    aud_c = torch.stack(audio + [audio_u[0]] * win)[None]
    aud_u = torch.stack(audio_u + [audio_u[0]] * win)[None]
    aud = torch.cat([aud_u, aud_u, aud_c]).to(dtype)
    emo_c = torch.stack(emo + [emo_u[0]] * win)[None]
    emo_uu = torch.stack(emo_u + [emo_u[0]] * win)[None]
    emos = torch.cat([emo_uu, emo_uu, emo_c]).to(dtype)
    # Pose features for all L frames (6.8) and the IP mask.
    pose = pipe.pose_guider(face_mask.to(dtype).repeat(length, 1, 1, 1))[None]  # (1, L, C0, h, w)
    mask = face_mask[:, :1].to(dtype)
    time_ids = torch.tensor([[12.5, 8, 16]], dtype=dtype).repeat(3, 1)
    # Timesteps, initial latents (6.6, 6.7).
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    latents = scheduler.add_noise(
        ref_latent[:, None].repeat(1, length, 1, 1, 1).to(dtype), noise.to(dtype), timesteps[:1]
    )
    g1 = torch.linspace(ref_scale, ref_scale, steps).to(dtype)
    g2 = torch.linspace(emo_scale, emo_scale, steps).to(dtype)
    shift = 0
    for i, t in enumerate(timesteps):  # 6.10
        acc = torch.zeros_like(latents)
        cnt = torch.zeros((1, length, 1, 1, 1), dtype=dtype)
        for start in range(0, length, win):
            scheduler._step_index = None
            idx = [(start - shift + j) % length for j in range(win)]
            x = latents[:, idx]
            inp = scheduler.scale_model_input(torch.cat([x, x, x]), t)
            inp = torch.cat([inp, latent_tables[:, idx]], dim=2)
            context = (
                image_tables[:, idx].flatten(0, 1),
                [aud[:, idx].flatten(0, 1), emos[:, idx].flatten(0, 1)],
            )
            v = reference_unet(
                unet, inp, t, context, time_ids, pose[:, idx].repeat(3, 1, 1, 1, 1), [mask, mask]
            )
            v_u, v_d, v_c = v.chunk(3)
            guided = v_u + g1[i] * (v_d - v_u) + g2[i] * (v_c - v_d)
            x = scheduler.step(guided, t, x).prev_sample
            for j, k in enumerate(idx):
                acc[:, k] += x[:, j]
                cnt[:, k] += 1
        shift = (shift + shift_offset) % win
        latents = acc / cnt
    # Decode all L frames in chunks (6.12).
    z = latents[0] * (1 / 0.18215)
    decoded = [
        vae.decode(z[s : s + decode_chunk_size], num_frames=z[s : s + decode_chunk_size].shape[0]).sample
        for s in range(0, length, decode_chunk_size)
    ]
    video = torch.cat(decoded).float()[:n]
    return (video * 0.5 + 0.5).clamp(0, 1)
