"""Configurations of every component at the project's tiny test sizes (seconds on a CPU).

:class:`TreeConfigs` groups one configuration per component; :func:`tree_configs` gives them at the tiny
sizes (here) or at the release's true sizes (:mod:`portrait.testing.real_configs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LAYOUTS = ("portrait", "dice-talk")
#: ``tiny``: the test sizes (a tree of ~10 MB); ``real``: the release's true sizes (a tree of ~12 GB).
SIZES = ("tiny", "real")
PRIOR_DIM = 256
PRIOR_STD = 0.85


def tiny_unet_config() -> dict[str, Any]:
    """Constructor arguments of the tiny (Portrait)UNet (without the adapter arguments)."""
    return {
        "block_out_channels": (32, 64),
        "down_block_types": ("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        "up_block_types": ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        "layers_per_block": 1,
        "num_attention_heads": (2, 4),
        "cross_attention_dim": 32,
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 24,
    }


def tiny_vae_config() -> dict[str, Any]:
    """Constructor arguments of the tiny ``AutoencoderKLTemporalDecoder`` (4 blocks → scale factor 8)."""
    return {
        "block_out_channels": (32, 32, 64, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "layers_per_block": 1,
    }


def tiny_clip_config() -> dict[str, Any]:
    """``CLIPVisionConfig`` arguments (image_size must stay 224: the CLIP preprocessing is fixed)."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 224,
        "patch_size": 32,
        "projection_dim": 32,
    }


def tiny_whisper_config() -> dict[str, Any]:
    """``WhisperConfig`` arguments: d_model 16, 2 encoder layers (3 hidden states), 80 mel bins."""
    return {
        "d_model": 16,
        "encoder_layers": 2,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "num_mel_bins": 80,
        "max_source_positions": 1500,
        "max_target_positions": 32,
        "vocab_size": 64,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "decoder_start_token_id": 1,
        "begin_suppress_tokens": None,
        "suppress_tokens": None,
    }


def tiny_audio_projector_config() -> dict[str, Any]:
    """``AudioProjector`` arguments matching the tiny Whisper (3 hidden states × 16 channels)."""
    return {
        "seq_len": 10,
        "blocks": 3,
        "channels": 16,
        "intermediate_dim": 32,
        "output_dim": 32,
        "context_tokens": 4,
    }


def tiny_emotion_config() -> dict[str, Any]:
    """``EmotionModel`` arguments (prior_dim stays 256, the release prior width)."""
    return {
        "prior_dim": PRIOR_DIM,
        "dim": 32,
        "intermediate_dim": 32,
        "context_tokens": 4,
        "codebook_size": 8,
        "num_heads": 8,
    }


def tiny_pose_guider_config() -> dict[str, Any]:
    """``PoseGuider`` arguments (32 output channels = the tiny UNet's first block)."""
    return {
        "conditioning_embedding_channels": 32,
        "conditioning_channels": 3,
        "block_out_channels": (4, 8, 8, 16),
    }


def svd_xt_scheduler_config() -> dict[str, Any]:
    """The SVD-XT ``scheduler/scheduler_config.json`` (compat §6.6), as the release ships it."""
    return {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.24.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "sigma_max": 700.0,
        "sigma_min": 0.002,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "timestep_type": "continuous",
        "trained_betas": None,
        "use_karras_sigmas": True,
    }


#: Tiny stand-in for the release's unused emotion classifier (1280 → 512 → 256 → 22 there).
TINY_CLASSIFIER_SHAPES: dict[str, tuple[int, ...]] = {
    "classifier.fc1.weight": (8, 40),
    "classifier.fc1.bias": (8,),
    "classifier.fc2.weight": (6, 8),
    "classifier.fc2.bias": (6,),
    "classifier.fc3.weight": (22, 6),
    "classifier.fc3.bias": (22,),
}


@dataclass(frozen=True)
class TreeConfigs:
    """Constructor arguments of every component of a random tree at one size.

    ``image_encoder`` and ``audio_encoder`` are ``CLIPVisionConfig`` / ``WhisperConfig`` arguments; the
    others are the keyword arguments of the component's class (the UNet's without the adapter arguments,
    so the same dict builds diffusers' SVD UNet).
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    image_encoder: dict[str, Any]
    audio_encoder: dict[str, Any]
    audio_projector: dict[str, Any]
    emotion_model: dict[str, Any]
    pose_guider: dict[str, Any]
    interpolation: dict[str, Any]
    emotion_classifier: dict[str, Any]


def tiny_configs() -> TreeConfigs:
    """Every component at the tiny test sizes."""
    return TreeConfigs(
        unet=tiny_unet_config(),
        vae=tiny_vae_config(),
        image_encoder=tiny_clip_config(),
        audio_encoder=tiny_whisper_config(),
        audio_projector=tiny_audio_projector_config(),
        emotion_model=tiny_emotion_config(),
        pose_guider=tiny_pose_guider_config(),
        interpolation={"channels": 8},
        emotion_classifier={"in_channels": 40, "hidden_dims": [8, 6], "num_classes": 22},
    )


def tree_configs(size: str) -> TreeConfigs:
    """The configurations at ``size`` (one of :data:`SIZES`).

    Raises:
        ValueError: unknown size.
    """
    if size == "tiny":
        return tiny_configs()
    if size == "real":
        from portrait.testing.real_configs import real_configs

        return real_configs()
    raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")


def classifier_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key → shape of the ``classifier.*`` tensors of ``emo_model.pth`` for a classifier ``config``."""
    first, second = config["hidden_dims"]
    dims = [config["in_channels"], first, second, config["num_classes"]]
    shapes: dict[str, tuple[int, ...]] = {}
    for index in range(3):
        shapes[f"classifier.fc{index + 1}.weight"] = (dims[index + 1], dims[index])
        shapes[f"classifier.fc{index + 1}.bias"] = (dims[index + 1],)
    return shapes
