"""The stages of a rehearsal, each run in its own process by :mod:`portrait.rehearsal.child`.

Every stage goes through the product's own entry points: ``portrait-gen convert``, ``load_engine``,
``portrait-gen`` (a render with a fixed face box, so no detector runs), ``portrait-gen train motion|embedder``
(one optimiser step) and, on CUDA, :func:`portrait.benchmark.run_benchmark`. A stage returns a dict of
figures; its wall time and peak memory are measured around its process by :mod:`portrait.rehearsal.runner`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from portrait.errors import PortraitError

#: Face box of the bundled sample portrait (512², dlib's detection rounded): renders need no detector.
SAMPLE_FACE_BOX = "175,76,91,91"
#: Suffixes of the release files whose size bounds the converter's memory (compat §8).
CHECKPOINT_SUFFIXES = (".pth", ".pkl", ".bin", ".safetensors")
MIB = 2**20


class StageError(PortraitError):
    """A stage's command failed (its own error was printed to the stage's log)."""


@dataclass(frozen=True)
class Spec:
    """What a stage needs (one JSON object on the child's command line).

    ``tiny``: the test sizes instead of the release's; ``layout``: what ``write`` writes (the DICE-Talk
    release into ``release``, or our tree straight into ``weights``); ``size``/``steps``/``seconds``: the
    render; ``train_size``/``recipe``: a training stage; ``bench_*``/``offload``/``compile``: the CUDA stages.
    """

    device: str
    tiny: bool
    work: str
    release: str
    weights: str
    layout: str = "dice-talk"
    size: int = 64
    steps: int = 1
    seconds: float = 1.0
    train_size: int = 64
    recipe: str = "motion"
    offload: str = "none"
    compile: str = "off"
    bench_size: int = 512
    bench_steps: int = 25
    bench_seconds: float = 10.0

    def with_values(self, **values: Any) -> Spec:
        return replace(self, **values)


def mib(num_bytes: float) -> float:
    return round(num_bytes / MIB, 1)


def file_sizes(root: Path, suffixes: tuple[str, ...] = ()) -> dict[str, int]:
    """Relative path → size of every file under ``root`` (only ``suffixes`` when given)."""
    files = (p for p in root.rglob("*") if p.is_file() and (not suffixes or p.suffix in suffixes))
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in files}


def run_cli(argv: list[str]) -> None:
    """``portrait-gen --quiet ARGV`` in this process; raises :class:`StageError` on a non-zero exit."""
    from portrait.cli.main import main

    code = main(["--quiet", *argv])
    if code:
        raise StageError(f"portrait-gen {' '.join(argv[:2])} exited with {code} (see the stage's log)")


def cuda_bf16(device: str) -> bool:
    """Whether ``device`` is a CUDA device with bfloat16 arithmetic."""
    return torch.device(device).type == "cuda" and torch.cuda.is_bf16_supported()


# ------------------------------------------------------------------------------------------ the stages
def write(spec: Spec) -> dict[str, Any]:
    """A seeded random release in ``spec.layout`` (one component in memory at a time)."""
    from portrait.testing.trees import write_weights

    folder = Path(spec.release if spec.layout == "dice-talk" else spec.weights)
    root = write_weights(folder, layout=spec.layout, seed=0, size="tiny" if spec.tiny else "real")
    files = file_sizes(root)
    largest = max(files, key=files.__getitem__)
    return {
        "files_mib": mib(sum(files.values())),
        "largest_file": largest,
        "largest_file_mib": mib(files[largest]),
    }


def convert(spec: Spec) -> dict[str, Any]:
    """``portrait-gen convert --from-dice-talk``; reports the largest checkpoint read (the memory bound)."""
    run_cli(["convert", "--from-dice-talk", spec.release, "--weights", spec.weights])
    checkpoints = file_sizes(Path(spec.release), CHECKPOINT_SUFFIXES)
    largest = max(checkpoints, key=checkpoints.__getitem__)
    tree = file_sizes(Path(spec.weights))
    return {
        "largest_checkpoint": largest,
        "largest_checkpoint_mib": mib(checkpoints[largest]),
        "tree_mib": mib(sum(tree.values())),
    }


def load(spec: Spec) -> dict[str, Any]:
    """``load_engine`` (strict key and shape checks of every component) in the device's default dtype.

    Every weight is then read once: a component already in the load dtype is mapped from its file and
    would otherwise count only when a render first touches it; the peak is the model resident in memory.
    """
    from portrait.config import load_config
    from portrait.engine import load_engine
    from portrait.testing.components import parameter_bytes

    cfg = load_config(values={"runtime.weights": spec.weights, "runtime.device": spec.device})
    started = time.perf_counter()
    engine = load_engine(cfg, detector=None)  # renders of the rehearsal pass a face box
    seconds = time.perf_counter() - started
    modules = [m for m in engine.pipe.components.values() if isinstance(m, torch.nn.Module)]
    modules += [m for m in (engine.interpolator, engine.emotion_embedder) if m is not None]
    with torch.no_grad():
        finite = all(bool(torch.isfinite(t.float().sum())) for m in modules for t in m.state_dict().values())
    return {
        "finite": finite,
        "model_mib": mib(sum(parameter_bytes(m) for m in modules)),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "load_seconds": round(seconds, 2),
    }


def speech(path: Path, seconds: float) -> Path:
    """``seconds`` of the bundled sample speech (repeated as needed) as a 16 kHz wav file."""
    import numpy as np
    import soundfile as sf

    from portrait.training.validate import DEFAULT_AUDIO

    samples, rate = sf.read(DEFAULT_AUDIO, dtype="float32")
    count = int(seconds * rate)
    sf.write(path, np.resize(samples, count), rate)
    return path


def render(spec: Spec) -> dict[str, Any]:
    """One ``portrait-gen`` render of ``seconds`` of speech at ``size``/``steps`` (fixed face box)."""
    from portrait.training.validate import DEFAULT_IMAGE

    folder = Path(spec.work) / "render"
    folder.mkdir(parents=True, exist_ok=True)
    audio, out = speech(folder / "speech.wav", spec.seconds), folder / "render.mp4"
    run_cli([
        "--weights", spec.weights, "--device", spec.device, "--image", str(DEFAULT_IMAGE),
        "--audio", str(audio), "--face-box", SAMPLE_FACE_BOX, "--size", str(spec.size),
        "--steps", str(spec.steps), "--seed", "0", "-o", str(out),
    ])  # fmt: skip
    info = json.loads(out.with_name(out.name + ".json").read_text())
    total = info["timings"]["total"]
    return {
        "size": spec.size, "steps": spec.steps, "audio_seconds": spec.seconds,
        "video_frames": info["video_frames"], "generated_frames": info["generated_frames"],
        "seconds_per_video_second": round(total / spec.seconds, 3), "timings": info["timings"],
    }  # fmt: skip


def cache(spec: Spec) -> dict[str, Any]:
    """A random training cache for the tree at ``train_size`` (see :mod:`portrait.rehearsal.cache`)."""
    from portrait.rehearsal.cache import write_random_cache

    index = write_random_cache(Path(spec.weights), cache_folder(spec), spec.train_size)
    return {
        "size": spec.train_size,
        "clips": len(index["entries"]),
        "mib": mib(sum(file_sizes(cache_folder(spec)).values())),
    }


def cache_folder(spec: Spec) -> Path:
    return Path(spec.work) / f"cache_{spec.train_size}"


def train(spec: Spec) -> dict[str, Any]:
    """One optimiser step of ``portrait-gen train RECIPE`` (batch 1; bfloat16 where the device has it)."""
    out = Path(spec.work) / f"train_{spec.recipe}_{spec.train_size}"
    argv = ["train", spec.recipe, "--data", str(cache_folder(spec)), "--weights", spec.weights,
            "--out", str(out), "--steps", "1", "--batch-size", "1", "--checkpoint-every", "1"]  # fmt: skip
    precision = "bf16" if cuda_bf16(spec.device) else "no"
    run_cli([*argv, "--mixed-precision", precision])
    summary = json.loads((out / "training.json").read_text())
    config = summary["config"]
    return {
        "recipe": spec.recipe, "size": spec.train_size, "mixed_precision": precision,
        "gradient_checkpointing": config["gradient_checkpointing"],
        "first_eval": summary["first_eval"], "last_eval": summary["last_eval"],
    }  # fmt: skip


def _stages() -> dict[str, Callable[[Spec], dict[str, Any]]]:
    from portrait.rehearsal import gpu_stages

    return {
        "write": write, "convert": convert, "load": load, "render": render, "cache": cache, "train": train,
        "benchmark": gpu_stages.benchmark, "vram": gpu_stages.vram, "compile": gpu_stages.compile_time,
    }  # fmt: skip


def run_stage(kind: str, spec: Spec) -> dict[str, Any]:
    """Run stage ``kind`` (a key of the stage table) and return its figures.

    Raises:
        KeyError: unknown stage kind.
    """
    return _stages()[kind](spec)
