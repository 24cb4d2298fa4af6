"""One batch worker: holds a loaded engine and the identity cache, renders jobs one at a time.

A job never raises out of :meth:`Worker.run` (except Ctrl-C): it ends ``ok``, ``skipped`` (already done) or
``failed`` with the error class and message. "Done" means the output AND a readable sidecar ``<output>.json``
exist: ``generate`` renames the mp4 into place first and writes the sidecar last, so a render killed at any
point never looks done, and :func:`remove_stale` clears what it left before the next attempt.
Used in-process by the local engine and inside each actor by the Ray engine.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portrait.batch.manifest import JobRecord, ManifestJob
from portrait.config import RenderConfig, with_values
from portrait.errors import InputError, PortraitError

logger = logging.getLogger(__name__)

__all__ = ["Worker", "WorkerSettings", "is_done", "remove_stale", "sidecar_path", "to_job"]


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def is_done(output: Path) -> bool:
    """True when ``output`` and its sidecar exist and the sidecar is a JSON object (written last)."""
    sidecar = sidecar_path(output)
    if not (output.is_file() and sidecar.is_file()):
        return False
    try:
        return isinstance(json.loads(sidecar.read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def remove_stale(output: Path) -> None:
    """Remove what an unfinished render of ``output`` left: partial files, an output without sidecar."""
    from portrait.ffmpeg import partial_path

    sidecar = sidecar_path(output)
    leftovers = [partial_path(output), sidecar.with_name(sidecar.name + ".partial")]
    if not is_done(output):
        leftovers += [output, sidecar]
    for path in leftovers:
        path.unlink(missing_ok=True)


def to_job(entry: ManifestJob) -> Any:
    from portrait.inputs import Job

    return Job(entry.image, entry.audio, entry.output, emotion=entry.emotion, face_box=entry.face_box,
               face_index=entry.face_index, seed=entry.seed)  # fmt: skip


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs to build its engine. ``interpolate``: load the interpolator (some job uses it)."""

    cfg: RenderConfig
    detector: str = "auto"
    interpolate: bool = True
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


class Worker:
    """Holds one loaded engine and the identity cache; renders jobs one at a time, never raising for a job."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.engine: Any = None
        self.cache: dict = {}

    def load(self) -> None:
        """Load the engine (once)."""
        if self.engine is None:
            from portrait.engine import load_engine

            cfg = with_values(self.settings.cfg, {"video.interpolate": self.settings.interpolate})
            self.engine = load_engine(cfg, detector=self.settings.detector)

    def run(self, job: ManifestJob, attempt: int = 1) -> JobRecord:
        """Render ``job``; ``ok``/``skipped``, or ``failed`` with the error (KeyboardInterrupt propagates)."""
        started = time.perf_counter()

        def record(status: str, err: BaseException | None = None, retryable: bool = False) -> JobRecord:
            seconds = round(time.perf_counter() - started, 3)
            kind, message = (type(err).__name__, _message(err)) if err is not None else (None, None)
            return JobRecord(job.line, status, str(job.output), seconds, kind, message, attempt,
                             self.settings.name, retryable)  # fmt: skip

        if is_done(job.output):
            return record("skipped")
        try:
            self._render(job)
        except KeyboardInterrupt:
            remove_stale(job.output)
            raise
        except PortraitError as err:  # bad input: the same next time
            remove_stale(job.output)
            return record("failed", err)
        except (RuntimeError, OSError) as err:  # out of memory (torch.cuda.OutOfMemoryError), I/O, CUDA
            remove_stale(job.output)
            self._free_memory(err)
            return record("failed", err, retryable=True)
        except Exception as err:  # noqa: BLE001 - the isolation boundary: one job never stops the batch
            logger.exception("line %d: unexpected error", job.line)
            remove_stale(job.output)
            return record("failed", err, retryable=True)
        return record("ok")

    def _render(self, job: ManifestJob) -> None:
        from portrait.generate import generate
        from portrait.inputs import prepare

        remove_stale(job.output)
        cfg = with_values(self.settings.cfg, dict(job.values))
        for path, what in ((job.image, "image"), (job.audio, "audio")):
            if not path.is_file():
                raise InputError(f"{what} file {path} no longer exists (it was there when the batch started)")
        self.load()
        engine = self.engine
        prepared = prepare(to_job(job), cfg, engine.detector, engine.bank)
        generate(prepared, engine, cfg, progress=False, cache=self.cache)

    def _free_memory(self, err: BaseException) -> None:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            self.cache.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _message(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
