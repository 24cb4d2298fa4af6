"""Head pose from 68 landmarks (``cv2.solvePnP`` on a generic 3D face) and 2D similarity transforms.

The generic face (:func:`generic_face_3d`) is built here from standard adult anthropometric averages, in
millimetres: outer eye corners 90 mm apart, inner corners 32 mm, eye fissure 10 mm high, nose tip 38 mm
below and 32 mm in front of the eye line, nose 32 mm wide, subnasale 48 mm below the eyes, mouth 50 mm wide
at 70 mm, chin (gnathion) 112 mm below the eyes, bizygomatic contour 136 mm wide. Axes follow the camera:
x to the image's right, y down, z away from the camera; the origin is the midpoint between the inner eye
corners. Only the rigid points (nose and eye corners, :data:`~portrait.motion.landmarks.RIGID`) enter the
pose fit, so expressions and the jaw contour do not move it.

Angle conventions (degrees) of :func:`head_pose`: ``yaw`` > 0 when the nose turns towards the image's right,
``pitch`` > 0 when the face looks up, ``roll`` > 0 when the head is rotated counter-clockwise as seen in the
image. ``tx, ty``: the image position (pixels) of the model origin; ``scale``: pixels per millimetre there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import numpy as np

from portrait.errors import InputError
from portrait.motion.landmarks import RIGID

POSE_KEYS = ("yaw", "pitch", "roll", "tx", "ty", "scale")


def _lids(outer: float, inner: float, sign: float) -> list[tuple[float, float, float]]:
    """Six eye points 36-41 (or 42-47): outer, upper-outer, upper-inner, inner, lower-inner, lower-outer."""
    xo, xi = sign * outer, sign * inner
    x1, x2 = xo + (xi - xo) / 3, xo + 2 * (xi - xo) / 3
    return [(xo, 0, 10), (x1, -4.5, 4), (x2, -4.5, 1), (xi, 0, 0), (x2, 4, 1), (x1, 4, 4)]


def generic_face_3d() -> np.ndarray:
    """The generic 3D face: (68, 3) float64 millimetres in the iBUG order (see the module docstring)."""
    u = (np.arange(17) - 8) / 8.0  # jaw parameter, -1 (image left) .. 1
    jaw = np.stack(
        [68 * np.sin(u * np.pi / 2), 5 + 107 * (1 - np.abs(u) ** 2.2), -8 + 78 * np.abs(u) ** 1.5], 1
    )
    brow_x = np.array([55, 44, 33, 22, 13.0])
    brow_y = np.array([-17, -23, -25, -24, -21.0])
    brow_z = np.array([14, 4, -2, -5, -6.0])
    right_brow = np.stack([-brow_x, brow_y, brow_z], 1)
    left_brow = np.stack([brow_x[::-1], brow_y[::-1], brow_z[::-1]], 1)
    bridge = [(0, 0, -8), (0, 12, -16), (0, 24, -24), (0, 38, -32)]
    nostrils = [(-16, 45, -14), (-8, 47, -20), (0, 48, -23), (8, 47, -20), (16, 45, -14)]
    outer_lips = [
        (-25, 70, -8), (-16, 64, -16), (-7, 61, -21), (0, 62, -22), (7, 61, -21), (16, 64, -16),
        (25, 70, -8), (16, 77, -16), (7, 80, -20), (0, 81, -21), (-7, 80, -20), (-16, 77, -16),
    ]  # fmt: skip
    inner_lips = [(-21, 70, -9), (-8, 68, -18), (0, 68, -19), (8, 68, -18),
                  (21, 70, -9), (8, 71, -18), (0, 71, -19), (-8, 71, -18)]  # fmt: skip
    left_eye = _lids(45, 16, 1.0)
    right_eye = _lids(45, 16, -1.0)
    left_eye = [left_eye[3], left_eye[2], left_eye[1], left_eye[0], left_eye[5], left_eye[4]]  # 42 = inner
    parts = [jaw, right_brow, left_brow, bridge, nostrils, right_eye, left_eye, outer_lips, inner_lips]
    model = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in parts])
    assert model.shape == (68, 3)
    return model


@dataclass(frozen=True)
class PoseFit:
    """One head pose: angles in degrees, ``tx, ty`` pixels, ``scale`` px/mm, ``error`` rms px of the fit."""

    yaw: float
    pitch: float
    roll: float
    tx: float
    ty: float
    scale: float
    error: float

    def as_array(self) -> np.ndarray:
        """(6,) float32 ``yaw, pitch, roll, tx, ty, scale``."""
        return np.array([self.yaw, self.pitch, self.roll, self.tx, self.ty, self.scale], dtype=np.float32)


def head_pose(points: np.ndarray, size: tuple[int, int], model: np.ndarray | None = None) -> PoseFit:
    """Head pose of one face by ``cv2.solvePnP`` (iterative) on the rigid points.

    Args:
        points: (68, 2) landmarks in pixels of an image of ``size = (w, h)``.
        size: image size; the camera has focal length ``max(w, h)`` and its centre in the middle.
        model: (68, 3) 3D face (default :func:`generic_face_3d`).

    Raises:
        InputError: no pose fits (degenerate points, or the face would be behind the camera).
    """
    cv2 = importlib.import_module("cv2")
    model = generic_face_3d() if model is None else model
    w, h = size
    focal = float(max(w, h))
    camera = np.array([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], dtype=np.float64)
    object_points = np.ascontiguousarray(model[RIGID])
    image_points = np.ascontiguousarray(np.asarray(points, dtype=np.float64)[RIGID])
    try:
        ok, rvec, tvec = cv2.solvePnP(object_points, image_points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    except cv2.error:  # degenerate points (all equal, on a line): OpenCV asserts instead of failing
        ok, tvec = False, np.zeros((3, 1))
    if not ok or not np.isfinite(tvec).all() or tvec[2, 0] <= 0:
        raise InputError("head pose could not be estimated from these landmarks (degenerate points)")
    rotation, _ = cv2.Rodrigues(rvec)
    projected, _ = cv2.projectPoints(object_points, rvec, tvec, camera, None)
    error = float(np.sqrt(np.mean(np.sum((projected[:, 0] - image_points) ** 2, axis=1))))
    # rotation = Rz(g) Ry(b) Rx(a); the signs turn them into the documented yaw / pitch / roll.
    b = np.arcsin(np.clip(-rotation[2, 0], -1.0, 1.0))
    a = np.arctan2(rotation[2, 1], rotation[2, 2])
    g = np.arctan2(rotation[1, 0], rotation[0, 0])
    z = float(tvec[2, 0])
    return PoseFit(
        yaw=float(-np.degrees(b)),
        pitch=float(-np.degrees(a)),
        roll=float(-np.degrees(g)),
        tx=float(focal * tvec[0, 0] / z + w / 2),
        ty=float(focal * tvec[1, 0] / z + h / 2),
        scale=float(focal / z),
        error=error,
    )


def fit_confidence(points: np.ndarray, fit: PoseFit, sigma: float = 0.08) -> float:
    """Plausibility of landmarks in [0, 1]: ``exp(-(rms pose-fit error / interocular) / sigma)``."""
    size = float(np.linalg.norm(points[45] - points[36]))
    if not np.isfinite(size) or size < 1e-3:
        return 0.0
    return float(np.exp(-(fit.error / size) / sigma))


# -------------------------------------------------------------------------------------------------------
# 2D similarity transforms x ↦ A x + b with A = s·R(θ)
# -------------------------------------------------------------------------------------------------------


def umeyama(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama) taking (N, 2) ``source`` onto ``target``: ``(A (2, 2), b (2,))``."""
    src, dst = np.asarray(source, np.float64), np.asarray(target, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_s, dst - mu_d
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ d @ vt
    variance = (src_c**2).sum(1).mean()
    scale = float(np.trace(np.diag(singular) @ d) / max(variance, 1e-12))
    matrix = scale * rotation
    return matrix, mu_d - matrix @ mu_s


def apply(matrix: np.ndarray, offset: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points @ A.T + b`` for (..., 2) points."""
    return points @ matrix.T + offset


def invert(matrix: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``x ↦ A x + b``."""
    inverse = np.linalg.inv(matrix)
    return inverse, -inverse @ offset


def to_params(matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``(log s, θ, bx, by)`` of a similarity."""
    scale = np.sqrt(abs(np.linalg.det(matrix)))
    return np.array([np.log(scale), np.arctan2(matrix[1, 0], matrix[0, 0]), offset[0], offset[1]])


def from_params(params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_params`."""
    log_s, theta, bx, by = params
    c, s = np.cos(theta), np.sin(theta)
    return np.exp(log_s) * np.array([[c, -s], [s, c]]), np.array([bx, by])
