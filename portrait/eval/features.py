"""The FID and FVD feature extractors with their reference preprocessing, fed one frame at a time.

* :class:`InceptionFeatures` (FID, as pytorch-fid): each whole frame at the video's own resolution → float in
  [0, 1] (``x / 255``) → :class:`~portrait.models.inception.FIDInceptionV3` (bilinear 299², [-1, 1]) → 2048-d.
* :class:`I3DFeatures` (FVD, as VideoGPT / common_metrics_on_video_quality): each frame → ``x / 255`` →
  shorter side bilinearly to 224 (the other side ``ceil``), centre crop 224², ``(x − 0.5) · 2``; consecutive
  16-frame clips (non-overlapping, a shorter tail is dropped) → :class:`~portrait.models.i3d.InceptionI3d` →
  400 logits.

:class:`FeatureStream` buffers preprocessed frames and runs the network a batch at a time, so a long video
never holds more than one batch of frames. Both extractors are pure tensor code around a module (no I/O).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from portrait.models.i3d import CLIP_FRAMES
from portrait.models.i3d import INPUT_SIZE as I3D_SIZE
from portrait.models.inception import INPUT_SIZE as FID_SIZE


def _unit_frame(frame: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 RGB → ``(3, H, W)`` float32 in [0, 1] (torchvision's ``ToTensor``)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"frames must be (H, W, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
    return (
        torch.from_numpy(np.array(frame)).permute(2, 0, 1).float().div(255)
    )  # a copy: frames may be read-only


def fvd_frame(frame: np.ndarray, size: int = I3D_SIZE) -> torch.Tensor:
    """One frame as VideoGPT's ``preprocess`` makes it: ``(3, size, size)`` float32 in [-1, 1]."""
    x = _unit_frame(frame)[None]
    height, width = x.shape[-2:]
    scale = size / min(height, width)
    target = (size, math.ceil(width * scale)) if height < width else (math.ceil(height * scale), size)
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)[0]
    top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
    return (x[:, top : top + size, left : left + size] - 0.5) * 2


class InceptionFeatures:
    """``frames (N, H, W, 3) uint8 → (N, D)`` FID pool features (D = 2048 for the release).

    Args:
        model: a :class:`~portrait.models.inception.FIDInceptionV3` in eval mode (its device is used).
        name: backend name for the output. batch: frames per forward pass.
    """

    unit = 1

    def __init__(
        self, model: torch.nn.Module, name: str = "pytorch-fid InceptionV3", batch: int = 16
    ) -> None:
        self.model, self.name, self.batch = model.eval(), name, batch

    def prepare(self, frame: np.ndarray) -> torch.Tensor:
        """``(3, 299, 299)``: the model's own bilinear resize done now (resizing 299² again is the identity),
        so a batch holds small frames whatever the video's resolution."""
        x = _unit_frame(frame)[None]
        return F.interpolate(x, size=(FID_SIZE, FID_SIZE), mode="bilinear", align_corners=False)[0]

    @torch.no_grad()
    def run(self, items: list[torch.Tensor]) -> np.ndarray:
        """Features of prepared frames (frames of one video may differ in nothing but content)."""
        device = next(self.model.parameters()).device
        return self.model(torch.stack(items).to(device)).double().cpu().numpy()

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return run_all(self, list(frames))


class I3DFeatures:
    """``clips (B, T, H, W, 3) uint8 → (B, 400)`` FVD logits, or a stream of frames cut into 16-frame clips.

    Args:
        model: a :class:`~portrait.models.i3d.InceptionI3d` in eval mode. clip_frames: frames per clip.
        name: backend name. batch: clips per forward pass.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        name: str = "VideoGPT I3D",
        clip_frames: int = CLIP_FRAMES,
        batch: int = 2,
    ) -> None:
        self.model, self.name, self.batch, self.unit = model.eval(), name, batch, clip_frames

    def prepare(self, frame: np.ndarray) -> torch.Tensor:
        return fvd_frame(frame)

    @torch.no_grad()
    def run(self, items: list[torch.Tensor]) -> np.ndarray:
        """Logits of prepared frames, ``len(items)`` a multiple of the clip length, clip after clip."""
        device = next(self.model.parameters()).device
        clips = torch.stack(items).view(-1, self.unit, *items[0].shape).permute(0, 2, 1, 3, 4)
        return self.model(clips.to(device)).double().cpu().numpy()

    def __call__(self, clips: np.ndarray) -> np.ndarray:
        return run_all(
            self, [frame for clip in clips for frame in clip[: len(clip) // self.unit * self.unit]]
        )


def run_all(extractor: Any, frames: list[np.ndarray]) -> np.ndarray:
    """Every feature of ``frames`` through a :class:`FeatureStream` (whole units only)."""
    stream = FeatureStream(extractor)
    for frame in frames:
        stream.add(frame)
    out = stream.finish()
    if out is None:
        raise ValueError(f"{extractor.name}: fewer frames ({len(frames)}) than one unit ({extractor.unit})")
    return out


class FeatureStream:
    """Frames in one at a time, features out a batch at a time (``extractor.batch`` units of ``unit`` frames).

    ``every``: keep one frame in ``every`` (FID frame sampling; clips always take consecutive frames).
    """

    def __init__(self, extractor: Any, every: int = 1) -> None:
        self.extractor, self.every = extractor, max(1, int(every))
        self._pending: list[torch.Tensor] = []
        self._features: list[np.ndarray] = []
        self.seen = 0

    def add(self, frame: np.ndarray) -> None:
        index, self.seen = self.seen, self.seen + 1
        if index % self.every:
            return
        self._pending.append(self.extractor.prepare(frame))
        if len(self._pending) >= self.extractor.batch * self.extractor.unit:
            self._flush()

    def _flush(self) -> None:
        usable = len(self._pending) // self.extractor.unit * self.extractor.unit
        if usable:
            self._features.append(self.extractor.run(self._pending[:usable]))
        self._pending = self._pending[usable:]

    def finish(self) -> np.ndarray | None:
        """``(K, D)`` features of every whole unit seen (a shorter tail dropped); None when there is none."""
        self._flush()
        self._pending = []
        return np.concatenate(self._features) if self._features else None
