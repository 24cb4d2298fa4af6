"""One face track per video: boxes and 68-point landmarks per frame.

The detector runs every ``detect_every`` frames (the box is held in between) unless the caller passes each
frame's detections; the landmarker runs on every frame inside the current box. Frames without a face get NaN
rows, so every later series has one value per frame and the gaps are visible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from portrait.boxes import Box, iou
from portrait.errors import InputError
from portrait.motion.landmarks import Landmarker
from portrait.preprocess.detectors import Face, FaceDetector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceTrack:
    """Per-frame face geometry of one video.

    Attributes:
        boxes: ``(T, 4)`` float ``x, y, w, h`` in frame pixels; NaN rows where no face was found.
        landmarks: ``(T, 68, 2)`` float pixels (NaN where missing), or ``None`` without a landmarker.
        size: ``(width, height)`` of the frames.
    """

    boxes: np.ndarray
    landmarks: np.ndarray | None
    size: tuple[int, int]

    @property
    def num_frames(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def found(self) -> np.ndarray:
        """``(T,)`` bool: frames with a face box."""
        return np.isfinite(self.boxes).all(axis=1)


class FaceTracker:
    """Feed frames one at a time with :meth:`update`; :meth:`track` returns the :class:`FaceTrack`.

    Args:
        detector: a face detector (BGR input, as the project's detectors take).
        landmarker: optional 68-point landmarker (RGB input); ``None`` leaves ``landmarks`` unset.
        detect_every: run the detector on every n-th frame and hold the box in between (≥ 1).
    """

    def __init__(self, detector: FaceDetector, landmarker: Landmarker | None = None, detect_every: int = 5):
        if detect_every < 1:
            raise InputError(f"detect_every must be at least 1, got {detect_every}")
        self.detector, self.landmarker, self.detect_every = detector, landmarker, detect_every
        self._boxes: list[Box] = []
        self._landmarks: list[np.ndarray] = []
        self._current: Box | None = None
        self._size: tuple[int, int] | None = None

    def update(
        self, frame: np.ndarray, faces: list[Face] | None = None
    ) -> tuple[Box | None, np.ndarray | None]:
        """Track one ``(H, W, 3)`` uint8 RGB frame; returns its box and ``(68, 2)`` landmarks (or None).

        ``faces``: this frame's detections when the caller already ran the detector on it (then they are used
        whatever the stride); otherwise the detector runs every ``detect_every`` frames.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise InputError(f"frames must be (H, W, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
        self._size = (frame.shape[1], frame.shape[0])
        if faces is None and len(self._boxes) % self.detect_every == 0:
            faces = self.detector.detect(np.ascontiguousarray(frame[:, :, ::-1]))
        if faces is not None:
            if not faces:
                self._current = None
            elif self._current is None:
                self._current = max(faces, key=lambda f: f.area).box
            else:
                previous = self._current
                self._current = max(faces, key=lambda f: (iou(previous, f.box), f.area)).box
        box = self._current
        points = None
        if box is not None and self.landmarker is not None:
            points = np.asarray(self.landmarker(frame, box), dtype=np.float64)
            if points.shape != (68, 2):
                raise InputError(f"the landmarker returned shape {points.shape}, expected (68, 2)")
        self._boxes.append(tuple(box) if box is not None else (np.nan,) * 4)
        self._landmarks.append(points if points is not None else np.full((68, 2), np.nan))
        return box, points

    def track(self) -> FaceTrack:
        boxes = np.asarray(self._boxes, dtype=np.float64).reshape(-1, 4)
        landmarks = np.stack(self._landmarks) if self.landmarker is not None and self._landmarks else None
        if self._size is None:
            raise InputError("the video has no frames")
        return FaceTrack(boxes, landmarks, self._size)


def interpolate_gaps(series: np.ndarray) -> np.ndarray:
    """Fill NaNs of a ``(T,)`` series linearly (ends held); all-NaN stays all-NaN."""
    series = np.asarray(series, dtype=np.float64)
    good = np.isfinite(series)
    if good.all() or not good.any():
        return series.copy()
    index = np.arange(series.shape[0])
    return np.interp(index, index[good], series[good])
