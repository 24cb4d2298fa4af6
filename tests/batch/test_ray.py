"""`portrait-batch --engine ray` on a local 2-CPU Ray: actor pool, dynamic dispatch, killed worker retried."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from tiny_inputs import batch_inputs, write_manifest

ray = pytest.importorskip("ray")

from portrait.batch.main import Batch, BatchOptions, main  # noqa: E402
from portrait.batch.manifest import JobRecord, ManifestJob  # noqa: E402
from portrait.batch.ray import RayOptions, run_ray  # noqa: E402
from portrait.batch.worker import Worker, is_done  # noqa: E402
from portrait.config import load_config  # noqa: E402
from portrait.errors import PortraitError, WeightsError  # noqa: E402

HALF = 0.5  # CPUs per actor: two actors fit a 2-CPU Ray and leave room for the driver's tasks


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # actors cannot import this test file
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return batch_inputs(tmp_path_factory.mktemp("ray_inputs"))


def results(out: Path) -> dict[int, dict]:
    return {row["line"]: row for row in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def test_ray_renders_the_manifest_and_retries_a_killed_worker(inputs, tiny_weights, tmp_path):
    job = {"image": "anna.jpg", "audio": "hello.wav"}
    jobs = [{**job, "emotion": "happy"}, {**job, "output": "crash.mp4"}, {**job, "seed": 4}]
    manifest = write_manifest(inputs / "ray.jsonl", jobs)
    out = tmp_path / "out"
    cfg = load_config(
        values={"runtime.weights": str(tiny_weights), "runtime.device": "cpu", "sampling.steps": 2,
                "preprocess.min_resolution": 64, "video.interpolate": False}
    )  # fmt: skip

    class CrashOnce(Worker):  # defined here: Ray ships it to the actors by value
        def run(self, job, attempt=1):
            if job.line == 2 and attempt == 1:
                job.output.write_bytes(b"half a video")  # killed mid-write: must not count as done
                os._exit(1)
            return super().run(job, attempt)

    options = BatchOptions("ray", retries=1, ray=RayOptions(workers=2, cpus_per_worker=HALF))
    summary = Batch(manifest, out, cfg, options, worker_factory=CrashOnce).run()
    rows = results(out)
    assert summary.exit_code == 0 and summary.counts["ok"] == 3
    assert {n: (r["status"], r["attempts"]) for n, r in rows.items()} == {
        1: ("ok", 1), 2: ("ok", 2), 3: ("ok", 1)
    }  # fmt: skip
    assert all(r["worker"].startswith("ray-") for r in rows.values())
    assert is_done(out / "crash.mp4") and (out / "crash.mp4").stat().st_size > 1000

    # The CLI on the same folder with one more job: three skipped, the new one rendered on Ray.
    write_manifest(manifest, [*jobs, {**job, "emotion": "sad"}])
    args = [str(manifest), "--out-dir", str(out), "--engine", "ray", "--workers", "2"]
    args += ["--cpus-per-worker", str(HALF), "--weights", str(tiny_weights), "--device", "cpu"]
    args += ["--steps", "2", "--size", "64", "--no-interpolate", "--quiet"]
    assert main(args) == 0
    rows = results(out)
    assert [rows[n]["status"] for n in (1, 2, 3, 4)] == ["skipped", "skipped", "skipped", "ok"]
    assert is_done(out / "4_anna_hello.mp4")


class Sleeper:
    """A light worker (no model): sleeps per job, fails some jobs, remembers nothing."""

    def __init__(self, name: str, failing: frozenset[int] = frozenset()) -> None:
        self.name, self.failing = name, failing

    def load(self) -> None:
        pass

    def run(self, job: ManifestJob, attempt: int = 1) -> JobRecord:
        if job.line in self.failing:
            raise ValueError(f"line {job.line} always breaks")
        time.sleep(2.5 if job.line == 1 else 0.05)
        return JobRecord(job.line, "ok", str(job.output), attempts=attempt, worker=self.name)


def fake_jobs(count: int) -> list[ManifestJob]:
    return [
        ManifestJob(n, Path("a.jpg"), Path("a.wav"), Path(f"/nonexistent/{n}.mp4"))
        for n in range(1, count + 1)
    ]


def test_dispatch_is_dynamic_and_task_errors_are_retried_then_failed():
    def make(name):  # a closure: pickled by value for the actors
        return Sleeper(name, failing=frozenset({3}))

    records: list[JobRecord] = []
    cleaned: list[int] = []
    options = RayOptions(workers=2, cpus_per_worker=HALF)
    run_ray(fake_jobs(8), make, records.append, lambda job: cleaned.append(job.line), options, retries=2)
    by_line = {r.line: r for r in records}
    assert sorted(by_line) == list(range(1, 9)) and len(records) == 8
    assert by_line[3].status == "failed" and by_line[3].error_class == "ValueError"
    assert by_line[3].attempts == 3 and "always breaks" in by_line[3].error
    long_worker = by_line[1].worker
    assert [r.line for r in records if r.worker == long_worker] == [1]  # the other actor took the rest
    assert cleaned == []


def test_a_worker_that_cannot_load_stops_the_batch():
    class NoWeights(Sleeper):
        def load(self):
            raise WeightsError("weights folder /nowhere does not exist")

    with pytest.raises(PortraitError, match="/nowhere"):
        run_ray(
            fake_jobs(2), NoWeights, [].append, lambda job: None, RayOptions(workers=1, cpus_per_worker=HALF)
        )
