"""The learned emotion embedder in a render: ``PreparedJob.embedder_inputs`` → one prior over the bank.

:func:`portrait.inputs.prepare` decides (``--emotion-embedder``) and keeps the embedder's visual input (the
expression classifier's per-frame probabilities of the reference clip) or, for an audio-only reference, its
decoded samples. The Whisper hidden states need the loaded engine, so the prior is made here, in
``generate``, right after the job's audio windows: the job's own tokens are read back from those windows
(no second Whisper pass); an audio-only reference gets one Whisper pass of its own.

The embedder's K mixture weights index :data:`portrait.layout.RELEASE_EMOTIONS` (in that order); the prior
is ``EmotionEmbedder.prior(weights, strength·intensity, residual, bank, neutral)``. The job's schedule
becomes that single prior (bank name :data:`LEARNED_PRIOR`) and the sidecar's ``emotion_from`` record gets
``"embedder": "learned"`` with the predicted weights, intensity and residual size.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from portrait.config import RenderConfig
from portrait.engine import Engine
from portrait.errors import WeightsError
from portrait.inputs import PreparedJob
from portrait.layout import RELEASE_EMOTIONS
from portrait.models.audio import TOKENS_PER_UNIT, whisper_hidden_states
from portrait.preprocess.audio_features import audio_features
from portrait.preprocess.emotion_spec import EmotionSchedule, Keyframe, Mix

logger = logging.getLogger(__name__)

#: Bank name of the learned prior inside one job (not a valid custom bank name: no collision).
LEARNED_PRIOR = "_learned"
#: Zero tokens in front of the job's tokens in every frame window (``frame_audio_windows``' default).
WINDOW_PAD_BEFORE = 4


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


def _reference_tokens(samples: Any, engine: Engine, cfg: RenderConfig) -> torch.Tensor:
    pre = cfg.preprocess
    features = audio_features(
        samples, engine.feature_extractor, pre.max_audio_units, pre.audio_units_per_frame
    )
    hidden = whisper_hidden_states(engine.pipe.audio_encoder.encoder, features.mel)
    return hidden[: TOKENS_PER_UNIT * max(features.audio_len, 1)][None]


def _check(model: torch.nn.Module, bank: dict[str, torch.Tensor], audio: torch.Tensor, visual: Any) -> None:
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


@torch.no_grad()
def learned_emotion(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig, windows: torch.Tensor
) -> PreparedJob:
    """``prepared`` with its emotion from the learned embedder (unchanged without ``embedder_inputs``).

    Args:
        prepared: the prepared job (``embedder_inputs`` set by ``prepare``).
        engine: the loaded engine; ``engine.emotion_embedder`` must be loaded.
        cfg: the render config (audio units per frame, transition).
        windows: (N, 10, blocks, channels) the job's audio windows (``inputs.audio_windows``).

    Returns:
        A copy with a one-keyframe schedule on :data:`LEARNED_PRIOR`, that prior in ``extra_priors`` and
        the sidecar record completed.

    Raises:
        WeightsError: no embedder loaded, or one whose sizes do not fit this bank / Whisper / classifier.
    """
    inputs = prepared.embedder_inputs
    if inputs is None:
        return prepared
    model = engine.emotion_embedder
    if model is None:
        raise WeightsError(f"no emotion_embedder/ component loaded from {engine.weights_root}")
    param = next(model.parameters())
    if "audio_samples" in inputs:
        audio, visual = _reference_tokens(inputs["audio_samples"], engine, cfg), None
    else:
        audio = tokens_from_windows(windows, cfg.preprocess.audio_units_per_frame)
        visual = torch.as_tensor(inputs["visual"])[None]
    _check(model, engine.bank, audio, visual)
    audio = audio.to(param.device, torch.float32)
    visual = visual.to(param.device, torch.float32) if visual is not None else None
    out = model(audio, visual)
    bank = torch.cat([engine.bank[n] for n in RELEASE_EMOTIONS]).to(param.device)
    strength = float(prepared.job.emotion_strength)
    intensity = out["intensity"] * strength
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
    return replace(
        prepared,
        schedule=schedule,
        extra_priors={**prepared.extra_priors, LEARNED_PRIOR: prior.reshape(1, -1)},
        emotion_info={**prepared.emotion_info, "emotion_from": record},
    )
