"""Closed-loop emotion QA: render, measure, re-render with stronger emotion guidance, keep the best attempt.

:func:`render_with_qa` renders a prepared job up to ``1 + retries`` times. Each attempt is written to a
temporary name next to the output (``.NAME.qaK.mp4``), evaluated (emotion accuracy / confidence against the
job's schedule, CSIM against its portrait) and, when the requested emotion's mean probability is below the
threshold or CSIM is below its threshold, the next attempt multiplies ``sampling.emo_scale_min/max`` by
``factor`` (capped). The best attempt is renamed into the real output, its sidecar gets ``"emotion_qa"``
with every attempt's scores and the index ``chosen``; the other attempts are removed (also on failure).

This module sits beside :mod:`portrait.generate` (same layer), so the caller passes the renderer:
``render(prepared, cfg) -> Result`` (e.g. ``lambda p, c: generate(p, engine, c)``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from portrait.config import RenderConfig, with_values
from portrait.errors import InputError, PortraitError
from portrait.files import sidecar_path, write_json_atomic
from portrait.inputs import PreparedJob

logger = logging.getLogger(__name__)


class Rendered(Protocol):
    """What a renderer returns (:class:`portrait.generate.Result`)."""

    output: Path
    sidecar: Path
    info: dict[str, Any]


#: ``(prepared, cfg) → Rendered``: renders ``prepared`` into ``prepared.job.output`` (+ ``<output>.json``).
Renderer = Callable[[PreparedJob, RenderConfig], Rendered]
#: ``(video, prepared) → evaluate_video's dict`` (default: :func:`portrait.eval.evaluate.evaluate_video`).
Evaluator = Callable[[Path, PreparedJob], dict[str, Any]]


@dataclass(frozen=True)
class QASettings:
    """Settings of the QA loop.

    Attributes:
        threshold: least mean probability of the requested emotion (``emotion_confidence``) to accept.
        csim_threshold: least identity similarity to the portrait to accept (when it can be measured).
        retries: re-renders after the first attempt at most.
        factor: emotion-guidance multiplier per retry. max_scale: cap on ``emo_scale_min/max``.
    """

    threshold: float = 0.5
    csim_threshold: float = 0.6
    retries: int = 2
    factor: float = 1.3
    max_scale: float = 15.0

    def __post_init__(self) -> None:
        if not 0 <= self.threshold <= 1:
            raise InputError(f"--qa-threshold must be in [0, 1], got {self.threshold}")
        if self.retries < 0:
            raise InputError(f"--qa-retries must be >= 0, got {self.retries}")
        if not self.factor >= 1 or not self.max_scale > 0:
            raise InputError(f"QA factor must be >= 1 and max_scale > 0, got {self.factor}, {self.max_scale}")


def default_evaluator(tools: Any = None) -> Evaluator:
    """An evaluator with the offline tools built once (:func:`portrait.eval.toolkit.default_tools`)."""
    from portrait.eval.evaluate import evaluate_video
    from portrait.eval.toolkit import default_tools

    built = tools

    def evaluate(video: Path, prepared: PreparedJob) -> dict[str, Any]:
        nonlocal built
        if built is None:
            built = default_tools()
        return evaluate_video(
            video, reference=prepared.job.image, emotion_schedule=prepared.schedule, tools=built
        )

    return evaluate


def _value(metric: dict[str, Any] | None) -> float | None:
    if not metric or not metric.get("available") or metric.get("value") is None:
        return None
    return round(float(metric["value"]), 5)


def score_attempt(video: Path, prepared: PreparedJob, evaluate: Evaluator) -> dict[str, Any]:
    """``emotion_accuracy``, ``emotion_confidence``, ``csim`` (None when not measurable) and ``reason``."""
    try:
        metrics = evaluate(video, prepared)["metrics"]
    except PortraitError as error:
        return {"emotion_accuracy": None, "emotion_confidence": None, "csim": None, "reason": str(error)}
    scores: dict[str, Any] = {
        name: _value(metrics.get(name)) for name in ("emotion_accuracy", "emotion_confidence", "csim")
    }
    scores["face_coverage"] = _value(metrics.get("face_coverage"))
    reasons = sorted(
        {
            f"{name}: {metrics[name].get('reason')}"
            for name in scores
            if name in metrics and scores[name] is None
        }
    )
    scores["reason"] = "; ".join(reasons) or None
    return scores


def passed(scores: dict[str, Any], settings: QASettings) -> bool:
    """The requested emotion is recognised enough and identity (when measured) is kept."""
    confidence, csim = scores.get("emotion_confidence"), scores.get("csim")
    return (
        confidence is not None
        and confidence >= settings.threshold
        and (csim is None or csim >= settings.csim_threshold)
    )


def _rank(scores: dict[str, Any]) -> tuple[bool, float, float]:
    confidence, csim = scores.get("emotion_confidence"), scores.get("csim")
    return (
        bool(scores.get("passed")),
        -1.0 if confidence is None else confidence,
        -1.0 if csim is None else csim,
    )


def _attempt_path(output: Path, index: int) -> Path:
    return output.with_name(f".{output.stem}.qa{index}{output.suffix or '.mp4'}")


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def render_with_qa(
    prepared: PreparedJob,
    render: Renderer,
    cfg: RenderConfig,
    settings: QASettings | None = None,
    evaluate: Evaluator | None = None,
) -> Rendered:
    """Render with QA retries; returns the chosen attempt as the job's output (see the module docstring).

    Raises:
        PortraitError: from the renderer (no attempt file is left behind).
    """
    settings = settings if settings is not None else QASettings()
    evaluate = evaluate if evaluate is not None else default_evaluator()
    output = Path(prepared.job.output)
    if prepared.job.dump_frames is not None:
        logger.warning("--dump-frames is ignored with --emotion-qa (attempts would overwrite each other)")
    base = (cfg.sampling.emo_scale_min, cfg.sampling.emo_scale_max)
    attempts: list[dict[str, Any]] = []
    results: list[Rendered] = []
    made: list[Path] = []
    try:
        for index in range(settings.retries + 1):
            grow = settings.factor**index
            low, high = (round(min(s * grow, max(s, settings.max_scale)), 4) for s in base)
            attempt_cfg = with_values(cfg, {"sampling.emo_scale_min": low, "sampling.emo_scale_max": high})
            path = _attempt_path(output, index)
            made += [path, sidecar_path(path)]
            job = dataclasses.replace(prepared.job, output=path, dump_frames=None)
            result = render(dataclasses.replace(prepared, job=job), attempt_cfg)
            results.append(result)
            scores = {"emo_scale": high, "emo_scale_min": low, "emo_scale_max": high}
            scores.update(score_attempt(result.output, prepared, evaluate))
            scores["passed"] = passed(scores, settings)
            attempts.append(scores)
            logger.info("emotion QA attempt %d: %s", index, scores)
            if scores["passed"]:
                break
        chosen = max(range(len(attempts)), key=lambda i: _rank(attempts[i]))
        best = results[chosen]
        info = json.loads(Path(best.sidecar).read_text())
        info["output"] = str(output)
        info["emotion_qa"] = {
            "attempts": attempts,
            "chosen": chosen,
            "threshold": settings.threshold,
            "csim_threshold": settings.csim_threshold,
            "passed": attempts[chosen]["passed"],
        }
        os.replace(best.output, output)
        sidecar = sidecar_path(output)
        write_json_atomic(sidecar, info, default=str)
    finally:
        _remove(made)
    return dataclasses.replace(best, output=output, sidecar=sidecar, info=info)  # type: ignore[type-var]
