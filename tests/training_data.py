"""Made-up talking-head training data for the training tests: MEAD-named clips of the sample portrait."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from portrait.cli.main import main
from portrait.ffmpeg import media_path, run_ffmpeg

ASSETS = Path(__file__).resolve().parents[1] / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
FRAMES, FPS = 10, 12.5
#: (speaker, emotion, level) of the four videos: 2 speakers, 2 emotions.
VIDEOS = (("M001", "happy", 1), ("M001", "sad", 3), ("M002", "happy", 2), ("M002", "sad", 1))
TRAIN = ["--checkpoint-every", "10", "--batch-size", "2"]


def video(path: Path, phase: float, audio: bool = True) -> Path:
    """The sample portrait moving slightly, 256², 10 frames at 12.5 fps, with 0.8 s of speech."""
    source = Image.open(PORTRAIT).convert("RGB")
    folder = path.parent / f".{path.stem}_frames"
    folder.mkdir(parents=True)
    for i in range(FRAMES):
        angle = 4 * np.sin(2 * np.pi * i / FRAMES + phase)
        moved = source.rotate(
            angle, resample=Image.BICUBIC, center=(220, 122), translate=(3 * np.sin(i + phase), 0)
        )
        moved.crop((92, 0, 348, 256)).save(folder / f"f{i:03d}.png")
    args = ["-y", "-framerate", str(FPS), "-i", media_path(folder / "f%03d.png")]
    if audio:
        args += ["-i", media_path(SPEECH), "-t", str(FRAMES / FPS), "-c:a", "aac"]
    args += ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-shortest", media_path(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg(args, timeout=120)
    shutil.rmtree(folder)
    return path


def mead_path(root: Path, speaker: str, emotion: str, level: int, n: int = 1) -> Path:
    return root / speaker / "video" / "front" / emotion / f"level_{level}" / f"{n:03d}.mp4"


def prepare(src: Path, out: Path, weights: Path, *extra: str) -> int:
    argv = ["--quiet", "train", "prepare", str(src), "--out", str(out), "--weights", str(weights)]
    return main([*argv, "--size", "64", "--val-fraction", "0.5", "--store-dtype", "fp32", *extra])


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def train(kind: str, cache: Path, weights: Path, out: Path, *extra: str) -> int:
    argv = [
        "--quiet",
        "train",
        kind,
        "--data",
        str(cache),
        "--weights",
        str(weights),
        "--out",
        str(out),
        *TRAIN,
    ]
    return main([*argv, *extra])
