"""Head-motion energy of a landmark track and its mapping to SVD's motion bucket (experimental).

The release weights have no landmark guider, so with them alone a driving track can only steer the one
motion knob the release was conditioned on: SVD's ``motion_bucket_id`` (``added_time_ids[1]``, 8 by
default). This module holds the two pure steps of that path; the pipeline averages the per-frame table
over each window (``PortraitPipeline(..., motion_bucket_ids=...)``).

1. :func:`head_motion_energy`: per frame, the speed of the rigid face points (nose bridge, nose base and
   the four eye corners: the points that move with the head, not with the lips, brows or jaw), in face
   sizes (interocular distances) per second.
2. :func:`motion_bucket_table`: energy → bucket on an absolute, piecewise-linear scale:
   ``0 → low``, ``energy_mid → center``, ``energy_high`` and above ``→ high`` (defaults 0 → 2,
   0.25 face sizes/s → 8, 1 face size/s → 16). The anchors are uncalibrated guesses, not measurements.

An absolute scale (rather than one stretched between the track's own percentiles) keeps a nearly still
driving track calm instead of blowing its jitter up to the full range.
"""

from __future__ import annotations

import numpy as np

from portrait.errors import InputError
from portrait.motion.landmarks import interocular

#: iBUG 300-W points that move with the head only: nose bridge and base (27-35), outer/inner eye corners.
RIGID_POINTS = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)
#: Bucket bounds of :func:`motion_bucket_table` (SVD's bucket of the release is 8).
BUCKET_LOW, BUCKET_HIGH = 2.0, 16.0
#: Energy anchors in face sizes per second: ``ENERGY_MID`` maps to the config's bucket, ``ENERGY_HIGH`` up
#: to ``BUCKET_HIGH``.
ENERGY_MID, ENERGY_HIGH = 0.25, 1.0


def head_motion_energy(landmarks: np.ndarray, fps: float) -> np.ndarray:
    """Per-frame head-motion speed of a landmark track.

    Args:
        landmarks: (N, 68, 2) points per frame (iBUG 300-W order), any pixel scale, at ``fps``.
        fps: the rate of the frames (the generation rate, 12.5).

    Returns:
        (N,) float64 >= 0: mean displacement of :data:`RIGID_POINTS` from the previous frame, times
        ``fps``, over the frame's interocular distance (face sizes per second). Frame 0 has no previous
        frame and takes frame 1's value; a single frame gives ``[0]``.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2) or len(points) == 0:
        raise InputError(f"landmarks must be (N >= 1, 68, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise InputError("landmarks must be finite")
    if not fps > 0:
        raise InputError(f"fps must be > 0, got {fps}")
    energy = np.zeros(len(points))
    if len(points) > 1:
        rigid = points[:, RIGID_POINTS]
        step = np.linalg.norm(np.diff(rigid, axis=0), axis=-1).mean(-1)
        energy[1:] = step * fps / np.maximum(interocular(points[1:]), 1e-6)
        energy[0] = energy[1]
    return energy


def motion_bucket_table(
    energy: np.ndarray,
    center: float = 8.0,
    low: float = BUCKET_LOW,
    high: float = BUCKET_HIGH,
    energy_mid: float = ENERGY_MID,
    energy_high: float = ENERGY_HIGH,
) -> np.ndarray:
    """Per-frame motion bucket from per-frame energy (piecewise linear, clamped).

    Args:
        energy: (N,) face sizes per second (:func:`head_motion_energy`).
        center: the bucket of ``energy_mid``: the config's ``sampling.motion_bucket_id``. The bounds widen
            to include it (``min(low, center)``, ``max(high, center)``).
        low, high: the buckets of zero energy and of ``energy_high`` and above.
        energy_mid, energy_high: the anchors, ``0 < energy_mid < energy_high``.

    Returns:
        (N,) float64 in ``[min(low, center), max(high, center)]``, not rounded (the pipeline rounds each
        window's mean).
    """
    values = np.asarray(energy, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all() or (values < 0).any():
        raise InputError(f"energy must be a finite (N,) array >= 0, got shape {values.shape}")
    if not 0 < energy_mid < energy_high:
        raise InputError(f"need 0 < energy_mid < energy_high, got {energy_mid}, {energy_high}")
    if not 0 <= low <= high:
        raise InputError(f"need 0 <= low <= high, got {low}, {high}")
    anchors = [min(low, center), float(center), max(high, center)]
    return np.interp(values, [0.0, energy_mid, energy_high], anchors)


def per_second_buckets(table: np.ndarray, fps: float) -> list[float]:
    """Mean bucket of each second of a per-frame table (the sidecar's record), rounded to 0.01."""
    values = np.asarray(table, dtype=np.float64)
    second = (np.arange(len(values)) / fps).astype(int)
    return (
        [round(float(values[second == s].mean()), 2) for s in range(int(second[-1]) + 1)]
        if len(values)
        else []
    )
