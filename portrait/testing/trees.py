"""Tiny seeded random weight trees for tests: every component at the project's tiny sizes.

:func:`write_tiny_weights` writes either our own layout (``layout="portrait"``, see :mod:`portrait.layout`)
or the DICE-Talk research release layout (``layout="dice-talk"``, compat §8) that
:func:`portrait.weights.convert.convert_dice_talk` converts. Both layouts hold the *same* random values:

* the adapters (AudioProjector, EmotionModel, PoseGuider) and the trained UNet (``unet.pth``) are float32;
* the VAE and the CLIP image encoder are drawn in float32 and rounded through float16, so the release
  tree stores them as **real float16** in its ``*.fp16.safetensors`` files (as the release does) while
  the portrait tree stores the same values in float32; converting the release tree with ``dtype="fp32"``
  therefore reproduces the portrait tree tensor for tensor;
* the release's SVD base UNet (``unet/diffusion_pytorch_model.fp16.safetensors``) holds *different*
  random values (float16, no adapter keys): ``unet.pth`` overlays all of them, as in the release.

Every parameter is redrawn from a generator seeded with ``seed`` and the component name, including the
zero-initialised ones (PoseGuider ``conv_out``), with fan-in scaling so activations stay O(1). The same seed
gives byte-identical safetensors files.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from portrait.layout import EMOTION_PRIOR_KEY, EMOTIONS_DIR, RELEASE_EMOTIONS
from portrait.testing.configs import (
    LAYOUTS,
    PRIOR_DIM,
    PRIOR_STD,
    TINY_CLASSIFIER_SHAPES,
    svd_xt_scheduler_config,
    tiny_audio_projector_config,
    tiny_clip_config,
    tiny_emotion_config,
    tiny_pose_guider_config,
    tiny_unet_config,
    tiny_vae_config,
    tiny_whisper_config,
)

logger = logging.getLogger(__name__)


def _generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a stable hash of ``name`` (independent streams)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _random_like(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A float32 random tensor for parameter ``name``: fan-in scaled weights, near-1 scales, small biases."""
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return noise / fan_in**0.5
    if name.endswith("bias"):
        return 0.1 * noise
    return 1.0 + 0.1 * noise  # norm scales, mix factors, class embeddings


@torch.no_grad()
def randomize_(module: nn.Module, seed: int, name: str, fp16_values: bool = False) -> nn.Module:
    """Redraw every floating parameter of ``module`` in place (deterministic in ``seed`` and ``name``).

    Args:
        module: any module; buffers are left alone.
        seed: base seed.
        name: component name mixed into the seed.
        fp16_values: round the values through float16 (they stay float32 tensors).
    """
    gen = _generator(seed, name)
    for pname, param in module.named_parameters():
        if param.is_floating_point():
            value = _random_like(pname, tuple(param.shape), gen)
            if fp16_values:
                value = value.half().float()
            param.copy_(value)
    return module


def emotion_priors(seed: int, dim: int = PRIOR_DIM) -> dict[str, np.ndarray]:
    """One float32 ``(1, dim)`` prior per release emotion: zero mean per vector, std ``PRIOR_STD``."""
    gen = _generator(seed, "emotions")
    priors = {}
    for name in RELEASE_EMOTIONS:
        mu = torch.randn(1, dim, generator=gen, dtype=torch.float64)
        mu = (mu - mu.mean()) / mu.std(unbiased=False) * PRIOR_STD
        priors[name] = mu.to(torch.float32).numpy()
    return priors


def _build_models(seed: int) -> dict[str, Any]:
    """Every tiny component with seeded random weights (shared by both layouts)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, WhisperConfig, WhisperModel

    from portrait.models.audio import AudioProjector
    from portrait.models.emotion_model import EmotionModel
    from portrait.models.interpolation import IFNet
    from portrait.models.pose_guider import PoseGuider
    from portrait.models.unet import PortraitUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # construction-time init is overwritten, but keep the global RNG untouched
        models = {
            "unet": randomize_(PortraitUNet(**tiny_unet_config()), seed, "unet"),
            "svd_unet": randomize_(UNetSpatioTemporalConditionModel(**tiny_unet_config()), seed, "svd_unet"),
            "vae": randomize_(
                AutoencoderKLTemporalDecoder(**tiny_vae_config()), seed, "vae", fp16_values=True
            ),
            "image_encoder": randomize_(
                CLIPVisionModelWithProjection(CLIPVisionConfig(**tiny_clip_config())),
                seed,
                "image_encoder",
                fp16_values=True,
            ),
            "audio_encoder": randomize_(
                WhisperModel(WhisperConfig(**tiny_whisper_config())), seed, "audio_encoder"
            ),
            "audio_projector": randomize_(
                AudioProjector(**tiny_audio_projector_config()), seed, "audio_projector"
            ),
            "emotion_model": randomize_(EmotionModel(**tiny_emotion_config()), seed, "emotion_model"),
            "pose_guider": randomize_(PoseGuider(**tiny_pose_guider_config()), seed, "pose_guider"),
            "interpolation": randomize_(IFNet(channels=8), seed, "interpolation"),
        }
    for model in models.values():
        model.eval()
    return models


def _feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80)


def _write_emotion_classifier(root: Path, seed: int) -> None:
    """The optional ``emotion_classifier/`` holding the tiny release tensors (what the converter keeps)."""
    from portrait.models.emotion_classifier import EmotionClassifier

    tensors = {k.removeprefix("classifier."): v for k, v in _classifier_tensors(seed).items()}
    config = {"in_channels": 40, "hidden_dims": [8, 6], "num_classes": 22}  # TINY_CLASSIFIER_SHAPES
    with torch.random.fork_rng(devices=[]):
        model = EmotionClassifier(**config)
    model.load_state_dict(tensors, strict=True)
    model.save_pretrained(root / "emotion_classifier", safe_serialization=True)


def _write_portrait(root: Path, models: dict[str, Any], priors: dict[str, np.ndarray], seed: int = 0) -> None:
    from diffusers import EulerDiscreteScheduler
    from safetensors.torch import save_file

    from portrait.weights.manifest import write_manifest

    for name in ("unet", "vae", "audio_projector", "emotion_model", "pose_guider", "interpolation"):
        models[name].save_pretrained(root / name, safe_serialization=True)
    for name in ("image_encoder", "audio_encoder"):
        models[name].save_pretrained(root / name)
    _write_emotion_classifier(root, seed)
    _feature_extractor().save_pretrained(root / "audio_encoder")
    EulerDiscreteScheduler.from_config(svd_xt_scheduler_config()).save_pretrained(root / "scheduler")
    (root / EMOTIONS_DIR).mkdir()
    for name, mu in priors.items():
        save_file({EMOTION_PRIOR_KEY: torch.from_numpy(mu)}, root / EMOTIONS_DIR / f"{name}.safetensors")
    write_manifest(root)


def _classifier_tensors(seed: int) -> dict[str, torch.Tensor]:
    gen = _generator(seed, "classifier")
    return {k: _random_like(k, shape, gen) for k, shape in TINY_CLASSIFIER_SHAPES.items()}


def _write_dice_talk(root: Path, models: dict[str, Any], priors: dict[str, np.ndarray], seed: int) -> None:
    from transformers import WhisperForConditionalGeneration

    release = root / "DICE-Talk"
    release.mkdir()
    torch.save(models["unet"].state_dict(), release / "unet.pth")
    torch.save(models["pose_guider"].state_dict(), release / "pose_guider.pth")
    torch.save(models["audio_projector"].state_dict(), release / "audio_linear.pth")
    torch.save(
        {**models["emotion_model"].state_dict(), **_classifier_tensors(seed)}, release / "emo_model.pth"
    )

    (root / "RIFE").mkdir()  # the release pickles RIFE with a DataParallel "module." prefix (compat §7.1)
    torch.save(
        {f"module.{k}": v for k, v in models["interpolation"].state_dict().items()},
        root / "RIFE" / "flownet.pkl",
    )

    svd = root / "stable-video-diffusion-img2vid-xt"
    models["svd_unet"].half().save_pretrained(svd / "unet", variant="fp16")
    models["vae"].half().save_pretrained(svd / "vae", variant="fp16")
    models["image_encoder"].half().save_pretrained(svd / "image_encoder", variant="fp16")
    (svd / "scheduler").mkdir(parents=True)
    (svd / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(svd_xt_scheduler_config(), indent=2) + "\n"
    )

    # The public whisper-tiny checkpoint is a WhisperForConditionalGeneration ("model." key prefix).
    with torch.random.fork_rng(devices=[]):  # its construction-time init is overwritten just below
        whisper = WhisperForConditionalGeneration(models["audio_encoder"].config)
    whisper.model.load_state_dict(models["audio_encoder"].state_dict())
    whisper.save_pretrained(root / "whisper-tiny")
    _feature_extractor().save_pretrained(root / "whisper-tiny")

    emo_dir = root / "examples" / "emo"
    emo_dir.mkdir(parents=True)
    for name, mu in priors.items():
        # The release format: a 0-d object array holding {'mu': (1, 256) float32}, pickled by np.save.
        np.save(emo_dir / f"{name}.npy", np.array({"mu": mu}, dtype=object))


def write_tiny_landmark_guider(root: Path, seed: int = 0) -> Path:
    """Add a tiny **non-zero** ``landmark_guider/`` to a portrait tree (and refresh its manifest).

    Every parameter is redrawn (``conv_out`` included), so the guider changes the output: the test
    stand-in for a fine-tuned guider. Returns the component folder.
    """
    from portrait.models.landmark_guider import LandmarkGuider
    from portrait.weights.manifest import write_manifest

    with torch.random.fork_rng(devices=[]):
        guider = randomize_(LandmarkGuider(**tiny_pose_guider_config()), seed, "landmark_guider")
    folder = Path(root) / "landmark_guider"
    guider.save_pretrained(folder, safe_serialization=True)
    write_manifest(Path(root))
    return folder


def tiny_emotion_embedder_config() -> dict[str, Any]:
    """``EmotionEmbedder`` arguments matching the tiny Whisper (3 states of 16) and fer's 7 classes."""
    return {"audio_blocks": 3, "audio_channels": 16, "visual_dim": 7, "dim": 16, "heads": 2, "bank_size": 8}


def write_tiny_emotion_embedder(root: Path, seed: int = 0) -> Path:
    """Add a tiny random ``emotion_embedder/`` (config.json + model.safetensors) to a portrait tree and
    refresh its manifest; the test stand-in for a trained embedder. Returns the component folder."""
    from safetensors.torch import save_file

    from portrait.models.emotion_embedder import EmotionEmbedder
    from portrait.weights.manifest import write_manifest

    with torch.random.fork_rng(devices=[]):
        model = randomize_(EmotionEmbedder(**tiny_emotion_embedder_config()), seed, "emotion_embedder")
    folder = Path(root) / "emotion_embedder"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(dict(model.config), indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    write_manifest(Path(root))
    return folder


def write_tiny_weights(root: Path, layout: str = "portrait", seed: int = 0) -> Path:
    """Write a complete tiny random weights tree.

    Args:
        root: folder to write into; created if missing, must be empty.
        layout: ``"portrait"`` (our tree: one folder per component, ``emotions/``, ``manifest.json``) or
            ``"dice-talk"`` (``DICE-Talk/*.pth``, ``stable-video-diffusion-img2vid-xt/``, ``whisper-tiny/``,
            ``examples/emo/*.npy``: the release layout, compat §8).
        seed: weights and priors are a pure function of it.

    Returns:
        ``root``.

    Raises:
        ValueError: unknown layout or non-empty ``root``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty; write the tiny weights into a new folder")
    root.mkdir(parents=True, exist_ok=True)
    models = _build_models(seed)
    priors = emotion_priors(seed)
    if layout == "portrait":
        _write_portrait(root, models, priors, seed)
    else:
        _write_dice_talk(root, models, priors, seed)
    logger.info("wrote tiny %s weights (seed %d) to %s", layout, seed, root)
    return root
