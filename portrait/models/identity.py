"""Identity encoding: CLIP image embedding + VAE reference latents of the portrait (compat §6.3, 6.4).

The result is a small cacheable value (:class:`IdentityEncoding`): batch rendering reuses it for every job
that animates the same photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

#: The latent scale the reference hard-codes for the reference latent and for decoding (compat §6.4, 6.12).
LATENT_SCALE = 0.18215


@dataclass(frozen=True)
class IdentityEncoding:
    """What the pipeline needs to know about the portrait.

    Attributes:
        image_embeds: (1, D) CLIP image embedding (``image_embeds``, not L2-normalised).
        ref_latent: (1, 4, h, w) VAE posterior mean × 0.18215: the i2i starting point.
        cond_latent: (1, 4, h, w) VAE posterior mode of the (noise-augmented) image, unscaled: the
            conditioning latent concatenated to the UNet input.
    """

    image_embeds: torch.Tensor
    ref_latent: torch.Tensor
    cond_latent: torch.Tensor

    def to(self, device: torch.device | str, dtype: torch.dtype) -> IdentityEncoding:
        """Copy of this encoding on ``device`` in ``dtype``."""
        return IdentityEncoding(
            *(
                t.to(device=device, dtype=dtype)
                for t in (self.image_embeds, self.ref_latent, self.cond_latent)
            )
        )


def encode_clip_image(image_encoder: nn.Module, clip_image: torch.Tensor) -> torch.Tensor:
    """CLIP image embedding.

    Args:
        image_encoder: a ``CLIPVisionModelWithProjection``.
        clip_image: (1, 3, 224, 224) CLIP-normalised image.

    Returns:
        (1, D) ``image_embeds`` in the encoder's dtype.
    """
    param = next(image_encoder.parameters())
    return image_encoder(clip_image.to(device=param.device, dtype=param.dtype)).image_embeds


def encode_reference_latents(
    vae: nn.Module, ref_image: torch.Tensor, noise: torch.Tensor, noise_aug_strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE latents of the portrait, in the VAE's current dtype.

    Args:
        vae: an ``AutoencoderKLTemporalDecoder``.
        ref_image: (1, 3, H, W) image in [-1, 1].
        noise: (1, 3, H, W) noise for the conditioning image (the reference's RNG draw #1).
        noise_aug_strength: noise added to the conditioning image (0 in the reference).

    Returns:
        ``(ref_latent, cond_latent)``: posterior mean × 0.18215 of ``ref_image`` and posterior mode of
        ``ref_image + strength·noise`` (the same encode reused when the strength is 0: mode == mean).
    """
    param = next(vae.parameters())
    image = ref_image.to(device=param.device, dtype=param.dtype)
    posterior = vae.encode(image).latent_dist
    ref_latent = posterior.mean * LATENT_SCALE
    if noise_aug_strength == 0:
        cond_latent = posterior.mode()
    else:
        augmented = image + noise_aug_strength * noise.to(device=param.device, dtype=param.dtype)
        cond_latent = vae.encode(augmented).latent_dist.mode()
    return ref_latent, cond_latent
