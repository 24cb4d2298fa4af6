"""Follow one face through frames: detect, match, move the box with the landmarks, check it still fits.

:func:`follow_face` consumes a ``(t, frame)`` iterator lazily and returns raw per-frame landmarks (NaN where
the face was not found). The detector runs every ``detect_every`` frames and whenever the face was lost,
its patch no longer resembles the last detection, or its landmarks do not fit the generic 3D face.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from portrait.boxes import Box, iou
from portrait.errors import InputError
from portrait.motion import pose as geometry
from portrait.motion.landmarks import NUM_POINTS, RIGID, Landmarker
from portrait.preprocess.detectors import Face, FaceDetector

logger = logging.getLogger(__name__)


class _FaceFollower:
    """Chooses the tracked face among detections and moves its box with the landmarks in between."""

    def __init__(self, face_index: int | None, min_iou: float = 0.25, max_jump: float = 2.0) -> None:
        self.face_index, self.min_iou, self.max_jump = face_index, min_iou, max_jump
        self.max_faces = 0
        self._det_box: Box | None = None
        self._det_points: np.ndarray | None = None
        self._last_points: np.ndarray | None = None
        self._last_box: Box | None = None
        self._template = np.zeros(0)

    @property
    def acquired(self) -> bool:
        return self._last_box is not None

    def choose(self, faces: list[Face], lost: bool) -> Box | None:
        """The detection that continues the track (``None``: the tracked face is not among them)."""
        self.max_faces = max(self.max_faces, len(faces))
        if not faces:
            return None
        by_area = sorted(faces, key=lambda f: -f.area)
        if self._last_box is None:
            index = self.face_index or 0
            return by_area[index].box if index < len(by_area) else None
        if lost:  # re-acquire: the detection nearest to where the face was last seen
            x, y, w, h = self._last_box

            def distance(face: Face) -> float:
                return math.hypot(
                    face.box[0] + face.box[2] / 2 - x - w / 2, face.box[1] + face.box[3] / 2 - y - h / 2
                )

            nearest = min(by_area, key=distance)
            return nearest.box if distance(nearest) <= self.max_jump * max(w, h) else None
        predicted = self.predict()
        best = max(by_area, key=lambda f: iou(f.box, predicted))
        return best.box if iou(best.box, predicted) >= self.min_iou else None

    def predict(self) -> Box:
        """The last detection box moved by the similarity between its landmarks and the latest ones."""
        assert self._det_box is not None and self._det_points is not None and self._last_points is not None
        matrix, offset = geometry.umeyama(self._det_points[RIGID], self._last_points[RIGID])
        x, y, w, h = self._det_box
        cx, cy = geometry.apply(matrix, offset, np.array([x + w / 2, y + h / 2]))
        s = math.sqrt(abs(np.linalg.det(matrix)))
        return (float(cx - s * w / 2), float(cy - s * h / 2), float(s * w), float(s * h))

    def update(self, frame: np.ndarray, box: Box, points: np.ndarray, detected: bool) -> None:
        if detected:
            self._det_box, self._det_points, self._template = box, points, _patch(frame, box)
        self._last_box, self._last_points = box, points

    def looks_alike(self, frame: np.ndarray, box: Box, threshold: float) -> bool:
        """Whether the patch under ``box`` still resembles the face at the last detection (NCC)."""
        return float(_patch(frame, box) @ self._template) >= threshold


def _patch(frame: np.ndarray, box: Box, side: int = 24) -> np.ndarray:
    """(side², ) zero-mean unit-norm grey patch under ``box`` (zeros when flat or outside the frame)."""
    cv2 = importlib.import_module("cv2")
    height, width = frame.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(box[0] + box[2]) + 1), min(height, int(box[1] + box[3]) + 1)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return np.zeros(side * side)
    grey = frame[y1:y2, x1:x2].astype(np.float32).mean(axis=2)
    small = cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA).ravel().astype(np.float64)
    small -= small.mean()
    norm = np.linalg.norm(small)
    return small / norm if norm > 1e-3 else np.zeros(side * side)


def _measure(
    frame: np.ndarray, box: Box, landmarker: Landmarker, size: tuple[int, int]
) -> tuple[np.ndarray, float]:
    points = np.asarray(landmarker(frame, box), dtype=np.float32)
    if points.shape != (NUM_POINTS, 2) or not np.isfinite(points).all():
        return points, 0.0
    try:
        fit = geometry.head_pose(points, size)
    except InputError:
        return points, 0.0
    return points, geometry.fit_confidence(points, fit)


class _Found(NamedTuple):
    """The followed face in one frame: its box, (68, 2) landmarks, fit confidence, and whether it was
    detected in this frame (rather than followed from the previous one)."""

    box: Box
    points: np.ndarray
    confidence: float
    detected: bool


def _locate(
    frame: np.ndarray,
    follower: _FaceFollower,
    landmarker: Landmarker,
    detector: FaceDetector,
    *,
    follow: bool,
    lost: bool,
    min_confidence: float,
    min_similarity: float,
) -> _Found | None:
    """One frame: move the box with the landmarks when ``follow`` and that still fits, else detect."""
    size = (frame.shape[1], frame.shape[0])
    if follow:
        box = follower.predict()
        if follower.looks_alike(frame, box, min_similarity):
            points, confidence = _measure(frame, box, landmarker, size)
            if confidence >= min_confidence:
                return _Found(box, points, confidence, False)
    chosen = follower.choose(detector.detect(np.ascontiguousarray(frame[:, :, ::-1])), lost)
    if chosen is None:
        return None
    points, confidence = _measure(frame, chosen, landmarker, size)
    return _Found(chosen, points, confidence, True) if confidence >= min_confidence else None


def follow_face(
    frames: Iterable[tuple[float, np.ndarray]],
    landmarker: Landmarker,
    detector: FaceDetector,
    *,
    face_index: int | None = None,
    detect_every: int = 5,
    min_confidence: float = 0.25,
    min_similarity: float = 0.6,
    max_seconds: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Landmarks of one face in every frame, consuming ``frames`` lazily.

    Args:
        frames: ``(t, (H, W, 3) uint8 RGB)`` pairs.
        detect_every: run the detector at least every this many frames; in between the box follows the
            landmarks while the patch under it still resembles the last detection (normalised
            cross-correlation of 24² grey patches >= ``min_similarity``) and the landmarks fit the 3D face
            (:func:`~portrait.motion.pose.fit_confidence` >= ``min_confidence``); otherwise it detects.
        max_seconds: stop before the first frame with ``t >= max_seconds`` (the iterator is not read on).

    Returns:
        ``times (T,)``, ``landmarks (T, 68, 2)`` float32 in frame pixels with NaN where the face was not
        found, ``confidence (T,)`` float32, and the most faces seen in one detection.
    """
    follower = _FaceFollower(face_index)
    times: list[float] = []
    points_list: list[np.ndarray] = []
    confidences: list[float] = []
    since_detect, lost = detect_every, True
    missing = np.full((NUM_POINTS, 2), np.nan, dtype=np.float32)
    for t, frame in frames:
        if max_seconds is not None and t >= max_seconds:
            logger.warning(
                "driving video is longer than %.1f s: only its first %.1f s are used",
                max_seconds,
                max_seconds,
            )
            break
        follow = follower.acquired and not lost and since_detect < detect_every
        found = _locate(
            frame, follower, landmarker, detector, follow=follow, lost=lost,
            min_confidence=min_confidence, min_similarity=min_similarity,
        )  # fmt: skip
        times.append(float(t))
        lost = found is None
        if found is None:  # the detector ran and found nothing usable
            since_detect = 0
            points_list.append(missing)
            confidences.append(0.0)
            continue
        since_detect = 1 if found.detected else since_detect + 1
        follower.update(frame, found.box, found.points, found.detected)
        points_list.append(found.points)
        confidences.append(found.confidence)
    landmarks = np.stack(points_list) if points_list else np.zeros((0, NUM_POINTS, 2), np.float32)
    return np.asarray(times), landmarks, np.asarray(confidences, np.float32), follower.max_faces
