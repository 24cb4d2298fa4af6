"""A set of videos as papers evaluate it: one line per video, then one line for the whole set.

The set line (``"kind": "set"``) is a paper's table row: FID and FVD pooled over every frame / clip of all
generated videos against every frame / clip of all distinct ground-truth videos (as papers compute them, not
per pair), and each per-video metric's mean over the videos where it was available (Wav2Lip's scores_LSE
averages LSE-C / LSE-D over videos the same way). Every pooled metric carries its protocol.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from portrait.eval import frechet
from portrait.eval.evaluate import METRIC_NAMES, measure
from portrait.eval.metric import Metric, available, unavailable
from portrait.eval.observe import Observations, observe
from portrait.eval.protocol import fid_protocol, fvd_protocol
from portrait.eval.toolkit import EvalTools
from portrait.preprocess.emotion_spec import EmotionSchedule

logger = logging.getLogger(__name__)


def _pooled(observations: Sequence[Observations], attribute: str) -> np.ndarray | None:
    parts = [getattr(o, attribute) for o in observations if getattr(o, attribute) is not None]
    return np.concatenate(parts) if parts else None


def _set_metric(
    name: str, tools: EvalTools, asked: bool, pred: np.ndarray | None, real: np.ndarray | None
) -> Metric:
    extractor = getattr(tools, "inception" if name == "fid" else "i3d")
    backend = extractor.name if extractor is not None else name
    flag = "--fid" if name == "fid" else "--fvd"
    if not asked:
        return unavailable(backend, f"not asked for ({flag} with --gt VIDEO...)")
    weights = tools.weights.get("fid_inception" if name == "fid" else "i3d", {})
    if name == "fid":
        protocol = fid_protocol(weights, tools.fps, tools.fid_every)
    else:
        protocol = fvd_protocol(weights, tools.fps, getattr(extractor, "unit", 16))
    if real is None:
        return unavailable(backend, "needs ground-truth videos (--gt VIDEO...)", protocol=protocol)
    return frechet.fd_metric(pred, real, backend, "no features (videos too short?)", protocol=protocol)


def _mean(name: str, results: Sequence[dict[str, Any]]) -> Metric:
    metrics = [r["metrics"][name] for r in results]
    values = [m["value"] for m in metrics if m.get("available") and m.get("value") is not None]
    backend = metrics[0].get("backend", "") if metrics else ""
    extra: dict[str, Any] = {
        "of": "mean over videos",
        "videos": len(values),
        "unavailable": len(metrics) - len(values),
    }
    if "protocol" in metrics[0]:
        extra["protocol"] = {k: v for k, v in metrics[0]["protocol"].items() if not k.startswith("frames")}
    if not values:
        return unavailable(backend, "unavailable in every video (see their lines)", **extra)
    return available(float(np.mean(values)), backend, **extra)


def evaluate_set(
    videos: Sequence[Path],
    gts: Sequence[Path | None],
    tools: EvalTools,
    *,
    reference: Path | None = None,
    audio: Path | None = None,
    emotion_schedule: EmotionSchedule | str | None = None,
    fid: bool = False,
    fvd: bool = False,
) -> list[dict[str, Any]]:
    """One result per video (:func:`~portrait.eval.evaluate.evaluate_video`'s) and the set's line, last.

    Args:
        videos: the generated videos. gts: each video's ground truth (or None), e.g. the same one for all.
        fid, fvd: pool FID / FVD over the set (needs ``tools.inception`` / ``tools.i3d`` and ground truths).
    """
    features = (fid and tools.inception is not None) or (fvd and tools.i3d is not None)
    distinct = list(dict.fromkeys(Path(g) for g in gts if g is not None))
    real: dict[Path, Observations] = {}
    for index, gt in enumerate(distinct):
        logger.info("observing ground truth %s (%d/%d)", gt, index + 1, len(distinct))
        real[gt] = observe(gt, tools, identity=False, sync=False, features=features)
    results, observed = [], []
    for index, (video, gt) in enumerate(zip(videos, gts, strict=True)):
        logger.info("evaluating %s (%d/%d)", video, index + 1, len(videos))
        result, obs = measure(
            video, tools, reference=reference, audio=audio, emotion_schedule=emotion_schedule,
            gt=real.get(Path(gt)) if gt is not None else None, features=features,
        )  # fmt: skip
        results.append(result)
        observed.append(obs)
    asked = {"fid": fid, "fvd": fvd}
    metrics: dict[str, Metric] = {}
    for name in METRIC_NAMES:
        if name in asked:
            attribute = f"{name}_features"
            pooled_real = _pooled(list(real.values()), attribute) if real else None
            metrics[name] = _set_metric(name, tools, asked[name], _pooled(observed, attribute), pooled_real)
        else:
            metrics[name] = _mean(name, results)
    line = {
        "kind": "set",
        "videos": [str(v) for v in videos],
        "gt": [str(g) for g in distinct],
        "metrics": metrics,
    }
    return [*results, line]
