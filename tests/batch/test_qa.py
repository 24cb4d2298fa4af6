"""Emotion QA in `portrait-batch`: manifest keys, retries on tiny weights, the results line and sidecar."""

from __future__ import annotations

import json

import pytest
from tiny_inputs import batch_inputs, write_manifest

from portrait.batch.main import main
from portrait.batch.manifest import MAX_QA_RETRIES, InvalidLine, ManifestJob, read_manifest
from portrait.batch.worker import qa_summary, remove_stale
from portrait.eval.qa import QASettings

FAST = ["--steps", "1", "--size", "64", "--no-interpolate", "--device", "cpu", "--quiet"]
FAST += ["--detector", "dlib"]


def test_manifest_qa_keys_become_job_settings_and_bad_values_are_invalid(tmp_path):
    job = {"image": "a.jpg", "audio": "a.wav"}
    manifest = write_manifest(
        tmp_path / "m.jsonl",
        [
            {**job, "output": "plain.mp4"},
            {**job, "output": "on.mp4", "emotion_qa": True},
            {**job, "output": "set.mp4", "emotion_qa": "yes", "qa_threshold": "0.7", "qa_retries": 1},
            {**job, "output": "off.mp4", "emotion_qa": False},
            {**job, "qa_retries": 1},
            {**job, "emotion_qa": True, "qa_threshold": 1.5},
            {**job, "emotion_qa": True, "qa_retries": MAX_QA_RETRIES + 1},
            {**job, "emotion_qa": True, "qa_retries": -1},
            {**job, "emotion_qa": "maybe"},
        ],
    )
    entries = read_manifest(manifest, tmp_path / "out")
    jobs = [e for e in entries if isinstance(e, ManifestJob)]
    assert [j.qa for j in jobs] == [None, (QASettings().threshold, QASettings().retries), (0.7, 1), None]
    errors = {e.line: e.error for e in entries if isinstance(e, InvalidLine)}
    assert "without 'emotion_qa'" in errors[5]
    assert "between 0 and 1" in errors[6]
    assert f"<= {MAX_QA_RETRIES}" in errors[7]
    assert ">= 0" in errors[8]
    assert "true or false" in errors[9]
    csv = tmp_path / "m.csv"
    csv.write_text("image,audio,emotion_qa,qa_retries\na.jpg,a.wav,on,0\nb.jpg,b.wav,,\n")
    assert [e.qa for e in read_manifest(csv, tmp_path / "out")] == [(0.5, 0), None]


def test_qa_summary_keeps_each_attempts_scores():
    qa = {
        "chosen": 1,
        "passed": False,
        "threshold": 0.5,
        "attempts": [
            {"emo_scale": 5.0, "emotion_confidence": 0.1, "emotion_accuracy": 0.0, "csim": 0.8},
            {"emo_scale": 6.5, "emotion_confidence": 0.3, "emotion_accuracy": 0.5, "csim": None},
        ],
    }
    for attempt in qa["attempts"]:
        attempt.update(passed=False, reason="x", emo_scale_min=attempt["emo_scale"])
    summary = qa_summary(qa)
    assert summary["chosen"] == 1 and summary["passed"] is False
    assert [a["emotion_confidence"] for a in summary["attempts"]] == [0.1, 0.3]
    assert summary["attempts"][1] == {
        "emo_scale": 6.5, "emotion_confidence": 0.3, "emotion_accuracy": 0.5, "csim": None, "passed": False
    }  # fmt: skip


def test_remove_stale_clears_attempt_files_a_killed_qa_render_left(tmp_path):
    out = tmp_path / "job.mp4"
    left = [tmp_path / ".job.qa0.mp4", tmp_path / ".job.qa1.mp4", tmp_path / ".job.qa1.mp4.json"]
    kept = [tmp_path / ".other.qa0.mp4", tmp_path / "job.qa0.mp4"]
    for path in left + kept:
        path.write_bytes(b"x")
    remove_stale(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)


def test_batch_qa_job_retries_once_and_a_plain_job_is_unchanged(tiny_weights, tmp_path, monkeypatch):
    import portrait.eval.toolkit as tools

    built: list[int] = []
    real = tools.default_tools

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tools, "default_tools", counting)
    inputs = batch_inputs(tmp_path / "in", ("face.jpg",), "short.wav", seconds=0.6)
    job = {"image": "face.jpg", "audio": "short.wav", "emotion": "happy"}
    manifest = write_manifest(
        inputs / "jobs.jsonl",
        [
            {**job, "output": "qa.mp4", "emotion_qa": True, "qa_retries": 1, "qa_threshold": 1.0},
            {**job, "output": "plain.mp4"},
            {**job, "output": "qa0.mp4", "emotion_qa": True, "qa_retries": 0},
        ],
    )
    out = tmp_path / "out"
    assert main([str(manifest), "--out-dir", str(out), "--weights", str(tiny_weights), *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "plain.mp4",
        "plain.mp4.json",
        "qa.mp4",
        "qa.mp4.json",
        "qa0.mp4",
        "qa0.mp4.json",
        "results.jsonl",
    ]  # fmt: skip  (no attempt file is left)
    rows = {r["line"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert all(r["status"] == "ok" for r in rows.values())
    assert built == [1]  # the evaluator's tools are built once per worker, for the first QA job

    side = json.loads((out / "qa.mp4.json").read_text())
    qa = side["emotion_qa"]
    assert side["output"] == str(out / "qa.mp4")
    assert len(qa["attempts"]) == 2 and qa["passed"] is False  # threshold 1.0 is never reached
    assert qa["attempts"][1]["emo_scale"] == pytest.approx(qa["attempts"][0]["emo_scale"] * 1.3)
    assert rows[1]["qa"] == qa_summary(qa)  # the results line records the same attempts
    assert len(rows[3]["qa"]["attempts"]) == 1

    plain = json.loads((out / "plain.mp4.json").read_text())
    assert "emotion_qa" not in plain and "qa" not in rows[2]
    assert set(rows[2]) == set(rows[1]) - {"qa"}
    if qa["chosen"] == 0:  # attempt 0 renders with the job's own guidance: the same frames as a plain render
        assert (out / "qa.mp4").read_bytes() == (out / "plain.mp4").read_bytes()
    assert (out / "qa0.mp4").read_bytes() == (out / "plain.mp4").read_bytes()
