"""`generate`: one prepared job to a finished mp4 + sidecar JSON (README, "Layout of the package").

:func:`portrait.inputs.prepare` has decoded and checked every input; here :func:`portrait.conditioning.encode`
runs the engine's encoders (identity, audio, emotion, motion), the pipeline samples, and frames stream
through decode → interpolate → paste → encode → mux; ``out.partial.mp4`` is renamed to ``out.mp4`` and
``<output>.json`` is written last. Per-job settings (guidance, adapter scales, interpolation, ...) come from
``cfg``, never from mutating the engine. Callers use :func:`portrait.rendering.render_job`.
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
from portrait.boxes import clip_box
from portrait.conditioning import Conditions, IdentityCache, encode
from portrait.config import RenderConfig, SamplingConfig, config_to_dict
from portrait.distributed.decode import chunks_per_rank, num_decode_chunks, split_decode
from portrait.distributed.group import DistributedContext
from portrait.engine import Engine
from portrait.files import owned_prefix, sha256_file, sidecar_path, sweep_dead_owners, write_json_atomic
from portrait.inputs import PreparedJob
from portrait.models.interpolation import midframes
from portrait.preprocess.emotion_spec import schedule_summary
from portrait.render.mux import mux_audio
from portrait.render.paste import FramePaster
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
    """Per-stage seconds for the sidecar: ``lap(name)`` records the time since the previous lap (on a GPU
    after its queued work has finished, so a stage is not charged for the one before)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = self.last = time.perf_counter()
        self.timings: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 3)
        self.last = now

    def total(self) -> dict[str, float]:
        return self.timings | {"total": round(time.perf_counter() - self.started, 3)}


@dataclass
class _Sampled:
    """What sampling produced, and how the writing stage turns it into frames."""

    latents: torch.Tensor  # (1, N + F, 4, h, w)
    conditions: Conditions
    prepared: PreparedJob
    seed: int
    ctx: DistributedContext | None  # the ranks of one clip, or None
    interpolator: torch.nn.Module | None  # RIFE when the video is interpolated

    @property
    def num_frames(self) -> int:
        return self.conditions.features.num_frames


def generate(
    prepared: PreparedJob,
    engine: Engine,
    cfg: RenderConfig,
    *,
    progress: bool = True,
    cache: IdentityCache | None = None,
    callback: Callable[[int, int, torch.Tensor], None] | None = None,
    distributed: DistributedContext | None = None,
) -> Result:
    """Render ``prepared`` into its job's output (+ ``<output>.json``). No partial output survives a failure.

    Args:
        cache: reuse identity encodings (CLIP and VAE) across jobs of one process.
        callback: ``callback(step, steps, latents)`` after every denoising step (may raise to cancel).
        distributed: the process group of a one-clip-on-several-ranks launch
            (:func:`portrait.distributed.group.init_distributed`): every rank samples its share of the
            windows and decodes its share of the chunks; rank 0 alone writes (the other ranks return a
            Result whose ``info["written"]`` is False). None: this process renders the whole clip.
    """
    timer = _Timer(engine.device)
    conditions = encode(prepared, engine, cfg, cache, timer.lap)
    sampled = _sample(prepared, conditions, engine, cfg, distributed, callback, progress)
    timer.lap("sampling")
    job, s, ctx, interpolator = prepared.job, cfg.sampling, sampled.ctx, sampled.interpolator
    if ctx is not None and not ctx.is_main:  # decode and interpolate this rank's chunks for rank 0
        for _ in distributed_frames(
            ctx, engine, sampled.latents, sampled.num_frames, s.decode_chunk_size, interpolator
        ):
            pass  # ranks > 0 yield nothing: they send their chunks
        ctx.finish()
        info = {
            "rank": ctx.rank,
            "written": False,
            "distributed": _distributed_summary(ctx, sampled.num_frames, s),
        }
        return Result(job.output, sidecar_path(job.output), info)
    paster = full_frame_paster(prepared, cfg)
    written = _write_video(sampled, engine, cfg, paster, progress, timer)
    info = _sidecar_info(sampled, engine, cfg, paster, written, timer.total())
    sidecar = sidecar_path(job.output)
    write_json_atomic(sidecar, info, default=str)
    if ctx is not None:
        ctx.finish()
    return Result(job.output, sidecar, info)


def _sample(
    prepared: PreparedJob,
    conditions: Conditions,
    engine: Engine,
    cfg: RenderConfig,
    ctx: DistributedContext | None,
    callback: Callable[[int, int, torch.Tensor], None] | None,
    progress: bool,
) -> _Sampled:
    """The pipeline's latents from the job's image tensors and its conditions (RNG: the job's seed)."""
    s = cfg.sampling
    seed = s.seed if prepared.job.seed is None else prepared.job.seed
    generator = torch.Generator(engine.device).manual_seed(seed)
    engine.pipe.set_progress_bar_config(disable=not progress, desc="sampling")
    tensors = prepared.portrait
    latents = engine.pipe(
        tensors.ref_image,
        tensors.clip_image,
        tensors.face_mask,
        conditions.windows,
        conditions.priors,
        **(pipeline_arguments(cfg) | conditions.pipeline_arguments),
        generator=generator,
        identity=conditions.identity,
        callback=callback,
        output_type="latent",
        **({"window_executor": ctx.executor} if ctx is not None else {}),
    ).latents
    interpolator = engine.interpolator if cfg.video.interpolate else None
    return _Sampled(latents, conditions, prepared, seed, ctx, interpolator)


def _write_video(
    sampled: _Sampled,
    engine: Engine,
    cfg: RenderConfig,
    paster: FramePaster | None,
    progress: bool,
    timer: _Timer,
) -> int:
    """Decode → interpolate → (paste) → encode → mux into the job's output; returns the frames written.

    The work folder (named after this host and process, so a later render sweeps it if this one is
    killed) goes in every case; with several ranks a frame dump this run started goes on failure too.
    """
    from tqdm.auto import tqdm

    job, s, num_frames = sampled.prepared.job, cfg.sampling, sampled.num_frames
    ctx, interpolator = sampled.ctx, sampled.interpolator
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
    paster: FramePaster | None,
    written: int,
    timings: dict[str, float],
) -> dict[str, Any]:
    """Everything that decided the output, for ``<output>.json``."""
    prepared, conditions = sampled.prepared, sampled.conditions
    ctx, interpolator = sampled.ctx, sampled.interpolator
    job, image, features = prepared.job, prepared.image, conditions.features
    output_bytes, output_sha256 = job.output.stat().st_size, sha256_file(job.output)
    return {
        "output": str(job.output),
        "output_bytes": output_bytes,
        "output_sha256": output_sha256,
        "image": str(job.image),
        "audio": str(job.audio),
        "emotion": job.emotion,
        "emotion_schedule": schedule_summary(conditions.schedule, features.duration),
        **conditions.emotion_info,
        **({"motion": conditions.motion_info} if conditions.motion_info else {}),
        "seed": sampled.seed,
        "audio_seconds": round(features.duration, 3),
        "generated_frames": features.num_frames,
        "video_frames": written,
        "fps": cfg.sampling.fps * (2 if interpolator is not None else 1),
        "interpolated": interpolator is not None,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        **image.sidecar(),
        "output_size": list(paster.size if paster is not None else image.size),
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
    image = prepared.image
    crop = clip_box(image.crop_box, (photo.shape[1], photo.shape[0]))
    return FramePaster(
        photo,
        crop,
        image.face_box,
        max_size=cfg.video.max_size,
        feather=cfg.video.feather,
        color_match=cfg.video.color_match,
    )
