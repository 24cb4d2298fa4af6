"""Seeded random state dicts from numpy alone: the same tensors in any environment, for any layout.

The evaluation networks (SyncNet, the FID Inception, the FVD I3D) are checked against their reference
implementations with random weights saved in the reference's own file layout. Their full-size weights are too
large to keep as test fixtures, so both sides rebuild them from this recipe: the fixture script
(``scripts/eval_reference_fixtures.py``, run in a separate environment with the reference code, which does not
install portrait and loads this file by path) and the tests. Only numpy is imported here.

Recipe per tensor, with its own generator ``numpy.random.default_rng([seed, crc32(key)])`` (PCG64):

* ``*num_batches_tracked``: int64 zeros;
* ``*running_mean``: 0.1·N(0, 1); ``*running_var``: 1 + 0.2·U(0, 1);
* a 1-D ``*weight`` (a normalisation scale): 1 + 0.1·N(0, 1); ``*bias``: 0.05·N(0, 1);
* any other tensor (conv / linear weights): N(0, 1)·√(2 / fan_in)·``scales.get(key, 1)``, fan_in = the product
  of all dimensions but the first (He initialisation, so activations keep their size through ReLU layers).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np


def _generator(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def random_tensor(key: str, shape: Sequence[int], seed: int, scale: float = 1.0) -> np.ndarray:
    """One tensor of the recipe (see the module docstring): float32, or int64 for ``num_batches_tracked``."""
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    rng = _generator(seed, key)
    if key.endswith("running_mean"):
        values = 0.1 * rng.standard_normal(shape)
    elif key.endswith("running_var"):
        values = 1.0 + 0.2 * rng.random(shape)
    elif key.endswith("bias"):
        values = 0.05 * rng.standard_normal(shape)
    elif key.endswith("weight") and len(shape) == 1:
        values = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        values = rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1)) * scale
    return values.astype(np.float32)


def random_state(
    shapes: Mapping[str, Sequence[int]], seed: int, scales: Mapping[str, float] | None = None
) -> dict[str, np.ndarray]:
    """``{key: array}`` for every key of ``shapes`` (in its order), by the module's recipe.

    Args:
        shapes: tensor name → shape, e.g. ``{k: tuple(v.shape) for k, v in model.state_dict().items()}``.
        seed: the recipe's seed (each tensor also seeds with its name, so the order does not matter).
        scales: extra factors for named weight tensors (e.g. 1/255 for a first layer fed 0–255 pixels).
    """
    scales = dict(scales or {})
    unknown = sorted(set(scales) - set(shapes))
    if unknown:
        raise KeyError(f"scales name tensors that are not in shapes: {unknown}")
    return {key: random_tensor(key, shape, seed, scales.get(key, 1.0)) for key, shape in shapes.items()}


def random_pixels(seed: int, shape: Sequence[int]) -> np.ndarray:
    """``shape`` uint8 values, uniform over 0–255, from ``numpy.random.default_rng(seed)`` (test images)."""
    return np.random.default_rng(seed).integers(0, 256, size=tuple(shape), dtype=np.uint8)


def random_int16(seed: int, count: int, amplitude: float = 6000.0) -> np.ndarray:
    """``(count,)`` int16 speech-like samples: a 16 kHz chirp, loudness changing every 40 ms, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(count) / 16000.0
    loudness = np.repeat(rng.random(count // 640 + 1), 640)[:count]
    wave = np.sin(2 * np.pi * (150 + 900 * t) * t) + 0.3 * rng.standard_normal(count)
    return np.clip(np.round(amplitude * loudness * wave), -32768, 32767).astype(np.int16)


def random_scene(seed: int, shape: Sequence[int]) -> np.ndarray:
    """uint8 images ``(N, H, W, 3)`` or clips ``(B, T, H, W, 3)`` that differ clearly from each other.

    Each image (or clip) is a coarse grid of random colours (cells of about an eighth of the side) with
    pixel noise; in a clip the grid slides right by one pixel per frame. Unlike uniform noise, whose
    pooled features barely differ from image to image, these give feature sets with a real spread.
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(seed)
    clips = shape if len(shape) == 5 else (shape[0], 1, *shape[1:])
    count, frames, height, width, _ = clips
    cell = max(2, min(height, width) // 8)
    out = np.empty(clips, dtype=np.uint8)
    for index in range(count):
        grid = rng.random((height // cell + 2, (width + frames) // cell + 2, 3)) * 255
        big = np.kron(grid, np.ones((cell, cell, 1)))
        for t in range(frames):
            window = big[:height, frames - t : frames - t + width]
            noisy = window + rng.normal(0, 12, size=window.shape)
            out[index, t] = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return out if len(shape) == 5 else out[:, 0]
