"""Inputs shared by the tests: seeded tiny-pipeline tensors, a web-demo studio on a weights tree, and a folder
of batch inputs with its manifest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

#: Working size of the tiny pipeline tests.
H = W = 64
REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parents[1] / "portrait" / "assets"


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


def tiny_tree(tmp_path_factory: Any, layout: str) -> Path:
    """A tiny weights tree (seed 0) in ``layout`` (``"portrait"`` or ``"dice-talk"``) in a new temp folder."""
    from portrait.testing.trees import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("tiny") / layout, layout=layout, seed=0)


def modules_imported_by(code: str, names: Sequence[str]) -> list[str]:
    """Which of ``names`` are in ``sys.modules`` after ``code`` runs in a fresh interpreter at the repository
    root (with the repository on ``PYTHONPATH``): what an import costs."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {tuple(names)!r} if m in sys.modules))"
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env={**os.environ, "PYTHONPATH": path},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


def guided_weights_tree(root: Path) -> Path:
    """A tiny portrait-layout weights tree (seed 0) plus a non-zero landmark guider: the stand-in for a
    fine-tuned one, so ``--motion`` steers the render."""
    from portrait.testing.trees import write_tiny_landmark_guider, write_tiny_weights

    write_tiny_weights(root, layout="portrait", seed=0)
    write_tiny_landmark_guider(root, seed=0)
    return root


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


def batch_inputs(
    folder: Path, portraits: Sequence[str] = ("anna.jpg",), speech: str = "hello.wav", seconds: float = 1.2
) -> Path:
    """``folder`` with the sample portrait under each relative name of ``portraits`` and the first
    ``seconds`` of the sample speech as ``speech`` (short audio keeps tiny renders fast)."""
    import soundfile as sf

    for name in portraits:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ASSETS / "sample_portrait.jpg", folder / name)
    samples, rate = sf.read(ASSETS / "sample_speech.wav")
    sf.write(folder / speech, samples[: int(seconds * rate)], rate)
    return folder


def write_manifest(path: Path, rows: Sequence[object]) -> Path:
    """A JSONL manifest: a dict row is written as JSON, a string row as it is (blank, comment, bad JSON)."""
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in rows) + "\n")
    return path
