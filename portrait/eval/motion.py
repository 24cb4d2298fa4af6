"""Motion and temporal-quality metrics from a face track (all at 25 fps).

* ``pose_jitter``: mean |second difference| of yaw, pitch and roll (degrees per frame²), from the PnP fit
  of :func:`portrait.motion.pose.head_pose`: steady heads score near 0, shaking ones high.
* ``landmark_velocity``: mean per-frame landmark displacement over the eye-corner distance.
* ``blink_rate``: blinks per minute; a blink is a run of frames whose eye aspect ratio (EAR, mean of both
  eyes) is below ``threshold`` (default 0.75 × the video's median EAR, so it adapts to the face).
* ``flicker``: mean absolute grey-level difference (0–255) between consecutive frames outside the
  (expanded) face box: the background should not move.
* ``lmd`` / ``lmd_mouth``: mean landmark distance to the ground-truth video after removing each frame's
  centroid and scale (eye-corner distance), all 68 points / mouth points 48–67.
"""

from __future__ import annotations

import numpy as np

from portrait.boxes import Box
from portrait.errors import InputError
from portrait.eval.metric import Metric, available, unavailable
from portrait.motion.landmarks import eye_opening, interocular
from portrait.motion.pose import head_pose

LANDMARK_BACKEND = "68-pt landmarks"


def head_pose_series(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(T, 3)`` yaw, pitch, roll in degrees (:func:`portrait.motion.pose.head_pose`; NaN where none).

    Args:
        landmarks: ``(T, 68, 2)`` pixels. size: ``(width, height)`` of the frames.
    """
    out = np.full((landmarks.shape[0], 3), np.nan)
    for t, points in enumerate(np.asarray(landmarks, dtype=np.float64)):
        if np.isfinite(points).all():
            try:
                fit = head_pose(points, size)
            except InputError:
                continue
            out[t] = (fit.yaw, fit.pitch, fit.roll)
    return out


def pose_jitter(pose: np.ndarray) -> Metric:
    """Mean |Δ²| of yaw/pitch/roll over frames where three consecutive poses exist (degrees)."""
    backend = "PnP head pose from 68-pt landmarks"
    second = np.abs(np.diff(np.asarray(pose, dtype=np.float64), n=2, axis=0))
    good = np.isfinite(second).all(axis=1)
    if not good.any():
        return unavailable(backend, "fewer than 3 consecutive frames with landmarks")
    per_axis = second[good].mean(axis=0)
    return available(
        float(per_axis.mean()),
        backend,
        yaw=float(per_axis[0]),
        pitch=float(per_axis[1]),
        roll=float(per_axis[2]),
    )


def landmark_velocity(landmarks: np.ndarray) -> Metric:
    """Mean landmark displacement between consecutive frames over the eye-corner distance."""
    pts = np.asarray(landmarks, dtype=np.float64)
    step = np.linalg.norm(np.diff(pts, axis=0), axis=-1).mean(axis=-1) / interocular(pts)[1:]
    step = step[np.isfinite(step)]
    if step.size == 0:
        return unavailable(LANDMARK_BACKEND, "fewer than 2 consecutive frames with landmarks")
    return available(float(step.mean()), LANDMARK_BACKEND, max=float(step.max()))


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """``(T,)`` mean EAR of both eyes, ``(|p2−p6| + |p3−p5|) / (2|p1−p4|)`` (``eye_opening``)."""
    return eye_opening(np.asarray(landmarks, dtype=np.float64))


def count_blinks(ear: np.ndarray, threshold: float) -> int:
    """Number of runs of consecutive finite EAR values below ``threshold``."""
    below = np.nan_to_num(np.asarray(ear, dtype=np.float64), nan=np.inf) < threshold
    return int(np.sum(below[1:] & ~below[:-1]) + int(below[0])) if below.size else 0


def blink_rate(ear: np.ndarray, fps: float, threshold: float | None = None) -> Metric:
    """Blinks per minute; ``threshold`` defaults to 0.75 × the median EAR."""
    ear = np.asarray(ear, dtype=np.float64)
    finite = ear[np.isfinite(ear)]
    if finite.size < 2:
        return unavailable(LANDMARK_BACKEND, "fewer than 2 frames with landmarks")
    limit = 0.75 * float(np.median(finite)) if threshold is None else threshold
    blinks = count_blinks(ear, limit)
    minutes = ear.size / fps / 60.0
    return available(
        blinks / minutes, LANDMARK_BACKEND, blinks=blinks, threshold=limit, mean_ear=float(finite.mean())
    )


def background_difference(
    previous: np.ndarray, frame: np.ndarray, box: Box | None, scale: float = 1.6
) -> float:
    """Mean |grey difference| of two ``(H, W, 3)`` uint8 frames outside ``box`` scaled ``scale``×."""
    weights = np.array([0.299, 0.587, 0.114])
    diff = np.abs(frame.astype(np.float32) @ weights - previous.astype(np.float32) @ weights)
    mask = np.ones(diff.shape, dtype=bool)
    if box is not None and np.isfinite(box).all():
        x, y, w, h = box
        cx, cy, half_w, half_h = x + w / 2, y + h / 2, scale * w / 2, scale * h / 2
        y0, y1 = max(int(cy - half_h), 0), max(int(cy + half_h), 0)
        x0, x1 = max(int(cx - half_w), 0), max(int(cx + half_w), 0)
        mask[y0:y1, x0:x1] = False
    return float(diff[mask].mean()) if mask.any() else float("nan")


def flicker(differences: np.ndarray) -> Metric:
    """Mean of the per-frame-pair background differences (grey levels 0–255)."""
    backend = "mean |Δ grey| outside 1.6× face box"
    values = np.asarray(differences, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return unavailable(backend, "needs at least 2 frames with background pixels")
    return available(float(values.mean()), backend, p95=float(np.percentile(values, 95)))


def _normalised(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(axis=1, keepdims=True)
    return centred / interocular(points)[:, None, None]


def lmd_metrics(pred: np.ndarray | None, gt: np.ndarray | None) -> tuple[Metric, Metric]:
    """``(lmd, lmd_mouth)``: mean normalised point distance over frames both videos have (by index)."""
    backend = "68-pt landmarks, centroid + eye-corner normalised"
    if pred is None or gt is None:
        why = "needs a ground-truth video (--gt VIDEO) and a landmarker"
        return unavailable(backend, why), unavailable(backend, why)
    n = min(pred.shape[0], gt.shape[0])
    distance = np.linalg.norm(_normalised(pred[:n]) - _normalised(gt[:n]), axis=-1)  # (n, 68)
    good = np.isfinite(distance).all(axis=1)
    if not good.any():
        why = "no frame index has landmarks in both videos"
        return unavailable(backend, why), unavailable(backend, why)
    frames = int(good.sum())
    return (
        available(float(distance[good].mean()), backend, frames=frames),
        available(float(distance[good][:, 48:68].mean()), backend, frames=frames),
    )
