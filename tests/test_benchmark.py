"""The benchmark's CPU tiny mode (what CI can run): it renders, reports every metric, and checks frames."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from portrait.benchmark import run_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"


def test_script_prints_json_lines():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--seconds", "1", "--steps", "1", "--no-interpolate"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])},  # this checkout's portrait
    ).stdout
    (record,) = [json.loads(line) for line in out.strip().splitlines()]
    assert record["variant"] == "optimised" and record["frames"] == 12


def test_tiny_compare_reports_both_runs_and_a_matching_summary():
    base, opt, summary = run_benchmark(["--tiny", "--compare", "--seconds", "2.5", "--steps", "2"])
    frames = 31  # 2.5 s → 62 units → 31 frames
    windows = math.ceil((frames + 25) / 25)
    assert base["variant"] == "baseline" and opt["variant"] == "optimised"
    assert base["frames"] == opt["frames"] == frames
    assert base["unet_calls"] == 2 * windows  # one call per window per step (reference shapes)
    assert opt["unet_calls"] == 2 * math.ceil(windows / opt["window_batch"])
    for run in (base, opt):
        # the product's own stages (the sidecar's timings of prepare + render_job)
        assert set(run["stage_seconds"]) >= {"image", "audio", "sampling", "decode_encode", "mux"}
        assert run["seconds_per_video_second"] > 0 and run["achieved_tflops"] is not None
        assert run["peak_host_gib"] > 0
    assert summary["frames_match"] and summary["psnr_db"] >= 40
