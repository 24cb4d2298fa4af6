"""Emotion from a reference clip in `portrait-batch`: the emotion_from keys, bad clips invalid, renders."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image
from tiny_inputs import batch_inputs, write_manifest

from portrait.batch.main import main
from portrait.batch.manifest import InvalidLine, ManifestJob, read_manifest
from portrait.batch.worker import to_job
from portrait.ffmpeg import media_path, run_ffmpeg

ASSETS = Path(__file__).resolve().parents[2] / "portrait" / "assets"
FAST = ["--steps", "1", "--size", "64", "--no-interpolate", "--device", "cpu", "--quiet"]
FAST += ["--detector", "dlib"]
needs_dlib = pytest.mark.skipif(importlib.util.find_spec("dlib") is None, reason="dlib not installed")


def test_manifest_emotion_from_keys_become_job_fields_and_bad_values_are_invalid(tmp_path):
    job = {"image": "a.jpg", "audio": "a.wav"}
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            {**job, "output": "plain.mp4"},
            {**job, "output": "ref.mp4", "emotion_from": "clips/ref.mp4"},
            {
                **job,
                "output": "all.mp4",
                "emotion_from": str(tmp_path / "abs.png"),
                "emotion_strength": "1.5",
                "emotion_from_mode": "timeline",
                "emotion_embedder": "classifier",
            },
            {**job, "emotion_strength": 0.5},
            {**job, "emotion_from": "r.mp4", "emotion_strength": 2.5},
            {**job, "emotion_from": "r.mp4", "emotion_strength": -0.1},
            {**job, "emotion_from": "r.mp4", "emotion_from_mode": "median"},
            {**job, "emotion_from": "r.mp4", "emotion_embedder": "magic"},
            {**job, "emotion_from": ""},
            {**job, "emotion_from": "r.mp4", "emotion_strength": "lots"},
        ],
    )
    entries = read_manifest(manifest, tmp_path / "out")
    jobs = {e.line: e for e in entries if isinstance(e, ManifestJob)}
    assert sorted(jobs) == [1, 2, 3]
    assert jobs[1].emotion_from is None and jobs[1].emotion_strength == 1.0
    assert jobs[2].emotion_from == tmp_path / "clips" / "ref.mp4"  # relative to the manifest's folder
    assert (jobs[2].emotion_from_mode, jobs[2].emotion_embedder) == ("mean", "auto")
    three = jobs[3]
    assert three.emotion_from == tmp_path / "abs.png" and three.emotion_strength == 1.5
    assert (three.emotion_from_mode, three.emotion_embedder) == ("timeline", "classifier")
    converted = to_job(three)
    assert converted.emotion_from == three.emotion_from and converted.emotion_strength == 1.5
    assert (converted.emotion_from_mode, converted.emotion_embedder) == ("timeline", "classifier")
    assert to_job(jobs[1]).emotion_from is None
    errors = {e.line: e.error for e in entries if isinstance(e, InvalidLine)}
    assert "'emotion_strength' given without 'emotion_from'" in errors[4]
    assert "between 0 and 2, got 2.5" in errors[5] and "between 0 and 2, got -0.1" in errors[6]
    assert "'emotion_from_mode' must be one of mean, timeline" in errors[7]
    assert "'emotion_embedder' must be one of auto, learned, classifier" in errors[8]
    assert "'emotion_from' must be a non-empty string" in errors[9]
    assert "'emotion_strength' must be a number" in errors[10]

    csv = tmp_path / "m.csv"
    csv.write_text(
        "image,audio,emotion_from,emotion_strength,emotion_from_mode,emotion_embedder\n"
        "a.jpg,a.wav,ref.png,0.7,timeline,classifier\n"
        "b.jpg,b.wav,,,,\n"
        "c.jpg,c.wav,ref.png,,sometimes,\n"
    )
    rows = read_manifest(csv, tmp_path / "out")
    assert isinstance(rows[0], ManifestJob) and rows[0].emotion_from == tmp_path / "ref.png"
    assert (rows[0].emotion_strength, rows[0].emotion_from_mode) == (0.7, "timeline")
    assert rows[0].emotion_embedder == "classifier"
    assert isinstance(rows[1], ManifestJob) and rows[1].emotion_from is None
    assert isinstance(rows[2], InvalidLine) and "must be one of mean, timeline" in rows[2].error


@needs_dlib
def test_batch_renders_emotion_from_and_bad_clips_are_invalid(tiny_weights, tmp_path):
    inputs = batch_inputs(tmp_path / "in", ("face.jpg", "clips/smile.jpg"), "short.wav", seconds=0.6)
    for name, side in (("smile.mp4", 384), ("small.mp4", 256)):  # the face is ~45 px wide at 256
        run_ffmpeg(
            ["-loop", "1", "-framerate", "10", "-i", media_path(ASSETS / "sample_portrait.jpg"), "-t", "1"]
            + ["-vf", f"scale={side}:{side}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-y"]
            + [media_path(inputs / "clips" / name)],
            timeout=60,
        )
    Image.new("RGB", (200, 160), (128, 128, 128)).save(inputs / "clips" / "blank.png")
    (inputs / "clips" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    job = {"image": "face.jpg", "audio": "short.wav"}
    manifest = write_manifest(
        inputs / "jobs.jsonl",
        [
            {**job, "output": "mean.mp4", "emotion_from": "clips/smile.jpg", "emotion_strength": 0.8},
            {**job, "output": "missing.mp4", "emotion_from": "clips/gone.mp4"},
            {**job, "output": "corrupt.mp4", "emotion_from": "clips/corrupt.mp4"},
            {**job, "output": "noface.mp4", "emotion_from": "clips/blank.png"},
            {
                **job,
                "output": "timeline.mp4",
                "emotion_from": "clips/smile.mp4",
                "emotion_from_mode": "timeline",
            },
            {**job, "output": "plain.mp4", "emotion": "happy"},
            {**job, "output": "small.mp4", "emotion_from": "clips/small.mp4"},
        ],
    )
    out = tmp_path / "out"
    code = main([str(manifest), "--out-dir", str(out), "--weights", str(tiny_weights), *FAST])
    assert code == 1  # some lines are invalid
    rows = {r["line"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    # A missing or unreadable clip is invalid at the check; one without a usable face is found when the
    # worker classifies it (once per line: the check before rendering only decodes its header).
    assert {line: r["status"] for line, r in rows.items()} == {
        1: "ok", 2: "invalid", 3: "invalid", 4: "failed", 5: "ok", 6: "ok", 7: "failed"
    }  # fmt: skip
    assert "gone.mp4" in rows[2]["error"]
    assert "corrupt.mp4" in rows[3]["error"]
    assert rows[4]["error_class"] == "NoFaceError" and "blank.png" in rows[4]["error"]
    assert "too small to classify" in rows[7]["error"] and "48x48" in rows[7]["error"]
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".mp4") == [
        "mean.mp4",
        "plain.mp4",
        "timeline.mp4",
    ]  # fmt: skip  (nothing is left of the invalid lines)

    mean = json.loads((out / "mean.mp4.json").read_text())
    record = mean["emotion_from"]
    assert record["mode"] == "mean" and record["strength"] == 0.8 and record["embedder"] == "classifier"
    assert Path(record["file"]).name == "smile.jpg" and record["probabilities"]["top"] == "happy"
    first = record["schedule"][0]["emotion"]
    assert sum(first.values()) == pytest.approx(0.8, abs=2e-3) and max(first, key=first.get) == "happy"
    assert mean["emotion_schedule"][0]["emotion"] == pytest.approx(first, abs=2e-3)

    timeline = json.loads((out / "timeline.mp4.json").read_text())["emotion_from"]
    assert timeline["mode"] == "timeline" and timeline["strength"] == 1.0
    assert timeline["probabilities"]["top"] == "happy"
    assert "emotion_from" not in json.loads((out / "plain.mp4.json").read_text())
