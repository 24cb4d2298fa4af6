"""One decoding pass over a video: face track, background differences and the crops later metrics need.

Frames are read once, resampled to ``tools.fps`` (25) and shrunk to ``tools.max_side``; only what the
available tools need is kept (face crops for the classifier, 224² crops for SyncNet, sampled frames for
CSIM embeddings and the feature encoders), so memory stays bounded by the video's length × crop sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from portrait.errors import InputError
from portrait.eval.faces import FaceTrack, FaceTracker, square_crop
from portrait.eval.motion import background_difference
from portrait.eval.toolkit import EvalTools
from portrait.models.syncnet import CROP_SIZE
from portrait.preprocess.face_expressions import crop_face

#: Side of the face crops for a classifier that does not name its ``input_size``.
EXPRESSION_CROP = 64


@dataclass
class Observations:
    """What one pass over a video collected (all per frame at ``tools.fps`` unless noted).

    Attributes:
        times: ``(T,)`` seconds. track: the face track. flicker: ``(T−1,)`` background differences.
        embeddings: frame index → face embedding (every ``csim_every`` frame with a face).
        expression: ``[(seconds, crop), ...]`` face crops for the classifier.
        sync_crops: ``(T, 224, 224, 3)`` face crops for SyncNet, or None.
        feature_frames: ``(K, 224, 224, 3)`` sampled whole frames for clip / inception, or None.
        video_frames: ``(T, 224, 224, 3)`` whole frames for I3D, or None.
    """

    times: np.ndarray
    track: FaceTrack
    flicker: np.ndarray
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)
    expression: list[tuple[float, np.ndarray]] = field(default_factory=list)
    sync_crops: np.ndarray | None = None
    feature_frames: np.ndarray | None = None
    video_frames: np.ndarray | None = None


def _resize(frame: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((side, side), Image.BICUBIC))


def observe(
    path: Path, tools: EvalTools, *, identity: bool, sync: bool, landmarks: bool = True
) -> Observations:
    """Decode ``path`` once and collect :class:`Observations`.

    Args:
        identity: embed faces for CSIM (a reference exists). sync: keep SyncNet crops (audio exists).
        landmarks: run the landmarker (when present).
    """
    if tools.detector is None:
        raise InputError(f"cannot evaluate {path}: no face detector ({tools.note('detector', 'not built')})")
    tracker = FaceTracker(tools.detector, tools.landmarker if landmarks else None, tools.detect_every)
    max_frames = int(tools.max_seconds * tools.fps)
    times, diffs, expression = [], [], []
    embeddings: dict[int, np.ndarray] = {}
    sync_crops, feature_frames, video_frames = [], [], []
    previous = None
    want_features = tools.clip is not None or tools.inception is not None
    for index, (time, frame) in enumerate(
        tools.read_frames(Path(path), tools.fps, max_frames, tools.max_side)
    ):
        box, _ = tracker.update(frame)
        times.append(time)
        if previous is not None:
            diffs.append(background_difference(previous, frame, box))
        previous = frame
        if box is not None:
            if identity and tools.embedder is not None and index % tools.csim_every == 0:
                embeddings[index] = tools.embedder.embed(frame, box)
            if tools.classifier is not None:
                side = int(getattr(tools.classifier, "input_size", EXPRESSION_CROP))
                expression.append((time, crop_face(frame, box, side)))
        if sync and tools.syncnet is not None:
            sync_crops.append(
                square_crop(frame, box, CROP_SIZE, scale=1.3)
                if box is not None
                else np.zeros((CROP_SIZE, CROP_SIZE, 3), np.uint8)
            )
        if want_features and index % tools.feature_every == 0:
            feature_frames.append(_resize(frame, 224))
        if tools.i3d is not None:
            video_frames.append(_resize(frame, 224))
    if not times:
        raise InputError(f"no frames could be read from {path}")
    return Observations(
        times=np.asarray(times, dtype=np.float64),
        track=tracker.track(),
        flicker=np.asarray(diffs, dtype=np.float64),
        embeddings=embeddings,
        expression=expression,
        sync_crops=np.stack(sync_crops) if sync_crops else None,
        feature_frames=np.stack(feature_frames) if feature_frames else None,
        video_frames=np.stack(video_frames) if video_frames else None,
    )
