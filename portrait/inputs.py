"""A job and its inputs: output checks, cheap prechecks, image/face, audio, emotion and identity preparation.

Everything here runs before sampling; every failure is a :class:`~portrait.errors.PortraitError` that names
the file and the fix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait.config import RenderConfig
from portrait.preprocess.emotion import (
    DEFAULT_TRANSITION,
    EmotionSchedule,
    check_schedule_fits,
    load_timeline_file,
    parse_emotion,
)
from portrait.errors import InputError
from portrait.models.audio import frame_audio_windows, whisper_hidden_states
from portrait.models.identity import IdentityEncoding
from portrait.preprocess.audio import AudioFeatures, audio_features, load_audio
from portrait.preprocess.face import (
    FaceDetector,
    check_face_box,
    crop_image,
    reference_crop_box,
    select_face,
)
from portrait.preprocess.image import PortraitTensors, load_image, prepare_portrait
from portrait.render.paste import wants_full_frame

logger = logging.getLogger(__name__)
from portrait.engine import Engine

#: Seconds of audio per 40-ms unit (the reference's time base).
UNIT_SECONDS = 0.04


@dataclass(frozen=True)
class Job:
    """One generation request. ``emotion``: a spec (see portrait.preprocess.emotion), a prior file or a timeline file."""

    image: Path
    audio: Path
    output: Path
    emotion: str = "neutral"
    face_box: tuple[float, float, float, float] | None = None
    face_index: int | None = None
    seed: int | None = None
    dump_frames: Path | None = None


# ---------------------------------------------------------------------------------------------- inputs
def check_output(job: Job) -> None:
    """Refuse an output that would overwrite an input or land in a folder we cannot write."""
    out = job.output.resolve()
    for source in (job.image, job.audio):
        if source.exists() and out == source.resolve():
            raise InputError(f"output {job.output} is the same file as the input {source}; choose another -o")
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist; create it or choose another -o")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder} is not writable; choose another -o")
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output {job.output} must end in .mp4")


def precheck(job: Job, cfg: RenderConfig, emotion_names: list[str], detector: FaceDetector) -> None:
    """Everything about a job that can fail cheaply (files, face, emotion), checked before model loading."""
    check_output(job)
    image = load_image(job.image)
    if job.face_box is not None:
        check_face_box(job.face_box, image.size)
    else:
        faces = detector.detect(np.asarray(image)[:, :, ::-1].copy())
        select_face(faces, cfg.preprocess.face_selection, job.face_index, source=str(job.image))
    pre = cfg.preprocess
    samples = load_audio(job.audio, pre.sample_rate, max_seconds=pre.max_audio_units * UNIT_SECONDS)
    path = Path(job.emotion)
    if path.suffix.lower() in (".safetensors", ".npy", ".json", ".yaml", ".yml"):
        if not path.is_file():
            raise InputError(f"emotion file {path} does not exist")
        if path.suffix.lower() in (".json", ".yaml", ".yml"):
            check_schedule_fits(load_timeline_file(path, emotion_names), len(samples) / pre.sample_rate)
    elif emotion_names:
        check_schedule_fits(parse_emotion(job.emotion, emotion_names), len(samples) / pre.sample_rate)


def prepare_image(
    job: Job, engine: Engine, cfg: RenderConfig
) -> tuple[PortraitTensors, dict[str, Any], np.ndarray | None]:
    """Decode, find the face, optionally crop, and build the pipeline's image tensors (spec 1.2–1.4).

    In full-frame mode (``video.full_frame``; "auto": when the face crop is smaller than the photo) the
    face crop is animated and the whole photo, (H, W, 3) uint8, is returned to paste it back into;
    otherwise the third value is None.
    """
    image = load_image(job.image)
    if job.face_box is not None:
        check_face_box(job.face_box, image.size)
        box, how = job.face_box, "given"
    else:
        bgr = np.asarray(image)[:, :, ::-1].copy()
        faces = engine.detector.detect(bgr)
        face = select_face(faces, cfg.preprocess.face_selection, job.face_index, source=str(job.image))
        box, how = face.box, f"{engine.detector.name} ({len(faces)} found)"
    info: dict[str, Any] = {"face_box": [round(float(v), 2) for v in box], "face_detection": how}
    crop = reference_crop_box(box, image.width, image.height, cfg.preprocess.expand_ratio)
    full_frame = wants_full_frame(cfg.video.full_frame, crop, image.size)
    photo = np.asarray(image) if full_frame else None
    info["full_frame"] = full_frame
    if cfg.preprocess.crop or full_frame:
        image = crop_image(image, crop)
        box = (box[0] - crop[0], box[1] - crop[1], box[2], box[3])
        info["crop_box"] = list(crop)
    tensors = prepare_portrait(image, box, cfg.preprocess.min_resolution, cfg.preprocess.face_area)
    info["size"] = list(tensors.size)
    return tensors, info, photo


def prepare_audio(job: Job, engine: Engine, cfg: RenderConfig) -> tuple[AudioFeatures, torch.Tensor]:
    """Decode the audio and build the per-frame Whisper windows (N, 10, blocks, channels)."""
    pre = cfg.preprocess
    samples = load_audio(job.audio, pre.sample_rate, max_seconds=pre.max_audio_units * UNIT_SECONDS)
    features = audio_features(
        samples, engine.feature_extractor, pre.max_audio_units, pre.audio_units_per_frame
    )
    encoder = engine.pipe.audio_encoder.encoder
    hidden = whisper_hidden_states(encoder, features.mel)
    windows = frame_audio_windows(hidden, features.audio_len, features.num_frames, pre.audio_units_per_frame)
    return features, windows


def resolve_emotion(
    spec: str, engine: Engine, transition: float = DEFAULT_TRANSITION
) -> tuple[EmotionSchedule, dict[str, torch.Tensor]]:
    """An emotion spec, a prior file (.safetensors / release .npy) or a timeline file (.json/.yaml)."""
    bank = dict(engine.bank)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".safetensors", ".npy"):
        bank["custom"] = load_prior_file(path, next(iter(bank.values())).shape[-1])
        return parse_emotion("custom", bank), bank
    if suffix in (".json", ".yaml", ".yml"):
        if not path.is_file():
            raise InputError(f"emotion timeline file {path} does not exist")
        return load_timeline_file(path, bank, transition), bank
    return parse_emotion(spec, bank, transition), bank


def load_prior_file(path: Path, dim: int) -> torch.Tensor:
    """A custom emotion prior: safetensors with a ``mu`` tensor, or a release ``.npy`` (safe unpickler)."""
    if not path.is_file():
        raise InputError(f"emotion prior file {path} does not exist")
    if path.suffix.lower() == ".npy":
        from portrait.weights.release import load_emotion_prior

        prior = torch.from_numpy(load_emotion_prior(path))
    else:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises several types for a corrupt file
            raise InputError(f"cannot read emotion prior {path}: {err}") from err
        if "mu" not in tensors:
            raise InputError(f"emotion prior {path} has no tensor 'mu'")
        prior = tensors["mu"]
    prior = prior.float().reshape(1, -1)
    if prior.shape[1] != dim:
        raise InputError(f"emotion prior {path} has {prior.shape[1]} values; the emotion bank uses {dim}")
    return prior


@dataclass(frozen=True)
class PreparedImage:
    """The image side of a job, reusable for every job animating the same photo (batch rendering)."""

    tensors: PortraitTensors
    info: dict[str, Any]
    identity: IdentityEncoding | None
    photo: np.ndarray | None = None  # full-frame mode: the whole photo (H, W, 3) uint8 to paste into


#: Cache of prepared images: key from :func:`image_cache_key` → :class:`PreparedImage`.
ImageCache = dict[tuple, PreparedImage]


def image_cache_key(job: Job, cfg: RenderConfig) -> tuple:
    """What the prepared image depends on: the file (path, size, mtime), the face choice and preprocessing."""
    stat = job.image.stat()
    pre = cfg.preprocess
    return (
        str(job.image.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        job.face_box,
        job.face_index,
        pre.crop,
        pre.expand_ratio,
        pre.min_resolution,
        pre.face_area,
        pre.face_selection,
        cfg.sampling.noise_aug_strength,
        cfg.video.full_frame,
    )


def prepare_identity(
    job: Job, engine: Engine, cfg: RenderConfig, cache: ImageCache | None = None
) -> PreparedImage:
    """Image tensors + identity encoding (CLIP embedding, VAE latents), from ``cache`` when possible."""
    key = image_cache_key(job, cfg) if cache is not None else None
    if cache is not None and key in cache:
        return cache[key]
    tensors, info, photo = prepare_image(job, engine, cfg)
    identity = None
    if cfg.sampling.noise_aug_strength == 0:  # else the pipeline encodes with the seeded noise (draw #1)
        zeros = torch.zeros_like(tensors.ref_image)
        identity = engine.pipe.encode_identity(tensors.ref_image, tensors.clip_image, zeros, 0.0)
    prepared = PreparedImage(tensors, info, identity, photo)
    if cache is not None:
        cache[key] = prepared
    return prepared
