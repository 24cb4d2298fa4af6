"""A drawn "face" whose every property is known: 68 landmarks from a few numbers, a picture from them, and the
tools that find it again in pixels (a detector, a landmarker, the centroid of the face-coloured pixels).

The face is an ellipse (semi-axes ``r`` and 1.15·``r``) of one skin colour on a plain background, with dark
brows and eyes, a nose line, lips that open by ``mouth_open`` and curve by ``smile``, and cheeks tinted by
the emotion. :func:`face_landmarks` places the 68 iBUG 300-W points from ``(centre, r, mouth_open, smile,
brow)``; :func:`draw_face` paints them. dlib's HOG detector and 68-point model are trained on photographs
and do not find such a drawing, so :class:`SyntheticFaceDetector` and :class:`SyntheticLandmarker` (the
``FaceDetector`` and ``Landmarker`` protocols) find it by colour: every pixel far from the background
colour (the median of the image border) belongs to the face. :func:`face_centroid` is the trajectory
measure of the learning check: the centroid of those pixels, weighted by how far from the background
each one is (a blurred or half-formed face still has a centre).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from portrait.boxes import Box
from portrait.preprocess.detectors import Face

#: Face height over width (the ellipse's semi-axes are r and ASPECT·r).
ASPECT = 1.15
#: A pixel whose RGB distance to the background is below LOW is background, above HIGH face (linear between).
LOW, HIGH = 30.0, 70.0
#: Drawing resolution over output resolution (the picture is drawn large, then area-averaged: anti-aliased).
SUPERSAMPLE = 4


@dataclass(frozen=True)
class FaceStyle:
    """One synthetic speaker: skin, background and lip colours (RGB 0-255) and the face radius.

    ``radius``: ``r`` as a fraction of the frame's width.
    """

    skin: tuple[int, int, int]
    background: tuple[int, int, int]
    radius: float = 0.25
    lips: tuple[int, int, int] = (150, 40, 60)


@dataclass(frozen=True)
class Expression:
    """How an emotion looks: ``smile`` in [-1, 1] (mouth corners up > 0), ``brow`` in [-1, 1] (inner brow
    ends down > 0, an angry V), ``eye_open`` (1 = neutral height), ``cheek`` tint or None."""

    smile: float = 0.0
    brow: float = 0.0
    eye_open: float = 1.0
    cheek: tuple[int, int, int] | None = None


def _lip_lines(x: np.ndarray, mw: float, r: float, smile: float, opening: float, outer: bool) -> np.ndarray:
    """(2, n) y offsets of the upper and lower lip at x offsets ``x`` from the mouth centre."""
    taper = 1 - (x / mw) ** 2
    bend = -smile * 0.12 * r * (x / mw) ** 2
    gap = opening * 0.11 * r * taper
    thick = (0.07 * r * taper) if outer else 0.0
    return np.stack([bend - gap - thick, bend + gap + thick])


def face_landmarks(
    center: tuple[float, float], r: float, mouth_open: float = 0.0, smile: float = 0.0, brow: float = 0.0,
    eye_open: float = 1.0,
) -> np.ndarray:  # fmt: skip
    """The 68 points (iBUG 300-W order) of a synthetic face.

    Args:
        center: ``(x, y)`` of the face ellipse in pixels. r: its half-width in pixels.
        mouth_open: 0 (closed) to 1 (open). smile, brow, eye_open: see :class:`Expression`.

    Returns:
        (68, 2) float32 ``(x, y)`` pixels.
    """
    cx, cy = center
    pts = np.zeros((68, 2), dtype=np.float64)
    theta = np.pi * np.arange(17) / 16
    pts[0:17] = np.stack([cx - r * np.cos(theta), cy + ASPECT * r * np.sin(theta)], 1)
    xs = np.linspace(0.2, 0.7, 5)
    lift = 0.5 * r + 0.05 * r * np.sin(np.pi * (xs - 0.2) / 0.5)
    inner = brow * 0.12 * r * np.linspace(1, 0, 5)  # the inner end moves most
    pts[17:22] = np.stack([cx - r * xs[::-1], cy - lift[::-1] + inner[::-1]], 1)  # outer end first
    pts[22:27] = np.stack([cx + r * xs, cy - lift + inner], 1)
    pts[27:31] = np.stack([np.full(4, cx), cy + r * np.linspace(-0.35, 0.1, 4)], 1)
    pts[31:36] = np.stack([cx + r * np.linspace(-0.15, 0.15, 5), np.full(5, cy + 0.18 * r)], 1)
    ew, eh = 0.16 * r, 0.08 * r * eye_open
    eye = np.array([[-ew, 0], [-ew / 3, -eh], [ew / 3, -eh], [ew, 0], [ew / 3, eh], [-ew / 3, eh]])
    pts[36:42] = eye + (cx - 0.38 * r, cy - 0.28 * r)
    pts[42:48] = eye + (cx + 0.38 * r, cy - 0.28 * r)
    mw, my = 0.32 * r, cy + 0.52 * r
    ox = mw * np.array([-1, -0.6, -0.25, 0, 0.25, 0.6, 1])
    up, low = _lip_lines(ox, mw, r, smile, mouth_open, outer=True)
    pts[48:55] = np.stack([cx + ox, my + up], 1)
    pts[55:60] = np.stack([cx + ox[5:0:-1], my + low[5:0:-1]], 1)
    ix = 0.85 * mw * np.array([-1, -0.45, 0, 0.45, 1])
    up, low = _lip_lines(ix, mw, r, smile, mouth_open, outer=False)
    pts[60:65] = np.stack([cx + ix, my + up], 1)
    pts[65:68] = np.stack([cx + ix[3:0:-1], my + low[3:0:-1]], 1)
    return pts.astype(np.float32)


def draw_face(points: np.ndarray, size: int, style: FaceStyle, expression: Expression) -> np.ndarray:
    """Paint the face of ``points`` (from :func:`face_landmarks`) on a ``size``² frame.

    Returns:
        (size, size, 3) uint8 RGB.
    """
    cv2 = importlib.import_module("cv2")
    s = SUPERSAMPLE
    canvas = np.empty((size * s, size * s, 3), dtype=np.uint8)
    canvas[:] = style.background
    p = np.asarray(points, dtype=np.float64) * s
    center = p[0:17:16].mean(0)  # the jaw's two ends lie on the ellipse's horizontal axis
    r = (p[16, 0] - p[0, 0]) / 2

    def poly(idx: slice, colour, closed=True, fill=False, width=0.0) -> None:
        pts = np.round(p[idx]).astype(np.int32).reshape(-1, 1, 2)
        if fill:
            cv2.fillPoly(canvas, [pts], colour, cv2.LINE_AA)
        else:
            cv2.polylines(canvas, [pts], closed, colour, max(1, round(width)), cv2.LINE_AA)

    axes = (round(r), round(ASPECT * r))
    cv2.ellipse(canvas, tuple(np.round(center).astype(int)), axes, 0, 0, 360, style.skin, -1, cv2.LINE_AA)
    if expression.cheek is not None:
        for side in (-1, 1):
            at = (round(center[0] + side * 0.5 * r), round(center[1] + 0.22 * r))
            cv2.circle(canvas, at, round(0.16 * r), expression.cheek, -1, cv2.LINE_AA)
    dark = tuple(int(c * 0.25) for c in style.skin)
    poly(slice(17, 22), dark, closed=False, width=0.07 * r)
    poly(slice(22, 27), dark, closed=False, width=0.07 * r)
    poly(slice(27, 31), tuple(int(c * 0.7) for c in style.skin), closed=False, width=0.04 * r)
    poly(slice(36, 42), (30, 30, 40), fill=True)
    poly(slice(42, 48), (30, 30, 40), fill=True)
    poly(slice(48, 60), style.lips, fill=True)
    if p[66, 1] - p[62, 1] > 0.5 * s:
        poly(slice(60, 68), (40, 10, 20), fill=True)
    return cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)


# ------------------------------------------------------------------------------------------- measuring
def background_colour(frame: np.ndarray) -> np.ndarray:
    """(3,) median RGB of the frame's one-pixel border (the face never touches it)."""
    border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]]).astype(np.float64)
    return np.median(border, axis=0)


def face_weights(frame: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float64 in [0, 1]: how surely each pixel is face (its RGB distance to the background colour,
    ramped from :data:`LOW` to :data:`HIGH`). ``frame``: (H, W, 3) uint8 RGB."""
    bg = background_colour(frame) if background is None else np.asarray(background, dtype=np.float64)
    distance = np.linalg.norm(frame.astype(np.float64) - bg, axis=-1)
    return np.clip((distance - LOW) / (HIGH - LOW), 0.0, 1.0)


def face_centroid(frame: np.ndarray, background: np.ndarray | None = None) -> tuple[float, float]:
    """``(x, y)`` pixel centre of the face: the :func:`face_weights`-weighted mean position.

    Returns ``(nan, nan)`` when no pixel differs from the background.
    """
    weights = face_weights(frame, background)
    total = weights.sum()
    if total <= 0:
        return float("nan"), float("nan")
    ys, xs = np.indices(weights.shape)
    return float((weights * (xs + 0.5)).sum() / total), float((weights * (ys + 0.5)).sum() / total)


def face_trajectory(frames: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """(N, 2) :func:`face_centroid` of every frame of (N, H, W, 3) uint8 RGB ``frames``."""
    return np.array([face_centroid(f, background) for f in frames], dtype=np.float64)


def _fit(frame: np.ndarray) -> tuple[float, float, float] | None:
    """``(cx, cy, r)`` of the face ellipse from the face pixels (None when there are too few)."""
    mask = face_weights(frame) >= 0.5
    area = int(mask.sum())
    if area < 20:
        return None
    ys, xs = np.nonzero(mask)
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5), float(np.sqrt(area / (np.pi * ASPECT)))


class SyntheticFaceDetector:
    """``FaceDetector`` for the drawn face: the bounding box of the face pixels (one face or none)."""

    name = "synthetic"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        fit = _fit(np.ascontiguousarray(image_bgr[:, :, ::-1]))
        if fit is None:
            return []
        cx, cy, r = fit
        return [Face((cx - r, cy - ASPECT * r, 2 * r, 2 * ASPECT * r), 1.0)]


class SyntheticLandmarker:
    """``Landmarker`` for the drawn face: the template of :func:`face_landmarks` fitted to the face pixels.

    Centre and radius come from the face pixels, the mouth opening from the dark mouth pixels under the
    nose; smile and brows are not measured (0). ``box`` is ignored: the face is found again in ``image``.
    """

    name = "synthetic"

    def __call__(self, image: np.ndarray, box: Box) -> np.ndarray:
        fit = _fit(image)
        if fit is None:
            x, y, w, h = box
            return face_landmarks((x + w / 2, y + h / 2), w / 2)
        cx, cy, r = fit
        x1, x2 = int(cx - 0.3 * r), int(np.ceil(cx + 0.3 * r))
        y1, y2 = int(cy + 0.3 * r), int(np.ceil(cy + 0.8 * r))
        mouth = image[max(y1, 0) : y2, max(x1, 0) : x2].astype(np.float64)
        dark = (mouth.max(-1) < 90).sum() if mouth.size else 0
        opening = float(np.clip(dark / max(0.08 * r * r, 1.0), 0.0, 1.0))  # cavity ≈ 0.08·r² when open
        return face_landmarks((cx, cy), r, mouth_open=opening)
