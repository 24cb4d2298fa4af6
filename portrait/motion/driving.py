"""The motion package's two entry points: one call for a generate job, one for ``motion extract``.

- :func:`motion_for_job`: a driving video / track JSON / :class:`Track` → per-frame motion maps at the
  working resolution for ``num_frames`` frames at the generation rate, plus a summary for the sidecar.
- :func:`extract_to_files`: a driving video → ``track.json`` (and optionally the ``--plot`` PNG).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from portrait.boxes import Box
from portrait.errors import InputError
from portrait.motion.bucket import head_motion_energy
from portrait.motion.landmarks import DlibLandmarker, Landmarker, check_landmarks, interocular
from portrait.motion.maps import render_motion_maps
from portrait.motion.pose import head_pose
from portrait.motion.retarget import check_motion_options, retarget_track
from portrait.motion.track import Track, extract_track
from portrait.motion.track_io import read_track, write_track
from portrait.preprocess.detectors import DlibDetector, FaceDetector
from portrait.preprocess.video import probe_video

logger = logging.getLogger(__name__)

MotionSource = str | Path | Track
#: Longest part of a driving video that is tracked (seconds).
MAX_DRIVING_SECONDS = 600.0
#: Seconds of a driving video tracked beyond what a job uses (the neutral frame may lie there; smoothing
#: needs a few frames past the end).
DRIVING_MARGIN_S = 5.0


def load_motion_source(
    source: MotionSource,
    landmarker: Landmarker | None = None,
    detector: FaceDetector | None = None,
    face_index: int | None = None,
    max_seconds: float | None = MAX_DRIVING_SECONDS,
    check: Callable[[], None] | None = None,
) -> Track:
    """A :class:`Track` from a ``.json`` track file, a driving video or a Track (returned as is).

    ``max_seconds`` and ``check`` (called before each frame; it raises to stop) apply to a video.
    """
    if isinstance(source, Track):
        return source
    path = Path(source)
    if path.suffix.lower() == ".json":
        return read_track(path)
    return extract_track(
        path, landmarker or DlibLandmarker(), detector or DlibDetector(), face_index, max_seconds=max_seconds,
        check=check,
    )  # fmt: skip


def driving_seconds(num_frames: int, fps: float) -> float:
    """Seconds of a driving video tracked for a job of ``num_frames`` at ``fps``: its length plus
    :data:`DRIVING_MARGIN_S`, at most :data:`MAX_DRIVING_SECONDS`."""
    return min(MAX_DRIVING_SECONDS, num_frames / fps + DRIVING_MARGIN_S)


def check_motion_source(source: str | Path) -> None:
    """A motion source is usable without tracking it: a track JSON is read and checked in full, a driving
    video probed (InputError naming the problem)."""
    path = Path(source)
    if not path.is_file():
        raise InputError(f"motion source {path} does not exist (a driving video or a track .json)")
    if path.suffix.lower() == ".json":
        read_track(path)
    else:
        probe_video(path)


def _as_rgb(image: np.ndarray | Image.Image) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise InputError(
            f"the portrait must be an (H, W, 3) uint8 RGB array, got {array.dtype} {array.shape}"
        )
    return array


def per_second_summary(landmarks: np.ndarray, size: tuple[int, int], fps: float) -> list[dict[str, float]]:
    """Mean head pose (degrees) and motion (face sizes per second) of (N, 68, 2) landmarks, per second."""
    poses = np.stack([head_pose(points, size).as_array() for points in landmarks]).astype(np.float64)
    speed = np.zeros(len(landmarks))
    if len(landmarks) > 1:
        step = np.linalg.norm(np.diff(landmarks, axis=0), axis=-1).mean(-1)
        speed[1:] = step * fps / np.maximum(interocular(landmarks[1:]), 1e-6)
    second = (np.arange(len(landmarks)) / fps).astype(int)
    rows = []
    for s in range(int(second[-1]) + 1):
        chosen = second == s
        yaw, pitch, roll = (round(float(v), 2) for v in poses[chosen, :3].mean(0))
        motion = round(float(speed[chosen].mean()), 4)
        rows.append({"t": float(s), "yaw": yaw, "pitch": pitch, "roll": roll, "motion": motion})
    return rows


def _summary(
    source: MotionSource,
    track: Track,
    neutral_index: int,
    working: np.ndarray,
    working_size: tuple[int, int],
    num_frames: int,
    fps: float,
) -> dict[str, Any]:
    """The sidecar's motion record (mode, gains, mouth and extend are added by the caller)."""
    is_track = isinstance(source, Track) or Path(source).suffix.lower() == ".json"
    return {
        "source": str(source.source if isinstance(source, Track) else source),
        "source_kind": "track" if is_track else "video",
        "fps": float(fps),
        "frames": int(num_frames),
        "working_size": [int(working_size[0]), int(working_size[1])],
        "track": {
            "fps": track.fps,
            "frames": len(track.times),
            "duration_s": round(track.duration, 3),
            "size": list(track.size),
            "gaps": [list(g) for g in track.gaps],
            "neutral_t": round(float(track.times[neutral_index]), 3),
            "extended": bool(num_frames / fps > track.duration),
        },
        "per_second": per_second_summary(working, working_size, fps),
    }


@dataclass(frozen=True)
class JobMotion:
    """What one job's motion source gives (:func:`motion_for_job`).

    Attributes:
        maps: (N, 3, H, W) float32 motion maps in [0, 1] at the working size.
        summary: the sidecar's motion record (JSON-ready).
        landmarks: (N, 68, 2) float64 retargeted landmarks in working-image pixels.
        energy: (N,) float64 head-motion energy (:func:`portrait.motion.bucket.head_motion_energy`).
    """

    maps: np.ndarray
    summary: dict[str, Any]
    landmarks: np.ndarray
    energy: np.ndarray


def motion_for_job(
    source: MotionSource,
    portrait_image: np.ndarray | Image.Image,
    portrait_box: Box,
    working_size: tuple[int, int],
    num_frames: int,
    fps: float = 12.5,
    mode: str = "relative",
    gains: tuple[float, float] = (1.0, 1.0),
    mouth: str = "audio",
    extend: str = "pingpong",
    *,
    landmarker: Landmarker | None = None,
    detector: FaceDetector | None = None,
    face_index: int | None = None,
    max_seconds: float | None = None,
    check: Callable[[], None] | None = None,
) -> JobMotion:
    """Motion maps for one generation job.

    Args:
        source: a driving video, a track ``.json`` or a :class:`Track`.
        portrait_image: the image that becomes the working image once resized to ``working_size`` (the
            crop, or the working image itself): (H, W, 3) uint8 RGB or a PIL image.
        portrait_box: ``(x, y, w, h)`` of the face in ``portrait_image`` pixels.
        working_size: ``(W, H)`` of the maps.
        num_frames: frames to produce (the generation's frame count; add the pipeline's padding if it
            slices modulo the length).
        fps: generation rate (12.5).
        mode, mouth, extend: see :mod:`portrait.motion.retarget`.
        gains: ``(pose_gain, expression_gain)``.
        landmarker, detector: default dlib's 68-point model and dlib's HOG detector.
        face_index: which face of the driving video (0 = largest).
        max_seconds, check: seconds of a driving video tracked (None: :func:`driving_seconds`), and the
            per-frame ``check`` of :func:`~portrait.motion.track.extract_track` (it raises to stop).

    Returns:
        A :class:`JobMotion`: ``maps`` (num_frames, 3, H, W) float32 in [0, 1] (channel 2 blank for
        ``mouth="audio"``), the retargeted ``landmarks``, their per-frame ``energy`` and ``summary`` (JSON:
        source, mode, gains, mouth, extend, track facts, neutral frame time, per-second pose summary).
    """
    check_motion_options(mode, mouth, extend)  # before any decoding
    landmarker = landmarker or DlibLandmarker()
    image = _as_rgb(portrait_image)
    height, width = image.shape[:2]
    portrait = check_landmarks(landmarker(image, portrait_box), "portrait landmarks")
    portrait_pose = head_pose(portrait, (width, height)).as_array()
    seconds = driving_seconds(num_frames, fps) if max_seconds is None else max_seconds
    track = load_motion_source(source, landmarker, detector, face_index, seconds, check)
    result = retarget_track(
        track, portrait, num_frames, fps, mode, pose_gain=gains[0], expression_gain=gains[1], mouth=mouth,
        extend=extend, portrait_pose=portrait_pose,
    )  # fmt: skip
    scale = np.array([working_size[0] / width, working_size[1] / height])
    working = result.landmarks * scale
    maps = render_motion_maps(working, working_size, draw_mouth=mouth == "video")
    summary = _summary(source, track, result.neutral_index, working, working_size, num_frames, fps)
    gains_record = {"pose": float(gains[0]), "expression": float(gains[1])}
    summary.update(mode=mode, gains=gains_record, mouth=mouth, extend=extend)
    return JobMotion(maps, summary, working, head_motion_energy(working, fps))


def extract_to_files(
    video: str | Path,
    output: str | Path,
    *,
    plot: str | Path | None = None,
    face_index: int | None = None,
    landmarker: Landmarker | None = None,
    detector: FaceDetector | None = None,
    max_seconds: float | None = MAX_DRIVING_SECONDS,
) -> Track:
    """``portrait-gen motion extract VIDEO -o OUTPUT [--plot PNG] [--face-index I]`` as one call.

    Nothing is written when extraction fails (both files are written atomically, the JSON first).
    """
    track = extract_track(
        video, landmarker or DlibLandmarker(), detector or DlibDetector(), face_index, max_seconds=max_seconds
    )
    write_track(track, output)
    if plot is not None:
        from portrait.motion.plot import plot_track

        plot_track(track, plot)
    logger.info("track of %d frames (%.2f s) written to %s", len(track.times), track.duration, output)
    return track
