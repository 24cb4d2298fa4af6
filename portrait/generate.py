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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait import __version__
from portrait.config import RenderConfig, config_to_dict
from portrait.preprocess.emotion import (
    check_schedule_fits,
    schedule_priors,
    schedule_summary,
)
from portrait.errors import PortraitError
from portrait.models.interpolation import midframes
from portrait.render.mux import mux_audio
from portrait.render.paste import FramePaster, clip_box
from portrait.render.video import VideoWriter, to_uint8_frames

logger = logging.getLogger(__name__)
from portrait.engine import Engine, apply_runtime_options, load_engine, resolve_device, resolve_dtype
from portrait.inputs import (
    UNIT_SECONDS,
    ImageCache,
    Job,
    PreparedImage,
    check_output,
    image_cache_key,
    load_prior_file,
    precheck,
    prepare_audio,
    prepare_identity,
    prepare_image,
    resolve_emotion,
)


@dataclass
class Result:
    """What :func:`generate` produced (also written as the sidecar JSON)."""

    output: Path
    sidecar: Path
    info: dict[str, Any] = field(default_factory=dict)


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


def generate(
    job: Job,
    engine: Engine,
    cfg: RenderConfig,
    progress: bool = True,
    cache: ImageCache | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
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
    schedule, bank = resolve_emotion(job.emotion, engine, cfg.sampling.emotion_transition)
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
        callback=callback,
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


#: The orchestration API; the engine and input helpers are re-exported from their own modules.
__all__ = [
    "UNIT_SECONDS",
    "Engine",
    "ImageCache",
    "Job",
    "PortraitError",
    "PreparedImage",
    "Result",
    "apply_runtime_options",
    "check_output",
    "generate",
    "image_cache_key",
    "interpolated",
    "load_engine",
    "load_prior_file",
    "precheck",
    "prepare_audio",
    "prepare_identity",
    "prepare_image",
    "resolve_device",
    "resolve_dtype",
    "resolve_emotion",
]
