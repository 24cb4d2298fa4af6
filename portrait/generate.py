"""`generate`: one job from a photo and a recording to a finished mp4 + sidecar JSON (ARCHITECTURE §4).

preprocess image (detect, choose, mask) → audio (decode, Whisper features, per-frame windows) → emotion
(per-frame priors) → pipeline (latents) → chunked VAE decode → optional frame interpolation → streamed H.264
encode → mux with the audio → atomic rename; ``<output>.json`` records what was done.
An :class:`Engine` holds everything that is loaded once (batch rendering reuses it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait import __version__
from portrait.config import RenderConfig, config_to_dict
from portrait.emotion import (
    EmotionSchedule,
    check_schedule_fits,
    parse_emotion,
    schedule_priors,
    schedule_summary,
)
from portrait.emotion import load_timeline_file
from portrait.errors import InputError, PortraitError, WeightsError
from portrait.layout import AUDIO_PREPROCESSOR_FILE
from portrait.models.identity import IdentityEncoding
from portrait.models.audio import frame_audio_windows, whisper_hidden_states
from portrait.models.interpolation import midframes
from portrait.preprocess.audio import AudioFeatures, audio_features, load_audio
from portrait.preprocess.face import (
    FaceDetector,
    check_face_box,
    crop_image,
    detector_from_name,
    reference_crop_box,
    select_face,
)
from portrait.preprocess.image import PortraitTensors, load_image, prepare_portrait
from portrait.render.mux import mux_audio
from portrait.render.paste import FramePaster, clip_box, wants_full_frame
from portrait.render.video import VideoWriter, to_uint8_frames
from portrait.weights import load_component, load_emotion_bank, load_pipeline, resolve_weights_root

logger = logging.getLogger(__name__)

#: Seconds of audio per 40-ms unit (the reference's time base).
UNIT_SECONDS = 0.04


@dataclass(frozen=True)
class Job:
    """One generation request. ``emotion``: a spec (see portrait.emotion), a prior file or a timeline file."""

    image: Path
    audio: Path
    output: Path
    emotion: str = "neutral"
    face_box: tuple[float, float, float, float] | None = None
    face_index: int | None = None
    seed: int | None = None
    dump_frames: Path | None = None


@dataclass
class Result:
    """What :func:`generate` produced (also written as the sidecar JSON)."""

    output: Path
    sidecar: Path
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Engine:
    """Everything loaded once per process: pipeline, audio features, detector, interpolator, emotion bank."""

    pipe: Any
    feature_extractor: Any
    detector: FaceDetector | None
    interpolator: torch.nn.Module | None
    bank: dict[str, torch.Tensor]
    weights_root: Path
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → fp16 on CUDA (the reference), fp32 on CPU."""
    table = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return table[name]


def load_engine(cfg: RenderConfig, detector: str | FaceDetector = "auto") -> Engine:
    """Load every component named by ``cfg.runtime`` (weights root, device, dtype) once.

    ``detector``: a detector name (see ``detector_from_name``) or an already built detector.
    """
    from transformers import WhisperFeatureExtractor

    root = resolve_weights_root(cfg.runtime.weights)
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype, device)
    offload = cfg.runtime.offload != "none" and device.type == "cuda"
    pipe = load_pipeline(root, device="cpu" if offload else device, dtype=dtype)
    pipe.unet.set_adapter_scales((cfg.sampling.ip_audio_scale, cfg.sampling.ip_emo_scale))
    apply_runtime_options(pipe, cfg.runtime.offload if offload else "none", cfg.runtime.compile, device)
    try:
        extractor = WhisperFeatureExtractor.from_pretrained((root / AUDIO_PREPROCESSOR_FILE).parent)
    except OSError as err:
        raise WeightsError(f"cannot read {root / AUDIO_PREPROCESSOR_FILE}: {err}") from err
    interpolator = None
    if cfg.video.interpolate:
        if (root / "interpolation" / "config.json").is_file():
            interpolator = load_component("interpolation", root, device, torch.float32)
        else:
            logger.warning("no frame-interpolation weights in %s/interpolation: writing 12.5 fps video", root)
    if isinstance(detector, str):
        detector = detector_from_name(detector, root)
    return Engine(
        pipe,
        extractor,
        detector,
        interpolator,
        load_emotion_bank(root),
        root,
        device,
        dtype,
    )


def apply_runtime_options(pipe: Any, offload: str, compile_mode: str, device: torch.device) -> None:
    """Memory tier (CPU offload) and torch.compile, both output-preserving."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    if compile_mode == "off":
        return
    # A persistent compile cache makes every later process start warm.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "portrait" / "inductor"))
    if compile_mode == "blocks":
        pipe.unet.compile_repeated_blocks(fullgraph=True, dynamic=False)
    else:
        pipe.unet = torch.compile(pipe.unet, fullgraph=False, dynamic=False)


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


def resolve_emotion(spec: str, engine: Engine) -> tuple[EmotionSchedule, dict[str, torch.Tensor]]:
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
        return load_timeline_file(path, bank), bank
    return parse_emotion(spec, bank), bank


def load_prior_file(path: Path, dim: int) -> torch.Tensor:
    """A custom emotion prior: safetensors with a ``mu`` tensor, or a release ``.npy`` (safe unpickler)."""
    if not path.is_file():
        raise InputError(f"emotion prior file {path} does not exist")
    if path.suffix.lower() == ".npy":
        from portrait.convert_release import load_emotion_prior

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


# ---------------------------------------------------------------------------------------------- output
def interpolated(
    chunks: Iterator[torch.Tensor], model: torch.nn.Module | None, hold_last: bool = True
) -> Iterator[torch.Tensor]:
    """Insert a RIFE midframe between consecutive frames, chunk by chunk.

    The reference writes 2N − 1 frames at 25 fps, 40 ms shorter than the N frames it interpolates; with
    ``hold_last`` the last frame is shown once more (2N frames) so the video lasts N/12.5 s like the
    non-interpolated one and stays within one 12.5-fps frame of the audio.
    """
    previous: torch.Tensor | None = None
    for chunk in chunks:
        if model is None:
            yield chunk
            continue
        frames = chunk if previous is None else torch.cat([previous[None], chunk])
        mids = midframes(model, frames[:-1], frames[1:])
        out = [frames[:1]] if previous is None else []
        for mid, end in zip(mids, frames[1:]):
            out.extend([mid[None], end[None]])
        previous = chunk[-1]
        if out:
            yield torch.cat(out)
    if model is not None and hold_last and previous is not None:
        yield previous[None]


def _dump_png(frames: np.ndarray, folder: Path, start: int) -> None:
    from PIL import Image

    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame_{start + i:06d}.png")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(partial, path)


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "portrait": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


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


def generate(
    job: Job, engine: Engine, cfg: RenderConfig, progress: bool = True, cache: ImageCache | None = None
) -> Result:
    """Render ``job`` into ``job.output`` (+ ``<output>.json``). No partial output survives a failure.

    ``cache``: reuse prepared images (face detection, CLIP and VAE encodings) across jobs of one process.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    check_output(job)
    prepared = prepare_identity(job, engine, cfg, cache)
    tensors, image_info = prepared.tensors, prepared.info
    t = lap("image", started)
    features, windows = prepare_audio(job, engine, cfg)
    t = lap("audio", t)
    schedule, bank = resolve_emotion(job.emotion, engine)
    check_schedule_fits(schedule, features.duration)
    s = cfg.sampling
    priors = schedule_priors(schedule, bank, features.num_frames, s.fps)
    seed = s.seed if job.seed is None else job.seed
    generator = torch.Generator(engine.device).manual_seed(seed)
    engine.pipe.set_progress_bar_config(disable=not progress, desc="sampling")
    latents = engine.pipe(
        tensors.ref_image,
        tensors.clip_image,
        tensors.face_mask,
        windows,
        priors,
        num_inference_steps=s.steps,
        frames_per_window=s.frames_per_window,
        overlap=s.overlap,
        shift_offset=s.shift_offset,
        min_ref_scale=s.ref_scale_min,
        max_ref_scale=s.ref_scale_max,
        min_emo_scale=s.emo_scale_min,
        max_emo_scale=s.emo_scale_max,
        i2i_noise_strength=s.i2i_noise_strength,
        noise_aug_strength=s.noise_aug_strength,
        fps=s.fps,
        motion_bucket_id=s.motion_bucket_id,
        motion_bucket_id_exp=s.motion_bucket_id_exp,
        retrieval=s.retrieval,
        generator=generator,
        identity=prepared.identity,
        window_batch=cfg.runtime.window_batch,
        fast_attention=cfg.runtime.fast_attention,
        output_type="latent",
    ).latents
    t = lap("sampling", t)

    fps = s.fps * (2 if engine.interpolator is not None else 1)
    paster = full_frame_paster(prepared, cfg)
    work = Path(tempfile.mkdtemp(prefix=".portrait-", dir=job.output.resolve().parent))
    try:
        written = _encode(
            job, engine, cfg, latents, features.num_frames, fps, work / "silent.mp4", progress, paster
        )
        t = lap("decode_encode", t)
        mux_audio(
            work / "silent.mp4",
            job.audio,
            job.output,
            crf=cfg.video.mux_crf,
            audio_codec=cfg.video.audio_codec,
        )
        lap("mux", t)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["total"] = round(time.perf_counter() - started, 3)
    info = {
        "output": str(job.output),
        "image": str(job.image),
        "audio": str(job.audio),
        "emotion": job.emotion,
        "emotion_schedule": schedule_summary(schedule, features.duration),
        "seed": seed,
        "audio_seconds": round(features.duration, 3),
        "generated_frames": features.num_frames,
        "video_frames": written,
        "fps": fps,
        "interpolated": engine.interpolator is not None,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        **image_info,
        "output_size": list(paster.size) if paster is not None else image_info["size"],
        "timings": timings,
        "versions": _versions(),
        "config": config_to_dict(cfg),
    }
    sidecar = job.output.with_name(job.output.name + ".json")
    _write_json(sidecar, info)
    return Result(job.output, sidecar, info)


def full_frame_paster(prepared: PreparedImage, cfg: RenderConfig) -> FramePaster | None:
    """A :class:`FramePaster` for one video in full-frame mode (None otherwise); not cached: it keeps the
    colour statistics of its first frame."""
    if prepared.photo is None:
        return None
    photo, info = prepared.photo, prepared.info
    crop = clip_box(tuple(info["crop_box"]), (photo.shape[1], photo.shape[0]))
    return FramePaster(
        photo,
        crop,
        tuple(info["face_box"]),
        max_size=cfg.video.max_size,
        feather=cfg.video.feather,
        color_match=cfg.video.color_match,
    )


def _output_frames(chunk: torch.Tensor, paster: FramePaster | None) -> Iterator[np.ndarray]:
    """uint8 (n, H, W, 3) frames to write: the working-size chunk, or its frames pasted one by one."""
    if paster is None:
        yield to_uint8_frames(chunk)
        return
    for i in range(len(chunk)):
        yield paster.paste(chunk[i : i + 1])


def _encode(
    job: Job,
    engine: Engine,
    cfg: RenderConfig,
    latents: torch.Tensor,
    num_frames: int,
    fps: float,
    silent: Path,
    progress: bool,
    paster: FramePaster | None = None,
) -> int:
    """Decode → interpolate → (paste) → (dump PNGs) → H.264, chunk by chunk; returns the frames written.

    With a ``paster`` (full-frame mode) each frame is pasted into the photo one at a time, so memory stays
    flat in the video length and in the chunk size.
    """
    from tqdm.auto import tqdm

    total = 2 * num_frames if engine.interpolator is not None else num_frames
    if job.dump_frames is not None:
        job.dump_frames.mkdir(parents=True, exist_ok=True)
    chunks = engine.pipe.decode_frames(latents, num_frames, cfg.sampling.decode_chunk_size)
    with tqdm(total=total, desc="encoding", unit="frame", disable=not progress) as bar:
        with VideoWriter(silent, fps=fps, crf=cfg.video.crf, progress=bar) as writer:
            for chunk in interpolated(chunks, engine.interpolator):
                for frames in _output_frames(chunk, paster):
                    if job.dump_frames is not None:
                        _dump_png(frames, job.dump_frames, writer.frames_written)
                    writer.write(frames)
            written = writer.frames_written
    return written


__all__ = ["Engine", "Job", "PortraitError", "Result", "generate", "load_engine"]
