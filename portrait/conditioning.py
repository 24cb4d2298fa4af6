"""What the loaded engine makes of a prepared job: the conditions the pipeline samples from.

The job flows one way (README, "Layout of the package"): :func:`portrait.inputs.prepare` decodes and checks
every input without a model; :func:`encode` runs the engine's encoders once on that
:class:`~portrait.inputs.PreparedJob` and returns :class:`Conditions`; :func:`portrait.generate.generate`
samples from them and writes the video.

- identity: CLIP embedding + VAE latents of the portrait (reused across jobs through an identity cache);
- audio: Whisper hidden states of the speech, cut into one window per video frame;
- emotion: the job's schedule turned into per-frame priors over the engine's bank (plus the job's own
  priors); with ``--emotion-from`` and a learned embedder, the embedder's single prior replaces the schedule
  (its visual input comes from ``prepare``; its audio tokens are read back from the job's windows, or an
  audio-only reference gets one Whisper pass of its own);
- motion: the per-frame motion maps for a landmark guider, or, with the release weights alone, the motion
  bucket steered instead (experimental).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from portrait.config import RenderConfig
from portrait.engine import Engine
from portrait.errors import InputError, WeightsError
from portrait.inputs import PreparedJob
from portrait.layout import RELEASE_EMOTIONS
from portrait.models.audio import TOKENS_PER_UNIT, frame_audio_windows, whisper_hidden_states
from portrait.models.identity import IdentityEncoding
from portrait.preprocess.audio_features import AudioFeatures, audio_features
from portrait.preprocess.emotion_spec import EmotionSchedule, Keyframe, Mix, schedule_priors

logger = logging.getLogger(__name__)

#: Identity encodings reused across jobs of one process, keyed by ``PreparedJob.image_key``.
IdentityCache = dict[tuple, IdentityEncoding]
#: Bank name of the learned prior inside one job (not a valid custom bank name: no collision).
LEARNED_PRIOR = "_learned"
#: Zero tokens in front of the job's tokens in every frame window (``frame_audio_windows``' default).
WINDOW_PAD_BEFORE = 4
#: ``--retarget fixed`` without a landmark guider: this motion bucket for the whole clip (experimental).
FIXED_MOTION_BUCKET = 2


@dataclass(frozen=True)
class Conditions:
    """The pipeline's conditions for one job, computed once by the loaded engine (:func:`encode`).

    Attributes:
        identity: CLIP embedding and VAE latents of the portrait; None when noise augmentation is on (the
            pipeline then encodes with its seeded noise, RNG draw #1).
        features: the job's Whisper input features and frame count N.
        windows: (N, 10, blocks, channels) Whisper hidden-state window per frame.
        schedule: the emotion schedule the priors follow (the learned embedder's one keyframe, or the job's).
        priors: (N, D) float32 per-frame emotion prior.
        emotion_info: sidecar fields of the emotion (``{"emotion_from": ...}``), {} for a plain spec.
        pipeline_arguments: extra pipeline keyword arguments of the motion (``motion_maps``,
            ``motion_bucket_id`` or ``motion_bucket_ids``), {} without motion.
        motion_info: sidecar record of the motion, {} without motion.
    """

    identity: IdentityEncoding | None
    features: AudioFeatures
    windows: torch.Tensor
    schedule: EmotionSchedule
    priors: torch.Tensor
    emotion_info: dict[str, Any] = field(default_factory=dict)
    pipeline_arguments: dict[str, Any] = field(default_factory=dict)
    motion_info: dict[str, Any] = field(default_factory=dict)


def encode(
    prepared: PreparedJob,
    engine: Engine,
    cfg: RenderConfig,
    cache: IdentityCache | None = None,
    lap: Callable[[str], None] | None = None,
) -> Conditions:
    """Run the engine's encoders on ``prepared`` once (identity, audio, emotion, motion).

    ``cache``: identity encodings reused across jobs of one process. ``lap(name)``: called after the
    ``"image"`` and the ``"audio"`` stage (the sidecar's timings).
    """
    lap = lap or (lambda name: None)
    identity = encode_identity(prepared, engine, cfg, cache)
    lap("image")
    features, hidden = whisper_states(prepared.samples, engine, cfg)
    upf = cfg.preprocess.audio_units_per_frame
    windows = frame_audio_windows(hidden, features.audio_len, features.num_frames, upf)
    schedule, extra, emotion_info = (
        prepared.schedule,
        dict(prepared.extra_priors),
        dict(prepared.emotion_info),
    )
    if prepared.embedder_inputs is not None:
        schedule, prior, emotion_info = learned_emotion(prepared, engine, cfg, windows)
        extra[LEARNED_PRIOR] = prior
    lap("audio")
    bank = emotion_bank(engine.bank, extra, prepared.job.emotion)
    priors = schedule_priors(schedule, bank, features.num_frames, cfg.sampling.fps)
    motion_args, motion_info = motion_arguments(prepared, engine, cfg)
    return Conditions(identity, features, windows, schedule, priors, emotion_info, motion_args, motion_info)


# ---------------------------------------------------------------------------------------------- identity
def encode_identity(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig, cache: IdentityCache | None = None
) -> IdentityEncoding | None:
    """CLIP embedding and VAE latents of the portrait, from ``cache`` when possible.

    None when noise augmentation is on: the pipeline then encodes with its seeded noise (RNG draw #1).
    """
    if cfg.sampling.noise_aug_strength != 0:
        return None
    if cache is not None and prepared.image_key in cache:
        return cache[prepared.image_key]
    tensors = prepared.portrait
    zeros = torch.zeros_like(tensors.ref_image)
    identity = engine.pipe.encode_identity(tensors.ref_image, tensors.clip_image, zeros, 0.0)
    if cache is not None:
        cache[prepared.image_key] = identity
    return identity


# ------------------------------------------------------------------------------------------------- audio
def whisper_states(
    samples: np.ndarray, engine: Engine, cfg: RenderConfig
) -> tuple[AudioFeatures, torch.Tensor]:
    """Whisper input features of 16-kHz mono ``samples`` and the encoder's hidden states.

    Returns:
        The features (frame count N, 40-ms units) and (T, blocks, channels) hidden states, two tokens per
        40-ms unit (the one Whisper pass of a job; an audio-only emotion reference gets its own).
    """
    pre = cfg.preprocess
    features = audio_features(
        samples, engine.feature_extractor, pre.max_audio_units, pre.audio_units_per_frame
    )
    return features, whisper_hidden_states(engine.pipe.audio_encoder.encoder, features.mel)


# ----------------------------------------------------------------------------------------------- emotion
def emotion_bank(
    bank: dict[str, torch.Tensor], extra: dict[str, torch.Tensor], source: str
) -> dict[str, torch.Tensor]:
    """The engine's ``bank`` plus the job's own priors ``extra``, each checked against the bank's size.

    ``source``: what brought the extra priors (the job's ``--emotion``), for the error message.
    """
    merged = dict(bank)
    dim = next(iter(bank.values())).shape[-1]
    for name, prior in extra.items():
        if prior.shape[-1] != dim:
            raise InputError(f"emotion prior {source} has {prior.shape[-1]} values; the bank uses {dim}")
        merged[name] = prior
    return merged


def tokens_from_windows(windows: torch.Tensor, units_per_frame: int) -> torch.Tensor:
    """The job's Whisper tokens back from its per-frame windows (exact: each frame owns one stride).

    Args:
        windows: (N, window, blocks, channels) from ``frame_audio_windows``.
        units_per_frame: 40-ms units per frame (stride = ``2·units_per_frame`` tokens).

    Returns:
        (1, N·stride, blocks, channels): the unpadded tokens ``[0, N·stride)``.
    """
    stride = TOKENS_PER_UNIT * units_per_frame
    own = windows[:, WINDOW_PAD_BEFORE : WINDOW_PAD_BEFORE + stride]
    return own.reshape(1, -1, *windows.shape[2:])


def _check_embedder(
    model: torch.nn.Module, bank: dict[str, torch.Tensor], audio: torch.Tensor, visual: Any
) -> None:
    config = model.config
    where = f"{config.get('_name_or_path') or 'emotion_embedder/config.json'}"
    if config.bank_size != len(RELEASE_EMOTIONS) or any(n not in bank for n in RELEASE_EMOTIONS):
        raise WeightsError(
            f"the emotion embedder ({where}) predicts {config.bank_size} weights; it must index the "
            f"{len(RELEASE_EMOTIONS)} release emotions ({', '.join(RELEASE_EMOTIONS)}), all in the bank"
        )
    if audio.shape[2:] != (config.audio_blocks, config.audio_channels):
        raise WeightsError(
            f"the emotion embedder expects Whisper states ({config.audio_blocks}, {config.audio_channels}) "
            f"per token; this audio encoder gives {tuple(audio.shape[2:])}: train it on this Whisper"
        )
    if visual is not None and visual.shape[-1] != config.visual_dim:
        raise WeightsError(
            f"the emotion embedder expects {config.visual_dim} visual features per frame; the expression "
            f"classifier gives {visual.shape[-1]} probabilities"
        )


def _embedder_inputs(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig, windows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(1, T, blocks, channels) audio tokens and (1, T_v, C) visual features (or None) of the embedder."""
    inputs = prepared.embedder_inputs or {}
    if "audio_samples" in inputs:  # an audio-only reference: its own Whisper pass
        features, hidden = whisper_states(inputs["audio_samples"], engine, cfg)
        return hidden[: TOKENS_PER_UNIT * max(features.audio_len, 1)][None], None
    audio = tokens_from_windows(windows, cfg.preprocess.audio_units_per_frame)
    return audio, torch.as_tensor(inputs["visual"])[None]


@torch.no_grad()
def learned_emotion(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig, windows: torch.Tensor
) -> tuple[EmotionSchedule, torch.Tensor, dict[str, Any]]:
    """The learned embedder's prior for ``prepared`` (whose ``embedder_inputs`` ``prepare`` has set).

    The embedder's K mixture weights index :data:`portrait.layout.RELEASE_EMOTIONS` (in that order); the
    prior is ``EmotionEmbedder.prior(weights, strength·intensity, residual, bank, neutral)``.

    Args:
        windows: (N, 10, blocks, channels) the job's audio windows.

    Returns:
        A one-keyframe schedule on :data:`LEARNED_PRIOR`, that (1, D) prior, and the sidecar's emotion fields
        (``emotion_from`` gains ``"embedder": "learned"`` with the weights, intensity and residual size).

    Raises:
        WeightsError: no embedder loaded, or one whose sizes do not fit this bank / Whisper / classifier.
    """
    model = engine.emotion_embedder
    if model is None:
        raise WeightsError(f"no emotion_embedder/ component loaded from {engine.weights_root}")
    param = next(model.parameters())
    audio, visual = _embedder_inputs(prepared, engine, cfg, windows)
    _check_embedder(model, engine.bank, audio, visual)
    audio = audio.to(param.device, torch.float32)
    visual = visual.to(param.device, torch.float32) if visual is not None else None
    out = model(audio, visual)
    bank = torch.cat([engine.bank[n] for n in RELEASE_EMOTIONS]).to(param.device)
    intensity = out["intensity"] * float(prepared.job.emotion_strength)
    neutral = RELEASE_EMOTIONS.index("neutral")
    prior = type(model).prior(out["weights"], intensity, out["residual"], bank, neutral).float().cpu()
    weights = {n: round(float(w), 4) for n, w in zip(RELEASE_EMOTIONS, out["weights"][0], strict=True)}
    learned = {
        "weights": weights,
        "top": max(weights, key=weights.get),
        "intensity": round(float(intensity[0]), 4),
        "residual_norm": round(float(out["residual"][0].norm()), 4),
        "log_var_mean": round(float(out["log_var"][0].mean()), 4),
    }
    logger.info("learned emotion embedder: top %s, intensity %.3f", learned["top"], learned["intensity"])
    record = dict(prepared.emotion_info.get("emotion_from", {}))
    record |= {"embedder": "learned", "learned": learned}
    record["schedule"] = [{"time": 0.0, "emotion": {LEARNED_PRIOR: 1.0}}]
    schedule = EmotionSchedule(
        (Keyframe(0.0, Mix(((LEARNED_PRIOR, 1.0),))),), cfg.sampling.emotion_transition
    )
    return schedule, prior.reshape(1, -1), {**prepared.emotion_info, "emotion_from": record}


# ------------------------------------------------------------------------------------------------ motion
def motion_arguments(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Extra pipeline arguments for the job's motion and its sidecar record (both empty without motion).

    With a ``landmark_guider`` in the weights the maps steer the head frame by frame. With the release
    weights alone one warning says so and the motion bucket is steered instead (experimental): ``fixed``
    lowers it for the whole clip (a calmer head); the other modes give the pipeline a per-frame table
    ``motion_bucket_ids`` (N,) from the retargeted head-motion energy (``portrait.motion.bucket``) that it
    averages per window. A prepared job without an energy table (none was computed) changes nothing.
    """
    if prepared.motion_maps is None:
        return {}, {}
    info = dict(prepared.motion_info)
    if getattr(engine.pipe, "landmark_guider", None) is not None:
        info["applied"] = "landmark_guider"
        return {"motion_maps": torch.from_numpy(prepared.motion_maps)}, info
    mode = cfg.motion.retarget
    energy = getattr(prepared, "motion_energy", None)
    if mode == "fixed":
        instead = "fixed: a lower motion bucket instead, experimental"
    elif energy is None:
        instead = "ignored"
    else:
        instead = "its motion energy sets the motion bucket per window instead, experimental"
    message = "the weights have no landmark_guider: --motion cannot steer the head (%s); see docs/motion.md"
    logger.warning(message, instead)
    if mode != "fixed":
        if energy is None:
            info["applied"] = "none"
            return {}, info
        return _energy_buckets(energy, cfg, info)
    bucket = min(cfg.sampling.motion_bucket_id, FIXED_MOTION_BUCKET)
    info.update(applied="motion_bucket", motion_bucket_id=bucket)
    return {"motion_bucket_id": bucket}, info


def _energy_buckets(
    energy: np.ndarray, cfg: RenderConfig, info: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{"motion_bucket_ids": (N,) float64 tensor}`` from per-frame energy, and the sidecar's record."""
    from portrait.motion import bucket as mb

    center = cfg.sampling.motion_bucket_id
    table = mb.motion_bucket_table(energy, center=center)
    info.update(
        applied="motion_bucket",
        motion_bucket={
            "source": "head_motion_energy",
            "scale": {"energy": [0.0, mb.ENERGY_MID, mb.ENERGY_HIGH], "bucket": [
                min(mb.BUCKET_LOW, center), float(center), max(mb.BUCKET_HIGH, center)]},
            "window": "mean of the window's frames, rounded",
            "per_second": mb.per_second_buckets(table, cfg.sampling.fps),
        },
    )  # fmt: skip
    return {"motion_bucket_ids": torch.from_numpy(table)}, info
