"""The learning check's stand-in for the release: a tiny tree whose VAE and UNet first learn the clips.

A random tiny tree can neither reconstruct nor generate a face, so before the conditions are trained the
check gives it what the release has: a VAE that reconstructs the clips (:class:`AutoencoderRecipe`, a plain
reconstruction loss; its latents are then rescaled so that ×0.18215 they have unit variance, as SVD's
scaling factor intends) and a UNet that denoises them (:class:`BaseRecipe`: the UNet trained with
``train motion``'s own loss, ``MotionRecipe._clip_loss``, without a landmark guider). Both run through the
one trainer (:func:`portrait.training.trainer.train`). Not a product recipe: nothing a user runs.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from portrait.models.identity import LATENT_SCALE
from portrait.training.landmark_guider import MotionRecipe

logger = logging.getLogger(__name__)


class AutoencoderRecipe:
    """Trains a tree's VAE to reconstruct clips (the :class:`~portrait.training.trainer.Recipe` protocol).

    Args:
        vae: an ``AutoencoderKLTemporalDecoder`` (trained in place).
        clips: (C, T, 3, H, W) float32 frames in [-1, 1].
        frames: consecutive frames per sample (the temporal decoder sees them together).
    """

    name = "vae"
    component = "vae"

    def __init__(self, vae: nn.Module, clips: torch.Tensor, frames: int = 4) -> None:
        self.model = vae.requires_grad_(True)
        self.clips, self.frames = clips, frames
        self.device = torch.device("cpu")

    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.clips.numpy().tobytes()).hexdigest()
        return {"recipe": self.name, "clips": digest, "frames": self.frames}

    def to(self, device: torch.device) -> None:
        self.device = torch.device(device)

    def _mse(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        z = model.encode(x).latent_dist.mode()
        return (model.decode(z, num_frames=x.shape[0]).sample - x).pow(2).mean()

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        count, length = self.clips.shape[:2]
        total = 0.0
        for _ in range(batch_size):
            clip = int(torch.randint(count, (1,), generator=generator))
            start = int(torch.randint(length - self.frames + 1, (1,), generator=generator))
            total = total + self._mse(model, self.clips[clip, start : start + self.frames])
        return total / batch_size

    @torch.no_grad()
    def fixed_loss(self, model: nn.Module) -> float:
        picks = (0, len(self.clips) // 2, len(self.clips) - 1)
        return sum(float(self._mse(model, self.clips[i, : self.frames])) for i in picks) / len(picks)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {}

    def export(self, model: nn.Module, out: Path) -> Path:
        model.save_pretrained(out / self.component, safe_serialization=True)
        return out / self.component


@torch.no_grad()
def rescale_latents(vae: nn.Module, clips: torch.Tensor) -> float:
    """Scale the VAE's latent space in place so that its posterior means ×0.18215 have unit std.

    ``quant_conv``'s mean rows are multiplied by k (its log-variance rows shifted by 2·ln k) and the
    decoder's ``conv_in`` divided by k: the same reconstructions, latents k times larger. Returns k.
    """
    sample = clips[:, :: max(clips.shape[1] // 4, 1)].flatten(0, 1)
    means = torch.cat([vae.encode(part).latent_dist.mean for part in sample.split(16)])
    k = 1.0 / (LATENT_SCALE * float(means.std()))
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= k
    vae.quant_conv.bias[:channels] *= k
    vae.quant_conv.bias[channels:] += 2 * math.log(k)
    vae.decoder.conv_in.weight /= k
    return k


class BaseRecipe(MotionRecipe):
    """The UNet itself trained with ``train motion``'s loss and no landmark guider (the release's stand-in).

    Everything else of the tree (VAE, CLIP, audio projector, emotion model, pose guider) stays frozen.
    """

    name = "base"
    component = "unet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model = self.pipe.unet.requires_grad_(True)

    def networks(self, model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        return model, None


def replace_component(tree: Path, folder: Path) -> None:
    """Put the component ``folder`` (``.../<name>/``) into ``tree`` in place of its namesake; refresh the
    manifest."""
    from portrait.weights.manifest import write_manifest

    target = Path(tree) / Path(folder).name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target)
    write_manifest(Path(tree))


def working_frames(clips: list[np.ndarray], size: int) -> torch.Tensor:
    """(C, T, 3, size, size) float32 in [-1, 1] from C clips of (T, H, W, 3) uint8 frames (resized as
    ``prepare`` does, Lanczos)."""
    from PIL import Image

    def resized(frame: np.ndarray) -> np.ndarray:
        image = Image.fromarray(frame)
        return np.asarray(image if image.size == (size, size) else image.resize((size, size), Image.LANCZOS))

    array = np.stack([np.stack([resized(f) for f in clip]) for clip in clips])
    return torch.from_numpy(array).permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)
