"""`generate`: one prepared job to a finished mp4 + sidecar JSON (ARCHITECTURE §3).

:func:`portrait.inputs.prepare` has decoded and checked every input; here the engine (loaded once) encodes
identity and audio, the pipeline samples, and frames stream through decode → interpolate → paste → encode →
mux; ``out.partial.mp4`` is renamed to ``out.mp4`` and ``<output>.json`` is written last. Per-job settings
(guidance, adapter scales, interpolation, ...) come from ``cfg``, never from mutating the engine.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from portrait import __version__
from portrait.config import RenderConfig, SamplingConfig, config_to_dict
from portrait.distributed.decode import chunks_per_rank, num_decode_chunks, split_decode
from portrait.distributed.group import DistributedContext, init_distributed
from portrait.engine import Engine
from portrait.files import owned_prefix, sha256_file, sidecar_path, sweep_dead_owners, write_json_atomic
from portrait.inputs import (
    IdentityCache,
    PreparedJob,
    audio_windows,
    emotion_bank,
    encode_identity,
    motion_arguments,
)
from portrait.learned_emotion import learned_emotion
from portrait.models.interpolation import midframes
from portrait.preprocess.audio_features import AudioFeatures
from portrait.preprocess.emotion_spec import schedule_priors, schedule_summary
from portrait.render.mux import mux_audio
from portrait.render.paste import FramePaster, clip_box
from portrait.render.video import encode_video

logger = logging.getLogger(__name__)

#: Sampling keys that are not pipeline arguments (the seed becomes a generator; the transition shapes priors).
_NOT_PIPELINE_ARGUMENTS = ("seed", "emotion_transition")


@dataclass
class Result:
    """What :func:`generate` produced (also written as the sidecar JSON)."""

    output: Path
    sidecar: Path
    info: dict[str, Any] = field(default_factory=dict)


def pipeline_arguments(cfg: RenderConfig) -> dict[str, Any]:
    """The pipeline's keyword arguments from the config: they carry the config's own names."""
    values = {k: v for k, v in asdict(cfg.sampling).items() if k not in _NOT_PIPELINE_ARGUMENTS}
    return values | {"window_batch": cfg.runtime.window_batch, "fast_attention": cfg.runtime.fast_attention}


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
        for mid, end in zip(mids, frames[1:], strict=True):
            out.extend([mid[None], end[None]])
        previous = chunk[-1]
        if out:
            yield torch.cat(out)
    if model is not None and hold_last and previous is not None:
        yield previous[None]


def distributed_frames(
    ctx: DistributedContext,
    engine: Engine,
    latents: torch.Tensor,
    num_frames: int,
    chunk_size: int,
    interpolator: torch.nn.Module | None,
) -> Iterator[torch.Tensor]:
    """The single process's ``interpolated(decode_frames(...))`` stream, computed across the ranks.

    Args:
        latents: (1, L, 4, h, w), identical on every rank. Rank 0 gets (n, 3, H, W) float32 chunks in
            order (bit-identical to one process); the other ranks must exhaust the iterator (it yields
            nothing there).
    """

    def decode(c: int) -> torch.Tensor:
        start = c * chunk_size  # the single process's chunk boundaries, padding frames included
        part = latents[:, start : start + chunk_size]
        return next(engine.pipe.decode_frames(part, min(chunk_size, num_frames - start), chunk_size))

    def interpolate(chunk: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        head = [] if previous is None else [previous[None]]  # the seam frame: yielded alone, then dropped
        parts = list(interpolated(iter([*head, chunk]), interpolator, hold_last=False))
        return torch.cat(parts[len(head) :])

    return split_decode(
        ctx.rank,
        ctx.world_size,
        num_decode_chunks(num_frames, chunk_size),
        decode,
        interpolate if interpolator is not None else None,
        device=ctx.device,
    )


def _distributed_summary(ctx: DistributedContext, num_frames: int, s: SamplingConfig) -> dict[str, Any]:
    """The sidecar's ``distributed`` record (``s``: the sampling config, for the decode chunk size)."""
    chunks = chunks_per_rank(num_decode_chunks(num_frames, s.decode_chunk_size), ctx.world_size)
    return ctx.summary() | {"decode_chunks_per_rank": chunks}


def _png_dumper(folder: Path) -> Callable[[np.ndarray, int], None]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)

    def dump(frames: np.ndarray, start: int) -> None:
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"frame_{start + i:06d}.png")

    return dump


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {
        "portrait": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


class _Timer:
    """Per-stage seconds for the sidecar: ``lap(name)`` records the time since the previous lap."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 3)
        self.last = now

    def total(self) -> dict[str, float]:
        return self.timings | {"total": round(time.perf_counter() - self.started, 3)}


@dataclass
class _Sampled:
    """What sampling produced for the writing stage."""

    latents: torch.Tensor  # (1, N + F, 4, h, w)
    features: AudioFeatures
    prepared: PreparedJob  # with the learned emotion applied, when there is one
    seed: int
    motion_info: dict[str, Any]


def generate(
    prepared: PreparedJob,
    engine: Engine,
    cfg: RenderConfig,
    progress: bool = True,
    cache: IdentityCache | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
) -> Result:
    """Render ``prepared`` into its job's output (+ ``<output>.json``). No partial output survives a failure.

    ``cache``: reuse identity encodings (CLIP and VAE) across jobs of one process. Under torchrun / srun
    with several processes every rank samples its share of the windows and decodes its share of the chunks;
    rank 0 alone writes (the other ranks return a Result whose ``info["written"]`` is False).
    """
    timer = _Timer()
    ctx = init_distributed(str(engine.device))  # None unless launched by torchrun / srun with > 1 process
    sampled = _sample(prepared, engine, cfg, ctx, cache, callback, progress, timer)
    job, s = prepared.job, cfg.sampling
    interpolator = engine.interpolator if cfg.video.interpolate else None
    num_frames = sampled.features.num_frames
    if ctx is not None and not ctx.is_main:  # decode and interpolate this rank's chunks for rank 0
        for _ in distributed_frames(
            ctx, engine, sampled.latents, num_frames, s.decode_chunk_size, interpolator
        ):
            pass  # ranks > 0 yield nothing: they send their chunks
        ctx.finish()
        info = {"rank": ctx.rank, "written": False, "distributed": _distributed_summary(ctx, num_frames, s)}
        return Result(job.output, sidecar_path(job.output), info)
    paster = full_frame_paster(sampled.prepared, cfg)
    written = _write_video(sampled, engine, cfg, ctx, interpolator, paster, progress, timer)
    info = _sidecar_info(sampled, engine, cfg, ctx, interpolator, paster, written, timer.total())
    sidecar = sidecar_path(job.output)
    write_json_atomic(sidecar, info, default=str)
    if ctx is not None:
        ctx.finish()
    return Result(job.output, sidecar, info)


def _sample(
    prepared: PreparedJob,
    engine: Engine,
    cfg: RenderConfig,
    ctx: DistributedContext | None,
    cache: IdentityCache | None,
    callback: Callable[[int, int, torch.Tensor], None] | None,
    progress: bool,
    timer: _Timer,
) -> _Sampled:
    """Identity and audio encodings, emotion priors, motion conditions, then the pipeline's latents."""
    identity = encode_identity(prepared, engine, cfg, cache)
    timer.lap("image")
    features, windows = audio_windows(prepared, engine, cfg)
    prepared = learned_emotion(prepared, engine, cfg, windows)  # no-op unless --emotion-from is learned
    timer.lap("audio")
    s = cfg.sampling
    priors = schedule_priors(prepared.schedule, emotion_bank(prepared, engine), features.num_frames, s.fps)
    seed = s.seed if prepared.job.seed is None else prepared.job.seed
    generator = torch.Generator(engine.device).manual_seed(seed)
    engine.pipe.set_progress_bar_config(disable=not progress, desc="sampling")
    tensors = prepared.portrait
    motion_args, motion_info = motion_arguments(prepared, engine, cfg)
    latents = engine.pipe(
        tensors.ref_image,
        tensors.clip_image,
        tensors.face_mask,
        windows,
        priors,
        **(pipeline_arguments(cfg) | motion_args),
        generator=generator,
        identity=identity,
        callback=callback,
        output_type="latent",
        **({"window_executor": ctx.executor} if ctx is not None else {}),
    ).latents
    timer.lap("sampling")
    return _Sampled(latents, features, prepared, seed, motion_info)


def _write_video(
    sampled: _Sampled,
    engine: Engine,
    cfg: RenderConfig,
    ctx: DistributedContext | None,
    interpolator: torch.nn.Module | None,
    paster: FramePaster | None,
    progress: bool,
    timer: _Timer,
) -> int:
    """Decode → interpolate → (paste) → encode → mux into the job's output; returns the frames written.

    The work folder (named after this host and process, so a later render sweeps it if this one is
    killed) goes in every case; with several ranks a frame dump this run started goes on failure too.
    """
    from tqdm.auto import tqdm

    job, s, num_frames = sampled.prepared.job, cfg.sampling, sampled.features.num_frames
    if ctx is None:
        chunks = interpolated(
            engine.pipe.decode_frames(sampled.latents, num_frames, s.decode_chunk_size), interpolator
        )
    else:  # every rank decodes its share of the chunks; rank 0 receives them in order
        chunks = distributed_frames(
            ctx, engine, sampled.latents, num_frames, s.decode_chunk_size, interpolator
        )
    new_dump = ctx is not None and job.dump_frames is not None and not job.dump_frames.exists()
    fps = s.fps * (2 if interpolator is not None else 1)
    folder = job.output.resolve().parent
    sweep_dead_owners(folder, (".portrait-",))  # work folders of killed renders
    work = Path(tempfile.mkdtemp(prefix=owned_prefix(".portrait-"), dir=folder))
    try:
        total = 2 * num_frames if interpolator is not None else num_frames
        dump = _png_dumper(job.dump_frames) if job.dump_frames is not None else None
        with tqdm(total=total, desc="encoding", unit="frame", disable=not progress) as bar:
            written = encode_video(
                chunks,
                work / "silent.mp4",
                fps=fps,
                crf=cfg.video.crf,
                paster=paster,
                on_frames=dump,
                progress=bar,
            )
        timer.lap("decode_encode")
        v = cfg.video
        mux_audio(work / "silent.mp4", job.audio, job.output, crf=v.mux_crf, audio_codec=v.audio_codec)
        timer.lap("mux")
    except BaseException:
        if new_dump:  # a lost rank leaves no partial frame dump either
            shutil.rmtree(job.dump_frames, ignore_errors=True)  # type: ignore[arg-type]
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return written


def _sidecar_info(
    sampled: _Sampled,
    engine: Engine,
    cfg: RenderConfig,
    ctx: DistributedContext | None,
    interpolator: torch.nn.Module | None,
    paster: FramePaster | None,
    written: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Everything that decided the output, for ``<output>.json``."""
    prepared, features = sampled.prepared, sampled.features
    job, image_info = prepared.job, prepared.image_info
    output_bytes, output_sha256 = job.output.stat().st_size, sha256_file(job.output)
    return {
        "output": str(job.output),
        "output_bytes": output_bytes,
        "output_sha256": output_sha256,
        "image": str(job.image),
        "audio": str(job.audio),
        "emotion": job.emotion,
        "emotion_schedule": schedule_summary(prepared.schedule, features.duration),
        **prepared.emotion_info,
        **({"motion": sampled.motion_info} if sampled.motion_info else {}),
        "seed": sampled.seed,
        "audio_seconds": round(features.duration, 3),
        "generated_frames": features.num_frames,
        "video_frames": written,
        "fps": cfg.sampling.fps * (2 if interpolator is not None else 1),
        "interpolated": interpolator is not None,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        **image_info,
        "output_size": list(paster.size) if paster is not None else image_info["size"],
        "timings": timings,
        "versions": _versions(),
        **(
            {"distributed": _distributed_summary(ctx, features.num_frames, cfg.sampling)}
            if ctx is not None
            else {}
        ),
        "config": config_to_dict(cfg),
    }


def full_frame_paster(prepared: PreparedJob, cfg: RenderConfig) -> FramePaster | None:
    """A :class:`FramePaster` for one video in full-frame mode (None otherwise); not cached: it keeps the
    colour statistics of its first frame."""
    photo = prepared.photo_array
    if photo is None:
        return None
    info = prepared.image_info
    crop = clip_box(tuple(info["crop_box"]), (photo.shape[1], photo.shape[0]))
    return FramePaster(
        photo,
        crop,
        tuple(info["face_box"]),
        max_size=cfg.video.max_size,
        feather=cfg.video.feather,
        color_match=cfg.video.color_match,
    )
