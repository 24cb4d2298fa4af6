"""Evaluate one video: every metric as ``{"value", "available", "backend", ...}`` plus plot timelines.

:func:`evaluate_video` returns the JSON line of ``portrait-gen eval``::

    {"video": path, "frames": T, "fps": 25.0, "duration": s, "tools": {name: note},
     "metrics": {"csim": {...}, "emotion_accuracy": {...}, ...}, "timelines": {...}}

``timelines`` holds the per-frame / per-second series the report plots (NaN written as null).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from portrait.errors import InputError, PortraitError
from portrait.eval import emotion_accuracy, frechet, identity, lse, motion, sync
from portrait.eval.faces import interpolate_gaps
from portrait.eval.metric import Metric, available, unavailable
from portrait.eval.observe import Observations, observe
from portrait.eval.protocol import csim_protocol, lse_protocol
from portrait.eval.toolkit import EvalTools, default_tools
from portrait.layout import RELEASE_EMOTIONS
from portrait.motion.landmarks import mouth_opening
from portrait.preprocess.detectors import Face
from portrait.preprocess.emotion_spec import EmotionSchedule, parse_emotion

logger = logging.getLogger(__name__)

#: Emotion-bank names accepted in ``--emotion`` specs given to the evaluation: the release bank.
BANK_NAMES = RELEASE_EMOTIONS

METRIC_NAMES = (
    "face_coverage",
    "csim",
    "emotion_accuracy",
    "emotion_confidence",
    "sync_c",
    "sync_d",
    "sync_proxy_corr",
    "sync_proxy_lag_frames",
    "pose_jitter",
    "landmark_velocity",
    "blink_rate",
    "flicker",
    "lmd",
    "lmd_mouth",
    "fd_clip",
    "fid",
    "fvd",
)
#: The network behind ``sync_c`` / ``sync_d``.
SYNCNET_BACKEND = "syncnet_v2 (portrait.models.syncnet)"
#: Why a video's own line has no FID / FVD.
SET_METRIC = (
    "a set metric: `portrait-gen eval VIDEO... --gt VIDEO... --fid/--fvd` pools it over every video "
    'and reports it on the line with "kind": "set"'
)
#: Metrics of the readable table of ``portrait-gen eval`` (every one of :data:`METRIC_NAMES` is in the JSON).
TABLE_METRICS = tuple(m for m in METRIC_NAMES if m not in ("landmark_velocity", "lmd_mouth"))


def _series(values: np.ndarray, digits: int = 5) -> list[float | None]:
    return [round(float(v), digits) if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _reference_embedding(reference: Path | None, tools: EvalTools) -> tuple[np.ndarray | None, str]:
    if reference is None:
        return None, "needs a reference portrait (--reference IMAGE)"
    if tools.embedder is None or tools.detector is None:
        return None, tools.note("embedder", "no face embedder available")
    from portrait.preprocess.image import load_image

    picture = load_image(Path(reference))
    picture.thumbnail((1024, 1024))  # detection cost grows with pixels; faces stay large enough
    image = np.asarray(picture.convert("RGB"))
    faces: list[Face] = tools.detector.detect(np.ascontiguousarray(image[:, :, ::-1]))
    if not faces:
        return None, f"no face found in the reference {reference}"
    return tools.embedder.embed(image, max(faces, key=lambda f: f.area).box), ""


def _schedule(spec: EmotionSchedule | str | None) -> EmotionSchedule | None:
    if spec is None or isinstance(spec, EmotionSchedule):
        return spec
    return parse_emotion(spec, BANK_NAMES)


def _emotion(
    obs: Observations, tools: EvalTools, schedule: EmotionSchedule | None, out: dict, lines: dict
) -> None:
    backend = getattr(tools.classifier, "name", "expression classifier") if tools.classifier else "none"
    series = None
    if tools.classifier is not None and obs.expression:
        times = [t for t, _ in obs.expression]
        probs = np.concatenate(
            [
                tools.classifier.predict(np.stack([c for _, c in obs.expression[i : i + 64]]))
                for i in range(0, len(times), 64)
            ]
        )
        series = emotion_accuracy.per_second(times, probs, tools.classifier.classes)
        lines["emotion"] = {
            "seconds": series.seconds.tolist(),
            "classes": list(series.classes),
            "probs": [[round(float(p), 4) for p in row] for row in series.probs],
            "requested": emotion_accuracy.requested_per_second(schedule, series.seconds)
            if schedule
            else None,
        }
    reason = tools.note("classifier", "no expression classifier") if tools.classifier is None else ""
    out["emotion_accuracy"], out["emotion_confidence"] = emotion_accuracy.emotion_metrics(
        series, schedule, backend, reason
    )


def _identity(
    obs: Observations, ref: np.ndarray | None, why: str, tools: EvalTools, out: dict, lines: dict
) -> None:
    backend = getattr(tools.embedder, "name", "none")
    arcface = isinstance(tools.embedder, identity.ArcFaceEmbedder)
    extra = {"protocol": csim_protocol(backend, arcface, tools.csim_every)}
    if ref is None:
        out["csim"] = unavailable(backend, why, **extra)
        return
    out["csim"] = {**identity.csim_metric(obs.embeddings, ref, backend), **extra}
    frames = sorted(obs.embeddings)
    lines["csim"] = {
        "time": [round(float(obs.times[i]), 3) for i in frames],
        "value": _series(np.array([identity.cosine(obs.embeddings[i], ref) for i in frames])),
    }


def _audio(video: Path, audio: Path | None) -> tuple[np.ndarray | None, str]:
    from portrait.preprocess.audio import load_audio

    source = Path(audio) if audio is not None else Path(video)
    try:
        return load_audio(source, sync.SAMPLE_RATE, max_seconds=None), ""
    except PortraitError as error:
        where = "--audio" if audio is not None else "the video's own audio track (give --audio WAV)"
        return None, f"no audio from {where}: {error}"


def _sync(
    obs: Observations, samples: np.ndarray | None, why: str, tools: EvalTools, out: dict, lines: dict
) -> None:
    mouth = None
    if obs.track.landmarks is not None:
        mouth = interpolate_gaps(mouth_opening(obs.track.landmarks))
    envelope = sync.speech_envelope(samples, len(obs.times), fps=tools.fps) if samples is not None else None
    reason = why if samples is None else tools.note("landmarker", "no landmarker")
    out["sync_proxy_corr"], out["sync_proxy_lag_frames"] = sync.proxy_metrics(mouth, envelope, reason=reason)
    if mouth is not None and envelope is not None:
        lines["mouth"] = {"opening": _series(mouth), "envelope": _series(envelope)}
    _lse(obs, samples, why, tools, out, lines)


def _lse(
    obs: Observations, samples: np.ndarray | None, why: str, tools: EvalTools, out: dict, lines: dict
) -> None:
    """LSE-C / LSE-D (``sync_c`` / ``sync_d``) under ``tools.lse``'s protocol (:mod:`portrait.eval.lse`)."""
    detector = getattr(tools.detector, "name", type(tools.detector).__name__)
    protocol = lse_protocol(tools.lse, tools.weights.get("syncnet", {}), detector, tools.fps, obs.source)
    frames = len(obs.times)
    if tools.syncnet is None or samples is None or not obs.sync_ran:
        reason = why if samples is None else tools.note("syncnet", "no SyncNet weights")
        out["sync_c"], out["sync_d"] = lse.lse_metrics([], frames, SYNCNET_BACKEND, protocol, reason)
        return
    pcm = sync.pcm16(samples)
    if tools.lse.protocol == "tracked":
        stretches = lse.track_stretches(obs.sync_tracks, obs.track_crops, pcm)
        rules = tools.lse.rules
        reason = (
            f"no face track of more than {rules.min_track} detections with a mean box over "
            f"{rules.min_face_size:g} px (syncnet_python's rules; --lse-min-track lowers the first)"
        )
    else:
        stretches, reason = [lse.Stretch(0, frames - 1, obs.sync_crops, pcm)], ""
    scores = lse.score_stretches(tools.syncnet, stretches)
    out["sync_c"], out["sync_d"] = lse.lse_metrics(scores, frames, SYNCNET_BACKEND, protocol, reason)
    scored = [s for s in scores if s.lse_c is not None]
    if scored:
        lines["sync_distances"] = _series(np.asarray(max(scored, key=lambda s: s.windows).mean_distances))


def _motion(obs: Observations, gt: Observations | None, tools: EvalTools, out: dict, lines: dict) -> None:
    marks = obs.track.landmarks
    if marks is None:
        why = tools.note("landmarker", "no landmarker")
        for name in ("pose_jitter", "landmark_velocity", "blink_rate"):
            out[name] = unavailable(motion.LANDMARK_BACKEND, why)
    else:
        pose = motion.head_pose_series(marks, obs.track.size)
        ear = motion.eye_aspect_ratio(marks)
        out["pose_jitter"] = motion.pose_jitter(pose)
        out["landmark_velocity"] = motion.landmark_velocity(marks)
        out["blink_rate"] = motion.blink_rate(ear, tools.fps)
        lines["pose"] = {axis: _series(pose[:, k], 3) for k, axis in enumerate(("yaw", "pitch", "roll"))}
        lines["ear"] = _series(ear, 4)
    out["flicker"] = motion.flicker(obs.flicker)
    gt_marks = gt.track.landmarks if gt is not None else None
    out["lmd"], out["lmd_mouth"] = motion.lmd_metrics(marks, gt_marks)


def _sets(obs: Observations, gt: Observations | None, tools: EvalTools, out: dict) -> None:
    """``fd_clip`` of this video against its ground truth; FID and FVD are set metrics (:mod:`.sets`)."""
    backend = tools.clip_name if tools.clip is not None else "none"
    if tools.clip is None:
        out["fd_clip"] = unavailable(backend, tools.note("clip", "no clip encoder"))
    elif gt is None or obs.feature_frames is None or gt.feature_frames is None:
        out["fd_clip"] = unavailable(backend, "needs a real set: ground-truth video(s) (--gt VIDEO)")
    else:
        out["fd_clip"] = frechet.fd_metric(
            tools.clip(obs.feature_frames), tools.clip(gt.feature_frames), backend
        )
    for name in ("fid", "fvd"):
        out[name] = unavailable(name, SET_METRIC)


def evaluate_video(
    video: Path,
    *,
    reference: Path | None = None,
    audio: Path | None = None,
    emotion_schedule: EmotionSchedule | str | None = None,
    gt: Path | None = None,
    tools: EvalTools | None = None,
) -> dict[str, Any]:
    """Every metric of one video (see the module docstring for the output).

    Args:
        video: the generated video. reference: the portrait it should look like (CSIM). audio: the speech
            it should follow (default: the video's own audio track). emotion_schedule: the requested
            ``--emotion`` spec or a parsed schedule. gt: a ground-truth video (LMD, fd_clip).
        tools: models and settings (default :func:`~portrait.eval.toolkit.default_tools`, built per call:
            build it once when evaluating many videos).

    Raises:
        InputError: the video (or ``gt``) cannot be read or has no frames; a bad emotion spec.
    """
    tools = tools if tools is not None else default_tools()
    gt_obs = observe(Path(gt), tools, identity=False, sync=False) if gt is not None else None
    result, _ = measure(
        video, tools, reference=reference, audio=audio, emotion_schedule=emotion_schedule, gt=gt_obs
    )
    return result


def measure(
    video: Path,
    tools: EvalTools,
    *,
    reference: Path | None = None,
    audio: Path | None = None,
    emotion_schedule: EmotionSchedule | str | None = None,
    gt: Observations | None = None,
    features: bool = False,
) -> tuple[dict[str, Any], Observations]:
    """:func:`evaluate_video`'s result and the video's :class:`Observations` (with FID / FVD features when
    ``features``), against an already observed ground truth ``gt``."""
    video = Path(video)
    schedule = _schedule(emotion_schedule)
    ref, ref_why = _reference_embedding(reference, tools)
    samples, audio_why = _audio(video, audio)
    obs = observe(video, tools, identity=ref is not None, sync=samples is not None, features=features)
    metrics: dict[str, Metric] = {}
    lines: dict[str, Any] = {"time": [round(float(t), 3) for t in obs.times]}
    coverage = float(obs.track.found.mean())
    metrics["face_coverage"] = available(coverage, getattr(tools.detector, "name", "detector"))
    _identity(obs, ref, ref_why, tools, metrics, lines)
    _emotion(obs, tools, schedule, metrics, lines)
    _sync(obs, samples, audio_why, tools, metrics, lines)
    _motion(obs, gt, tools, metrics, lines)
    _sets(obs, gt, tools, metrics)
    missing = [name for name in METRIC_NAMES if name not in metrics]
    if missing:
        raise InputError(f"internal: metrics not computed: {missing}")
    result = {
        "kind": "video",
        "video": str(video),
        "frames": int(obs.times.size),
        "fps": tools.fps,
        "duration": round(float(obs.times.size / tools.fps), 3),
        "source": obs.source,
        "tools": dict(tools.notes),
        "metrics": {name: metrics[name] for name in METRIC_NAMES},
        "timelines": lines,
    }
    return result, obs
