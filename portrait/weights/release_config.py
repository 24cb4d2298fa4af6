"""Module sizes of the DICE-Talk release inferred from its tensor shapes (compat §2.3, 3, 5).

The release files carry no configs: each ``*_config`` function reads the shapes of a state dict (see
:func:`portrait.weights.release.load_pth`) and returns the constructor arguments of our module, which
:mod:`portrait.weights.convert` then checks key by key against a model built on the meta device.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from portrait.errors import WeightsError
from portrait.weights.release import StateDict

#: Head count of the release ``EmotionModel`` attention (a constant of the reference code, not in the file).
EMOTION_NUM_HEADS = 8
#: Tokens per adapter stream (audio, emotion) of the release UNet (constants of the reference code).
ADAPTER_TOKENS = (32, 32)
ADAPTER_SCALES = (1.0, 1.0)
#: Config keys of a diffusers config file that are bookkeeping, not constructor arguments.
_CONFIG_BOOKKEEPING = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")


def require_shape(tensors: Mapping[str, torch.Tensor], key: str, file: Path, ndim: int) -> torch.Size:
    """Shape of ``tensors[key]`` with ``ndim`` axes, or a WeightsError naming the key and file."""
    if key not in tensors:
        raise WeightsError(
            f"{file}: missing key {key}; the file is incomplete or not the expected release file"
        )
    shape = tensors[key].shape
    if len(shape) != ndim:
        raise WeightsError(f"{file}: key {key} has shape {tuple(shape)}, expected {ndim} dimensions")
    return shape


def _exact_div(num: int, den: int, what: str, file: Path) -> int:
    if den <= 0 or num % den:
        raise WeightsError(f"{file}: cannot infer {what}: {num} is not a multiple of {den}")
    return num // den


def audio_projector_config(tensors: StateDict, file: Path, whisper: Mapping[str, Any]) -> dict[str, Any]:
    """``AudioProjector`` arguments from ``audio_linear.pth`` shapes and the Whisper config (compat §2.3).

    ``channels = d_model``, ``blocks = encoder_layers + 1``, ``seq_len = in_features / (blocks·channels)``,
    ``output_dim = norm.weight`` size, ``context_tokens = proj3.out / output_dim``.
    """
    intermediate, in_features = require_shape(tensors, "proj1.weight", file, 2)
    output_dim = require_shape(tensors, "norm.weight", file, 1)[0]
    proj3_out = require_shape(tensors, "proj3.weight", file, 2)[0]
    channels, blocks = int(whisper["d_model"]), int(whisper["encoder_layers"]) + 1
    return {
        "seq_len": _exact_div(
            in_features, blocks * channels, "seq_len (proj1 in / (Whisper layers+1)·d_model)", file
        ),
        "blocks": blocks,
        "channels": channels,
        "intermediate_dim": intermediate,
        "output_dim": output_dim,
        "context_tokens": _exact_div(proj3_out, output_dim, "context_tokens (proj3 out / norm size)", file),
    }


def emotion_model_config(tensors: StateDict, file: Path) -> dict[str, Any]:
    """``EmotionModel`` arguments from ``emo_model.pth`` shapes (compat §3); ``num_heads`` is always 8."""
    intermediate, prior_dim = require_shape(tensors, "emo_linear.proj1.weight", file, 2)
    dim = require_shape(tensors, "emo_linear.norm.weight", file, 1)[0]
    proj3_out = require_shape(tensors, "emo_linear.proj3.weight", file, 2)[0]
    codebook_size = require_shape(tensors, "codebook.codebook.weight", file, 2)[0]
    if dim % EMOTION_NUM_HEADS:
        raise WeightsError(f"{file}: emotion token width {dim} is not divisible by {EMOTION_NUM_HEADS} heads")
    return {
        "prior_dim": prior_dim,
        "dim": dim,
        "intermediate_dim": intermediate,
        "context_tokens": _exact_div(
            proj3_out, dim, "context_tokens (emo_linear.proj3 out / norm size)", file
        ),
        "codebook_size": codebook_size,
        "num_heads": EMOTION_NUM_HEADS,
    }


def pose_guider_config(tensors: StateDict, file: Path) -> dict[str, Any]:
    """``PoseGuider`` arguments from ``pose_guider.pth`` shapes (compat §5): conv_in, blocks.{i}, conv_out."""
    first, cond_channels = require_shape(tensors, "conv_in.weight", file, 4)[:2]
    widths = [first]
    index = 1
    while f"blocks.{index}.weight" in tensors:
        widths.append(require_shape(tensors, f"blocks.{index}.weight", file, 4)[0])
        index += 2
    embedding = require_shape(tensors, "conv_out.weight", file, 4)[0]
    return {"conditioning_embedding_channels": embedding, "conditioning_channels": cond_channels,
            "block_out_channels": widths}  # fmt: skip


def unet_config(base: Mapping[str, Any]) -> dict[str, Any]:
    """``PortraitUNet`` arguments: the SVD ``unet/config.json`` plus the release adapter constants."""
    config = {k: v for k, v in base.items() if k not in _CONFIG_BOOKKEEPING}
    config["adapter_scales"] = list(ADAPTER_SCALES)
    config["adapter_tokens"] = list(ADAPTER_TOKENS)
    return config
