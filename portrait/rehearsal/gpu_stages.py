"""The CUDA stages of a rehearsal: speed, memory tiers, audio length and compile time, via the benchmark.

Each runs :func:`portrait.benchmark.run_benchmark` (random weights at the true sizes built straight on the
GPU, rendered through ``prepare`` + ``render_job``) at ``bench_size``² for ``bench_seconds`` of audio. On the
CPU (``--gpu-stages`` of a dry run) the same code runs at the tiny sizes without compiling.
"""

from __future__ import annotations

from typing import Any

from portrait.rehearsal.stages import Spec

#: Denoising steps of the memory stages: the peak does not depend on the number of steps.
MEMORY_STEPS = 2


def _bench(spec: Spec, *extra: str, seconds: float | None = None, steps: int | None = None) -> list[dict]:
    from portrait.benchmark import run_benchmark

    argv = [
        "--device", spec.device, "--size", str(spec.bench_size),
        "--steps", str(steps or spec.bench_steps), "--seconds", str(seconds or spec.bench_seconds),
    ]  # fmt: skip
    if spec.tiny:
        argv.append("--tiny")
    return run_benchmark([*argv, *extra])


def benchmark(spec: Spec) -> dict[str, Any]:
    """The reference-equivalent baseline and the optimised default in one process: speed-up and PSNR."""
    base, opt, summary = _bench(spec, "--compare", "--compile", spec.compile)
    per_second = {"baseline": base["seconds_per_video_second"], "optimised": opt["seconds_per_video_second"]}
    return {**summary, "seconds_per_video_second": per_second, "baseline": base, "optimised": opt}


def vram(spec: Spec) -> dict[str, Any]:
    """Peak GPU memory of one render with the offload tier ``spec.offload`` (``MEMORY_STEPS`` steps)."""
    (record,) = _bench(spec, "--offload", spec.offload, "--compile", "off", "--no-flops", steps=MEMORY_STEPS)
    return {
        "offload": spec.offload, "audio_seconds": spec.bench_seconds, "size": record["size"],
        "steps": MEMORY_STEPS, "frames": record["frames"], "render_peak_gpu_gib": record["peak_gpu_gib"],
        "seconds_per_video_second": record["seconds_per_video_second"],
    }  # fmt: skip


def compile_time(spec: Spec) -> dict[str, Any]:
    """What compiling the UNet (``spec.compile``) adds to a render: the first of two identical 1 s renders
    minus the second (every shape the render uses is compiled in the first). Cold or warm by the cache
    folders the runner gives the process (``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``)."""
    first, second = _bench(
        spec, "--compile", spec.compile, "--repeat", "2", "--no-flops", "--no-interpolate", seconds=1, steps=1
    )
    totals = [sum(r["stage_seconds"].values()) for r in (first, second)]
    return {
        "compile": spec.compile, "compile_seconds": round(totals[0] - totals[1], 2),
        "first_render_seconds": round(totals[0], 2), "warm_render_seconds": round(totals[1], 2),
    }  # fmt: skip
