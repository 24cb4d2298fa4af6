"""One batch worker: holds a loaded engine and the identity cache, renders jobs one at a time.

A job never raises out of :meth:`Worker.run` (except Ctrl-C): it ends ``ok``, ``skipped`` (already done) or
``failed`` with the error class and message. "Done" means the output AND a readable sidecar ``<output>.json``
exist: ``generate`` renames the mp4 into place first and writes the sidecar last, so a render killed at any
point never looks done, and :func:`remove_stale` clears what it left before the next attempt.
Used in-process by the local engine and inside each actor by the Ray engine.
"""

from __future__ import annotations

import collections
import gc
import json
import logging
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portrait.batch.manifest import JobRecord, ManifestJob
from portrait.config import RenderConfig, with_values
from portrait.errors import InputError, PortraitError
from portrait.files import owner_state, partial_path, sha256_file, sidecar_path

logger = logging.getLogger(__name__)

__all__ = [
    "FOREIGN_OUTPUT",
    "IDENTITY_CACHE_SIZE",
    "LRUCache",
    "Worker",
    "WorkerSettings",
    "is_done",
    "is_foreign",
    "remove_stale",
    "sweep_stale",
    "to_job",
]


def is_done(output: Path) -> bool:
    """True when ``output`` and its sidecar exist and the sidecar describes that very mp4.

    The sidecar (written last) must be a JSON object, the mp4 non-empty and not newer than the sidecar;
    what the sidecar records of the mp4 must match it: its ``output`` name, ``output_bytes`` and
    ``output_sha256`` (each checked when present).
    """
    sidecar = sidecar_path(output)
    try:
        if not (output.is_file() and sidecar.is_file()):
            return False
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            return False
        if "output" in data and Path(str(data["output"])).name != output.name:
            return False
        size, mtime = output.stat().st_size, output.stat().st_mtime
        if size == 0 or mtime > sidecar.stat().st_mtime + 2.0:
            return False
        if "output_bytes" in data and data["output_bytes"] != size:
            return False
        if "output_sha256" in data and data["output_sha256"] != sha256_file(output):
            return False
        return True
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False


def is_foreign(output: Path) -> bool:
    """True when something exists at ``output`` that portrait did not write.

    A file is ours when its sidecar exists, or when a killed render of ours left its partial files next
    to it (``<stem>.partial.mp4`` or ``<output>.json.partial``). Anything else is never deleted or
    overwritten: the job is refused with :data:`FOREIGN_OUTPUT`.
    """
    if not os.path.lexists(output):
        return False
    sidecar = sidecar_path(output)
    ours = (sidecar, sidecar.with_name(sidecar.name + ".partial"), partial_path(output))
    return not any(path.is_file() for path in ours)


#: Why a job whose output path holds someone else's file is refused.
FOREIGN_OUTPUT = "output exists and is not ours; remove it or choose another output"


def remove_stale(output: Path, ours: bool = False) -> None:
    """Remove what an unfinished render of ``output`` left: partial files, and an unfinished output of
    ours (see :func:`is_foreign`). Someone else's file at ``output`` is kept, unless ``ours``: the caller
    knows the path was free when the batch started (validation refuses foreign outputs), so whatever is
    there now was written by an earlier attempt of this batch (a worker killed mid-write)."""
    sidecar = sidecar_path(output)
    leftovers = [partial_path(output), sidecar.with_name(sidecar.name + ".partial")]
    leftovers += _qa_attempts(output)
    if (ours or not is_foreign(output)) and not is_done(output):
        leftovers += [output, sidecar]
    for path in leftovers:
        path.unlink(missing_ok=True)


def _qa_attempts(output: Path) -> list[Path]:
    """Attempt files an emotion-QA render killed mid-way left (``.STEM.qaK.mp4`` and its ``.json``)."""
    pattern = re.compile(rf"\.{re.escape(output.stem)}\.qa\d+{re.escape(output.suffix)}(\.json)?")
    try:
        return [p for p in output.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    except OSError:
        return []


#: Work folders of a render (``generate``) and of the converter, swept when their owner is gone.
STALE_PREFIXES = (".portrait-", ".partial-")
#: A work folder untouched for this long whose owner cannot be told is considered abandoned.
STALE_AGE_S = 6 * 3600.0


def sweep_stale(folder: Path, max_age_s: float = STALE_AGE_S, now: float | None = None) -> list[Path]:
    """Remove abandoned ``.portrait-*`` / ``.partial-*`` work folders directly in ``folder``'s tree.

    The owner is read from the folder name (``-<host>-<pid>-``, :func:`portrait.files.owned_prefix`)
    when it carries one: a folder of a dead process on this host is removed at once, one of a live
    process kept; a folder without an owner (or of another host) is removed when nothing in it changed
    for ``max_age_s``. Returns what was removed.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
    candidates = [p for prefix in STALE_PREFIXES for p in folder.rglob(f"{prefix}*") if p.is_dir()]
    for work in candidates:
        state = owner_state(work.name)
        if state == "alive":
            continue
        if state == "dead":
            shutil.rmtree(work, ignore_errors=True)
            logger.info("removed work folder %s of a process that is gone", work)
            removed.append(work)
            continue
        try:
            newest = max([work.stat().st_mtime] + [q.stat().st_mtime for q in work.rglob("*")])
        except OSError:
            continue
        if now - newest < max_age_s:
            continue
        shutil.rmtree(work, ignore_errors=True)
        logger.info("removed abandoned work folder %s", work)
        removed.append(work)
    return removed


def to_job(entry: ManifestJob) -> Any:
    from portrait.inputs import Job

    return Job(entry.image, entry.audio, entry.output, emotion=entry.emotion, face_box=entry.face_box,
               face_index=entry.face_index, seed=entry.seed, motion=entry.motion,
               emotion_from=entry.emotion_from, emotion_strength=entry.emotion_strength,
               emotion_from_mode=entry.emotion_from_mode,
               emotion_embedder=entry.emotion_embedder)  # fmt: skip


#: Identity encodings a worker keeps (least recently used ones are dropped first).
IDENTITY_CACHE_SIZE = 8


class LRUCache(collections.OrderedDict):
    """A dict that keeps at most ``size`` entries, dropping the least recently used (read or written)."""

    def __init__(self, size: int = IDENTITY_CACHE_SIZE) -> None:
        if size < 1:
            raise ValueError(f"LRUCache size must be >= 1, got {size}")
        super().__init__()
        self.size = size

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self.move_to_end(key)
        return value

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


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
        self.cache: LRUCache = LRUCache()
        self.evaluate: Any = None  # the emotion-QA evaluator, built on the first QA job (tools load lazily)

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
            qa = self._render(job, retry=attempt > 1)
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
        done = record("ok")
        done.qa = qa
        return done

    def _render(self, job: ManifestJob, retry: bool = False) -> dict[str, Any] | None:
        """Render ``job`` (through the emotion-QA loop when it asks); returns the QA summary or None.

        ``retry``: an earlier attempt of this batch may have left a half-written output, which is ours.
        """
        from portrait.eval.qa import QASettings, default_evaluator
        from portrait.inputs import prepare
        from portrait.rendering import render_job

        if not retry and is_foreign(job.output):
            raise InputError(f"{job.output}: {FOREIGN_OUTPUT}")
        remove_stale(job.output, ours=retry)
        cfg = with_values(self.settings.cfg, dict(job.values))
        for path, what in ((job.image, "image"), (job.audio, "audio")):
            if not path.is_file():
                raise InputError(f"{what} file {path} no longer exists (it was there when the batch started)")
        self.load()
        engine = self.engine
        prepared = prepare(to_job(job), cfg, engine.detector, engine.bank)
        qa = None if job.qa is None else QASettings(threshold=job.qa[0], retries=job.qa[1])
        if qa is not None and self.evaluate is None:
            self.evaluate = default_evaluator()  # its tools load on the first QA render, once per worker
        result = render_job(prepared, engine, cfg, qa=qa, evaluate=self.evaluate, cache=self.cache)
        return None if qa is None else qa_summary(result.info["emotion_qa"])

    def _free_memory(self, err: BaseException) -> None:
        import torch

        if isinstance(err, torch.cuda.OutOfMemoryError):
            self.cache.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


#: Per-attempt scores copied from the sidecar's ``emotion_qa`` into the results line.
QA_RESULT_KEYS = ("emo_scale", "emotion_confidence", "emotion_accuracy", "csim", "passed")


def qa_summary(qa: dict[str, Any]) -> dict[str, Any]:
    """The results-line form of a sidecar's ``emotion_qa``: chosen attempt, passed, each attempt's scores."""
    attempts = [{key: attempt.get(key) for key in QA_RESULT_KEYS} for attempt in qa["attempts"]]
    return {"chosen": qa["chosen"], "passed": qa["passed"], "attempts": attempts}


def _message(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
