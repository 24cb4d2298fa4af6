"""Driving landmarks → landmarks on the portrait's own face, resampled to the generation rate.

Modes (``motion.retarget``), with portrait landmarks ``L_s`` and driving landmarks ``L_t``:

- ``relative`` (default): motion relative to the driver's most neutral frame ``d0`` (smallest mouth opening
  and typical eye openness among the frames whose yaw/pitch are within 10° of the closest to the portrait's).
  ``S`` = similarity ``d0 → portrait`` on the rigid points, ``T_t`` = similarity ``t → d0``. Expression:
  ``Δ_t = T_t(L_t) − L_d0``, moved into the portrait by ``S``'s linear part and scaled per part (jaw, brows,
  nose, eyes, mouth) by the ratio of the part's size in the portrait and in ``S(L_d0)``; ``E_t = L_s +
  expression_gain · k_p · A_S Δ_t``. Pose: ``P_t = S ∘ T_t⁻¹ ∘ S⁻¹`` with ``pose_gain`` applied to its
  log-scale, angle and translation about the portrait's rigid centroid; ``L̂_t = P_t(E_t)``. The driver's
  frame ``d0`` gives exactly ``L_s``. Out-of-plane rotation (yaw, pitch) appears as a deformation of the
  2D points and so follows the expression gain.
- ``offset``: ``L_s + pose_gain · κ (c_t − c_0)``: the portrait's points translated with the driver's rigid
  centroid ``c`` (``κ`` = portrait/driver face-size ratio, ``0`` = the first driving frame).
- ``naive``: ``κ L_t + (c_s − κ c_0)``: the driver's points scaled and moved onto the portrait (no gains).
- ``fixed``: ``L_s`` on every frame (a still head; no gains).

``mouth="audio"`` (default) leaves the lips to the audio: in ``relative`` mode the mouth and the lower jaw
(points 5-11) get no expression displacement, and the lips channel of the motion maps is blank (see
:mod:`portrait.motion.maps`). ``mouth="video"`` drives them too.

Time: the driving track is resampled to ``fps`` (12.5 for generation) by linear interpolation; when it is
shorter than needed it is extended by ``pingpong`` (forward, backward, forward, ...) or ``hold`` (the last
frame repeats).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from portrait.constants import EXTEND_MODES, MOUTH_MODES, RETARGET_MODES
from portrait.errors import ConfigError, InputError
from portrait.motion import pose as geometry
from portrait.motion.landmarks import MOUTH, PARTS, RIGID, check_landmarks, eye_opening, mouth_opening
from portrait.motion.track import Track

#: Points that carry no expression in ``mouth="audio"``: the lips and the lower jaw.
AUDIO_DRIVEN = np.concatenate([MOUTH, np.arange(5, 12)])


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    return value


def check_motion_options(mode: str = "relative", mouth: str = "audio", extend: str = "pingpong") -> None:
    """ConfigError naming the value when a retarget mode, mouth mode or extension is unknown."""
    _choice(mode, RETARGET_MODES, "retarget mode")
    _choice(mouth, MOUTH_MODES, "mouth mode")
    _choice(extend, EXTEND_MODES, "motion extension")


def source_times(duration: float, num_frames: int, fps: float, extend: str = "pingpong") -> np.ndarray:
    """Driving-track times (s from its start) for output frames ``j / fps``, ``j < num_frames``.

    ``duration`` is the time of the track's last sample; output times past it fold back (``pingpong``)
    or stay at it (``hold``). Returns (num_frames,) float64.
    """
    _choice(extend, EXTEND_MODES, "motion extension")
    if num_frames < 1 or not fps > 0:
        raise InputError(f"need num_frames >= 1 and fps > 0, got {num_frames} and {fps}")
    times = np.arange(num_frames) / fps
    if duration <= 0:
        return np.zeros(num_frames)
    if extend == "hold":
        return np.minimum(times, duration)
    folded = np.mod(times, 2 * duration)
    return np.where(folded > duration, 2 * duration - folded, folded)


def resample(values: np.ndarray, times: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Linear interpolation of (T, ...) ``values`` sampled at (T,) ``times`` at (N,) times ``at``."""
    if len(values) == 1:
        return np.repeat(values, len(at), axis=0)
    position = np.interp(at, times, np.arange(len(times), dtype=np.float64))
    low = np.clip(np.floor(position).astype(int), 0, len(times) - 2)
    weight = (position - low).reshape(-1, *([1] * (values.ndim - 1)))
    return (1 - weight) * values[low] + weight * values[low + 1]


def neutral_frame(track: Track, portrait_pose: np.ndarray | None = None, window: float = 10.0) -> int:
    """Index of the driver's most neutral frame (see the module docstring); ``portrait_pose`` (6,)."""
    target = np.zeros(2) if portrait_pose is None else np.asarray(portrait_pose[:2], np.float64)
    distance = np.linalg.norm(track.poses[:, :2] - target, axis=1)
    candidates = np.flatnonzero(distance <= distance.min() + window)
    eyes = eye_opening(track.landmarks[candidates])
    score = mouth_opening(track.landmarks[candidates]) + 0.5 * np.abs(eyes - np.median(eyes))
    score = score + (track.confidence[candidates] <= 0) * 10.0  # a filled frame only if nothing else
    return int(candidates[int(np.argmin(score))])


def _compose(first: tuple[np.ndarray, np.ndarray], second: tuple[np.ndarray, np.ndarray]):
    """``first ∘ second`` of two similarities ``(A, b)``."""
    return first[0] @ second[0], first[0] @ second[1] + first[1]


def _part_gains(portrait: np.ndarray, moved_neutral: np.ndarray) -> np.ndarray:
    """(68,) per-point scale: part size in the portrait over its size in the moved neutral frame."""
    gains = np.ones(68)
    for indices in PARTS.values():
        size_s = np.sqrt(((portrait[indices] - portrait[indices].mean(0)) ** 2).sum(1).mean())
        size_d = np.sqrt(((moved_neutral[indices] - moved_neutral[indices].mean(0)) ** 2).sum(1).mean())
        gains[indices] = np.clip(size_s / max(size_d, 1e-6), 0.5, 2.0)
    return gains


def _scaled_pose(transform: tuple[np.ndarray, np.ndarray], centre: np.ndarray, gain: float):
    """The similarity with its log-scale, angle and translation about ``centre`` multiplied by ``gain``."""
    matrix, offset = transform
    log_s, theta, _, _ = geometry.to_params(matrix, offset)
    shift = matrix @ centre + offset - centre
    scaled, _ = geometry.from_params(np.array([gain * log_s, gain * theta, 0.0, 0.0]))
    return scaled, centre + gain * shift - scaled @ centre


def _relative(driving, portrait, neutral, pose_gain, expression_gain, mouth) -> np.ndarray:
    to_portrait = geometry.umeyama(neutral[RIGID], portrait[RIGID])
    from_portrait = geometry.invert(*to_portrait)
    gains = _part_gains(portrait, geometry.apply(*to_portrait, neutral))[:, None]
    if mouth == "audio":
        gains[AUDIO_DRIVEN] = 0.0
    centre = portrait[RIGID].mean(0)
    out = np.empty_like(driving)
    for i, frame in enumerate(driving):
        to_neutral = geometry.umeyama(frame[RIGID], neutral[RIGID])
        delta = geometry.apply(*to_neutral, frame) - neutral
        expression = portrait + expression_gain * gains * (delta @ to_portrait[0].T)
        motion = _compose(_compose(to_portrait, geometry.invert(*to_neutral)), from_portrait)
        out[i] = geometry.apply(*_scaled_pose(motion, centre, pose_gain), expression)
    return out


def _face_size(points: np.ndarray) -> float:
    rigid = points[RIGID]
    return float(np.sqrt(((rigid - rigid.mean(0)) ** 2).sum(1).mean()))


def retarget(
    driving: np.ndarray,
    portrait: np.ndarray,
    mode: str = "relative",
    *,
    neutral: np.ndarray | None = None,
    pose_gain: float = 1.0,
    expression_gain: float = 1.0,
    mouth: str = "audio",
) -> np.ndarray:
    """Move driving landmarks onto the portrait's face.

    Args:
        driving: (N, 68, 2) driving landmarks (any pixel frame).
        portrait: (68, 2) the portrait's landmarks, in the pixel frame the result should be in.
        mode: ``relative``, ``offset``, ``naive`` or ``fixed``.
        neutral: (68, 2) the driver's neutral frame for ``relative`` (default: ``driving[0]``); ``offset``
            and ``naive`` measure from ``driving[0]``.
        pose_gain, expression_gain: multipliers of head motion and expression (``relative``; ``offset``
            uses ``pose_gain``).
        mouth: ``audio`` or ``video``.

    Returns:
        (N, 68, 2) float32 landmarks in the portrait's pixel frame.
    """
    _choice(mode, RETARGET_MODES, "retarget mode")
    _choice(mouth, MOUTH_MODES, "mouth mode")
    portrait = check_landmarks(portrait, "portrait landmarks").astype(np.float64)
    driving = np.asarray(driving, dtype=np.float64)
    if driving.ndim != 3 or driving.shape[1:] != (68, 2) or len(driving) == 0:
        raise InputError(f"driving landmarks must have shape (N, 68, 2), got {driving.shape}")
    for name, gain in (("pose", pose_gain), ("expression", expression_gain)):
        if not (np.isfinite(gain) and 0 <= gain <= 4):
            raise ConfigError(f"motion {name} gain must be in [0, 4], got {gain}")
    if mode == "fixed":
        out = np.repeat(portrait[None], len(driving), axis=0)
    elif mode == "relative":
        reference = driving[0] if neutral is None else np.asarray(neutral, dtype=np.float64)
        out = _relative(driving, portrait, reference, pose_gain, expression_gain, mouth)
    else:
        kappa = _face_size(portrait) / max(_face_size(driving[0]), 1e-6)
        centres = driving[:, RIGID].mean(1)
        if mode == "offset":
            out = portrait[None] + pose_gain * kappa * (centres - centres[0])[:, None, :]
        else:
            out = kappa * driving + (portrait[RIGID].mean(0) - kappa * centres[0])
    return out.astype(np.float32)


@dataclass(frozen=True)
class Retargeted:
    """Result of :func:`retarget_track`.

    Attributes:
        landmarks: (N, 68, 2) float32 landmarks on the portrait, one per output frame.
        times: (N,) seconds into the driving track each output frame came from.
        neutral_index: index (in the track) of the driver's neutral frame.
    """

    landmarks: np.ndarray
    times: np.ndarray
    neutral_index: int


def retarget_track(
    track: Track,
    portrait: np.ndarray,
    num_frames: int,
    fps: float = 12.5,
    mode: str = "relative",
    *,
    pose_gain: float = 1.0,
    expression_gain: float = 1.0,
    mouth: str = "audio",
    extend: str = "pingpong",
    portrait_pose: np.ndarray | None = None,
) -> Retargeted:
    """Resample ``track`` to ``num_frames`` frames at ``fps`` and retarget it onto ``portrait`` (68, 2).

    ``portrait_pose`` (6,), the portrait's head pose, steers the choice of the neutral frame.
    """
    start = float(track.times[0])
    at = source_times(float(track.times[-1]) - start, num_frames, fps, extend)
    driving = resample(track.landmarks.astype(np.float64), track.times - start, at)
    neutral_index = neutral_frame(track, portrait_pose)
    landmarks = retarget(
        driving, portrait, mode, neutral=track.landmarks[neutral_index], pose_gain=pose_gain,
        expression_gain=expression_gain, mouth=mouth,
    )  # fmt: skip
    return Retargeted(landmarks, at, neutral_index)
