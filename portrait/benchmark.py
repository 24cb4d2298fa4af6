"""End-to-end speed and memory benchmark on random weights (no download): ``scripts/benchmark.py``.

Builds the pipeline at the real DICE-Talk sizes or at the tiny test sizes (the configurations of
:mod:`portrait.testing.configs`; meta-device construction, then random weights materialised straight on the
device), wraps it in an :class:`~portrait.engine.Engine` and renders N seconds of a synthetic speech file and
portrait through the product's own path
(:func:`portrait.inputs.prepare`, then :func:`portrait.rendering.render_job`: identity and audio encoding,
sampling, VAE decode, frame interpolation, H.264 encode + mux); the stage times are the sidecar's. One JSON
line per run. ``--compare`` runs the plain eager path (the reference's call shapes) and the optimised
path in one process with the same initial noise and prints their speed ratio and the PSNR of the optimised
frames against the eager ones.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait.config import RenderConfig, load_config
from portrait.constants import COMPILE_MODES, OFFLOAD_MODES, RUNTIME_DTYPES
from portrait.engine import Engine, apply_runtime_options, resolve_dtype
from portrait.inputs import Job, prepare
from portrait.pipeline import PortraitPipeline
from portrait.rendering import render_job
from portrait.weights.load import FP32_COMPONENTS


@dataclass(frozen=True)
class Variant:
    """How one run is configured."""

    name: str
    compile: str = "off"
    window_batch: int = 1
    fast_attention: bool = False
    offload: str = "none"


BASELINE = Variant("baseline")
OPTIMISED = Variant("optimised", compile="blocks", window_batch=2, fast_attention=True)


def build_pipeline(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int = 0) -> PortraitPipeline:
    """A pipeline with seeded random weights at the tiny or the real (SVD-XT / DICE-Talk) sizes.

    The configurations are :func:`portrait.testing.configs.tree_configs`' (the same as the random trees');
    each component is built on the meta device and its random weights materialised straight on ``device``.
    """
    from diffusers import EulerDiscreteScheduler

    from portrait.testing.components import random_component
    from portrait.testing.configs import svd_xt_scheduler_config, tree_configs

    configs = tree_configs("tiny" if tiny else "real")
    parts = {}
    for name in ("unet", "vae", "image_encoder", "audio_encoder", "audio_projector", "emotion_model",
                 "pose_guider"):  # fmt: skip
        module = random_component(name, configs, seed, device)
        # a plain cast (no diffusers fp32-module warning)
        parts[name] = torch.nn.Module.to(module, torch.float32 if name in FP32_COMPONENTS else dtype)
    pipe = PortraitPipeline(scheduler=EulerDiscreteScheduler.from_config(svd_xt_scheduler_config()), **parts)
    pipe.interpolator = random_component("interpolation", configs, seed, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device):
    @contextlib.contextmanager
    def timer(store: dict[str, float], name: str):
        _sync(device)
        start = time.perf_counter()
        yield
        _sync(device)
        store[name] = round(store.get(name, 0.0) + time.perf_counter() - start, 4)

    return timer


def _synthetic_inputs(folder: Path, seconds: float, size: int, seed: int) -> tuple[Path, Path]:
    """A square noise "portrait" of ``size`` px and ``seconds`` of a tone with noise at 16 kHz."""
    import soundfile as sf
    from PIL import Image

    rng = np.random.default_rng(seed)
    image, audio = folder / "portrait.png", folder / "speech.wav"
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(image)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape)
    sf.write(audio, wave.astype(np.float32), 16000)
    return image, audio


def bench_engine(pipe: PortraitPipeline, device: torch.device) -> Engine:
    """An engine around a random pipeline: Whisper features, one random prior, the pipe's interpolator."""
    from transformers import WhisperFeatureExtractor

    gen = torch.Generator().manual_seed(3)
    prior = torch.randn(1, pipe.emotion_model.config.prior_dim, generator=gen) * 0.85
    extractor = WhisperFeatureExtractor(feature_size=80)
    interpolator = getattr(pipe, "interpolator", None)
    return Engine(pipe, extractor, None, interpolator, {"neutral": prior}, Path("."), device, pipe.unet.dtype)


def bench_config(variant: Variant, args: argparse.Namespace, seed: int) -> RenderConfig:
    """The render config of one benchmark run: the whole synthetic image, the variant's runtime knobs."""
    return load_config(
        values={
            "sampling.steps": args.steps, "sampling.seed": seed,
            "sampling.decode_chunk_size": args.decode_chunk,
            "preprocess.min_resolution": args.size, "preprocess.crop": False, "video.full_frame": False,
            "video.interpolate": bool(args.interpolate), "runtime.window_batch": variant.window_batch,
            "runtime.fast_attention": variant.fast_attention,
        }
    )  # fmt: skip


def _read_frames(folder: Path) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def run_once(
    pipe: PortraitPipeline,
    variant: Variant,
    args: argparse.Namespace,
    device: torch.device,
    seed: int = 7,
    apply_options: bool = True,
) -> dict[str, Any]:
    """One end-to-end render on ``device`` (where the pipeline runs; with an offload tier its models start
    on the CPU); returns the metrics dict and the frames (uint8, CPU) under ``_frames``.

    ``apply_options``: apply the variant's offload tier and compile mode first (once per pipeline).
    """
    times: dict[str, float] = {}
    calls = {"n": 0}
    hook = pipe.unet.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with _timed(device)(times, "compile_and_first_call"):
        if apply_options:
            apply_runtime_options(pipe, variant.offload, variant.compile, device)
        if apply_options and variant.compile != "off":
            window_call(pipe, args.size)  # compilation happens on the first call
    calls["n"] = 0
    engine = bench_engine(pipe, device)
    cfg = bench_config(variant, args, seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image, audio = _synthetic_inputs(folder, args.seconds, args.size, seed=3)
        box = (args.size / 4, args.size / 4, args.size / 2, args.size / 2)
        dump = folder / "frames" if args.keep_frames else None
        job = Job(image, audio, folder / "out.mp4", face_box=box, dump_frames=dump)
        prepared = prepare(job, cfg, None, engine.bank)
        result = render_job(prepared, engine, cfg)
        frames = _read_frames(dump) if dump is not None else None
    hook.remove()
    info = result.info
    times |= {k: v for k, v in info["timings"].items() if k != "total"}
    generated = info["generated_frames"]
    total = sum(v for k, v in times.items() if k != "compile_and_first_call")
    windows_done = args.steps * math.ceil((generated + 25) / 25)
    flops = args.flops_per_call
    record = {
        "variant": variant.name, "device": str(device), "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "size": args.size, "steps": args.steps, "audio_seconds": args.seconds, "frames": generated,
        "video_frames": info["video_frames"], "seconds_per_video_second": round(total / args.seconds, 4),
        "stage_seconds": times, "unet_calls": calls["n"], "window_batch": variant.window_batch,
        "fast_attention": variant.fast_attention, "compile": variant.compile, "offload": variant.offload,
        "achieved_tflops": round(flops * windows_done / times["sampling"] / 1e12, 2) if flops else None,
        "tflop_per_window_call": round(flops / 1e12, 3) if flops else None,
        "peak_gpu_gib": (
            round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None
        ),
        "peak_host_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
    }  # fmt: skip
    record["_frames"] = frames
    return record


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 frame stacks (inf when identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def count_flops_per_window(pipe: PortraitPipeline, size: int) -> float:
    """FLOPs of one reference window call (3 branches × 25 frames), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        window_call(pipe, size)
    return float(counter.get_total_flops())


def window_call(pipe: PortraitPipeline, size: int) -> None:
    """One UNet call with the reference's window shapes (3 branches × 25 frames) on random inputs."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    h = size // pipe.vae_scale_factor
    dim = pipe.unet.config.cross_attention_dim
    tokens = pipe.audio_projector.config.context_tokens
    args = dict(
        sample=torch.randn(3, 25, 8, h, h, device=device, dtype=dtype),
        timestep=torch.tensor(1.0, device=device),
        encoder_hidden_states=torch.randn(75, 1, dim, device=device, dtype=dtype),
        added_time_ids=torch.tensor([[12.5, 8.0, 16.0]] * 3, device=device, dtype=dtype),
        adapter_tokens=tuple(torch.randn(75, tokens, dim, device=device, dtype=dtype) for _ in range(2)),
        face_mask=torch.ones(1, 1, size, size, device=device, dtype=dtype),
    )  # fmt: skip
    with torch.inference_mode():
        pipe.unet(**args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="tiny random components on the CPU (CI smoke run)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of synthetic audio")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", default="auto", choices=RUNTIME_DTYPES, help="default: fp16 on CUDA, fp32 elsewhere"
    )
    parser.add_argument("--baseline", action="store_true", help="run only the plain eager path")
    parser.add_argument(
        "--compare", action="store_true", help="baseline and optimised in one process, with ratio"
    )
    parser.add_argument(
        "--compile",
        default=None,
        choices=COMPILE_MODES,
        help=f"optimised path's compile mode (default {OPTIMISED.compile}; off with --tiny)",
    )
    parser.add_argument("--window-batch", type=int, default=OPTIMISED.window_batch)
    parser.add_argument("--offload", default="none", choices=OFFLOAD_MODES)
    parser.add_argument("--decode-chunk", type=int, default=10)
    parser.add_argument("--no-interpolate", dest="interpolate", action="store_false")
    parser.add_argument("--no-flops", action="store_true", help="skip counting FLOPs (one extra UNet call)")
    parser.add_argument(
        "--repeat", type=int, default=1,
        help="render the (optimised) run N times, options applied once: later runs are warm (no compiling)",
    )  # fmt: skip
    return parser


def run_benchmark(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark described by ``argv`` (see :func:`build_parser`); returns the JSON records.

    One record per run; with ``--compare`` a last record holds the speed-up and the PSNR check.
    """
    args = build_parser().parse_args(argv)
    if args.tiny:
        args.size, args.device = min(args.size, 64), "cpu"
    if args.compile is None:
        args.compile = "off" if args.tiny else OPTIMISED.compile
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    offload = args.offload if device.type == "cuda" else "none"  # as the engine: offload tiers are CUDA's
    started = time.perf_counter()
    pipe = build_pipeline(args.tiny, device, dtype)
    if offload != "none":  # an offloaded pipeline starts on the CPU; its peak GPU memory is the tier's own
        pipe.to("cpu")
        torch.cuda.empty_cache()
    load_seconds = round(time.perf_counter() - started, 3)
    args.flops_per_call = None if args.no_flops else count_flops_per_window(pipe, args.size)
    args.keep_frames = args.compare
    optimised = Variant("optimised", args.compile, args.window_batch, True, offload)
    runs = [BASELINE] if args.baseline else [BASELINE, optimised] if args.compare else [optimised]
    runs += runs[-1:] * (args.repeat - 1)
    results = []
    for index, variant in enumerate(runs):
        result = run_once(pipe, variant, args, device, apply_options=variant not in runs[:index])
        result["load_seconds"] = load_seconds
        results.append(result)
    records = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    if args.compare:
        base, opt = results[:2]
        summary = {
            "speedup": round(base["seconds_per_video_second"] / opt["seconds_per_video_second"], 3),
            "sampling_speedup": round(
                base["stage_seconds"]["sampling"] / opt["stage_seconds"]["sampling"], 3
            ),
            "psnr_db": round(psnr(base["_frames"], opt["_frames"]), 2),
        }
        summary["frames_match"] = summary["psnr_db"] >= 40.0
        records.append(summary)
    return records
