"""scripts/gpu_check.py: its tiny CPU dry run (every kind of stage, each in its own process), the plan, the
child measurement and the targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from portrait.rehearsal.runner import _wait, build_parser, make_plan
from portrait.rehearsal.targets import judge

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
#: Stages left out of the CI dry run: the same code as a stage that runs (the offload tiers are CUDA's; on a
#: CPU they render like vram_none), or a minute of tiny rendering (the 60 s clip).
REPEATS = "compile_warm,vram_model,vram_sequential,long_clip"


def _script(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}  # this checkout's portrait
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def test_tiny_dry_run_runs_every_kind_of_stage_and_reports_each(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    result = _script("--device", "cpu", "--gpu-stages", "--skip", REPEATS, "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert (out / "results.jsonl").read_text().splitlines() == result.stdout.strip().splitlines()
    stages = [r["stage"] for r in lines]
    assert stages == ["benchmark", "vram_none", "write", "convert", "load", "render", "cache_64",
                      "train_motion_64", "train_embedder", "compile_cold", "summary"]  # fmt: skip
    for record in lines[:-1]:
        assert record["ok"], record
        assert record["seconds"] > 0 and record["peak_rss_mib"] > 100  # torch alone is more
        assert record["peak_vram_mib"] is None and record["targets"] == []  # CPU, tiny: nothing to judge
        assert (out / "logs" / f"{record['stage']}.log").is_file()
    by_stage = {r["stage"]: r for r in lines}
    assert (
        by_stage["compile_cold"]["compile"] == "off" and by_stage["compile_cold"]["warm_render_seconds"] > 0
    )
    assert by_stage["benchmark"]["frames_match"] and by_stage["benchmark"]["baseline"]["frames"] == 12
    assert by_stage["vram_none"]["frames"] == 12 and by_stage["vram_none"]["steps"] == 2
    assert by_stage["write"]["largest_file"] == "DICE-Talk/unet.pth"
    assert by_stage["convert"]["largest_checkpoint"] == "DICE-Talk/unet.pth"
    assert by_stage["load"]["model_mib"] > 1 and by_stage["load"]["dtype"] == "float32"
    assert by_stage["load"]["finite"]
    assert by_stage["render"]["generated_frames"] == 12 and by_stage["render"]["video_frames"] == 24
    assert (tmp_path / "gc" / "work" / "render" / "render.mp4").is_file()
    for recipe in ("motion_64", "embedder"):
        train = by_stage[f"train_{recipe}"]
        assert train["gradient_checkpointing"] is True and train["mixed_precision"] == "no"
        assert train["last_eval"]["step"] == 1
    assert lines[-1] == {**lines[-1], "ok": True, "failed": [], "skipped": [], "targets_missed": []}


@pytest.mark.gpu
def test_tiny_rehearsal_on_cuda_measures_gpu_memory(tmp_path: Path) -> None:
    """The CUDA path at tiny size (skipped without a GPU): every stage runs and the GPU ones report VRAM."""
    out = tmp_path / "gc"
    small = ["--bench-size", "64", "--bench-steps", "2", "--bench-seconds", "1", "--train-sizes", "64"]
    result = _script("--device", "cuda", *small, "--skip", REPEATS + ",compile_cold", "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    by_stage = {r["stage"]: r for r in map(json.loads, result.stdout.strip().splitlines())}
    assert by_stage["summary"]["ok"], by_stage["summary"]
    for label in ("benchmark", "vram_none", "render", "train_motion_64"):
        assert by_stage[label]["peak_vram_mib"] > 0, by_stage[label]


def test_a_failing_stage_is_reported_and_fails_the_run(tmp_path: Path) -> None:
    out = tmp_path / "gc"
    skip = "render,cache_64,train_motion_64,train_embedder"
    result = _script(
        "--device", "cpu", "--weights", str(tmp_path / "absent"), "--skip", skip, "--out", str(out)
    )
    assert result.returncode == 1
    load, summary = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert load["stage"] == "load" and not load["ok"] and "WeightsError" in load["error"]
    assert summary["failed"] == ["load"] and not summary["ok"]
    assert "Traceback" in (out / "logs" / "load.log").read_text()


def _plan(*argv: str) -> list[str]:
    return [p.label for p in make_plan(build_parser().parse_args(["--out", "/tmp/x", *argv]))]


def test_the_plan_orders_the_cuda_stages_by_cost_and_honours_reuse_and_skip() -> None:
    cpu = ["write", "convert", "load", "render", "cache_64", "train_motion_64", "train_embedder"]
    assert _plan("--device", "cpu") == cpu
    first = ["benchmark", "vram_none", "vram_model", "long_clip"]  # no tree needed, the main figures
    tree = ["write", "load", "render", "cache_512", "train_motion_512", "train_embedder"]  # no convert
    last = ["vram_sequential", "compile_cold", "compile_warm"]  # minutes each
    assert _plan("--device", "cuda") == [*first, *tree, *last]
    cuda = make_plan(build_parser().parse_args(["--out", "/tmp/x", "--device", "cuda"]))
    assert {p.label: p.spec for p in cuda}["write"].layout == "portrait"
    assert {p.label: p.spec for p in cuda}["benchmark"].compile == "off"
    assert _plan("--device", "cuda", "--release", "/r")[4:6] == ["convert", "load"]
    assert _plan("--device", "cpu", "--release", "/r")[:2] == ["convert", "load"]
    assert _plan("--device", "cpu", "--weights", "/w", "--train-sizes", "64,128", "--skip", "render") == [
        "load", "cache_64", "train_motion_64", "cache_128", "train_motion_128", "train_embedder"
    ]  # fmt: skip
    args = build_parser().parse_args(["--out", "/tmp/x", "--device", "cpu", "--gpu-stages"])
    spec = make_plan(args)[0].spec
    assert (spec.bench_size, spec.bench_steps, spec.bench_seconds, spec.compile) == (64, 1, 1.0, "off")


def test_a_deadline_skips_the_stages_it_leaves_no_time_for(tmp_path: Path) -> None:
    result = _script("--device", "cpu", "--deadline", "0", "--out", str(tmp_path))
    (summary,) = [json.loads(line) for line in result.stdout.strip().splitlines()]
    assert result.returncode == 1 and summary["skipped"][:2] == ["write", "convert"] and not summary["ok"]


def test_the_parent_measures_each_childs_own_peak_memory(tmp_path: Path) -> None:
    # this test's own process (pytest, often > 1 GB) must not count: ru_maxrss would have carried it over
    ballast = bytearray(600 * 2**20)
    ballast[:: 2**12] = b"x" * len(ballast[:: 2**12])
    grow = "import time; b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1)"
    proc = subprocess.Popen([sys.executable, "-c", grow])
    code, peak_mib, timed_out = _wait(proc, timeout=60)
    del ballast
    assert (code, timed_out) == (0, False) and peak_mib is not None and 300 < peak_mib < 500
    own = grow.replace(
        "time.sleep(1)", "from portrait.rehearsal.memory import vm_hwm_mib; print(vm_hwm_mib())"
    )
    report = subprocess.run(
        [sys.executable, "-c", own], capture_output=True, text=True, check=True, cwd=SCRIPT.parents[1]
    )
    assert 300 < float(report.stdout) < 500
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    code, _, timed_out = _wait(proc, timeout=0.5)
    assert timed_out and code != 0


@pytest.mark.parametrize(
    ("record", "earlier", "met"),
    [
        ({"stage": "convert", "ok": True, "peak_rss_mib": 9000, "largest_checkpoint_mib": 6200}, {}, [True]),
        ({"stage": "convert", "ok": True, "peak_rss_mib": 9500, "largest_checkpoint_mib": 6200}, {}, [False]),
        ({"stage": "load", "ok": True, "peak_rss_mib": 1300, "model_mib": 1000}, {}, [True]),
        ({"stage": "render", "ok": True, "peak_rss_mib": 2000}, {"load": {"peak_rss_mib": 1000}}, [False]),
        ({"stage": "load", "ok": False, "peak_rss_mib": 9e9, "model_mib": 1}, {}, []),  # failed: not judged
    ],
)
def test_host_memory_targets(record: dict, earlier: dict, met: list[bool]) -> None:
    assert [t["met"] for t in judge(record, earlier, real=True, device="cpu")] == met
    assert judge(record, earlier, real=False, device="cpu") == []


def test_gpu_targets() -> None:
    bench = {"stage": "benchmark", "ok": True, "speedup": 2.4, "psnr_db": 39.0,
             "seconds_per_video_second": {"optimised": 3.2}}  # fmt: skip
    assert [t["met"] for t in judge(bench, {}, real=True, device="cuda")] == [True, True, False]
    earlier = {"vram_none": {"render_peak_gpu_gib": 7.0}}
    flat = {"stage": "long_clip", "ok": True, "render_peak_gpu_gib": 7.5}
    assert [t["met"] for t in judge(flat, earlier, real=True, device="cuda")] == [True]
    tier = {"stage": "vram_model", "ok": True, "render_peak_gpu_gib": 11.5}
    assert [t["met"] for t in judge(tier, {}, real=True, device="cuda")] == [False]  # 12 GB = 11.18 GiB
    warm = {"stage": "compile_warm", "ok": True, "compile_seconds": 12.0}
    assert [t["met"] for t in judge(warm, {}, real=True, device="cuda")] == [False]


def test_the_write_stage_writes_our_tree_straight_when_asked(tmp_path: Path) -> None:
    from portrait.rehearsal.stages import Spec, write

    spec = Spec("cpu", True, str(tmp_path), str(tmp_path / "r"), str(tmp_path / "w"), layout="portrait")
    figures = write(spec)
    assert (tmp_path / "w" / "manifest.json").is_file() and not (tmp_path / "r").exists()
    assert figures["largest_file"] == "unet/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--size", "100"], "multiples of 64"), (["--train-sizes", "64,96"], "multiples of 64")],
)
def test_usage_errors_are_one_line_before_any_stage(tmp_path: Path, argv: list[str], message: str) -> None:
    result = _script("--device", "cpu", "--out", str(tmp_path / "gc"), *argv)
    assert result.returncode == 2 and message in result.stderr and result.stdout == ""
    assert not (tmp_path / "gc").exists()
