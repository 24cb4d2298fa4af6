"""`portrait-batch` on the local engine: manifests, bad lines, shards, resume, per-job failures, Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
from tiny_inputs import batch_inputs, write_manifest

from portrait.batch import main as batch
from portrait.batch.main import Batch, BatchOptions, main
from portrait.batch.manifest import InvalidLine, JobRecord, ManifestJob, read_manifest
from portrait.batch.shard import Shard, resolve_shard, select_shard
from portrait.batch.worker import Worker, WorkerSettings, is_done, remove_stale
from portrait.config import load_config, with_values
from portrait.errors import InputError

FAST = ["--steps", "2", "--size", "64", "--no-interpolate", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with two portraits and a 1.2-s speech clip."""
    return batch_inputs(tmp_path_factory.mktemp("inputs"), ("anna.jpg", "bert.jpg"))


def results(out: Path, name: str = "results.jsonl") -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / name).read_text().splitlines()]
    assert len({r["line"] for r in rows}) == len(rows), "one line per job"
    return {r["line"]: r for r in rows}


def fast_cfg(weights: Path):
    values = {"runtime.weights": str(weights), "runtime.device": "cpu", "sampling.steps": 2}
    return load_config(values={**values, "preprocess.min_resolution": 64, "video.interpolate": False})


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if "partial" in p.name or p.name.startswith(".portrait-"))


# ------------------------------------------------------------------------------------------ manifests
def test_missing_empty_and_folder_manifests_raise(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "nope.jsonl", tmp_path / "out")
    with pytest.raises(InputError, match="no jobs"):
        read_manifest(write_manifest(tmp_path / "empty.jsonl", ["", "# only a comment"]), tmp_path)
    with pytest.raises(InputError, match="folder"):
        read_manifest(tmp_path, tmp_path / "out")
    assert main([str(tmp_path / "nope.jsonl"), "--out-dir", str(tmp_path / "o")]) == 1
    assert not (tmp_path / "o").exists()


def test_jsonl_bad_lines_are_reported_with_their_line_numbers(tmp_path):
    ok = {"image": "a.jpg", "audio": "a.wav"}
    manifest = write_manifest(
        tmp_path / "jobs.jsonl",
        [
            ok,  # 1
            "",  # 2: blank, not a job
            "# a comment",  # 3
            '{"image": "a.jpg", "audio": ',  # 4: truncated JSON
            "[1, 2]",  # 5
            {"image": "a.jpg"},  # 6: no audio
            {**ok, "stepz": 3},  # 7
            {**ok, "steps": "many"},  # 8
            {**ok, "output": "../x.mp4"},  # 9
            {**ok, "output": "/abs.mp4"},  # 10
            {**ok, "output": "clip.avi"},  # 11
            {**ok, "output": "same.mp4"},  # 12
            {**ok, "output": "sub/../same.mp4"},  # 13: '..' even when it would stay inside
            {**ok, "output": "same.mp4", "emotion": "sad"},  # 14: duplicate of line 12
            {**ok, "output": "1_a_a.mp4"},  # 15: duplicate of line 1's default name
            {**ok, "ref_scale": [1, 2, 3]},  # 16
            {**ok, "set": {"runtime.device": "cuda"}},  # 17
            {**ok, "face_box": "1,2,3"},  # 18
        ],
    )
    entries = read_manifest(manifest, tmp_path / "out")
    assert [e.line for e in entries] == [1] + list(range(4, 19))
    errors = {e.line: e.error for e in entries if isinstance(e, InvalidLine)}
    expected = {
        4: "not valid JSON", 5: "JSON object", 6: "missing 'audio'", 7: "unknown key(s) 'stepz'",
        8: "'steps' must be an integer", 9: "'..'", 10: "absolute", 11: "must end in .mp4", 13: "'..'",
        14: "also the output of line 12", 15: "also the output of line 1", 16: "[min, max]",
        17: "runtime.*", 18: "four numbers",
    }  # fmt: skip
    assert set(errors) == set(expected), errors
    for line, fragment in expected.items():
        assert fragment in errors[line], (line, errors[line])
    first = entries[0]
    assert first.image == tmp_path / "a.jpg" and first.audio == tmp_path / "a.wav"  # manifest's folder
    assert first.output == (tmp_path / "out" / "1_a_a.mp4").resolve()
    assert next(e for e in entries if e.line == 12).output.name == "same.mp4"


def test_csv_manifest_with_overrides(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "jobs.csv"
    manifest.write_text(
        "image,audio,emotion,output,steps,ref_scale,crop,face_box,seed,set\n"
        'a.jpg,/data/a.wav,happy:0.5,,3,"2,4",yes,"10,20,30,40",7,'
        "sampling.overlap=2; sampling.retrieval=true\n"
        "\n"
        "b.jpg,b.wav,sad,clips/b.mp4,,,,,,\n"
        "c.jpg,c.wav,sad,clips/c.mp4,not-a-number,,,,,\n"
        "d.jpg,d.wav,too,many,cells,,,,,,,\n"
    )
    entries = read_manifest(manifest, tmp_path / "out")
    assert [e.line for e in entries] == [2, 4, 5, 6]
    a, b, c, d = entries
    assert a.image == tmp_path / "sub" / "a.jpg" and a.audio == Path("/data/a.wav")
    assert a.output.name == "2_a_a.mp4" and a.emotion == "happy:0.5" and a.seed == 7
    assert a.face_box == (10.0, 20.0, 30.0, 40.0)
    cfg = with_values(load_config(), dict(a.values))
    s = cfg.sampling
    assert (s.steps, s.ref_scale_min, s.ref_scale_max, s.overlap, s.retrieval) == (3, 2.0, 4.0, 2, True)
    assert cfg.preprocess.crop is True
    assert b.output == (tmp_path / "out" / "clips" / "b.mp4").resolve() and b.values == ()
    assert isinstance(c, InvalidLine) and "'steps' must be an integer" in c.error
    assert isinstance(d, InvalidLine) and "cells" in d.error


def test_the_shipped_example_manifest_is_valid(tmp_path):
    example = Path(__file__).resolve().parents[2] / "configs" / "batch" / "example.jsonl"
    entries = read_manifest(example, tmp_path)
    assert len(entries) == 4 and all(isinstance(e, ManifestJob) for e in entries)
    assert all(e.image.is_file() and e.audio.is_file() for e in entries)
    for entry in entries:
        with_values(load_config(), dict(entry.values))


def test_csv_header_must_name_known_columns(tmp_path):
    bad = tmp_path / "jobs.csv"
    bad.write_text("image,audio,colour\na.jpg,a.wav,red\n")
    with pytest.raises(InputError, match="colour"):
        read_manifest(bad, tmp_path)
    bad.write_text("image,emotion\na.jpg,sad\n")
    with pytest.raises(InputError, match="line 1"):
        read_manifest(bad, tmp_path)


def test_output_through_a_symlink_cannot_escape(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    outside.mkdir()
    (out / "link").symlink_to(outside)
    manifest = write_manifest(
        tmp_path / "m.jsonl", [{"image": "a.jpg", "audio": "a.wav", "output": "link/x.mp4"}]
    )
    (entry,) = read_manifest(manifest, out)
    assert isinstance(entry, InvalidLine) and "outside --out-dir" in entry.error


@pytest.mark.parametrize(
    "flag, env, expected",
    [
        (None, {}, (0, 1)),
        ("2/3", {"RANK": "0", "WORLD_SIZE": "2"}, (2, 3)),
        (
            None,
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"},
            (1, 3),
        ),
        (
            None,
            {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_STEP": "4", "SLURM_ARRAY_TASK_COUNT": "3"},
            (2, 3),
        ),
        (None, {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "RANK": "0", "WORLD_SIZE": "2"}, (3, 4)),
        (None, {"RANK": "1", "WORLD_SIZE": "2"}, (1, 2)),
    ],
)
def test_shard_sources(flag, env, expected):
    shard = resolve_shard(flag, env)
    assert (shard.index, shard.count) == expected


@pytest.mark.parametrize("flag", ["2/2", "1", "a/b", "-1/3", "0/0"])
def test_bad_shards_are_refused(flag):
    with pytest.raises(InputError, match="shard"):
        resolve_shard(flag, {})


def test_shards_partition_the_manifest():
    entries = [InvalidLine(i, "x") for i in range(1, 12)]
    parts = [select_shard(entries, Shard(i, 3)) for i in range(3)]
    lines = sorted(e.line for part in parts for e in part)
    assert lines == list(range(1, 12)) and all(parts)


# ------------------------------------------------------------------------------------------ rendering
def mixed_manifest(inputs: Path) -> Path:
    good = {"image": "anna.jpg", "audio": "hello.wav"}
    return write_manifest(
        inputs / "mixed.jsonl",
        [
            {**good, "emotion": "happy"},  # 1
            {**good, "emotion": "sad", "output": "clips/two.mp4", "seed": 5, "steps": 3},  # 2
            {"image": "missing.jpg", "audio": "hello.wav"},  # 3: no such file
            {"image": "bert.jpg", "audio": "hello.wav", "interpolate": True},  # 4
            "{not json",  # 5
            {**good, "output": "../escape.mp4"},  # 6
            {**good, "emotion": "furious"},  # 7: unknown emotion
        ],
    )


GOOD, BAD = {1, 2, 4}, {3, 5, 6, 7}


@pytest.fixture(scope="module")
def sharded(inputs, tiny_weights, tmp_path_factory):
    """The mixed manifest rendered as two static shards into one folder (exit codes kept)."""
    out = tmp_path_factory.mktemp("sharded")
    manifest = mixed_manifest(inputs)
    codes = [
        main(
            [str(manifest), "--out-dir", str(out), "--weights", str(tiny_weights), "--shard", f"{i}/2", *FAST]
        )
        for i in range(2)
    ]
    return manifest, out, codes


def test_two_shards_render_each_good_job_once_and_record_the_bad(sharded):
    _, out, codes = sharded
    assert codes == [1, 1]  # invalid lines → exit 1
    first, second = results(out, "results.shard-0-of-2.jsonl"), results(out, "results.shard-1-of-2.jsonl")
    assert not set(first) & set(second) and set(first) | set(second) == GOOD | BAD
    rows = {**first, **second}
    assert {n for n, r in rows.items() if r["status"] == "ok"} == GOOD
    assert {n for n, r in rows.items() if r["status"] == "invalid"} == BAD
    assert "does not exist" in rows[3]["error"] and "unknown emotion" in rows[7]["error"]
    assert rows[6]["output"] is None and "'..'" in rows[6]["error"]
    for line in GOOD:
        row = rows[line]
        assert row["attempts"] == 1 and row["seconds"] > 0 and row["worker"].startswith("local-")
        assert is_done(Path(row["output"]))
    assert Path(rows[1]["output"]).name == "1_anna_hello.mp4" and rows[2]["output"] == str(
        out / "clips/two.mp4"
    )
    two = json.loads((out / "clips" / "two.mp4.json").read_text())
    assert two["seed"] == 5 and two["config"]["sampling"]["steps"] == 3 and two["emotion"] == "sad"
    four = json.loads((out / "4_bert_hello.mp4.json").read_text())
    assert four["interpolated"] is True and four["fps"] == 25.0  # per-job override of --no-interpolate
    one = json.loads((out / "1_anna_hello.mp4.json").read_text())
    assert one["interpolated"] is False and one["config"]["sampling"]["steps"] == 2
    assert sorted(p.name for p in out.glob("*.mp4")) == [
        "1_anna_hello.mp4",
        "4_bert_hello.mp4",
    ]
    assert _leftovers(out) == []


def test_rerun_skips_finished_jobs(sharded, tiny_weights, capsys):
    manifest, out, _ = sharded
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    capsys.readouterr()
    assert main([str(manifest), "--out-dir", str(out), "--weights", str(tiny_weights), *FAST]) == 1
    rows = results(out)
    assert {n for n, r in rows.items() if r["status"] == "skipped"} == GOOD
    assert {n for n, r in rows.items() if r["status"] == "invalid"} == BAD
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")} == stamps
    assert "0 ok, 3 skipped, 0 failed, 4 invalid" in capsys.readouterr().err
    # the same jobs without the bad lines (blank lines keep the line numbers): all skipped → exit 0
    lines = manifest.read_text().splitlines()
    clean = write_manifest(
        manifest.with_name("clean.jsonl"), [x if i + 1 in GOOD else "" for i, x in enumerate(lines)]
    )
    assert main([str(clean), "--out-dir", str(out), "--weights", str(tiny_weights), *FAST]) == 0


def test_vanished_input_fails_its_job_and_a_stale_output_is_replaced(inputs, tiny_weights, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(inputs, folder)
    manifest = write_manifest(
        folder / "m.jsonl",
        [
            {"image": "anna.jpg", "audio": "hello.wav", "output": "one.mp4"},
            {"image": "bert.jpg", "audio": "hello.wav", "output": "two.mp4"},
            {"image": "anna.jpg", "audio": "hello.wav", "output": "three.mp4", "emotion": "sad"},
        ],
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "three.mp4").write_bytes(b"half a video from a killed run")  # no sidecar: not done
    (out / "three.partial.mp4").write_bytes(b"stale partial")

    class Vanishing(Worker):
        def load(self):
            super().load()
            Vanishing.instance = self

        def run(self, job, attempt=1):
            if job.line == 2:
                job.image.unlink()  # deleted after the batch validated it
            return super().run(job, attempt)

    summary = Batch(manifest, out, fast_cfg(tiny_weights), worker_factory=Vanishing).run()
    rows = results(out)
    assert [rows[n]["status"] for n in (1, 2, 3)] == ["ok", "failed", "ok"]
    assert rows[2]["error_class"] == "InputError" and "no longer exists" in rows[2]["error"]
    assert rows[2]["attempts"] == 1  # a bad input is not retried
    assert summary.counts == {"ok": 2, "skipped": 0, "failed": 1, "invalid": 0} and summary.exit_code == 1
    assert len(Vanishing.instance.cache) == 1  # lines 1 and 3 share anna.jpg: one identity encoding
    assert is_done(out / "three.mp4") and (out / "three.mp4").stat().st_size > 1000
    assert not (out / "two.mp4").exists() and _leftovers(out) == []


# ------------------------------------------------------------------------------------------ fake workers
class FakeWorker:
    """Renders nothing: writes a fake output + sidecar; behaviour per line from ``plan``."""

    plan: dict[int, list[BaseException | str]] = {}
    loads = 0

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings

    def load(self) -> None:
        type(self).loads += 1

    def run(self, job: ManifestJob, attempt: int = 1) -> JobRecord:
        errors = self.plan.get(job.line, [])
        if attempt <= len(errors):
            err = errors[attempt - 1]
            if isinstance(err, KeyboardInterrupt):
                raise err
            if err == "SIGTERM":  # what Slurm sends on pre-emption
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)  # interrupted by the handler
            return JobRecord(job.line, "failed", str(job.output), 0.1, type(err).__name__, str(err), attempt,
                             self.settings.name, not isinstance(err, InputError))  # fmt: skip
        job.output.write_bytes(b"video")
        job.output.with_name(job.output.name + ".json").write_text("{}")
        return JobRecord(job.line, "ok", str(job.output), 0.1, attempts=attempt, worker=self.settings.name)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(batch, "Worker", FakeWorker)
    FakeWorker.plan, FakeWorker.loads = {}, 0
    return FakeWorker


def three_jobs(inputs: Path, name: str) -> Path:
    return write_manifest(inputs / name, [{"image": "anna.jpg", "audio": "hello.wav"}] * 3)


def test_retries_then_fail_fast(fake, inputs, tiny_weights, tmp_path):
    manifest, cfg = three_jobs(inputs, "retry.jsonl"), fast_cfg(tiny_weights)
    fake.plan = {1: [RuntimeError("CUDA out of memory")], 2: [RuntimeError("x")] * 5, 3: [InputError("bad")]}
    summary = Batch(manifest, tmp_path / "a", cfg, BatchOptions(retries=2)).run()
    rows = results(tmp_path / "a")
    assert [(rows[n]["status"], rows[n]["attempts"]) for n in (1, 2, 3)] == [
        ("ok", 2),
        ("failed", 3),
        ("failed", 1),
    ]
    assert summary.exit_code == 1 and fake.loads == 1
    summary = Batch(manifest, tmp_path / "b", cfg, BatchOptions(retries=0, fail_fast=True)).run()
    assert list(results(tmp_path / "b")) == [1] and summary.not_run == 2 and summary.exit_code == 1


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(fake, inputs, tiny_weights, tmp_path, capsys):
    manifest, out = three_jobs(inputs, "interrupt.jsonl"), tmp_path / "out"
    args = [str(manifest), "--out-dir", str(out), "--weights", str(tiny_weights), *FAST]
    fake.plan = {2: [KeyboardInterrupt()]}
    assert main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert [r["status"] for r in results(out).values()] == ["ok"]
    fake.plan = {}
    assert main(args) == 0
    rows = results(out)
    assert [rows[n]["status"] for n in (1, 2, 3)] == ["skipped", "ok", "ok"]


def test_sigterm_stops_like_ctrl_c(fake, inputs, tiny_weights, tmp_path, capsys):
    manifest, out = three_jobs(inputs, "sigterm.jsonl"), tmp_path / "out"
    fake.plan = {2: ["SIGTERM"]}
    started = time.perf_counter()
    assert main([str(manifest), "--out-dir", str(out), "--weights", str(tiny_weights), *FAST]) == 130
    assert time.perf_counter() - started < 8
    assert "1 ok" in capsys.readouterr().err and list(results(out)) == [1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored


def test_worker_cleans_up_after_an_interrupt_and_frees_memory_after_oom(tiny_weights, tmp_path):
    import torch

    output = tmp_path / "clip.mp4"
    job = ManifestJob(4, tmp_path / "a.jpg", tmp_path / "a.wav", output)

    class Broken(Worker):
        error: BaseException = KeyboardInterrupt()

        def _render(self, job, retry=False):
            output.with_name("clip.partial.mp4").write_bytes(b"half")
            output.write_bytes(b"renamed, but no sidecar yet")
            raise self.error

    worker = Broken(WorkerSettings(fast_cfg(tiny_weights), name="w"))
    with pytest.raises(KeyboardInterrupt):
        worker.run(job)
    assert list(tmp_path.iterdir()) == []
    worker.error, worker.cache = torch.cuda.OutOfMemoryError("CUDA out of memory"), {"key": "identity"}
    rec = worker.run(job, attempt=2)
    assert (rec.status, rec.error_class, rec.retryable, rec.attempts) == (
        "failed",
        "OutOfMemoryError",
        True,
        2,
    )
    assert worker.cache == {} and list(tmp_path.iterdir()) == []


def test_done_needs_output_and_a_readable_sidecar(tmp_path):
    out = tmp_path / "a.mp4"
    sidecar = tmp_path / "a.mp4.json"
    assert not is_done(out)
    out.write_bytes(b"v")
    assert not is_done(out)
    sidecar.write_text("{trunc")
    assert not is_done(out)
    sidecar.write_text('{"ok": 1}')
    assert is_done(out)
    remove_stale(out)  # a finished output is never removed
    assert out.exists() and sidecar.exists()


def test_ray_engine_without_ray_says_how_to_install(monkeypatch):
    from portrait.batch.ray import RayOptions, run_ray
    from portrait.errors import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with pytest.raises(ConfigError, match=r"portrait\[cluster\]"):
        run_ray([], Worker, [].append, remove_stale, RayOptions())
