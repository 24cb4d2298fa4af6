"""Driving video → :class:`Track`: one face followed through the frames, its 68 landmarks and head pose.

:func:`extract_track` streams a video through ffmpeg (:func:`portrait.preprocess.video.iter_frames`), one
frame in memory at a time; :func:`track_frames` does the work on any ``(t, frame)`` iterator and only keeps
(T, 68, 2) landmarks, so memory grows by about 0.6 kB per frame and ``max_seconds`` bounds it.

Per frame: the face detector runs every ``detect_every`` frames (and whenever the face is lost or its
landmarks look implausible); in between, the box follows the landmarks. The face is the largest one, or
``face_index`` (0 = largest, by area, on the first frame with enough faces); later detections are matched
to it by overlap. Missing frames are interpolated when the gap is shorter than ``max_gap`` seconds and held
otherwise, with a warning naming the span. The rigid transform (similarity on the nose and eye corners) is
smoothed by a zero-lag One-Euro filter; the expression residual by a 5-tap Savitzky-Golay filter, the
mouth by a 3-tap one so that lip timing survives. Head pose comes from the smoothed landmarks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portrait.errors import InputError
from portrait.motion import pose as geometry
from portrait.motion.follow import follow_face
from portrait.motion.landmarks import MOUTH, NUM_POINTS, RIGID, Landmarker
from portrait.motion.smooth import one_euro_zero_lag, savgol
from portrait.preprocess.detectors import FaceDetector

logger = logging.getLogger(__name__)

#: A gap in the face track: ``(start_s, end_s, "interpolated" | "held")``.
Gap = tuple[float, float, str]


@dataclass(frozen=True)
class Track:
    """One face followed through a video, in video pixels.

    Attributes:
        fps: frame rate of the samples.
        size: ``(w, h)`` of the video in pixels.
        times: (T,) float64 seconds, non-decreasing.
        landmarks: (T, 68, 2) float32 ``(x, y)`` pixels, iBUG 300-W order.
        poses: (T, 6) float32 ``yaw, pitch, roll`` (degrees), ``tx, ty`` (pixels), ``scale`` (px/mm); see
            :mod:`portrait.motion.pose` for the conventions.
        confidence: (T,) float32 in [0, 1]; 0 for frames filled across a gap.
        gaps: spans without a detected face and how they were filled.
        source: where the track came from (a file name; informative only).
    """

    fps: float
    size: tuple[int, int]
    times: np.ndarray
    landmarks: np.ndarray
    poses: np.ndarray
    confidence: np.ndarray
    gaps: tuple[Gap, ...] = ()
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        count = len(self.times)
        if count == 0:
            raise InputError("a track needs at least one frame")
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise InputError(f"track fps must be a positive number, got {self.fps}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise InputError(f"track size must be two positive integers [w, h], got {self.size}")
        expected = {"landmarks": (count, NUM_POINTS, 2), "poses": (count, 6), "confidence": (count,)}
        for name, shape in expected.items():
            if np.shape(getattr(self, name)) != shape:
                raise InputError(f"track {name} must have shape {shape}, got {np.shape(getattr(self, name))}")
        if np.any(np.diff(self.times) < 0):
            raise InputError("track times must not decrease")

    @property
    def duration(self) -> float:
        """Seconds covered: last time − first time + one frame."""
        return float(self.times[-1] - self.times[0] + 1.0 / self.fps)


def fill_gaps(
    landmarks: np.ndarray, fps: float, max_gap: float = 0.5, source: str = "the driving video"
) -> tuple[np.ndarray, tuple[Gap, ...]]:
    """Fill NaN frames of (T, 68, 2) ``landmarks``: linear across gaps < ``max_gap`` s, else held.

    A gap at the start is filled with the first found frame. Held gaps are logged as warnings that name
    their time span. Raises InputError when no frame has landmarks.
    """
    valid = np.isfinite(landmarks).all(axis=(1, 2))
    if not valid.any():
        raise InputError(f"no face found in {source}")
    filled = landmarks.copy()
    gaps: list[Gap] = []
    index = 0
    count = len(valid)
    while index < count:
        if valid[index]:
            index += 1
            continue
        end = index
        while end < count and not valid[end]:
            end += 1
        start_s, end_s = index / fps, end / fps
        if index > 0 and end < count and end_s - start_s < max_gap:
            weights = (np.arange(index, end) - (index - 1)) / (end - index + 1)
            filled[index:end] = (1 - weights)[:, None, None] * filled[index - 1] + weights[
                :, None, None
            ] * filled[end]
            gaps.append((start_s, end_s, "interpolated"))
            logger.info("no face in %s from %.2f s to %.2f s: interpolated", source, start_s, end_s)
        else:
            filled[index:end] = filled[index - 1] if index > 0 else filled[end]
            gaps.append((start_s, end_s, "held"))
            logger.warning(
                "no face in %s from %.2f s to %.2f s (%d frames): held the %s pose",
                source, start_s, end_s, end - index, "last" if index > 0 else "first found",
            )  # fmt: skip
        index = end
    return filled, tuple(gaps)


def smooth_landmarks(
    landmarks: np.ndarray, fps: float, min_cutoff: float = 2.0, beta: float = 1.0
) -> np.ndarray:
    """Zero-lag One-Euro on the rigid similarity, Savitzky-Golay on the residual: (T, 68, 2) → same."""
    count = len(landmarks)
    if count < 3:
        return landmarks.astype(np.float32)
    reference = landmarks[0, RIGID].astype(np.float64)
    reference = reference - reference.mean(0)
    size = float(np.sqrt((reference**2).sum(1).mean())) or 1.0
    transforms = [geometry.umeyama(reference, frame[RIGID]) for frame in landmarks]
    params = np.stack([geometry.to_params(m, b) for m, b in transforms])
    params[:, 1] = np.unwrap(params[:, 1])
    norm = np.array([1.0, 1.0, size, size])  # filter translation in face units, like the angles
    filtered = one_euro_zero_lag(params / norm, fps, min_cutoff=min_cutoff, beta=beta) * norm
    shapes = np.stack(
        [
            geometry.apply(*geometry.invert(m, b), frame)
            for (m, b), frame in zip(transforms, landmarks, strict=True)
        ]
    )
    smoothed = savgol(shapes, 5, 2)
    smoothed[:, MOUTH] = savgol(shapes[:, MOUTH], 3, 1)
    out = np.stack(
        [geometry.apply(*geometry.from_params(p), shape) for p, shape in zip(filtered, smoothed, strict=True)]
    )
    return out.astype(np.float32)


def track_frames(
    frames: Iterable[tuple[float, np.ndarray]],
    landmarker: Landmarker,
    detector: FaceDetector,
    *,
    fps: float,
    size: tuple[int, int] | None = None,
    face_index: int | None = None,
    detect_every: int = 5,
    max_seconds: float | None = None,
    max_gap: float = 0.5,
    smooth: bool = True,
    source: str = "the driving video",
) -> Track:
    """Build a :class:`Track` from ``(t, frame)`` pairs at ``fps`` (see :func:`follow_face`).

    ``size`` is the video size the track is expressed in; frames smaller than it (a shrunk analysis copy)
    have their landmarks scaled up to it. ``None``: the frames' own size.
    """
    if face_index is not None and face_index < 0:
        raise InputError(f"face index must be 0 or more, got {face_index}")
    frame_size: list[tuple[int, int]] = []

    def remember_size(pairs: Iterable[tuple[float, np.ndarray]]):
        for t, frame in pairs:
            if not frame_size:
                frame_size.append((frame.shape[1], frame.shape[0]))
            yield t, frame

    times, raw, confidence, max_faces = follow_face(
        remember_size(frames), landmarker, detector, face_index=face_index, detect_every=detect_every,
        max_seconds=max_seconds,
    )  # fmt: skip
    if len(times) == 0:
        raise InputError(f"no video frame was read from {source}")
    if not np.isfinite(raw).any() and face_index and max_faces and face_index >= max_faces:
        raise InputError(f"face index {face_index} is out of range: at most {max_faces} face(s) in {source}")
    analysis = frame_size[0]
    size = size or analysis
    scale = np.array([size[0] / analysis[0], size[1] / analysis[1]], dtype=np.float32)
    landmarks, gaps = fill_gaps(raw * scale, fps, max_gap, source)
    if smooth:  # held gaps end in a jump (the face reappears): smooth each side of it on its own
        cuts = sorted({round(end * fps) for _, end, kind in gaps if kind == "held"} - {0, len(landmarks)})
        pieces = np.split(landmarks, cuts)
        landmarks = np.concatenate([smooth_landmarks(piece, fps) for piece in pieces])
    poses = np.stack([geometry.head_pose(points, size).as_array() for points in landmarks])
    return Track(
        float(fps),
        (int(size[0]), int(size[1])),
        times,
        landmarks.astype(np.float32),
        poses,
        confidence,
        gaps,
        source,
    )


def extract_track(
    path: str | Path,
    landmarker: Landmarker,
    detector: FaceDetector,
    face_index: int | None = None,
    *,
    max_seconds: float | None = 600.0,
    analysis_side: int | None = 640,
    detect_every: int = 5,
    max_gap: float = 0.5,
    smooth: bool = True,
    check: Callable[[], None] | None = None,
) -> Track:
    """Track one face through the video at ``path``, streamed (memory flat in the video's length).

    Frames come at the video's own rate up to :data:`~portrait.preprocess.video.MAX_DECODE_FPS` (a
    stream declaring more is resampled to it), so the work is at most ``max_seconds`` times that rate.

    Args:
        face_index: which face (0 = largest); ``None``: the largest.
        max_seconds: read at most this much of the video (``None``: all of it; a warning when cut).
        analysis_side: detect and place landmarks on frames shrunk to this longer side (the track is in
            full video pixels anyway).
        check: called before each frame; it raises to stop the work (a cancelled request).

    Raises:
        InputError: not a readable video, no face in it, ``face_index`` out of range.
    """
    from portrait.preprocess.video import checked_frames, decode_rate, iter_frames, probe_video

    info = probe_video(path)
    fps, rate = decode_rate(info)
    max_frames = math.ceil(max_seconds * rate) + 1 if max_seconds is not None else None
    frames = iter_frames(path, fps=fps, max_frames=max_frames, max_side=analysis_side)
    frames = checked_frames(frames, check)
    try:
        return track_frames(
            frames, landmarker, detector, fps=rate, size=(info.width, info.height), face_index=face_index,
            detect_every=detect_every, max_seconds=max_seconds, max_gap=max_gap, smooth=smooth,
            source=str(path),
        )  # fmt: skip
    finally:
        frames.close()
