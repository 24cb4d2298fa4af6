"""Two `portrait-batch` runs on one out-dir at the same time: every job ends rendered once and whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import soundfile as sf
from hostile_support import PORTRAIT, SPEECH

from portrait.batch.worker import is_done
from portrait.testing.trees import write_tiny_weights

_BATCH = "import sys; from portrait.batch.main import main; sys.exit(main(sys.argv[1:]))"


def test_two_concurrent_batches_share_an_out_dir(tmp_path: Path) -> None:
    weights = write_tiny_weights(tmp_path / "w", layout="portrait", seed=3)
    samples, rate = sf.read(SPEECH, dtype="float32")
    speech = tmp_path / "short.wav"
    sf.write(speech, samples[: int(0.8 * rate)], rate)
    manifest = tmp_path / "jobs.jsonl"
    lines = [
        {"image": str(PORTRAIT), "audio": str(speech), "output": f"job{i}.mp4", "seed": i} for i in range(4)
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    command = [sys.executable, "-c", _BATCH, str(manifest), "--out-dir", str(out), "--weights", str(weights),
               "--device", "cpu", "--detector", "dlib", "--size", "64", "--steps", "1", "--no-interpolate",
               "--offline", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    ]
    results = [run.communicate(timeout=600) for run in runs]
    codes = sorted(run.returncode for run in runs)
    errors = [err.decode() for _, err in results]
    # The second run either found the first one holding the out-dir (exit 1, one error line) or started
    # after it and found every job done (exit 0, all skipped); never two writers of one results file.
    assert codes in ([0, 0], [0, 1]), errors
    if codes == [0, 1]:
        lines = [e for e in errors if "error:" in e][0].strip().splitlines()
        assert len(lines) == 1 and "another portrait-batch run is writing" in lines[0], lines

    for i in range(4):  # every output is whole: its sidecar names it and records its size and hash
        assert is_done(out / f"job{i}.mp4"), f"job{i}"
    leftovers = sorted(
        p.name for p in out.iterdir() if "partial" in p.name or p.name.startswith(".portrait-")
    )
    assert leftovers == []
    statuses = [json.loads(row)["status"] for row in (out / "results.jsonl").read_text().splitlines()]
    assert len(statuses) == 4 and set(statuses) <= {"ok", "skipped"}
