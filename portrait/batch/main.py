"""``portrait-batch`` (also ``portrait-gen batch``): render a manifest of jobs into a folder, resumably.

``portrait-batch MANIFEST --out-dir DIR [--engine local|ray] [--shard I/N] [--retries K] [--fail-fast]``

1. The manifest (JSONL or CSV, see :mod:`portrait.batch.manifest`) is read whole; this process keeps its
   static shard. Each job is checked (config overrides, input files, face, emotion; a reference clip or a
   driving video is probed, not analysed: :func:`portrait.inputs.check_job`) before any model loads; a
   bad line (whatever its error) is recorded as ``invalid`` and the others go on.
2. A job whose output and a readable sidecar ``<output>.json`` exist is ``skipped`` (a rerun resumes).
3. The rest render on the local engine (one process, pipeline loaded once, jobs in order) or the Ray engine
   (:mod:`portrait.batch.ray`). One failing job is recorded and the rest continue.
4. ``DIR/results.jsonl`` (``results.shard-I-of-N.jsonl`` for a shard) gets one line per job as it ends;
   a summary line goes to stderr. Exit 0 only if every job is ok or skipped; 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from portrait import __version__
from portrait.batch.manifest import InvalidLine, JobRecord, ManifestJob, read_manifest
from portrait.batch.ray import RayOptions
from portrait.batch.shard import Shard, resolve_shard, select_shard
from portrait.batch.worker import (
    FOREIGN_OUTPUT,
    Worker,
    WorkerSettings,
    is_done,
    is_foreign,
    remove_stale,
    sweep_stale,
    to_job,
)
from portrait.cli.common import (
    add_runtime_arguments,
    configure_logging,
    print_error,
    quiet_libraries,
    runtime_values,
)
from portrait.config import RenderConfig, with_values
from portrait.constants import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from portrait.errors import InputError, PortraitError

logger = logging.getLogger("portrait.batch.main" if __name__ == "__main__" else __name__)  # python -m too

STATUSES = ("ok", "skipped", "failed", "invalid")


# ------------------------------------------------------------------------------------------------ CLI
def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``portrait-batch`` flags (``--debug`` / ``--quiet`` come from the caller's parser)."""
    parser.add_argument("manifest", type=Path, help="job list: .jsonl (one JSON object per line) or .csv")
    parser.add_argument("--out-dir", type=Path, required=True, metavar="DIR", help="folder of the outputs")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="default: local")
    parser.add_argument(
        "--shard", default=None, metavar="I/N", help="render shard I of N (default: from Slurm or torchrun)"
    )
    parser.add_argument("--retries", type=int, default=2, metavar="K", help="retries of a failed job (2)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first invalid or failed job")
    run = parser.add_argument_group("runtime (every job)")
    add_runtime_arguments(run)
    run.add_argument("--steps", type=int, default=None, help="denoising steps (a job's 'steps' wins)")
    run.add_argument("--size", type=int, default=None, help="working short side (a job's 'size' wins)")
    run.add_argument("--no-interpolate", dest="interpolate", action="store_false", default=None)
    ray = parser.add_argument_group("ray engine")
    ray.add_argument("--ray-address", default=None, help="existing cluster (default: a local Ray)")
    ray.add_argument("--workers", type=int, default=None, help="actors (default: one per GPU)")
    ray.add_argument("--gpus-per-worker", type=float, default=None, help="default: 1 when GPUs exist")
    ray.add_argument("--cpus-per-worker", type=float, default=None, help="default: 1 (fractions allowed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="portrait-batch", description="Render a manifest of portrait jobs.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logging and full tracebacks")
    parser.add_argument("--quiet", action="store_true", help="only warnings, errors and the summary")
    add_batch_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``portrait-batch``: 0 all ok/skipped, 1 a failed/invalid job or an error, 2 usage, 130 Ctrl-C."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    configure_logging(debug=args.debug, quiet=args.quiet)
    try:
        return run_batch(args)
    except PortraitError as err:
        print_error(err, args.debug, "batch")
        return EXIT_ERROR


def run_batch(args: argparse.Namespace) -> int:
    """Run a parsed ``portrait-batch`` command; prints the summary line; returns the exit code."""
    from portrait.config import load_config

    if args.retries < 0:
        raise InputError(f"--retries must be >= 0, got {args.retries}")
    values = {
        "sampling.steps": args.steps,
        "preprocess.min_resolution": args.size,
        "video.interpolate": args.interpolate,
        **runtime_values(args),
    }
    cfg = load_config(files=args.config, overrides=args.overrides, values=values)
    if getattr(args, "quiet", False):  # no weight-loading progress bars from transformers / hub either
        quiet_libraries()
    ray = RayOptions(args.ray_address, args.workers, args.gpus_per_worker, args.cpus_per_worker)
    options = BatchOptions(
        args.engine, resolve_shard(args.shard), args.retries, args.fail_fast, args.detector, ray=ray
    )
    batch = Batch(args.manifest, args.out_dir, cfg, options)
    try:
        with _sigterm_as_interrupt():
            summary = batch.run()
    finally:
        if batch.opened:
            print(batch.summary().line(), file=sys.stderr)  # the CLI owns stderr
    return summary.exit_code


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (Slurm pre-emption, time limit, ``kill``) like Ctrl-C: clean stop, rerun resumes."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------------------ batch
@dataclass(frozen=True)
class BatchOptions:
    engine: str = "local"
    shard: Shard = Shard()
    retries: int = 2
    fail_fast: bool = False
    detector: str = "auto"
    ray: RayOptions | None = None  # None: one actor per GPU


@dataclass
class Summary:
    """Counts per status; ``not_run``: jobs of this shard left undone (Ctrl-C, --fail-fast, an abort)."""

    counts: dict[str, int]
    not_run: int
    interrupted: bool
    results: Path
    seconds: float

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_ERROR if self.counts["failed"] or self.counts["invalid"] or self.not_run else EXIT_OK

    def line(self) -> str:
        text = "portrait-batch: " + ", ".join(f"{self.counts[s]} {s}" for s in STATUSES)
        text += f" in {self.seconds:.1f} s; results in {self.results}"
        if self.not_run:
            text += f"; {self.not_run} not run"
        if self.interrupted:
            text += "; interrupted: run the same command again to resume"
        return text


@contextlib.contextmanager
def _exclusive(results: Path) -> Iterator[None]:
    """Hold an advisory lock on the results file for the run: a second run writing it stops at once
    (static shards write their own results files and run side by side)."""
    import fcntl

    with open(results, "a", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(
                f"another portrait-batch run is writing {results}; "
                "wait for it, or split the work with --shard I/N"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def results_path(out_dir: Path, shard: Shard) -> Path:
    name = "results.jsonl" if shard.count == 1 else f"results.shard-{shard.index}-of-{shard.count}.jsonl"
    return Path(out_dir) / name


class Batch:
    """One ``portrait-batch`` run: validate, skip, render, record. :meth:`summary` is valid at any time."""

    def __init__(
        self,
        manifest: Path,
        out_dir: Path,
        cfg: RenderConfig,
        options: BatchOptions | None = None,
        worker_factory: Callable[[WorkerSettings], Any] | None = None,
    ) -> None:
        options = options or BatchOptions()
        self.manifest, self.out_dir, self.cfg, self.options = Path(manifest), Path(out_dir), cfg, options
        self.worker_factory = worker_factory or Worker
        self.results = results_path(self.out_dir, options.shard)
        self.counts = dict.fromkeys(STATUSES, 0)
        self.total, self.interrupted, self.started = 0, False, time.perf_counter()
        self.opened = False  # the manifest was read and the results file started

    def summary(self) -> Summary:
        done = sum(self.counts.values())
        elapsed = round(time.perf_counter() - self.started, 1)
        return Summary(dict(self.counts), self.total - done, self.interrupted, self.results, elapsed)

    def record(self, rec: JobRecord) -> None:
        """Append ``rec`` to the results file (flushed) and log the progress."""
        self.counts[rec.status] += 1
        with self.results.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(rec.to_json()) + "\n")
            stream.flush()
        level = logging.WARNING if rec.status in ("failed", "invalid") else logging.INFO
        detail = f": {rec.error_class}: {rec.error}" if rec.error else f" ({rec.seconds:.1f} s)"
        logger.log(level, "[%d/%d] line %d %s%s", sum(self.counts.values()), self.total, rec.line,
                   rec.status, detail)  # fmt: skip

    def run(self) -> Summary:
        """Validate, then render with the chosen engine; Ctrl-C stops cleanly (``summary().interrupted``)."""
        entries = select_shard(read_manifest(self.manifest, self.out_dir), self.options.shard)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.results):
            return self._run(entries)

    def _run(self, entries: list[ManifestJob | InvalidLine]) -> Summary:
        sweep_stale(self.out_dir)
        self.total, self.opened = len(entries), True
        self.results.write_text("", encoding="utf-8")
        logger.info("%d job(s) for shard %d/%d (%s)", self.total, self.options.shard.index,
                    self.options.shard.count, self.options.shard.source)  # fmt: skip
        try:
            todo, cfg = self._validate(entries)
            if todo and not (self.options.fail_fast and self.counts["invalid"]):
                settings = WorkerSettings(
                    cfg, self.options.detector, any(c.video.interpolate for _, c in todo)
                )
                if self.options.engine == "ray":
                    self._run_ray([job for job, _ in todo], settings)
                else:
                    self._run_local([job for job, _ in todo], settings)
        except KeyboardInterrupt:
            self.interrupted = True
            logger.warning("interrupted: finished outputs are kept; rerun to resume")
        return self.summary()

    def _validate(self, entries: list[ManifestJob | InvalidLine]) -> tuple[list, RenderConfig]:
        """Record invalid and already done jobs; return the (job, job config) pairs to render."""
        todo: list[tuple[ManifestJob, RenderConfig]] = []
        cfg, check = self.cfg, None
        for entry in entries:
            if isinstance(entry, InvalidLine):
                self.record(JobRecord(entry.line, "invalid", None, 0.0, entry.error_class, entry.error))
                continue
            if is_done(entry.output):
                self.record(JobRecord(entry.line, "skipped", str(entry.output)))
                continue
            if is_foreign(entry.output):
                self.record(JobRecord(entry.line, "invalid", str(entry.output), 0.0, "InputError",
                                      f"{entry.output}: {FOREIGN_OUTPUT}"))  # fmt: skip
                continue
            if check is None:
                cfg, check = self._prechecker()
            try:
                job_cfg = with_values(cfg, dict(entry.values))
                entry.output.parent.mkdir(parents=True, exist_ok=True)
                check(to_job(entry), job_cfg)
            except Exception as err:  # noqa: BLE001 - a line's error (even a bug in a check) stays its own
                if not isinstance(err, (PortraitError, OSError, ValueError)):
                    logger.warning("line %d: unexpected error while checking it", entry.line, exc_info=err)
                message = " ".join(str(err).split()) or type(err).__name__
                self.record(
                    JobRecord(entry.line, "invalid", str(entry.output), 0.0, type(err).__name__, message)
                )
            else:
                todo.append((entry, job_cfg))
        return todo, cfg

    def _prechecker(self) -> tuple[RenderConfig, Callable]:
        """The batch config with an absolute weights root (and this rank's GPU), and a job checker."""
        from portrait.inputs import check_job
        from portrait.preprocess.detectors import detector_from_name
        from portrait.weights.load import check_tree, emotion_names, resolve_weights_root

        root = resolve_weights_root(self.cfg.runtime.weights).resolve()
        check_tree(root)
        cfg = with_values(self.cfg, {"runtime.weights": str(root)})
        if self.options.engine == "local":
            cfg = _rank_device(cfg)
        names = emotion_names(root)
        detector = detector_from_name(self.options.detector, root, yolo_sha256=cfg.preprocess.yolo_sha256)
        # Every job is checked before any model loads (photo, face, audio, emotion; a reference clip or a
        # driving video only probed): nothing is kept (memory stays flat in the manifest's length) and the
        # worker's prepare classifies a reference and tracks a driving video once, when it renders the job.
        return cfg, lambda job, job_cfg: check_job(job, job_cfg, detector, names)

    def _run_local(self, jobs: list[ManifestJob], settings: WorkerSettings) -> None:
        shard = self.options.shard
        name = f"local-{shard.index}of{shard.count}@{socket.gethostname()}:{os.getpid()}"
        worker = self.worker_factory(dataclasses.replace(settings, name=name))
        worker.load()
        for job in jobs:
            attempt = 1
            rec = worker.run(job, attempt)
            while rec.status == "failed" and rec.retryable and attempt <= self.options.retries:
                attempt += 1
                logger.warning("line %d failed (%s), attempt %d", job.line, rec.error_class, attempt)
                rec = worker.run(job, attempt)
            self.record(rec)
            if self.options.fail_fast and rec.status == "failed":
                logger.warning("--fail-fast: stopping after line %d failed", job.line)
                return

    def _run_ray(self, jobs: list[ManifestJob], settings: WorkerSettings) -> None:
        from portrait.batch.ray import run_ray

        make_worker = partial(_named_worker, self.worker_factory, settings)
        options = self.options.ray or RayOptions()
        cleanup = partial(_remove_unfinished, ours=True)  # a killed actor's job: its half output is ours
        run_ray(jobs, make_worker, self.record, cleanup, options,
                retries=self.options.retries, fail_fast=self.options.fail_fast)  # fmt: skip


def _remove_unfinished(job: ManifestJob, ours: bool) -> None:
    remove_stale(job.output, ours=ours)


def _named_worker(factory: Callable, settings: WorkerSettings, name: str) -> Any:
    return factory(dataclasses.replace(settings, name=name))


def _rank_device(cfg: RenderConfig) -> RenderConfig:
    """Under torchrun / srun with several GPUs per node, rank r of a node renders on GPU r (device auto)."""
    local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID"))
    if cfg.runtime.device != "auto" or local is None or not local.isdigit():
        return cfg
    import torch

    if not torch.cuda.is_available():
        return cfg
    return with_values(cfg, {"runtime.device": f"cuda:{int(local) % torch.cuda.device_count()}"})


if __name__ == "__main__":
    sys.exit(main())
