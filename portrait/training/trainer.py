"""One trainer for every recipe: accelerate, seeded steps, checkpoints with exact resume, logs, a plot.

A :class:`Recipe` owns the trainable module, draws its own batch from the per-step generator it is given
and computes the loss; the trainer owns the optimiser (AdamW), the schedule (linear warm-up, then
constant: it does not depend on ``steps``, so a run may be extended), mixed precision, gradient
accumulation and clipping, the checkpoints and the logs.

Exact resume: every step ``s`` reseeds torch's global RNG and builds the batch generator from
``(seed, s)``, so the data position *is* the step; a checkpoint holds the model, the optimiser state
(safetensors + JSON, no pickle), the schedule state and the RNG states. A resumed run therefore gives the
same loss sequence as an uninterrupted one. Resuming with other hyper-parameters is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from portrait.errors import InputError
from portrait.files import write_json_atomic
from portrait.training.checkpoints import CHECKPOINTS_DIR, latest_checkpoint, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

#: Test hook: stop (raise) after this step was completed (and checkpointed if it was due).
STOP_AFTER_ENV = "PORTRAIT_TRAIN_STOP_AFTER"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
#: Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("steps", "checkpoint_every", "validate_every", "log_every", "gradient_checkpointing")
#: ``mixed_precision`` values; "auto" is bf16 where the device has it.
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of a run (``--config`` YAML/JSON keys, overridden by flags).

    ``mixed_precision``: "auto" (bf16 on a CUDA device that has it, else "no"), "no", "bf16" or "fp16".
    ``gradient_checkpointing``: recompute the frozen UNet's activations in the backward pass instead of
    keeping them (the recipes that run the UNet; on by default: at 512² the kept activations do not fit a
    GPU). ``options``: recipe-specific settings (see each recipe).
    """

    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    grad_accum: int = 1
    grad_clip: float = 1.0
    mixed_precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 500
    validate_every: int = 0
    log_every: int = 1
    gradient_checkpointing: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    def hyper(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE_FIELDS}


class Recipe(Protocol):
    """What a trainable component provides to :func:`train`."""

    component: str  # weights-tree name of what is trained (``landmark_guider``, ``emotion_embedder``)
    model: nn.Module  # the trainable module (everything else the recipe uses stays frozen)

    def identity(self) -> dict[str, Any]:
        """What the run depends on besides the config (cache and tree hashes): must match on resume."""

    def to(self, device: torch.device) -> None:
        """Move the frozen parts to ``device``."""

    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The training loss of one micro-batch drawn with ``generator`` (0-d tensor)."""

    def fixed_loss(self, model: nn.Module) -> float:
        """The loss on a fixed batch with fixed noise (comparable across steps)."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Held-out metrics ({} when the cache has no validation speaker)."""

    def export(self, model: nn.Module, out: Path) -> Path:
        """Write ``out/<component>/`` (config.json + safetensors); returns the folder."""


def resolve_mixed_precision(name: str) -> str:
    """``"auto"`` → ``"bf16"`` on a CUDA device with bfloat16, else ``"no"``; other names unchanged."""
    if name != "auto":
        return name
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + 17) % (2**63 - 1)


# ------------------------------------------------------------------------------------------------- logs
def read_log(out: Path) -> list[dict[str, Any]]:
    path = out / LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def _truncate_log(out: Path, step: int) -> None:
    kept = [r for r in read_log(out) if r["step"] <= step]
    write_lines(out / LOG_FILE, kept)


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)


def plot_losses(out: Path) -> Path:
    """``loss.png``: training loss per step and the fixed-batch loss (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    records = read_log(out)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    fixed = [(r["step"], r["fixed_loss"]) for r in records if r["kind"] == "eval"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), lw=1, label="training loss")
    if fixed:
        ax.plot(*zip(*fixed, strict=True), "o-", lw=1.5, label="fixed-batch loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if all(v > 0 for _, v in train + fixed) else "linear")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / PLOT_FILE)
    plt.close(fig)
    return out / PLOT_FILE


# -------------------------------------------------------------------------------------------- training
def _eval_record(recipe: Recipe, model: nn.Module, step: int) -> dict[str, Any]:
    was = model.training
    model.eval()
    record = {"kind": "eval", "step": step, "fixed_loss": recipe.fixed_loss(model), **recipe.validate(model)}
    model.train(was)
    return record


@dataclass
class _Run:
    """What one training run holds: the prepared model, optimiser and schedule, and where it writes."""

    recipe: Recipe
    cfg: TrainConfig
    out: Path
    accelerator: Any
    model: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    identity: dict[str, Any]

    def unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)


def _check_config(cfg: TrainConfig) -> None:
    if cfg.mixed_precision not in MIXED_PRECISIONS:
        raise InputError(
            f"mixed_precision must be {', '.join(MIXED_PRECISIONS)}, got {cfg.mixed_precision!r}"
        )
    for name in ("steps", "batch_size", "grad_accum", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise InputError(f"{name} must be >= 1, got {getattr(cfg, name)}")


def _prepare(recipe: Recipe, cfg: TrainConfig, out: Path) -> _Run:
    """Accelerator, AdamW over the trainable parameters, the warm-up schedule, all prepared."""
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.mixed_precision))
    recipe.to(accelerator.device)
    model = recipe.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(cfg.warmup_steps, 0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))
    model, optimizer = accelerator.prepare(model, optimizer)
    return _Run(recipe, cfg, out, accelerator, model, params, optimizer, scheduler, recipe.identity())


def _resume(run: _Run, resume: bool) -> tuple[int, list[dict[str, Any]]]:
    """The step to start from and the log so far (the latest checkpoint's, or a fresh step-0 eval)."""
    start, out = 0, run.out
    checkpoint = latest_checkpoint(out)
    if checkpoint is not None and not resume:
        raise InputError(f"{out} already holds checkpoints; pass --resume to continue or choose a new --out")
    if checkpoint is not None:
        start = load_checkpoint(
            checkpoint, run.unwrapped(), run.optimizer, run.scheduler, run.cfg.hyper(), run.identity
        )
        _truncate_log(out, start)
        logger.info("resumed from %s (step %d)", checkpoint, start)
    elif resume:
        logger.warning("--resume: no checkpoint in %s, starting from step 0", out)
    log = read_log(out) if start else []
    if not start:
        log.append(_eval_record(run.recipe, run.model, 0))
    return start, log


def _optimizer_step(run: _Run, step: int) -> float:
    """One optimiser step (``grad_accum`` micro-batches drawn from the step's seed); the summed loss."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    torch.manual_seed(step_seed(cfg.seed, step))
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, step))
    total = 0.0
    for micro in range(cfg.grad_accum):
        sync = micro == cfg.grad_accum - 1
        context = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
        with context, accelerator.autocast():
            loss = run.recipe.loss(model, cfg.batch_size, generator) / cfg.grad_accum
            accelerator.backward(loss)
        total += float(loss.detach())
    if cfg.grad_clip > 0:
        accelerator.clip_grad_norm_(run.params, cfg.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return total


def _after_step(
    run: _Run, done: int, record: dict[str, Any], log: list[dict[str, Any]], render: Callable | None
) -> None:
    """Log, validate (and render), checkpoint when each is due after step ``done``."""
    cfg, accelerator = run.cfg, run.accelerator
    if done % cfg.log_every == 0 or done == cfg.steps:
        log.append(record)
    if cfg.validate_every and (done % cfg.validate_every == 0 or done == cfg.steps):
        log.append(_eval_record(run.recipe, run.model, done))
        if render is not None and accelerator.is_main_process:
            path = render(run.unwrapped(), done)
            log.append({"kind": "render", "step": done, "path": str(path)})
    if accelerator.is_main_process and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
        write_lines(run.out / LOG_FILE, log)
        folder = run.out / CHECKPOINTS_DIR / f"step-{done:08d}"
        model, hyper = run.unwrapped(), cfg.hyper()
        save_checkpoint(folder, done, model, run.optimizer, run.scheduler, hyper, run.identity)


def _finish(run: _Run, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Final eval, log, plot, export and ``training.json`` (main process); returns the summary."""
    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    if not cfg.validate_every:
        log.append(_eval_record(run.recipe, run.model, cfg.steps))
    accelerator.wait_for_everyone()
    summary: dict[str, Any] = {"component": run.recipe.component, "steps": cfg.steps, "config": asdict(cfg)}
    if accelerator.is_main_process:
        write_lines(out / LOG_FILE, log)
        plot_losses(out)
        folder = run.recipe.export(run.unwrapped(), out)
        evals = [r for r in log if r["kind"] == "eval"]
        summary.update(folder=str(folder), first_eval=evals[0], last_eval=evals[-1])
        write_json_atomic(out / "training.json", summary, indent=1, sort_keys=True)
    return summary


def train(
    recipe: Recipe,
    cfg: TrainConfig,
    out: Path,
    resume: bool = False,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    render: Callable[[nn.Module, int], Any] | None = None,
) -> dict[str, Any]:
    """Train ``recipe.model`` for ``cfg.steps`` optimiser steps into ``out``; returns the summary.

    ``out`` receives ``checkpoints/step-N/``, ``log.jsonl``, ``loss.png``, ``<component>/`` and
    ``training.json``. ``resume``: continue from the latest checkpoint (required when one exists).
    ``render``: called as ``render(model, step)`` (main process, unwrapped model) at every
    ``validate_every`` step: the validation render of ``train motion --validate-render``.
    """
    from tqdm.auto import tqdm

    _check_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    run = _prepare(recipe, cfg, out)
    start, log = _resume(run, resume)
    stop_after = int(os.environ.get(STOP_AFTER_ENV, "0") or 0)
    run.model.train()
    hide = not progress or not run.accelerator.is_local_main_process
    bar = tqdm(range(start, cfg.steps), desc=recipe.component, initial=start, total=cfg.steps, disable=hide)
    for step in bar:
        total = _optimizer_step(run, step)
        done = step + 1
        record = {"kind": "train", "step": done, "loss": total, "lr": run.scheduler.get_last_lr()[0]}
        bar.set_postfix(loss=f"{total:.4g}")
        _after_step(run, done, record, log, render)
        if on_step is not None:
            on_step(record)
        if stop_after and done >= stop_after and done < cfg.steps:
            raise RuntimeError(f"{STOP_AFTER_ENV}={stop_after}: stopped after step {done} (test hook)")
    return _finish(run, log)
