"""A random training cache shaped for a weights tree: what ``train motion|embedder`` read, in seconds.

``train prepare`` needs talking-head videos, a face landmarker and the tree's encoders; a rehearsal only
needs the cache's shapes. :func:`write_random_cache` writes the same files (``shards/*.safetensors``,
``index.json`` through :func:`portrait.training.prepare.build_index`) with seeded random latents, Whisper
windows and expressions, a face box of landmarks and the motion maps drawn from them, at any working size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from portrait.layout import MANIFEST_FILE
from portrait.motion.maps import render_motion_maps
from portrait.training.data import SHARDS_DIR, Source, weights_hash
from portrait.training.prepare import PrepareSettings, build_index, write_shard

#: (speaker, emotion, level) of the cached clips: one speaker, so no validation split (an evaluation of
#: ``train motion`` is then 3 UNet calls, not 3 per validation clip more: minutes at the true size on a CPU).
CLIPS = (("R001", "happy", 3), ("R001", "sad", 2))
#: Whisper tokens per frame window and expression classes (fer's seven), as ``train prepare`` caches them.
AUDIO_TOKENS, EXPRESSIONS = 10, 7


def tree_feature_sizes(weights: Path) -> dict[str, int]:
    """Widths a cache of ``weights`` holds: CLIP embedding, Whisper hidden states and channels, latents."""
    clip = json.loads((weights / "image_encoder" / "config.json").read_text())
    whisper = json.loads((weights / "audio_encoder" / "config.json").read_text())
    vae = json.loads((weights / "vae" / "config.json").read_text())
    return {
        "clip": int(clip["projection_dim"]),
        "blocks": int(whisper["encoder_layers"]) + 1,
        "channels": int(whisper["d_model"]),
        "latent": int(vae.get("latent_channels", 4)),
    }


def _landmarks(gen: torch.Generator, frames: int, size: int) -> np.ndarray:
    """(frames, 68, 2) points in the central half of a ``size``² image (a jittering face box)."""
    points = 0.25 + 0.5 * torch.rand(68, 2, generator=gen)
    jitter = 0.01 * torch.randn(frames, 1, 2, generator=gen)
    return ((points[None] + jitter) * size).numpy().astype(np.float32)


def random_clip(
    gen: torch.Generator, frames: int, size: int, widths: dict[str, int]
) -> dict[str, torch.Tensor]:
    """Every tensor ``train prepare`` caches for one clip (shapes of ``prepare.extract_video``), float16."""
    h = size // 8
    landmarks = _landmarks(gen, frames, size)
    maps = render_motion_maps(landmarks, (size, size))
    mask = torch.zeros(size, size, dtype=torch.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    audio = torch.randn(frames, AUDIO_TOKENS, widths["blocks"], widths["channels"], generator=gen)
    return {
        "latents": torch.randn(frames, widths["latent"], h, h, generator=gen).half(),
        "cond_latent": torch.randn(widths["latent"], h, h, generator=gen).half(),
        "clip": torch.randn(widths["clip"], generator=gen),
        "audio": audio.half(),
        "landmarks": torch.from_numpy(landmarks),
        "motion_maps": torch.from_numpy(np.round(maps * 255).astype(np.uint8)),
        "expression": torch.softmax(torch.randn(frames, EXPRESSIONS, generator=gen), dim=-1),
        "face_mask": mask,
    }


def write_random_cache(weights: Path, out: Path, size: int, frames: int = 26, seed: int = 0) -> dict:
    """Write a training cache for ``weights`` at working size ``size`` (a multiple of 64) into ``out``.

    Returns:
        The index (``index.json``): the :data:`CLIPS`, ``frames`` frames each, all in the training split.
    """
    if size % 64 or size < 64:
        raise ValueError(f"the cache size must be a multiple of 64, got {size}")
    if not (weights / MANIFEST_FILE).is_file():
        raise ValueError(f"{weights} has no {MANIFEST_FILE}: write or convert a weights tree first")
    widths = tree_feature_sizes(weights)
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    settings = PrepareSettings(size=size, max_frames=frames)
    gen = torch.Generator().manual_seed(seed)
    sources = []
    for speaker, emotion, level in CLIPS:
        source = Source(out / f"{speaker}_{emotion}.mp4", f"{speaker}__{emotion}", speaker, emotion, level)
        meta = {"id": source.id, "speaker": speaker, "emotion": emotion, "level": str(level),
                "frames": str(frames)}  # fmt: skip
        tensors = random_clip(gen, frames, size, widths)
        write_shard(out / SHARDS_DIR / f"{source.id}.safetensors", tensors, {"entry": json.dumps(meta)})
        sources.append(source)
    return build_index(out, sources, settings, weights_hash(weights))
