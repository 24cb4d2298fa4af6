"""One decoding pass over a video: face track, background differences and what later metrics need.

Frames are read once, resampled to ``tools.fps`` (25). The landmark, identity, expression and flicker metrics
see frames shrunk to ``tools.max_side``; the metrics papers report see the video's own frames, as their
reference code does: LSE's face crops or whole-frame resizes, and the FID / FVD features (computed a batch at
a time while decoding, so only features are kept). The ``tracked`` LSE protocol needs every frame's detections
before it can place a crop (tracks, a 13-frame median), so its crops come from a second decoding pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from portrait.errors import InputError, PortraitError
from portrait.eval.faces import FaceTrack, FaceTracker
from portrait.eval.features import FeatureStream
from portrait.eval.lse import whole_frame_crop
from portrait.eval.motion import background_difference
from portrait.eval.sync_tracks import Corners, SyncTrack, crop_face, crop_window, face_tracks, smooth_track
from portrait.eval.toolkit import EvalTools
from portrait.preprocess.face_expressions import crop_face as expression_crop
from portrait.preprocess.video import output_size

#: Side of the face crops for a classifier that does not name its ``input_size``.
EXPRESSION_CROP = 64


@dataclass
class Observations:
    """What one pass over a video collected (all per frame at ``tools.fps`` unless noted).

    Attributes:
        times: ``(T,)`` seconds. track: the face track (shrunk frames). flicker: ``(T−1,)`` background
            differences. source: ``{"fps": the file's rate or None, "resolution": "WxH"}``.
        embeddings: frame index → face embedding (every ``csim_every`` frame with a face).
        expression: ``[(seconds, crop), ...]`` face crops for the classifier.
        sync_crops: ``(T, 224, 224, 3)`` whole-frame LSE crops (``whole-frame`` protocol), or None.
        sync_tracks, track_crops: the ``tracked`` protocol's face tracks and each one's ``(N, 224, 224, 3)``
            crops (empty lists when it did not run; ``sync_ran`` says whether it did).
        feature_frames: ``(K, 224, 224, 3)`` sampled whole frames for fd_clip, or None.
        fid_features, fvd_features: ``(N, 2048)`` / ``(K, 400)`` FID / FVD features, or None.
    """

    times: np.ndarray
    track: FaceTrack
    flicker: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)
    expression: list[tuple[float, np.ndarray]] = field(default_factory=list)
    sync_crops: np.ndarray | None = None
    sync_ran: bool = False
    sync_tracks: list[SyncTrack] = field(default_factory=list)
    track_crops: list[np.ndarray] = field(default_factory=list)
    feature_frames: np.ndarray | None = None
    fid_features: np.ndarray | None = None
    fvd_features: np.ndarray | None = None


def _resize(frame: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(frame).resize((side, side), Image.BICUBIC))


def _shrink(frame: np.ndarray, max_side: int | None) -> np.ndarray:
    import cv2

    size = output_size(frame.shape[1], frame.shape[0], max_side)
    return (
        frame
        if size == (frame.shape[1], frame.shape[0])
        else cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    )


class _Pass:
    """The state of the first decoding pass (see :func:`observe`)."""

    def __init__(
        self, tools: EvalTools, *, identity: bool, sync: bool, landmarks: bool, features: bool
    ) -> None:
        self.tools, self.identity = tools, identity
        self.lse = tools.lse.protocol if sync and tools.syncnet is not None else None
        self.streams = {
            name: FeatureStream(extractor, every)
            for name, extractor, every in (("fid", tools.inception, tools.fid_every), ("fvd", tools.i3d, 1))
            if features and extractor is not None
        }
        self.native = self.lse is not None or bool(self.streams)
        self.tracker = FaceTracker(
            tools.detector, tools.landmarker if landmarks else None, tools.detect_every
        )
        self.times: list[float] = []
        self.diffs: list[float] = []
        self.detections: list[list[Corners]] = []
        self.whole: list[np.ndarray] = []
        self.clip: list[np.ndarray] = []
        self.expression: list[tuple[float, np.ndarray]] = []
        self.embeddings: dict[int, np.ndarray] = {}
        self.previous: np.ndarray | None = None
        self.resolution = ""

    def add(self, index: int, time: float, frame: np.ndarray) -> None:
        tools = self.tools
        small = _shrink(frame, tools.max_side) if self.native else frame
        self.resolution = f"{frame.shape[1]}x{frame.shape[0]}"
        faces = None
        if self.lse == "tracked":
            faces = tools.detector.detect(np.ascontiguousarray(small[:, :, ::-1]))  # type: ignore[union-attr]
            scale = frame.shape[1] / small.shape[1]
            self.detections.append([_corners(f.box, scale) for f in faces])
        box, _ = self.tracker.update(small, faces)
        self.times.append(time)
        if self.previous is not None:
            self.diffs.append(background_difference(self.previous, small, box))
        self.previous = small
        if box is not None:
            self._face(index, time, small, box)
        if self.lse == "whole-frame":
            self.whole.append(whole_frame_crop(frame))
        if tools.clip is not None and index % tools.feature_every == 0:
            self.clip.append(_resize(small, 224))
        for stream in self.streams.values():
            stream.add(frame)

    def _face(
        self, index: int, time: float, small: np.ndarray, box: tuple[float, float, float, float]
    ) -> None:
        tools = self.tools
        if self.identity and tools.embedder is not None and index % tools.csim_every == 0:
            self.embeddings[index] = tools.embedder.embed(small, box)
        if tools.classifier is not None:
            side = int(getattr(tools.classifier, "input_size", EXPRESSION_CROP))
            self.expression.append((time, expression_crop(small, box, side)))


def _corners(box: tuple[float, float, float, float], scale: float) -> Corners:
    """``(x1, y1, x2, y2)`` of an ``(x, y, w, h)`` box found in a shrunk frame, in the video's own pixels."""
    x, y, w, h = (float(v) * scale for v in box)
    return x, y, x + w, y + h


def _source_fps(path: Path) -> float | None:
    from portrait.preprocess.video import probe_video

    try:
        fps = probe_video(path).fps
    except PortraitError:
        return None
    return round(fps, 3) if fps > 0 else None


def observe(
    path: Path,
    tools: EvalTools,
    *,
    identity: bool,
    sync: bool,
    landmarks: bool = True,
    features: bool = False,
) -> Observations:
    """Decode ``path`` once (twice for the ``tracked`` LSE protocol) and collect :class:`Observations`.

    Args:
        identity: embed faces for CSIM (a reference exists). sync: the LSE inputs (audio exists).
        landmarks: run the landmarker (when present). features: FID / FVD features (set metrics asked for).
    """
    if tools.detector is None:
        raise InputError(f"cannot evaluate {path}: no face detector ({tools.note('detector', 'not built')})")
    state = _Pass(tools, identity=identity, sync=sync, landmarks=landmarks, features=features)
    max_frames = int(tools.max_seconds * tools.fps)
    side = None if state.native else tools.max_side
    for index, (time, frame) in enumerate(tools.read_frames(Path(path), tools.fps, max_frames, side)):
        state.add(index, time, frame)
    if not state.times:
        raise InputError(f"no frames could be read from {path}")
    obs = Observations(
        times=np.asarray(state.times, dtype=np.float64),
        track=state.tracker.track(),
        flicker=np.asarray(state.diffs, dtype=np.float64),
        source={"fps": _source_fps(Path(path)), "resolution": state.resolution},
        embeddings=state.embeddings,
        expression=state.expression,
        sync_crops=np.stack(state.whole) if state.whole else None,
        sync_ran=state.lse is not None,
        feature_frames=np.stack(state.clip) if state.clip else None,
    )
    obs.fid_features = state.streams["fid"].finish() if "fid" in state.streams else None
    obs.fvd_features = state.streams["fvd"].finish() if "fvd" in state.streams else None
    if state.lse == "tracked":
        obs.sync_tracks = face_tracks(state.detections, tools.lse.rules)
        obs.track_crops = track_crops(Path(path), tools, obs.sync_tracks, len(state.times))
    return obs


def track_crops(path: Path, tools: EvalTools, tracks: list[SyncTrack], count: int) -> list[np.ndarray]:
    """The crops of every track: a second pass over the video's own frames (``(N, 224, 224, 3)`` per
    track)."""
    rules = tools.lse.rules
    wanted: dict[int, list[tuple[int, int, tuple[int, int, int, int]]]] = {}
    for k, track in enumerate(tracks):
        for row, (frame, centre) in enumerate(zip(track.frames, smooth_track(track, rules), strict=True)):
            wanted.setdefault(int(frame), []).append((k, row, crop_window(*centre, rules.crop_scale)))
    crops = [np.zeros((len(t.frames), rules.crop_size, rules.crop_size, 3), np.uint8) for t in tracks]
    if not tracks:
        return crops
    for index, (_, frame) in enumerate(tools.read_frames(path, tools.fps, count, None)):
        for k, row, window in wanted.get(index, ()):
            crops[k][row] = crop_face(frame, window, rules)
    return crops
