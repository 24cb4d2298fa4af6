"""Configurations of every component at the release's true sizes (public facts; a few GB per component).

* UNet: SVD-XT's ``unet/config.json`` equals diffusers' ``UNetSpatioTemporalConditionModel()`` defaults
  (compat §4.1: 1 524 623 082 parameters; 1 626 859 242 with the DICE-Talk adapters);
* VAE: SVD-XT's temporal VAE, which is **not** ``AutoencoderKLTemporalDecoder()``'s defaults (one block of
  64 channels there): four ``DownEncoderBlock2D`` of 128, 256, 512, 512 channels, two layers each;
* image encoder: CLIP ViT-H/14 (hidden 1280, 32 layers, 16 heads, MLP 5120, patch 14, image 224,
  projection 1024);
* audio encoder: ``openai/whisper-tiny`` (d_model 384, 4 + 4 layers, 6 heads, 80 mel bins);
* adapters, pose guider, emotion model and classifier, RIFE: the shapes of the release checkpoints
  (compat §2.3, 3, 5, 7.1), i.e. what :mod:`portrait.weights.release_config` infers from those files.
"""

from __future__ import annotations

from typing import Any

from portrait.testing.configs import PRIOR_DIM, TreeConfigs


def real_unet_config() -> dict[str, Any]:
    """SVD-XT's UNet: diffusers' class defaults (only ``sample_size`` 96 is spelled out, as the file has)."""
    return {"sample_size": 96}


def real_vae_config() -> dict[str, Any]:
    """SVD-XT's ``vae/config.json`` (``AutoencoderKLTemporalDecoder``)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
        "scaling_factor": 0.18215,
        "force_upcast": True,
    }


def real_clip_config() -> dict[str, Any]:
    """SVD-XT's ``image_encoder/config.json``: CLIP ViT-H/14 vision tower with its 1024-d projection."""
    return {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "projection_dim": 1024,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
    }


def real_whisper_config() -> dict[str, Any]:
    """``openai/whisper-tiny``'s ``config.json`` (structure and token ids; the suppress list left out)."""
    return {
        "d_model": 384,
        "encoder_layers": 4,
        "decoder_layers": 4,
        "encoder_attention_heads": 6,
        "decoder_attention_heads": 6,
        "encoder_ffn_dim": 1536,
        "decoder_ffn_dim": 1536,
        "num_mel_bins": 80,
        "max_source_positions": 1500,
        "max_target_positions": 448,
        "vocab_size": 51865,
        "pad_token_id": 50257,
        "bos_token_id": 50257,
        "eos_token_id": 50257,
        "decoder_start_token_id": 50258,
        "begin_suppress_tokens": [220, 50257],
        "suppress_tokens": None,
        "architectures": ["WhisperForConditionalGeneration"],
    }


def real_configs() -> TreeConfigs:
    """Every component at the release sizes (the sizes ``release_config`` infers from the release files)."""
    return TreeConfigs(
        unet=real_unet_config(),
        vae=real_vae_config(),
        image_encoder=real_clip_config(),
        audio_encoder=real_whisper_config(),
        # audio_linear.pth: Linear(10·5·384 → 1024) → 1024 → 32·1024, LayerNorm(1024) (compat §2.3)
        audio_projector={"seq_len": 10, "blocks": 5, "channels": 384, "intermediate_dim": 1024,
                         "output_dim": 1024, "context_tokens": 32},
        # emo_model.pth: 256-d priors → 32 tokens of 1024, a 64-entry codebook, 8 heads (compat §3)
        emotion_model={"prior_dim": PRIOR_DIM, "dim": 1024, "intermediate_dim": 1024, "context_tokens": 32,
                       "codebook_size": 64, "num_heads": 8},
        # pose_guider.pth: 3 → 16, 32, 96, 256 → 320 channels at 1/8 resolution (compat §5)
        pose_guider={"conditioning_embedding_channels": 320, "conditioning_channels": 3,
                     "block_out_channels": (16, 32, 96, 256)},
        interpolation={"channels": 90},  # RIFE HDv3 flownet.pkl (compat §7.1)
        # emo_model.pth's unused classifier.*: 1280 → 512 → 256 → 22
        emotion_classifier={"in_channels": 1280, "hidden_dims": [512, 256], "num_classes": 22},
    )  # fmt: skip
