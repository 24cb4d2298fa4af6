"""The one render entry point: a prepared job to its mp4 + sidecar, plainly or through the emotion-QA loop.

Every way of rendering calls :func:`render_job`: the ``portrait-gen`` CLI, batch workers, the web demo,
the ComfyUI nodes, the benchmark and the training validation renders. It sits above
:func:`portrait.generate.generate` (one render) and :mod:`portrait.eval.qa` (render, measure, re-render),
so neither has to know the other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from portrait.conditioning import IdentityCache
from portrait.config import RenderConfig
from portrait.distributed.group import DistributedContext
from portrait.engine import Engine
from portrait.eval.qa import Evaluator, QASettings, render_with_qa
from portrait.generate import Result, generate
from portrait.inputs import PreparedJob

logger = logging.getLogger(__name__)


def render_job(
    prepared: PreparedJob,
    engine: Engine,
    cfg: RenderConfig,
    *,
    qa: QASettings | None = None,
    evaluate: Evaluator | None = None,
    progress: bool = False,
    cache: IdentityCache | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    distributed: DistributedContext | None = None,
) -> Result:
    """Render ``prepared`` into ``prepared.job.output`` (+ ``<output>.json``); no partial output survives.

    Args:
        prepared: the job, its inputs decoded and checked (:func:`portrait.inputs.prepare`).
        engine: the loaded models (:func:`portrait.engine.load_engine`).
        cfg: the job's render config.
        qa: emotion QA (:mod:`portrait.eval.qa`): up to ``1 + qa.retries`` renders with growing emotion
            guidance, the best kept; its scores go into the sidecar's ``emotion_qa``. None: one render.
        evaluate: the QA's evaluator (default: the offline tools, built on the first QA render); pass one
            built once when rendering many jobs.
        progress: tqdm bars for sampling and encoding.
        cache: identity encodings reused across the jobs of one process.
        callback: ``callback(step, steps, latents)`` after every denoising step; raising stops the render
            (the app's Cancel, the nodes' interrupt).
        distributed: the process group of one clip on several ranks
            (:func:`portrait.distributed.group.init_distributed`); rank 0 writes. QA needs the written file
            of each attempt, so it runs in one process only: with ranks it is skipped with a warning.
    """

    def render(job: PreparedJob, config: RenderConfig) -> Result:
        return generate(
            job, engine, config, progress=progress, cache=cache, callback=callback, distributed=distributed
        )

    if qa is None:
        return render(prepared, cfg)
    if distributed is not None:
        logger.warning(
            "emotion QA runs in one process only: rendering once across %d ranks", distributed.world_size
        )
        return render(prepared, cfg)
    return render_with_qa(prepared, render, cfg, qa, evaluate)  # type: ignore[return-value]
