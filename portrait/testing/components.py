"""Seeded random components, built one at a time: on the meta device, then materialised and drawn.

:func:`random_component` builds a component of a :class:`~portrait.testing.configs.TreeConfigs` on the meta
device (no memory, no initialisation), allocates it once on the target device and draws every floating
parameter from a generator seeded with ``seed`` and the component name (:func:`randomize_`). A true-size
tree is therefore written holding one component at a time, never the construction-time initialisation and
the random values together. The values do not depend on how the module was built; they are drawn on the CPU
except for a component materialised on a CUDA device (:func:`randomize_`).
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from torch import nn

from portrait.testing.configs import TreeConfigs, classifier_shapes

#: Component name → (config field of :class:`TreeConfigs`, whether its values are rounded through fp16).
#: ``svd_unet`` is the release's SVD base UNet (diffusers' class, no adapters); the others are tree names.
COMPONENTS: dict[str, tuple[str, bool]] = {
    "unet": ("unet", False),
    "svd_unet": ("unet", False),
    "vae": ("vae", True),
    "image_encoder": ("image_encoder", True),
    "audio_encoder": ("audio_encoder", False),
    "audio_projector": ("audio_projector", False),
    "emotion_model": ("emotion_model", False),
    "pose_guider": ("pose_guider", False),
    "interpolation": ("interpolation", False),
}


def _generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from ``seed`` and a stable hash of ``name`` (independent streams)."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _random_like(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A float32 random tensor for parameter ``name``: fan-in scaled weights, near-1 scales, small biases.

    Drawn on the generator's device.
    """
    noise = torch.randn(shape, generator=gen, dtype=torch.float32, device=gen.device)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return noise.div_(fan_in**0.5)
    if name.endswith("bias"):
        return noise.mul_(0.1)
    return noise.mul_(0.1).add_(1.0)  # norm scales, mix factors, class embeddings


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, name: str, fp16_values: bool = False) -> nn.Module:
    """Redraw every floating parameter of ``module`` in place (deterministic in ``seed`` and ``name``).

    The values are drawn on the CPU, except for a module on a CUDA device: there they are drawn by a
    generator of that device (other values, but a true-size UNet in a second instead of a minute).

    Args:
        module: any module; buffers are left alone.
        seed: base seed.
        name: component name mixed into the seed.
        fp16_values: round the values through float16 (they stay float32 tensors).
    """
    first = next(module.parameters(), None)
    on_cuda = first is not None and first.device.type == "cuda"
    gen = _generator(seed, name, first.device if on_cuda else "cpu")
    for pname, param in module.named_parameters():
        if param.is_floating_point():
            value = _random_like(pname, tuple(param.shape), gen)
            if fp16_values:
                value = value.half().float()
            param.copy_(value)
    return module


def classifier_tensors(config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """The ``classifier.*`` tensors of the release's ``emo_model.pth`` (random, float32) for ``config``."""
    gen = _generator(seed, "classifier")
    return {k: _random_like(k, shape, gen) for k, shape in classifier_shapes(config).items()}


def build_component(name: str, configs: TreeConfigs) -> nn.Module:
    """Construct component ``name`` of :data:`COMPONENTS` (on the current default device; no weights read).

    Raises:
        KeyError: unknown component name.
    """
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, WhisperConfig, WhisperModel

    from portrait.models.audio import AudioProjector
    from portrait.models.emotion_model import EmotionModel
    from portrait.models.interpolation import IFNet
    from portrait.models.pose_guider import PoseGuider
    from portrait.models.unet import PortraitUNet

    builders = {
        "unet": PortraitUNet,
        "svd_unet": UNetSpatioTemporalConditionModel,
        "vae": AutoencoderKLTemporalDecoder,
        "image_encoder": lambda **c: CLIPVisionModelWithProjection(CLIPVisionConfig(**c)),
        "audio_encoder": lambda **c: WhisperModel(WhisperConfig(**c)),
        "audio_projector": AudioProjector,
        "emotion_model": EmotionModel,
        "pose_guider": PoseGuider,
        "interpolation": IFNet,
    }
    field, _ = COMPONENTS[name]
    return builders[name](**getattr(configs, field))


def empty_component(name: str, configs: TreeConfigs) -> nn.Module:
    """Component ``name`` on the meta device: its architecture without memory or initialisation."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return build_component(name, configs)


def materialize_(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Allocate a meta-device ``module`` on ``device`` (values undefined) and fill its buffers.

    The only buffers of the components are transformers' non-persistent ``position_ids`` (0, 1, 2, ...).
    """
    module = module.to_empty(device=device)
    for buffer_name, buffer in module.named_buffers():
        if buffer_name.endswith("position_ids"):
            buffer.copy_(torch.arange(buffer.shape[-1], device=buffer.device).expand_as(buffer))
    return module


def random_component(
    name: str, configs: TreeConfigs, seed: int, device: torch.device | str = "cpu"
) -> nn.Module:
    """Component ``name`` with seeded random float32 weights on ``device``, in eval mode.

    The values are those of :func:`randomize_` with the component's name (rounded through float16 for the
    VAE and the image encoder, which the release stores in float16).
    """
    _, fp16_values = COMPONENTS[name]
    module = materialize_(empty_component(name, configs), device)
    return randomize_(module, seed, name, fp16_values=fp16_values).eval()


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the parameters and buffers of ``module``."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
