"""Inputs shared by the tests: seeded tiny-pipeline tensors, and a web-demo studio on a weights tree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

#: Working size of the tiny pipeline tests.
H = W = 64


def pipeline_inputs(num_frames: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(ref (1,3,H,W) in [-1,1], clip (1,3,224,224), mask (1,3,H,W), windows (N,10,3,16), prior (1,256))."""
    gen = torch.Generator().manual_seed(seed)
    ref = torch.rand(1, 3, H, W, generator=gen) * 2 - 1
    clip = torch.randn(1, 3, 224, 224, generator=gen)
    mask = torch.zeros(1, 3, H, W)
    mask[..., 14:50, 10:54] = 1.0
    windows = torch.randn(num_frames, 10, 3, 16, generator=gen)
    prior = torch.randn(1, 256, generator=gen) * 0.85
    return ref, clip, mask, windows, prior


def studio_on(weights: Path, workspace_dir: Path, steps: int) -> Iterator:
    """A loaded :class:`~portrait.app.handler.Studio` (dlib detector, 3 s of audio) for a module fixture."""
    from portrait.app.handler import Studio
    from portrait.app.workspace import Workspace
    from portrait.config import load_config

    cfg = load_config(values={"runtime.weights": str(weights), "sampling.steps": steps})
    studio = Studio(cfg, detector="dlib", max_seconds=3.0, workspace=Workspace(workspace_dir))
    studio.engine()
    yield studio
    studio.workspace.cleanup()
