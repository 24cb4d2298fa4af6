"""Landmarks → motion maps: per frame 3 semantic channels drawn anti-aliased, float32 in [0, 1].

Channels (:data:`CHANNELS`): 0 ``outline`` (jaw, brows, nose bridge and nostrils, as open polylines),
1 ``eyes`` (both eyes, closed), 2 ``lips`` (outer and inner lips, closed; blank when ``draw_mouth`` is
off, which leaves the mouth to the audio). Lines are ``cv2.polylines`` with ``LINE_AA`` and 4 bits of
sub-pixel precision, thickness ``max(1, round(H / 256))``, on a black background.

One frame is 3·H·W·4 bytes (3 MiB at 512²); :func:`render_frame` draws a single frame for callers that
render lazily per window.
"""

from __future__ import annotations

import importlib

import numpy as np

from portrait.errors import InputError
from portrait.motion.landmarks import (
    INNER_LIPS,
    JAW,
    LEFT_BROW,
    LEFT_EYE,
    NOSE_BRIDGE,
    NOSTRILS,
    OUTER_LIPS,
    RIGHT_BROW,
    RIGHT_EYE,
)

CHANNELS = ("outline", "eyes", "lips")
#: (channel, point indices, closed) of every drawn curve.
CURVES: tuple[tuple[int, np.ndarray, bool], ...] = (
    (0, JAW, False),
    (0, RIGHT_BROW, False),
    (0, LEFT_BROW, False),
    (0, NOSE_BRIDGE, False),
    (0, NOSTRILS, False),
    (1, RIGHT_EYE, True),
    (1, LEFT_EYE, True),
    (2, OUTER_LIPS, True),
    (2, INNER_LIPS, True),
)
_SHIFT = 4


def default_thickness(height: int) -> int:
    """Line thickness for a map of ``height`` pixels: ``max(1, round(height / 256))``."""
    return max(1, round(height / 256))


def render_frame(
    points: np.ndarray, size: tuple[int, int], *, draw_mouth: bool = True, thickness: int | None = None
) -> np.ndarray:
    """Draw one frame of landmarks.

    Args:
        points: (68, 2) ``(x, y)`` in the map's pixels (points outside are clipped by drawing).
        size: ``(W, H)`` of the map.
        draw_mouth: draw the lips channel (``False``: channel 2 is all zeros).

    Returns:
        (3, H, W) float32 in [0, 1].
    """
    cv2 = importlib.import_module("cv2")
    width, height = size
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise InputError(f"motion-map landmarks must be finite with shape (68, 2), got {points.shape}")
    thickness = default_thickness(height) if thickness is None else thickness
    canvas = np.zeros((3, height, width), dtype=np.uint8)
    fixed = np.round(np.clip(points, -4 * max(size), 5 * max(size)) * (1 << _SHIFT)).astype(np.int32)
    for channel, indices, closed in CURVES:
        if channel == 2 and not draw_mouth:
            continue
        cv2.polylines(
            canvas[channel], [fixed[indices].reshape(-1, 1, 2)], closed, 255, thickness, cv2.LINE_AA, _SHIFT
        )
    return canvas.astype(np.float32) / 255.0


def render_motion_maps(
    landmarks: np.ndarray,
    size: tuple[int, int],
    *,
    source_size: tuple[int, int] | None = None,
    draw_mouth: bool = True,
    thickness: int | None = None,
) -> np.ndarray:
    """Motion maps of a landmark sequence.

    Args:
        landmarks: (F, 68, 2) points in pixels of an image of ``source_size`` (``None``: of ``size``).
        size: ``(W, H)`` of the maps (the working resolution).

    Returns:
        (F, 3, H, W) float32 in [0, 1].
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
        raise InputError(f"landmarks must have shape (F, 68, 2), got {landmarks.shape}")
    width, height = size
    if width < 1 or height < 1:
        raise InputError(f"motion-map size must be positive, got {size}")
    if source_size is not None:
        landmarks = landmarks * np.array([width / source_size[0], height / source_size[1]])
    maps = np.empty((len(landmarks), 3, height, width), dtype=np.float32)
    for i, points in enumerate(landmarks):
        maps[i] = render_frame(points, size, draw_mouth=draw_mouth, thickness=thickness)
    return maps
