"""Hostile track JSON (issue 25, findings 5, 6 and 14): degenerate faces, deep nesting, huge numbers, files of
tiny values and secret files named as ``motion`` are one clear error each, checked before parsing, confined
to their batch line and never echoed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from hostile_support import ASSETS, FAST, PORTRAIT, SPEECH, face_points

from portrait.batch.main import Batch
from portrait.config import load_config
from portrait.errors import InputError
from portrait.motion.pose import head_pose
from portrait.motion.track_io import MAX_TRACK_BYTES, read_track

SECRET = "hunter2-motion-secret"


def _track(frames: list[list[list[float]]], **extra) -> str:
    rows = [{"t": i / 25, "landmarks": points} for i, points in enumerate(frames)]
    return json.dumps({"fps": 25, "size": [128, 128], **extra, "frames": rows})


def _hostile_tracks(folder: Path) -> dict[str, Path]:
    face = face_points((32.0, 32.0, 64.0, 64.0)).tolist()
    line = [[10.0 + i, 10.0 + i] for i in range(68)]  # every point on one diagonal
    texts = {
        "same_point": _track([[[64.0, 64.0]] * 68] * 5),
        "on_a_line": _track([line] * 5),
        "deep": "[" * 100_000 + "]" * 100_000,
        "digits": '{"fps": 1' + "0" * 5000 + ', "size": [128, 128], "frames": []}',
        "secret": json.dumps({"fps": SECRET, "size": [128, 128], "frames": [{"t": 0, "landmarks": face}]}),
        "secret_keys": json.dumps({SECRET: 1, "api_token": SECRET}),
        "good": _track([face] * 10),
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(text)
    return paths


def test_each_hostile_track_is_one_input_error_without_echo(tmp_path: Path) -> None:
    paths = _hostile_tracks(tmp_path)
    expected = {
        "same_point": "is not a face", "on_a_line": "is not a face", "deep": "nested deeper than",
        "digits": "integer of 5001 digits", "secret": "fps must be a finite number",
        "secret_keys": "unknown keys",
    }  # fmt: skip
    for name, message in expected.items():
        with pytest.raises(InputError, match=message) as info:
            read_track(paths[name])
        assert SECRET not in str(info.value) and "api_token" not in str(info.value)
    assert len(read_track(paths["good"]).times) == 10
    with pytest.raises(InputError, match="degenerate"):  # the pose fit itself never lets OpenCV assert
        head_pose(face_points((5.0, 5.0, 0.0, 0.0)), (128, 128))


def test_a_file_of_tiny_values_is_refused_before_parsing(tmp_path: Path) -> None:
    """~25x memory amplification of ``json.load`` (``[[],[],...]``) never happens: the values are counted
    on the bytes first. Measured in a child process: its peak stays near the file's size."""
    path = tmp_path / "tiny_values.json"
    path.write_text('{"frames": [' + "[]," * 8_000_000 + "[]]}")  # 24 MB, 8 million values
    assert path.stat().st_size < MAX_TRACK_BYTES
    code = (
        "import resource, sys\n"
        "from portrait.motion.track_io import read_track\n"
        "from portrait.errors import InputError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    read_track(sys.argv[1])\nexcept InputError as err:\n    print(err)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    message, grown = result.stdout.strip().splitlines()
    assert "JSON values, more than the" in message
    assert int(grown) < 5 * path.stat().st_size  # json.load of it grows by ~0.5 GB (20x)
    big = tmp_path / "big.json"
    with big.open("wb") as stream:  # a sparse file just over the cap: refused unread
        stream.truncate(MAX_TRACK_BYTES + 1)
    with pytest.raises(InputError, match="larger than"):
        read_track(big)


def _inputs(folder: Path) -> Path:
    folder.mkdir()
    shutil.copy(ASSETS / "sample_portrait.jpg", folder / "anna.jpg")
    samples, rate = sf.read(SPEECH)
    sf.write(folder / "hello.wav", samples[: int(1.2 * rate)], rate)
    return folder


def test_hostile_tracks_in_a_batch_stay_on_their_lines(hostile_weights: Path, tmp_path: Path) -> None:
    folder = _inputs(tmp_path / "in")
    paths = _hostile_tracks(folder)
    names = ["same_point", "on_a_line", "deep", "digits", "secret", "secret_keys", "good"]
    lines = [{"image": "anna.jpg", "audio": "hello.wav", "motion": paths[n].name, "output": f"{n}.mp4"}
             for n in names]  # fmt: skip
    manifest = folder / "m.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    values = {"runtime.weights": str(hostile_weights), "runtime.device": "cpu", "sampling.steps": 2}
    cfg = load_config(values={**values, "preprocess.min_resolution": 64, "video.interpolate": False})
    summary = Batch(manifest, out, cfg).run()
    results = (out / "results.jsonl").read_text()
    rows = {r["line"]: r for r in map(json.loads, results.splitlines())}
    assert [rows[i + 1]["status"] for i in range(len(names))] == ["invalid"] * 6 + ["ok"]
    assert summary.counts["ok"] == 1 and (out / "good.mp4").is_file()
    assert SECRET not in results and "api_token" not in results  # nothing of a secret file is echoed
    assert all(rows[i]["error_class"] == "InputError" for i in range(1, 7))


def test_a_bug_in_one_line_check_never_aborts_the_batch(
    hostile_weights: Path, tmp_path: Path, monkeypatch
) -> None:
    import portrait.inputs

    folder = _inputs(tmp_path / "in")
    real = portrait.inputs.check_job

    def buggy(job, *args, **kwargs):
        if job.output.name == "bug.mp4":
            raise KeyError("a bug in a check")
        return real(job, *args, **kwargs)

    monkeypatch.setattr(portrait.inputs, "check_job", buggy)
    ok = {"image": "anna.jpg", "audio": "hello.wav"}
    manifest = folder / "m.jsonl"
    manifest.write_text(
        json.dumps({**ok, "output": "bug.mp4"}) + "\n" + json.dumps({**ok, "output": "fine.mp4"})
    )
    values = {"runtime.weights": str(hostile_weights), "runtime.device": "cpu", "sampling.steps": 2}
    cfg = load_config(values={**values, "preprocess.min_resolution": 64, "video.interpolate": False})
    summary = Batch(manifest, tmp_path / "out", cfg).run()
    rows = [json.loads(r) for r in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [(r["line"], r["status"], r["error_class"]) for r in rows] == [
        (1, "invalid", "KeyError"), (2, "ok", None)
    ]  # fmt: skip
    assert summary.counts["ok"] == 1


def test_a_deep_track_is_one_error_line_in_the_cli(hostile_weights: Path, tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    args = ["--weights", str(hostile_weights), "--image", str(PORTRAIT), "--audio", str(SPEECH)]
    args += ["--motion", str(deep), "-o", str(tmp_path / "out.mp4"), "--device", "cpu", *FAST]
    cli = "import sys; from portrait.cli.main import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", cli, *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nested deeper than" in errors[0]
    assert not (tmp_path / "out.mp4").exists()
