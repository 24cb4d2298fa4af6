"""LSE-C / LSE-D (Sync-C / Sync-D) as Wav2Lip's ``evaluation/scores_LSE`` computes them with SyncNet.

Two protocols, named in every output:

* ``tracked`` (``calculate_scores_real_videos``: syncnet_python's ``run_pipeline.py`` then its
  ``SyncNetInstance.evaluate`` per face track): faces detected in every frame, linked into tracks, smoothed
  and cropped by :mod:`portrait.eval.sync_tracks`; each track is scored with the audio of its own frames
  (``samples[640·first : 640·(last + 1)]``). A video's LSE-C / LSE-D is the mean over its tracks (the
  reference writes one line per track); frames outside every track are not scored and are counted.
* ``whole-frame`` (``calculate_scores_LRS.py``, what papers use on LRS2-style clips that are already face
  crops): every whole frame resized to 224² with ``cv2.resize`` (bilinear), no detection, the whole audio.

In both, the audio is 16 kHz mono on the int16 scale (:func:`portrait.eval.sync.pcm16`) as the reference reads
its ``pcm_s16le`` wav, and each stretch is scored by :func:`portrait.eval.sync.segment_scores` (5-frame
windows, offsets ±15, LSE-D = min mean distance, LSE-C = median − min).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from portrait.eval.metric import Metric, available, unavailable
from portrait.eval.sync import segment_scores
from portrait.eval.sync_tracks import SyncTrack, TrackRules
from portrait.models.syncnet import CROP_SIZE, SyncNet

PROTOCOLS = ("tracked", "whole-frame")
#: Audio samples per video frame at 16 kHz and 25 fps.
SAMPLES_PER_FRAME = 640


@dataclass(frozen=True)
class LSESettings:
    """Which LSE protocol, and the track rules of the ``tracked`` one."""

    protocol: str = "tracked"
    rules: TrackRules = field(default_factory=TrackRules)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown LSE protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")


@dataclass
class Stretch:
    """Frames scored together: 224² RGB crops of frames ``first..last`` and the int16-scale audio they
    span."""

    first: int
    last: int
    crops: np.ndarray
    pcm: np.ndarray


def whole_frame_crop(frame: np.ndarray) -> np.ndarray:
    """A whole ``(H, W, 3)`` frame resized to ``(224, 224, 3)`` as ``calculate_scores_LRS.py`` does."""
    import cv2

    return cv2.resize(np.ascontiguousarray(frame), (CROP_SIZE, CROP_SIZE))


def audio_of(pcm: np.ndarray, first: int, last: int) -> np.ndarray:
    """The samples of frames ``first..last`` (the reference's ``ffmpeg -ss first/25 -to (last+1)/25`` cut)."""
    return pcm[first * SAMPLES_PER_FRAME : (last + 1) * SAMPLES_PER_FRAME]


def track_stretches(
    tracks: Sequence[SyncTrack], crops: Sequence[np.ndarray], pcm: np.ndarray
) -> list[Stretch]:
    """One :class:`Stretch` per kept track (``crops[k]``: the track's ``(N, 224, 224, 3)`` crops)."""
    return [
        Stretch(track.first, track.last, crop, audio_of(pcm, track.first, track.last))
        for track, crop in zip(tracks, crops, strict=True)
    ]


@dataclass
class StretchScore:
    """The scores of one :class:`Stretch` (``reason`` instead when it is too short for one window)."""

    first: int
    last: int
    windows: int = 0
    offset: int = 0
    lse_c: float | None = None
    lse_d: float | None = None
    mean_distances: list[float] = field(default_factory=list)
    reason: str = ""

    @property
    def frames(self) -> int:
        return self.last - self.first + 1

    def record(self) -> dict[str, object]:
        """The JSON form (without the 31 mean distances)."""
        keys = ("first", "last", "windows", "offset", "lse_c", "lse_d") if self.lse_c is not None else ()
        return {k: getattr(self, k) for k in keys} or {
            "first": self.first,
            "last": self.last,
            "reason": self.reason,
        }


def score_stretches(net: SyncNet, stretches: Sequence[Stretch]) -> list[StretchScore]:
    """The scores of every stretch (see :class:`StretchScore`)."""
    out = []
    for stretch in stretches:
        try:
            s = segment_scores(net, stretch.crops, stretch.pcm)
        except ValueError as error:
            out.append(StretchScore(stretch.first, stretch.last, reason=str(error)))
            continue
        out.append(
            StretchScore(
                stretch.first,
                stretch.last,
                windows=int(s["windows"]),  # type: ignore[call-overload]
                offset=int(s["offset"]),  # type: ignore[call-overload]
                lse_c=float(s["sync_c"]),  # type: ignore[arg-type]
                lse_d=float(s["sync_d"]),  # type: ignore[arg-type]
                mean_distances=list(s["mean_distances"]),  # type: ignore[call-overload]
            )
        )
    return out


def lse_metrics(
    scores: Sequence[StretchScore], frames: int, backend: str, protocol: dict[str, object], reason: str = ""
) -> tuple[Metric, Metric]:
    """``(sync_c, sync_d)``: means over the scored stretches, with the protocol and what was left out.

    Args:
        scores: :func:`score_stretches`'s output. frames: frames of the video. backend: the network's name.
        protocol: what decided the numbers (:mod:`portrait.eval.protocol`). reason: why nothing was scored
            when no stretch was (e.g. no face track); default: the stretches' own reasons.
    """
    scored = [s for s in scores if s.lse_c is not None]
    covered = sum(s.frames for s in scored)
    counts = {"frames": frames, "frames_scored": covered, "frames_left_out": frames - covered}
    extra: dict[str, object] = {"protocol": {**protocol, **counts}}
    if not scored:
        why = reason or "; ".join(s.reason for s in scores) or "nothing to score"
        return unavailable(backend, why, **extra), unavailable(backend, why, **extra)
    longest = max(scored, key=lambda s: s.windows)
    extra.update(
        offset_frames=longest.offset,
        windows=sum(s.windows for s in scored),
        tracks=[s.record() for s in scores],
    )
    sync_c = float(np.mean([s.lse_c for s in scored]))
    sync_d = float(np.mean([s.lse_d for s in scored]))
    return available(sync_c, backend, **extra), available(sync_d, backend, **extra)
