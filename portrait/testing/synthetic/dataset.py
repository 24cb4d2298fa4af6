"""A synthetic talking-head dataset where every answer is known: the learning check's training data.

Each clip (12.5 fps, ``size``² pixels, H.264 + AAC) shows one drawn face (:mod:`.face`) of one speaker
(:data:`STYLES`: skin colour and face size, on one shared background) that

* moves along a known path (:func:`wander_path`: a sum of two slow sines per axis, starting at the frame
  centre; :func:`zigzag_path`, a family the training clips never use, drives the held-out renders);
* opens its mouth with the energy of its audio track (:func:`speech_like`: harmonic tone bursts, one per
  "syllable"; the mouth follows each frame's RMS envelope);
* shows its emotion (:data:`EXPRESSIONS`: mouth curve, brows, eyes and cheek colour) and speaks it (a
  pitch per emotion, :data:`PITCH`, scaled by a small per-speaker factor, as prosody carries emotion).

:func:`write_dataset` writes the clips and ``labels.csv`` (``path,emotion,intensity,speaker``), the layout
``portrait-gen train prepare`` reads. Everything is a pure function of the seed: the same call writes the
same frames and samples.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from portrait.testing.synthetic.face import Expression, FaceStyle, draw_face, face_landmarks

logger = logging.getLogger(__name__)

FPS = 12.5
SAMPLE_RATE = 16000
#: The background every clip shares (one backdrop keeps the stand-in VAE's job small).
BACKGROUND = (46, 56, 78)
#: The synthetic speakers (the speaker split holds some of them out): skin colour and face size.
STYLES: tuple[FaceStyle, ...] = (
    FaceStyle(skin=(236, 188, 150), background=BACKGROUND, radius=0.25),
    FaceStyle(skin=(204, 146, 108), background=BACKGROUND, radius=0.24),
    FaceStyle(skin=(250, 214, 184), background=BACKGROUND, radius=0.26),
    FaceStyle(skin=(178, 122, 88), background=BACKGROUND, radius=0.25),
    FaceStyle(skin=(240, 196, 128), background=BACKGROUND, radius=0.235),
    FaceStyle(skin=(216, 164, 136), background=BACKGROUND, radius=0.255),
)
#: The synthetic emotions (names of the release bank) and how each looks.
EXPRESSIONS: dict[str, Expression] = {
    "neutral": Expression(),
    "happy": Expression(smile=1.0, brow=-0.2, eye_open=0.8, cheek=(236, 110, 130)),
    "sad": Expression(smile=-1.0, brow=-1.0, eye_open=0.7, cheek=(150, 160, 200)),
    "angry": Expression(smile=-0.4, brow=1.0, eye_open=1.2, cheek=(200, 40, 30)),
}
#: Base pitch (Hz) of each emotion's voice.
PITCH = {"neutral": 130.0, "happy": 220.0, "sad": 100.0, "angry": 165.0}
#: How far the face moves from the centre, as a fraction of the frame width.
AMPLITUDE = 0.15


def wander_path(rng: np.random.Generator, frames: int, amplitude: float = AMPLITUDE) -> np.ndarray:
    """(frames, 2) offsets from the centre (fractions of the width): per axis a sum of two sines of random
    frequency (0.15-0.7 Hz) and phase, shifted so that frame 0 is at the centre, peak-scaled to
    ``amplitude``."""
    t = np.arange(frames) / FPS
    path = np.zeros((frames, 2))
    for axis in range(2):
        for _ in range(2):
            freq, phase = rng.uniform(0.15, 0.7), rng.uniform(0, 2 * np.pi)
            path[:, axis] += rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * freq * t + phase)
        path[:, axis] -= path[0, axis]
    return path * amplitude / max(np.abs(path).max(), 1e-9)


def zigzag_path(rng: np.random.Generator, frames: int, amplitude: float = AMPLITUDE) -> np.ndarray:
    """(frames, 2) offsets: straight segments between random waypoints every 6-10 frames, from the centre.

    Piecewise linear with corners, unlike :func:`wander_path`'s sines: a path the training never shows.
    """
    knots, points = [0], [np.zeros(2)]
    while knots[-1] < frames - 1:
        knots.append(min(knots[-1] + int(rng.integers(6, 11)), frames - 1))
        points.append(rng.uniform(-amplitude, amplitude, size=2))
    points = np.array(points)
    t = np.arange(frames)
    return np.stack([np.interp(t, knots, points[:, axis]) for axis in range(2)], 1)


def speech_like(rng: np.random.Generator, frames: int, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """Harmonic tone bursts ("syllables" of 120-280 ms with short pauses) at ``pitch`` Hz.

    Returns:
        ``(samples, mouth)``: (frames·1280,) float32 mono at 16 kHz in [-0.5, 0.5]; (frames,) mouth
        opening in [0, 1], the RMS envelope of each frame's 80 ms.
    """
    count = int(frames * SAMPLE_RATE / FPS)
    envelope = np.zeros(count)
    at = int(rng.integers(0, SAMPLE_RATE // 10))
    while at < count:
        length = int(rng.uniform(0.12, 0.28) * SAMPLE_RATE)
        end = min(at + length, count)
        envelope[at:end] = rng.uniform(0.5, 1.0) * np.hanning(length)[: end - at]
        at = end + int(rng.uniform(0.03, 0.15) * SAMPLE_RATE)
    t = np.arange(count) / SAMPLE_RATE
    f0 = pitch * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))  # a little vibrato
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 6))
    samples = 0.5 * envelope * tone / np.abs(tone).max()
    per_frame = envelope[: frames * (count // frames)].reshape(frames, -1)
    mouth = np.sqrt((per_frame**2).mean(1))
    return samples.astype(np.float32), np.clip(mouth / 0.6, 0.0, 1.0)


def clip_frames(
    style: FaceStyle, expression: Expression, path: np.ndarray, mouth: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a clip: ``path`` (N, 2) offsets and ``mouth`` (N,) openings → ((N, size, size, 3) uint8 RGB
    frames, (N, 68, 2) float32 landmarks in frame pixels)."""
    r = style.radius * size
    points = np.stack([
        face_landmarks(((0.5 + dx) * size, (0.5 + dy) * size), r, float(m), expression.smile, expression.brow,
                       expression.eye_open)
        for (dx, dy), m in zip(path, mouth, strict=True)
    ])  # fmt: skip
    frames = np.stack([draw_face(p, size, style, expression) for p in points])
    return frames, points


def write_clip(path: Path, frames: np.ndarray, samples: np.ndarray) -> Path:
    """``frames`` (N, H, W, 3) uint8 at 12.5 fps and ``samples`` (16 kHz) as an H.264 (crf 12) + AAC mp4."""
    import soundfile

    from portrait.render.mux import mux_audio
    from portrait.render.video import VideoWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    silent, wav = path.with_name(f".{path.stem}.silent.mp4"), path.with_name(f".{path.stem}.wav")
    try:
        with VideoWriter(silent, fps=FPS, crf=12) as writer:
            writer.write(frames)
        soundfile.write(wav, samples, SAMPLE_RATE)
        mux_audio(silent, wav, path, copy_video=True)
    finally:
        silent.unlink(missing_ok=True)
        wav.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class ClipSpec:
    """One clip of the dataset: who, which emotion, which seed draws its path and voice."""

    speaker: int
    emotion: str
    seed: int
    zigzag: bool = False

    @property
    def name(self) -> str:
        kind = "zigzag" if self.zigzag else "clip"
        return f"s{self.speaker}/{self.emotion}_{kind}{self.seed}.mp4"


def make_clip(spec: ClipSpec, frames: int, size: int) -> dict[str, np.ndarray]:
    """Frames, landmarks, path, mouth and samples of one clip (a pure function of ``spec``)."""
    rng = np.random.default_rng([spec.speaker, spec.seed, int(spec.zigzag)])
    path = (zigzag_path if spec.zigzag else wander_path)(rng, frames)
    voice = PITCH[spec.emotion] * (0.92 + 0.04 * (spec.speaker % 5))
    samples, mouth = speech_like(rng, frames, voice)
    pictures, points = clip_frames(STYLES[spec.speaker], EXPRESSIONS[spec.emotion], path, mouth, size)
    return {"frames": pictures, "landmarks": points, "path": path, "mouth": mouth, "samples": samples}


def dataset_specs(speakers: int, clips_per_emotion: int, emotions: Sequence[str] = tuple(EXPRESSIONS)):
    """Every :class:`ClipSpec` of a dataset: each speaker says each emotion ``clips_per_emotion`` times."""
    if not 1 <= speakers <= len(STYLES):
        raise ValueError(f"speakers must be 1..{len(STYLES)}, got {speakers}")
    return [
        ClipSpec(speaker, emotion, seed)
        for speaker in range(speakers)
        for emotion in emotions
        for seed in range(clips_per_emotion)
    ]


def write_dataset(
    root: Path,
    speakers: int = 6,
    clips_per_emotion: int = 2,
    frames: int = 40,
    size: int = 128,
    emotions: Sequence[str] = tuple(EXPRESSIONS),
) -> Path:
    """Write the clips under ``root`` and ``root/labels.csv``; returns the CSV's path.

    Intensity is 3 (the strongest level) for every clip. Existing files are overwritten.
    """
    root = Path(root)
    rows = []
    for spec in dataset_specs(speakers, clips_per_emotion, emotions):
        clip = make_clip(spec, frames, size)
        write_clip(root / spec.name, clip["frames"], clip["samples"])
        rows.append(
            {"path": spec.name, "emotion": spec.emotion, "intensity": "3", "speaker": f"s{spec.speaker}"}
        )
    labels = root / "labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "emotion", "intensity", "speaker"])
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %d synthetic clips and %s", len(rows), labels)
    return labels
