"""Ray engine of ``portrait-batch``: a pool of actors, each holding one loaded pipeline, fed job by job.

Scheduling is dynamic: every idle actor gets the next queued job, so long and short jobs balance. A job whose
actor dies (killed, pre-empted node, out of host memory) or whose task raises is queued again, up to
``retries`` more attempts, and the dead actor is replaced. What a worker is comes from the caller
(``make_worker(name)``, see :class:`portrait.batch.main.Worker`): this module only schedules.

``ray`` is an optional dependency (the ``[cluster]`` extra); it is imported when the engine runs.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from portrait.batch.manifest import JobRecord, ManifestJob
from portrait.errors import ConfigError, PortraitError

logger = logging.getLogger(__name__)

__all__ = ["RayOptions", "WorkerLike", "run_ray"]

_INSTALL = "the ray engine needs Ray: pip install 'portrait[cluster]' (or pip install 'ray[data]')"
#: Seconds between "still waiting" messages when nothing finishes (e.g. actors waiting for free GPUs).
_WAIT_REPORT_S = 60.0


class WorkerLike(Protocol):
    """What an actor holds: loads the engine once, then renders jobs."""

    def load(self) -> None: ...

    def run(self, job: ManifestJob, attempt: int = 1) -> JobRecord: ...


@dataclass(frozen=True)
class RayOptions:
    """Pool shape. ``None``: one actor per cluster GPU with ``num_gpus=1``, or one CPU actor without GPUs."""

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float | None = None


class RenderActor:
    """The body of one Ray actor (wrapped by ``ray.remote`` at run time)."""

    def __init__(self, make_worker: Callable[[str], WorkerLike], slot: int) -> None:
        self.make_worker, self.name = make_worker, f"ray-{slot}@{socket.gethostname()}:{os.getpid()}"
        self.worker: WorkerLike | None = None

    def start(self) -> str:
        """Build the worker and load its engine (errors surface here, as task errors, not actor deaths)."""
        self.worker = self.make_worker(self.name)
        self.worker.load()
        return self.name

    def run(self, job: ManifestJob, attempt: int) -> JobRecord:
        return self.worker.run(job, attempt)


@dataclass
class _Task:
    kind: str  # "start" | "job"
    slot: int
    actor: Any
    job: ManifestJob | None = None
    attempt: int = 0
    since: float = 0.0


def run_ray(
    jobs: Sequence[ManifestJob],
    make_worker: Callable[[str], WorkerLike],
    record: Callable[[JobRecord], None],
    cleanup: Callable[[ManifestJob], None],
    options: RayOptions,
    *,
    retries: int = 2,
    fail_fast: bool = False,
) -> None:
    """Render ``jobs`` on a Ray actor pool; ``record`` gets one final :class:`JobRecord` per finished job.

    Uses the running Ray session if there is one, else ``ray.init(address=options.address)`` (a local
    cluster when ``None``), shut down again at the end. On Ctrl-C every actor is killed, ``cleanup`` removes
    the partial files of the jobs in flight, and the KeyboardInterrupt propagates.

    Raises:
        ConfigError: Ray is not installed or the pool shape is impossible.
        PortraitError: an actor cannot load the pipeline (e.g. a WeightsError), or keeps dying while loading.
    """
    try:
        import ray
    except ImportError as err:
        raise ConfigError(_INSTALL) from err
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=options.address, include_dashboard=False, log_to_driver=True)
    pool = _Pool(ray, make_worker, options, len(jobs), retries)
    try:
        pool.run(jobs, record, fail_fast)
    finally:
        for task in pool.in_flight.values():
            if task.job is not None:
                cleanup(task.job)
        if started_here:
            ray.shutdown()


class _Pool:
    """Actors, the job queue and the in-flight tasks of one :func:`run_ray` call."""

    def __init__(self, ray: Any, make_worker: Callable, options: RayOptions, jobs: int, retries: int):
        self.ray, self.make_worker, self.retries = ray, make_worker, retries
        gpus, cpus, count = _pool_shape(ray, options)
        self.size = max(1, min(count, jobs))
        self.actor_class = ray.remote(RenderActor).options(
            num_gpus=gpus, num_cpus=cpus, max_restarts=0, max_task_retries=0
        )
        logger.info("ray pool: %d actor(s), %g GPU and %g CPU each", self.size, gpus, cpus)
        self.in_flight: dict[Any, _Task] = {}
        self.idle: list[tuple[int, Any]] = []
        self.actors: dict[int, Any] = {}
        self.start_failures = 0
        self.next_slot = 0

    def spawn(self) -> None:
        slot, self.next_slot = self.next_slot, self.next_slot + 1
        actor = self.actor_class.remote(self.make_worker, slot)
        self.actors[slot] = actor
        self.in_flight[actor.start.remote()] = _Task("start", slot, actor, since=time.perf_counter())

    def retire(self, slot: int) -> None:
        actor = self.actors.pop(slot, None)
        if actor is not None:
            self.ray.kill(actor, no_restart=True)

    def run(self, jobs: Sequence[ManifestJob], record: Callable[[JobRecord], None], fail_fast: bool) -> None:
        queue: deque[tuple[ManifestJob, int]] = deque((job, 1) for job in jobs)
        for _ in range(self.size):
            self.spawn()
        try:
            while queue or any(t.kind == "job" for t in self.in_flight.values()):
                while queue and self.idle:
                    slot, actor = self.idle.pop()
                    job, attempt = queue.popleft()
                    ref = actor.run.remote(job, attempt)
                    self.in_flight[ref] = _Task("job", slot, actor, job, attempt, time.perf_counter())
                done, _ = self.ray.wait(list(self.in_flight), num_returns=1, timeout=_WAIT_REPORT_S)
                if not done:
                    logger.info("ray: waiting (%d queued, %d in flight)", len(queue), len(self.in_flight))
                    continue
                final = self.finish(done[0], queue)
                if final is not None:
                    record(final)
                    if fail_fast and final.status == "failed":
                        logger.warning("--fail-fast: stopping after line %d failed", final.line)
                        return
        finally:
            for slot in list(self.actors):
                self.retire(slot)

    def finish(self, ref: Any, queue: deque[tuple[ManifestJob, int]]) -> JobRecord | None:
        """Handle one finished task; return the job's final record, or None (requeued / actor started)."""
        ray = self.ray
        task = self.in_flight.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the method raised: a start error is fatal
            cause = getattr(err, "cause", None) or err
            if task.kind == "start":
                self.retire(task.slot)
                if isinstance(cause, PortraitError):
                    raise cause from err
                raise PortraitError(f"ray worker could not load the pipeline: {_first_line(cause)}") from err
            self.idle.append((task.slot, task.actor))
            return self._retry_or_fail(task, queue, type(cause).__name__, _first_line(cause))
        except ray.exceptions.RayError as err:  # the actor died (or its node went away)
            self.retire(task.slot)
            self.spawn()
            if task.kind == "start":
                self.start_failures += 1
                if self.start_failures > self.retries + self.size:
                    raise PortraitError(f"ray workers keep dying while loading: {_first_line(err)}") from err
                return None
            logger.warning("line %d: ray worker lost (%s)", task.job.line, type(err).__name__)
            return self._retry_or_fail(task, queue, "WorkerLost", f"{type(err).__name__}: {_first_line(err)}")
        if task.kind == "start":
            logger.info("ray worker %s ready", result)
            self.idle.append((task.slot, task.actor))
            return None
        self.idle.append((task.slot, task.actor))
        if result.status == "failed" and result.retryable and task.attempt <= self.retries:
            logger.warning("line %d failed (%s), retrying", result.line, result.error_class)
            queue.appendleft((task.job, task.attempt + 1))
            return None
        return result

    def _retry_or_fail(
        self, task: _Task, queue: deque[tuple[ManifestJob, int]], error_class: str, message: str
    ) -> JobRecord | None:
        job = task.job
        if task.attempt <= self.retries:
            queue.appendleft((job, task.attempt + 1))
            return None
        seconds = round(time.perf_counter() - task.since, 3)
        return JobRecord(
            job.line,
            "failed",
            str(job.output),
            seconds,
            error_class,
            message,
            task.attempt,
            f"ray-{task.slot}",
            True,
        )


def _pool_shape(ray: Any, options: RayOptions) -> tuple[float, float, int]:
    """(GPUs per actor, CPUs per actor, number of actors) from the options and the cluster's resources."""
    resources = ray.cluster_resources()
    gpus = options.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if resources.get("GPU", 0) >= 1 else 0.0
    cpus = 1.0 if options.cpus_per_worker is None else options.cpus_per_worker
    if gpus < 0 or cpus < 0 or (gpus == 0 and cpus == 0):
        raise ConfigError(f"ray workers need resources: got {gpus} GPU and {cpus} CPU per worker")
    if options.workers is not None:
        if options.workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {options.workers}")
        return gpus, cpus, options.workers
    if gpus > 0:
        count = int(resources.get("GPU", 0) // gpus)
        if count < 1:
            raise ConfigError(f"the ray cluster has {resources.get('GPU', 0)} GPUs; each worker needs {gpus}")
        return gpus, cpus, count
    logger.warning("no GPU in the ray cluster: rendering on one CPU actor (slow); set --workers for more")
    return gpus, cpus, 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
