"""Hostile manifests: each bad line is recorded ``invalid``, the good ones render, users' files survive."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import soundfile as sf
from hostile_support import ASSETS

from portrait.batch.main import Batch
from portrait.batch.manifest import read_manifest
from portrait.batch.worker import FOREIGN_OUTPUT, is_done, is_foreign, remove_stale
from portrait.config import load_config

SECRET = "hunter2-batch-secret"


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(ASSETS / "sample_portrait.jpg", folder / "anna.jpg")
    samples, rate = sf.read(ASSETS / "sample_speech.wav")
    sf.write(folder / "hello.wav", samples[: int(1.2 * rate)], rate)
    return folder


def _cfg(weights: Path):
    values = {"runtime.weights": str(weights), "runtime.device": "cpu", "sampling.steps": 2}
    return load_config(values={**values, "preprocess.min_resolution": 64, "video.interpolate": False})


def test_one_bad_line_of_each_kind_and_the_good_lines_render(hostile_weights, tmp_path, monkeypatch):
    monkeypatch.setenv("PORTRAIT_BATCH_SECRET", SECRET)
    folder = _inputs(tmp_path / "in")
    ok = {"image": "anna.jpg", "audio": "hello.wav"}
    deep = "[" * 100000 + "]" * 100000
    lines = [
        json.dumps({**ok, "output": "good.mp4"}),  # 1
        json.dumps({**ok, "output": "nul\u0000.mp4"}),  # 2
        json.dumps({**ok, "output": "nan.mp4", "face_box": [float("nan"), 0, 10, 10]}),  # 3
        '{"image": "anna.jpg", "audio": "hello.wav", "output": "inf.mp4", "face_box": "1,2,inf,4"}',  # 4
        '{"image": "anna.jpg", "audio": "hello.wav", "set": ' + deep + "}",  # 5
        json.dumps({**ok, "output": "tr.mp4", "set": {"sampling.emotion_transition": "inf"}}),  # 6
        json.dumps(
            {**ok, "output": "env.mp4", "set": {"video.audio_codec": "${oc.env:PORTRAIT_BATCH_SECRET}"}}
        ),
        json.dumps({**ok, "output": "mine.mp4"}),  # 8: the user already has a file there
        json.dumps({**ok, "output": "good2.mp4"}),  # 9
    ]
    manifest = folder / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    precious = out / "mine.mp4"
    precious.write_bytes(b"my holiday video")
    summary = Batch(manifest, out, _cfg(hostile_weights)).run()
    rows = {r["line"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert sorted(rows) == list(range(1, 10))
    assert {n: rows[n]["status"] for n in rows} == {1: "ok", 9: "ok"} | {n: "invalid" for n in range(2, 9)}
    assert "control character" in rows[2]["error"]
    assert "finite" in rows[3]["error"] and "finite" in rows[4]["error"]
    assert "nested" in rows[5]["error"]
    assert "emotion_transition" in rows[6]["error"]
    assert "interpolation is not allowed" in rows[7]["error"]
    assert FOREIGN_OUTPUT in rows[8]["error"]
    assert precious.read_bytes() == b"my holiday video"
    assert is_done(out / "good.mp4") and is_done(out / "good2.mp4")
    everything = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert SECRET.encode() not in everything
    assert not [p.name for p in out.rglob("*") if "partial" in p.name or p.name.startswith(".portrait-")]
    assert summary.counts["ok"] == 2 and summary.counts["invalid"] == 7


def test_read_manifest_never_raises_on_hostile_lines(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"image": "a.jpg", "audio": "a.wav", "output": "x\\u0000.mp4"}\n'
        + '{"image": "a\\u0000.jpg", "audio": "a.wav"}\n'
        + '{"a": ' * 5000
        + "1"
        + "}" * 5000
        + "\n"
    )
    entries = read_manifest(manifest, tmp_path / "out")
    assert [type(e).__name__ for e in entries] == ["InvalidLine"] * 3


def test_foreign_files_are_never_removed(tmp_path: Path) -> None:
    user = tmp_path / "a.mp4"
    user.write_bytes(b"user data")
    assert is_foreign(user) and not is_done(user)
    remove_stale(user)
    assert user.read_bytes() == b"user data"
    # A killed render of ours (its partial is next to it) is cleaned up.
    (tmp_path / "a.partial.mp4").write_bytes(b"half")
    assert not is_foreign(user)
    remove_stale(user)
    assert not user.exists() and not (tmp_path / "a.partial.mp4").exists()


def test_is_done_checks_the_sidecar_against_the_mp4(tmp_path: Path) -> None:
    out = tmp_path / "a.mp4"
    out.write_bytes(b"video bytes")
    sidecar = tmp_path / "a.mp4.json"
    sidecar.write_text(json.dumps({"output": str(out), "output_bytes": 11}))
    assert is_done(out)
    sidecar.write_text(json.dumps({"output": str(tmp_path / "other.mp4")}))
    assert not is_done(out)  # the sidecar of another output, copied here
    sidecar.write_text(json.dumps({"output": str(out), "output_bytes": 99}))
    assert not is_done(out)  # the mp4 was replaced or truncated
    sidecar.write_text(json.dumps({"output": str(out)}))
    later = sidecar.stat().st_mtime + 60
    os.utime(out, (later, later))
    assert not is_done(out)  # the mp4 is newer than its sidecar


def test_abandoned_work_folders_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys
    import time

    from portrait.batch.worker import sweep_stale

    host = socket.gethostname()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    old = time.time() - 7 * 3600
    folders = {
        "abandoned": tmp_path / ".portrait-abc123",
        "dead_owner": tmp_path / "sub" / f".portrait-{host}-{dead_pid}-x1",
        "live_owner": tmp_path / f".portrait-{host}-{os.getpid()}-x2",
        "recent": tmp_path / ".portrait-fresh",
        "converter": tmp_path / ".partial-dead",
    }
    for name, folder in folders.items():
        folder.mkdir(parents=True)
        (folder / "silent.mp4").write_bytes(b"x")
        if name != "recent":
            for path in (folder / "silent.mp4", folder):
                os.utime(path, (old, old))
    user = tmp_path / ".portrait-notes.txt"  # a user's file with our prefix is not a folder: kept
    user.write_text("mine")
    removed = sweep_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        folders[n].name for n in ("abandoned", "dead_owner", "converter")
    )
    assert folders["live_owner"].is_dir() and folders["recent"].is_dir() and user.is_file()


def test_identity_cache_is_lru_bounded() -> None:
    from portrait.batch.worker import IDENTITY_CACHE_SIZE, LRUCache, Worker, WorkerSettings

    cache = LRUCache(3)
    for key in "abc":
        cache[key] = key.upper()
    assert cache["a"] == "A"  # a is now the most recent
    cache["d"] = "D"
    assert list(cache) == ["c", "a", "d"] and "b" not in cache
    worker = Worker(WorkerSettings(load_config()))
    assert isinstance(worker.cache, LRUCache) and worker.cache.size == IDENTITY_CACHE_SIZE
