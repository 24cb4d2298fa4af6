"""Emotion metrics: the expression classifier's per-second probabilities against the requested schedule.

* ``emotion_accuracy``: fraction of seconds whose mean-probability class equals the emotion requested at
  that second's centre (seconds asking for a label the classifier has no class for, e.g. ``contempt``,
  are left out and counted in the output).
* ``emotion_confidence``: mean probability of the requested class over those seconds; without a schedule,
  the mean probability of the clip-level class (argmax of the mean softmax, reported as ``predicted``).

The classifier is a :class:`portrait.preprocess.face_expressions.ExpressionClassifier`. Its labels are mapped
to emotion-bank names (``disgust`` → ``disgusted``, ``surprise`` → ``surprised``) so they compare with
``--emotion`` specs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from portrait.eval.metric import Metric, available, unavailable
from portrait.preprocess.emotion_spec import EmotionSchedule, frame_blend

#: Classifier label → emotion-bank name (identity for the rest).
CLASS_TO_BANK = {"disgust": "disgusted", "surprise": "surprised"}


def bank_name(label: str) -> str:
    """Emotion-bank name of a classifier label."""
    return CLASS_TO_BANK.get(label, label)


@dataclass(frozen=True)
class EmotionSeries:
    """Per-second classifier output.

    Attributes:
        seconds: ``(S,)`` start time of each second that had at least one classified frame.
        classes: bank names of the C classes.
        probs: ``(S, C)`` mean probabilities per second.
        frame_probs: ``(N, C)`` per classified frame (for the clip-level class).
    """

    seconds: np.ndarray
    classes: tuple[str, ...]
    probs: np.ndarray
    frame_probs: np.ndarray


def per_second(times: Sequence[float], probs: np.ndarray, classes: Sequence[str]) -> EmotionSeries:
    """Average ``(N, C)`` frame probabilities at ``times`` (seconds) within each whole second."""
    probs = np.asarray(probs, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != times.shape[0] or probs.shape[1] != len(classes):
        raise ValueError(f"probabilities {probs.shape} do not match {times.shape[0]} frames × {len(classes)}")
    buckets = np.floor(times + 1e-9).astype(int)
    seconds = np.unique(buckets)
    rows = np.stack([probs[buckets == s].mean(axis=0) for s in seconds]) if seconds.size else probs[:0]
    names = tuple(bank_name(c) for c in classes)
    return EmotionSeries(seconds.astype(np.float64), names, rows, probs)


def requested_label(schedule: EmotionSchedule, time: float) -> str:
    """The dominant requested emotion at ``time``: the heavier keyframe of a ramp, its heaviest term."""
    previous, current, weight = frame_blend(schedule, time)
    mix = schedule.keyframes[current if weight >= 0.5 else previous].mix
    return max(mix.terms, key=lambda term: term[1])[0]


def requested_per_second(schedule: EmotionSchedule, seconds: Sequence[float]) -> list[str]:
    """The requested label at the centre of each second."""
    return [requested_label(schedule, float(s) + 0.5) for s in seconds]


def emotion_metrics(
    series: EmotionSeries | None, schedule: EmotionSchedule | None, backend: str, reason: str = ""
) -> tuple[Metric, Metric]:
    """``(emotion_accuracy, emotion_confidence)`` metrics; ``series=None`` makes both unavailable."""
    if series is None or series.probs.shape[0] == 0:
        why = reason or "no face was classified in the video"
        return unavailable(backend, why), unavailable(backend, why)
    clip = series.frame_probs.mean(axis=0)
    predicted = series.classes[int(np.argmax(clip))]
    clip_probs = {name: round(float(p), 4) for name, p in zip(series.classes, clip, strict=True)}
    if schedule is None:
        accuracy = unavailable(backend, "needs the requested emotion (--emotion SPEC)", predicted=predicted)
        confidence = available(
            float(clip.max()), backend, of="predicted", predicted=predicted, probs=clip_probs
        )
        return accuracy, confidence
    requested = requested_per_second(schedule, series.seconds)
    index = {name: i for i, name in enumerate(series.classes)}
    scored = [
        (row, index[label]) for row, label in zip(series.probs, requested, strict=True) if label in index
    ]
    skipped = len(requested) - len(scored)
    if not scored:
        why = f"the requested emotions ({', '.join(sorted(set(requested)))}) have no class in the classifier"
        return unavailable(backend, why, predicted=predicted), unavailable(backend, why, predicted=predicted)
    hits = [int(np.argmax(row)) == k for row, k in scored]
    extra = {"predicted": predicted, "seconds": len(scored), "seconds_without_class": skipped}
    accuracy = available(float(np.mean(hits)), backend, **extra)
    confidence = available(float(np.mean([row[k] for row, k in scored])), backend, of="requested", **extra)
    return accuracy, confidence
