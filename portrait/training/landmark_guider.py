"""Recipe ``train motion``: the landmark guider, every release weight frozen, SVD's EDM loss.

One sample is a clip of ``frames`` consecutive cached frames (12.5 fps). With σ = exp(N(p_mean, p_std))
(SVD's training σ law, 0.7 / 1.6) and ε ~ N(0, I):

    x_σ = x₀ + σε;  v = UNet([x_σ / √(σ²+1) | cond latents], 0.25·ln σ, ...)   (the sampler's scaling)
    D = x_σ / (σ²+1) − σ·v / √(σ²+1)                                           (v-prediction, as euler_step)
    L = (1+σ²)/σ² · mean(M · (D − x₀)²),  M = 1 + face + 2·lips                (boxes from the landmarks)

The pose guider's features plus the landmark guider's per-frame features go in after ``conv_in`` as at
inference. Conditioning dropout follows the sampler's three branches: with ``p_uncond`` the unconditional
branch (no image embedding, zero conditioning latents, unconditional audio and emotion tokens), with
``p_drop`` the "drop" branch (audio and emotion unconditional), else everything. Map dropout: with
``map_dropout`` the maps are replaced by the clip's first map (the source landmarks), and with
``lip_dropout`` the lips channel is zeroed (so ``--mouth audio`` works). LoRA is not implemented
(``peft`` is not installed here).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from portrait.errors import InputError
from portrait.models.landmark_guider import LandmarkGuider
from portrait.motion.landmarks import MOUTH
from portrait.training.data import Cache
from portrait.training.recipe import CachedRecipe

logger = logging.getLogger(__name__)

DEFAULTS = {
    "frames": 25,
    "p_uncond": 0.05,
    "p_drop": 0.1,
    "map_dropout": 0.1,
    "lip_dropout": 0.5,
    "p_mean": 0.7,
    "p_std": 1.6,
    "fps": 12.5,
    "motion_bucket_id": 8,
    "motion_bucket_id_exp": 16,
    "lora": False,
}
#: σ values of the fixed-batch and validation losses.
FIXED_SIGMAS = (0.3, 1.0, 3.0)


def edm_preconditioning(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_in, c_skip, c_out, c_noise)`` of SVD's v-prediction at noise level ``sigma`` (any shape).

    The sampler's convention, which the loss must share (``tests/training/test_learning.py`` checks it
    against ``sampling.scale_model_input``, ``sampling.euler_step`` and the scheduler's timesteps): the UNet
    sees ``c_in·x_σ`` at time ``c_noise``, and ``D = c_skip·x_σ + c_out·v``, with
    ``c_in = 1/√(σ²+1)``, ``c_skip = 1/(σ²+1)``, ``c_out = −σ/√(σ²+1)``, ``c_noise = ¼·ln σ``.
    """
    c_in = 1 / (sigma**2 + 1) ** 0.5
    return c_in, c_in**2, -sigma * c_in, 0.25 * torch.log(sigma)


def region_weights(
    landmarks: torch.Tensor, image_size: tuple[int, int], latent_size: tuple[int, int]
) -> torch.Tensor:
    """``1 + face + 2·lips`` per frame at latent size: (F, 68, 2) working pixels → (F, 1, h, w)."""
    (width, height), (lw, lh) = image_size, latent_size
    ys = (torch.arange(lh, dtype=torch.float32) + 0.5) * height / lh
    xs = (torch.arange(lw, dtype=torch.float32) + 0.5) * width / lw

    def inside(points: torch.Tensor) -> torch.Tensor:
        lo, hi = points.min(1).values, points.max(1).values  # (F, 2)
        in_x = (xs[None] >= lo[:, :1]) & (xs[None] <= hi[:, :1])
        in_y = (ys[None] >= lo[:, 1:]) & (ys[None] <= hi[:, 1:])
        return (in_y[:, :, None] & in_x[:, None, :]).float()

    return (1 + inside(landmarks) + 2 * inside(landmarks[:, MOUTH]))[:, None]


class MotionRecipe(CachedRecipe):
    """Trains a :class:`LandmarkGuider` warm-started from the release pose guider (``conv_out`` zero)."""

    name = "motion"
    component = "landmark_guider"
    defaults = DEFAULTS

    def __init__(
        self, cache: Cache, weights_root: Path, options: dict[str, Any], gradient_checkpointing: bool = False
    ) -> None:
        from portrait.weights.load import load_emotion_bank, load_pipeline

        if options.get("lora"):
            raise InputError("LoRA fine-tuning of the UNet is not implemented (peft is not installed here)")
        super().__init__(cache, weights_root, options)
        # the cache holds the encoders' outputs: no audio encoder, VAE or CLIP in memory (3 GB at fp32)
        self.pipe = load_pipeline(weights_root, skip=("audio_encoder", "vae", "image_encoder"))
        for module in self.pipe.components.values():
            if isinstance(module, nn.Module):
                module.requires_grad_(False).eval()
        if gradient_checkpointing:
            self.pipe.unet.enable_gradient_checkpointing()
        bank = load_emotion_bank(weights_root)
        missing = sorted({e.emotion for e in cache.entries} - set(bank))
        if missing:
            raise InputError(
                f"the cache has labels {', '.join(missing)} that the bank of {weights_root} lacks"
            )
        self.bank = bank
        config = dict(self.pipe.pose_guider.config)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        self.model = LandmarkGuider.from_pose_guider(self.pipe.pose_guider.state_dict(), **config)
        self._load_clips()
        short = [e.id for e in cache.entries if e.frames < 2]
        if short:
            raise InputError(f"cached clips too short to train on: {', '.join(short)}")

    def to(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.pipe.to(self.device)

    # ------------------------------------------------------------------------------------ one clip
    def _clip_loss(
        self,
        model: nn.Module,
        entry,
        start: int,
        sigma: float,
        noise_gen: torch.Generator,
        branch: int,
        drop_maps: bool,
        drop_lips: bool,
    ) -> torch.Tensor:
        """Weighted EDM loss of one clip. ``branch``: 0 unconditional, 1 drop audio/emotion, 2 full."""
        data, dev, pipe = self.clips[entry.id], self.device, self.pipe
        frames = int(self.opts["frames"])
        idx = (torch.arange(frames) + start) % entry.frames
        x0 = data["latents"][idx].float()[None].to(dev)  # (1, F, 4, h, w)
        cond = data["cond_latent"].float().to(dev)[None, None].expand(1, frames, -1, -1, -1)
        clip = data["clip"].float().to(dev)[None, None].expand(frames, 1, -1)
        audio_in = data["audio"][idx].float().to(dev)
        prior = self.bank[entry.emotion].to(dev)
        if branch == 0:
            cond, clip = torch.zeros_like(cond), torch.zeros_like(clip)
        if branch < 2:
            audio_in, prior = torch.zeros_like(audio_in), torch.zeros_like(prior)
        audio = pipe.audio_projector(audio_in)  # (F, T, D)
        emotion = pipe.emotion_model(prior).expand(frames, -1, -1)
        maps = data["motion_maps"][idx].float().div(255)
        if drop_maps:
            maps = data["motion_maps"][:1].float().div(255).expand(frames, -1, -1, -1)
        if drop_lips:
            maps = maps.clone()
            maps[:, 2] = 0
        mask = data["face_mask"].float().div(255).to(dev)[None, None]  # (1, 1, H, W)
        channels = pipe.pose_guider.config.conditioning_channels
        features = pipe.pose_guider(mask.expand(1, channels, -1, -1))[:, None]  # (1, 1, C0, h, w)
        unet, guider = self.networks(model)
        if guider is not None:
            features = features + guider(maps.to(dev))[None]  # (1, F, C0, h, w)

        sig = torch.tensor(sigma, dtype=torch.float32)
        c_in, c_skip, c_out, c_noise = edm_preconditioning(sig)
        eps = torch.randn(x0.shape, generator=noise_gen).to(dev)
        x_sigma = x0 + sig * eps
        model_input = torch.cat([c_in * x_sigma, cond], dim=2)
        time_ids = torch.tensor(
            [[self.opts["fps"], self.opts["motion_bucket_id"], self.opts["motion_bucket_id_exp"]]],
            dtype=torch.float32,
            device=dev,
        )
        v = unet(
            model_input,
            c_noise.to(dev),
            encoder_hidden_states=clip,
            added_time_ids=time_ids,
            adapter_tokens=(audio, emotion),
            face_mask=mask,
            pose_features=features,
            compact_temporal_context=True,  # no h·w copies of the context and its K/V (GBs at 512²)
        ).sample
        denoised = c_skip * x_sigma + c_out * v.float()
        size = tuple(mask.shape[-1:-3:-1])
        weights = region_weights(data["landmarks"][idx].float(), size, tuple(x0.shape[-1:-3:-1])).to(dev)
        return (weights[None] * (denoised - x0) ** 2).mean() / c_out**2  # EDM weight (σ²+1)/σ²

    def networks(self, model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        """``(unet, landmark guider)`` of a loss call: the frozen UNet and the guider being trained."""
        return self.pipe.unet, model

    # ------------------------------------------------------------------------------------ recipe API
    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        o = self.opts
        total = 0.0
        for _ in range(batch_size):
            entry = self.train_entries[int(torch.randint(len(self.train_entries), (1,), generator=generator))]
            start = int(torch.randint(max(entry.frames - int(o["frames"]), 0) + 1, (1,), generator=generator))
            sigma = float(torch.exp(o["p_mean"] + o["p_std"] * torch.randn(1, generator=generator)))
            u = float(torch.rand(1, generator=generator))
            branch = 0 if u < o["p_uncond"] else 1 if u < o["p_uncond"] + o["p_drop"] else 2
            drop_maps = float(torch.rand(1, generator=generator)) < o["map_dropout"]
            drop_lips = float(torch.rand(1, generator=generator)) < o["lip_dropout"]
            total = total + self._clip_loss(
                model, entry, start, sigma, generator, branch, drop_maps, drop_lips
            )
        return total / batch_size

    def _fixed(self, model: nn.Module, entries) -> float:
        gen = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            values = [
                float(self._clip_loss(model, e, 0, s, gen, 2, False, False))
                for e in entries
                for s in FIXED_SIGMAS
            ]
        return sum(values) / len(values)

    def fixed_loss(self, model: nn.Module) -> float:
        return self._fixed(model, self.train_entries[:1])

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"val_loss": self._fixed(model, self.val_entries)} if self.val_entries else {}
