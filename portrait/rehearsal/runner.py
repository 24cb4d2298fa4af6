"""``scripts/gpu_check.py``: plan the stages, run each in its own process, measure it, judge the targets.

Every stage runs as ``python -m portrait.rehearsal.child`` so its peak host memory and on CUDA its peak GPU
memory are its own: the child reports its ``VmHWM`` (the high-water mark of its own address space, which
starts empty at ``exec``) and the parent polls the same figure while it runs, for a child that dies before
it can report. ``wait4``'s ``ru_maxrss`` is not used: Linux carries the spawning process's high-water mark
across ``fork``/``exec`` into it, so a child of a 1.7 GB pytest process "peaked" at 1.7 GB.

One JSON line per stage goes to the caller (the script prints it) and to
``OUT/results.jsonl`` (``stage``, ``ok``, ``seconds``, ``peak_rss_mib``, ``peak_vram_mib`` on CUDA, the
stage's figures and ``targets``), then a ``summary`` line; each stage's log is ``OUT/logs/<stage>.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from portrait.rehearsal.memory import vm_hwm_mib
from portrait.rehearsal.stages import Spec
from portrait.rehearsal.targets import judge

#: Seconds a stopped child gets between SIGTERM and SIGKILL.
_GRACE = 10.0
_POLL = 0.05  # seconds between polls of a running child's VmHWM


@dataclass(frozen=True)
class Planned:
    """One stage of the plan: its label in the results, its kind (a stage of :mod:`.stages`), its spec."""

    label: str
    kind: str
    spec: Spec
    env: dict[str, str] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpu_check.py", description="Rehearse the release at its true sizes; one JSON line per stage."
    )
    parser.add_argument("--out", type=Path, required=True, help="results.jsonl and logs/ go here")
    parser.add_argument(
        "--work", type=Path, default=None, help="trees, caches and renders (default OUT/work)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available)")
    parser.add_argument("--real-size", action="store_true", help="the release's true sizes (default: tiny)")
    parser.add_argument("--size", type=int, default=64, help="render size (default 64)")
    parser.add_argument("--steps", type=int, default=1, help="render denoising steps (default 1)")
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds of speech rendered (default 1)")
    parser.add_argument(
        "--train-sizes", default=None, help="comma list of training sizes (default: --size; 512 on CUDA)"
    )
    parser.add_argument(
        "--weights", type=Path, default=None, help="reuse this portrait tree (no write, no convert)"
    )
    parser.add_argument("--release", type=Path, default=None, help="convert this DICE-Talk folder (no write)")
    parser.add_argument("--gpu-stages", action="store_true", help="also the CUDA stages on a CPU (dry run)")
    parser.add_argument("--bench-size", type=int, default=512)
    parser.add_argument("--bench-steps", type=int, default=25)
    parser.add_argument("--bench-seconds", type=float, default=10.0)
    parser.add_argument(
        "--long-seconds", type=float, default=60.0, help="audio of the long-clip memory stage"
    )
    parser.add_argument(
        "--compile", default="blocks", help="compile mode of the CUDA stages (default blocks)"
    )
    parser.add_argument("--skip", default="", help="comma list of stage labels to leave out")
    parser.add_argument("--deadline", type=float, default=None, help="start no stage after this many seconds")
    parser.add_argument("--stage-timeout", type=float, default=1800.0, help="seconds one stage may take")
    return parser


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors before any stage starts (exit 2 with one line)."""
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (use --device cpu)")
    sizes = [
        args.size,
        args.bench_size,
        *(int(s) for s in (args.train_sizes or "64").split(",") if s.strip()),
    ]
    if any(size < 64 or size % 64 for size in sizes):
        parser.error(f"sizes must be multiples of 64 (--size, --bench-size, --train-sizes), got {sizes}")


def _gpu_plans(args: argparse.Namespace, spec: Spec, cuda: bool) -> tuple[list[Planned], list[Planned]]:
    """The CUDA stages to run before the tree stages (speed and memory of a render: they build their own
    random pipeline, no tree needed) and after them (the slow ones: sequential offload and compiling,
    which took minutes cold before). The benchmark does not compile: the compile stages time that."""
    mode = args.compile if cuda else "off"  # a dry run does not compile
    cache_dir = Path(spec.work) / "compile-cache"
    env = {
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "inductor"),
        "TRITON_CACHE_DIR": str(cache_dir / "triton"),
    }
    first = [
        Planned("benchmark", "benchmark", spec.with_values(compile="off")),
        Planned("vram_none", "vram", spec.with_values(offload="none")),
        Planned("vram_model", "vram", spec.with_values(offload="model")),
        Planned("long_clip", "vram", spec.with_values(bench_seconds=args.long_seconds)),
    ]
    last = [Planned("vram_sequential", "vram", spec.with_values(offload="sequential"))]
    last += [
        Planned(f"compile_{t}", "compile", spec.with_values(compile=mode), env) for t in ("cold", "warm")
    ]
    return first, last


def make_plan(args: argparse.Namespace) -> list[Planned]:
    """The stages in order, without the ``--skip`` ones.

    On CUDA the tree is written straight in our layout (converting is a host-memory figure, measured on
    a CPU) unless ``--release`` names a DICE-Talk folder to convert.
    """
    device = _device(args.device)
    cuda = device.startswith("cuda")
    work = (args.work or args.out / "work").resolve()
    spec = Spec(
        device=device, tiny=not args.real_size, work=str(work),
        release=str((args.release or work / "release").resolve()),
        weights=str((args.weights or work / "weights").resolve()),
        size=args.size, steps=args.steps, seconds=args.seconds,
        bench_size=args.bench_size, bench_steps=args.bench_steps, bench_seconds=args.bench_seconds,
    )  # fmt: skip
    if not cuda and args.gpu_stages:  # the dry run renders the benchmark at the render's small settings
        spec = spec.with_values(bench_size=args.size, bench_steps=args.steps, bench_seconds=args.seconds)
    plan, last = _gpu_plans(args, spec, cuda) if cuda or args.gpu_stages else ([], [])
    if args.weights is None and args.release is None and cuda:
        plan.append(Planned("write", "write", spec.with_values(layout="portrait")))
    elif args.weights is None:
        plan += [Planned("write", "write", spec)] if args.release is None else []
        plan.append(Planned("convert", "convert", spec))
    plan += [Planned("load", "load", spec), Planned("render", "render", spec)]
    default_sizes = "512" if cuda else str(args.size)
    sizes = [int(s) for s in (args.train_sizes or default_sizes).split(",") if s.strip()]
    for size in sizes:
        sized = spec.with_values(train_size=size)
        plan += [Planned(f"cache_{size}", "cache", sized), Planned(f"train_motion_{size}", "train", sized)]
    plan.append(Planned("train_embedder", "train", spec.with_values(recipe="embedder", train_size=sizes[0])))
    plan += last
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return [p for p in plan if p.label not in skip]


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment plus the package root on ``PYTHONPATH`` (a source checkout needs no install)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **extra}


def _wait(proc: subprocess.Popen, timeout: float) -> tuple[int, float | None, bool]:
    """Reap ``proc``: (exit code, peak RSS in MiB polled from ``VmHWM``, timed out); kill it at ``timeout``.

    The polled peak can miss growth in the last ``_POLL`` seconds before the child exits; the stage child's
    own report (exact) takes precedence in :func:`run_planned`.
    """
    deadline, timed_out, peak = time.monotonic() + timeout, False, None
    while proc.poll() is None:
        if (seen := vm_hwm_mib(proc.pid)) is not None:
            peak = max(peak or 0.0, seen)
        if time.monotonic() > deadline and not timed_out:
            timed_out = True
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + _GRACE
        elif timed_out and time.monotonic() > deadline:
            proc.kill()
        time.sleep(_POLL)
    return proc.returncode, peak, timed_out


def run_planned(stage: Planned, out: Path, timeout: float) -> dict[str, Any]:
    """Run one stage in a child process; its record (figures, wall time, peak memory)."""
    logs, results = out / "logs", out / "stages"
    logs.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    result_path = results / f"{stage.label}.json"
    result_path.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "portrait.rehearsal.child",
        stage.kind,
        json.dumps(asdict(stage.spec)),
        str(result_path),
    ]
    started = time.perf_counter()
    with (logs / f"{stage.label}.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_child_env(stage.env))
        code, polled_rss, timed_out = _wait(proc, timeout)
    record: dict[str, Any] = {
        "stage": stage.label,
        "ok": code == 0,
        "seconds": round(time.perf_counter() - started, 1),
    }
    figures = json.loads(result_path.read_text()) if result_path.is_file() else {}
    reported = figures.pop("peak_rss_mib", None)
    record["peak_rss_mib"] = max((m for m in (reported, polled_rss) if m is not None), default=None)
    if timed_out:
        figures["error"] = f"stopped after {timeout:.0f} s (--stage-timeout or --deadline)"
    elif code and "error" not in figures:
        figures["error"] = f"exit code {code} (killed for memory?) — see logs/{stage.label}.log"
    return {**record, **figures}


def _emit(record: dict[str, Any], handle, report: Callable[[str], None] | None) -> None:
    line = json.dumps(record, default=str)
    if report is not None:
        report(line)
    handle.write(line + "\n")
    handle.flush()


def _summary(records: dict[str, dict[str, Any]], skipped: list[str], seconds: float, real: bool) -> dict:
    """The last line: every stage ran (none failed, none skipped), and which targets were missed."""
    missed = [f"{k}: {t['name']}" for k, r in records.items() for t in r["targets"] if not t["met"]]
    failed = [k for k, r in records.items() if not r["ok"]]
    return {"stage": "summary", "ok": not failed and not skipped, "seconds": round(seconds, 1),
            "real_size": real, "failed": failed, "skipped": skipped, "targets_missed": missed}  # fmt: skip


def run(argv: list[str] | None = None, report: Callable[[str], None] | None = None) -> int:
    """Run the rehearsal described by ``argv``; exit code 0 when every stage ran (targets are reported).

    Each JSON line goes to ``OUT/results.jsonl`` and, as it is written, to ``report`` (the script prints it).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = make_plan(args)
    if any(p.kind == "compile" for p in plan):  # the cold compile starts from empty caches
        shutil.rmtree(Path(plan[0].spec.work) / "compile-cache", ignore_errors=True)
    started, records, skipped = time.perf_counter(), {}, []
    with (args.out / "results.jsonl").open("w") as handle:
        for stage in plan:
            elapsed = time.perf_counter() - started
            if args.deadline is not None and elapsed >= args.deadline:
                skipped.append(stage.label)
                continue
            left = args.stage_timeout if args.deadline is None else args.deadline - elapsed
            record = run_planned(stage, args.out, min(args.stage_timeout, left))
            record["targets"] = judge(record, records, real=not stage.spec.tiny, device=stage.spec.device)
            records[stage.label] = record
            _emit(record, handle, report)
        summary = _summary(records, skipped, time.perf_counter() - started, args.real_size)
        _emit(summary, handle, report)
    return 0 if summary["ok"] else 1
