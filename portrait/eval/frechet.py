"""Fréchet distance between two sets of features, and the image encoders that make them.

``FD = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½)`` with the matrix square roots taken by symmetric
eigendecomposition (clipping tiny negative eigenvalues), which is stable where ``scipy.linalg.sqrtm``
returns complex noise for rank-deficient covariances (fewer frames than dimensions).

``fd_clip`` uses a CLIP image encoder (:class:`ClipImageEncoder` wraps a transformers
``CLIPVisionModelWithProjection``, e.g. SVD's ViT-H/14 image encoder from the weights tree); FID and FVD
use the extractors of :mod:`portrait.eval.features` and are pooled over a set (:mod:`portrait.eval.sets`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from portrait.eval.metric import Metric, available, unavailable

#: ``images (N, H, W, 3) uint8 RGB → (N, D)`` features.
ImageEncoder = Callable[[np.ndarray], np.ndarray]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased; zero for one sample) of ``(N, D)`` features."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"features must be (N>0, D), got {x.shape}")
    sigma = np.cov(x, rowvar=False) if x.shape[0] > 1 else np.zeros((x.shape[1], x.shape[1]))
    return x.mean(axis=0), np.atleast_2d(sigma)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    root1 = _sqrt_psd(np.asarray(sigma1, dtype=np.float64))
    middle = _sqrt_psd(root1 @ np.asarray(sigma2, dtype=np.float64) @ root1)
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(middle))


def fd_metric(
    pred: np.ndarray | None, real: np.ndarray | None, backend: str, reason: str = "", **extra: Any
) -> Metric:
    """FD between ``(N, D)`` predicted and ``(M, D)`` real features (unavailable with ``reason`` if None)."""
    if pred is None or real is None:
        return unavailable(backend, reason or "needs real (--gt) and generated features")
    if pred.shape[0] < 2 or real.shape[0] < 2:
        return unavailable(
            backend, f"needs at least 2 samples per set, got {pred.shape[0]} and {real.shape[0]}"
        )
    value = frechet_distance(*gaussian_stats(pred), *gaussian_stats(real))
    return available(max(value, 0.0), backend, samples=[int(pred.shape[0]), int(real.shape[0])], **extra)


class ClipImageEncoder:
    """``images (N, H, W, 3) uint8 → (N, D)`` CLIP ``image_embeds`` (bicubic 224², CLIP normalisation).

    Args:
        model: a transformers ``CLIPVisionModelWithProjection`` (any size; in eval mode).
        name: backend name reported with the metric.
        batch: images per forward pass.
    """

    def __init__(self, model: torch.nn.Module, name: str = "clip", batch: int = 16) -> None:
        self.model, self.name, self.batch = model.eval(), name, batch
        self.size = int(getattr(getattr(model, "config", None), "image_size", 224))

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        param = next(self.model.parameters())
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        out = []
        for start in range(0, len(images), self.batch):
            x = (
                torch.from_numpy(np.stack(images[start : start + self.batch])).permute(0, 3, 1, 2).float()
                / 255
            )
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
            x = ((x - mean) / std).to(param.device, param.dtype)
            out.append(self.model(pixel_values=x).image_embeds.float().cpu())
        return torch.cat(out).numpy().astype(np.float64)
