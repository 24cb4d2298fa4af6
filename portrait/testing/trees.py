"""Seeded random weight trees for tests and rehearsals: every component at the tiny or the true sizes.

:func:`write_weights` writes either our own layout (``layout="portrait"``, see :mod:`portrait.layout`)
or the DICE-Talk research release layout (``layout="dice-talk"``, compat §8) that
:func:`portrait.weights.convert.convert_dice_talk` converts, at the tiny test sizes (``size="tiny"``,
:func:`write_tiny_weights`) or at the release's true sizes (``size="real"``, about 12 GB; see
:mod:`portrait.testing.real_configs`). Both layouts hold the *same* random values:

* the adapters (AudioProjector, EmotionModel, PoseGuider) and the trained UNet (``unet.pth``) are float32;
* the VAE and the CLIP image encoder are drawn in float32 and rounded through float16, so the release
  tree stores them as **real float16** in its ``*.fp16.safetensors`` files (as the release does) while
  the portrait tree stores the same values in float32; converting the release tree with ``dtype="fp32"``
  therefore reproduces the portrait tree tensor for tensor;
* the release's SVD base UNet (``unet/diffusion_pytorch_model.fp16.safetensors``) holds *different*
  random values (float16, no adapter keys): ``unet.pth`` overlays all of them, as in the release.

Every parameter is redrawn from a generator seeded with ``seed`` and the component name, including the
zero-initialised ones (PoseGuider ``conv_out``), with fan-in scaling so activations stay O(1). The same seed
gives byte-identical safetensors files. Components are built on the meta device and written one at a time
(:mod:`portrait.testing.components`): writing holds at most one component in memory.
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from portrait.layout import EMOTION_PRIOR_KEY, EMOTIONS_DIR, RELEASE_EMOTIONS
from portrait.testing.components import (
    _generator,
    classifier_tensors,
    parameter_bytes,
    random_component,
    randomize_,
)
from portrait.testing.configs import (
    LAYOUTS,
    PRIOR_DIM,
    PRIOR_STD,
    SIZES,
    TreeConfigs,
    svd_xt_scheduler_config,
    tiny_pose_guider_config,
    tree_configs,
)

logger = logging.getLogger(__name__)


def emotion_priors(seed: int, dim: int = PRIOR_DIM) -> dict[str, np.ndarray]:
    """One float32 ``(1, dim)`` prior per release emotion: zero mean per vector, std ``PRIOR_STD``."""
    gen = _generator(seed, "emotions")
    priors = {}
    for name in RELEASE_EMOTIONS:
        mu = torch.randn(1, dim, generator=gen, dtype=torch.float64)
        mu = (mu - mu.mean()) / mu.std(unbiased=False) * PRIOR_STD
        priors[name] = mu.to(torch.float32).numpy()
    return priors


def _write_component(name: str, configs: TreeConfigs, seed: int, write: Callable[[nn.Module], None]) -> None:
    """Build one random component, ``write(component)`` it and free it before returning (the caller never
    holds it: the next component is built without this one in memory)."""
    started = time.perf_counter()
    model = random_component(name, configs, seed)
    size = parameter_bytes(model)
    write(model)
    del model
    gc.collect()
    logger.info("wrote %s (%.2f GB float32) in %.1f s", name, size / 1e9, time.perf_counter() - started)


def _feature_extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(feature_size=80)


def _write_emotion_classifier(root: Path, configs: TreeConfigs, seed: int) -> None:
    """The optional ``emotion_classifier/``: the release's classifier tensors (what the converter keeps)."""
    from portrait.models.emotion_classifier import EmotionClassifier

    config = configs.emotion_classifier
    tensors = {k.removeprefix("classifier."): v for k, v in classifier_tensors(config, seed).items()}
    with torch.device("meta"):
        model = EmotionClassifier(**config)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.save_pretrained(root / "emotion_classifier", safe_serialization=True)


def _write_portrait(root: Path, configs: TreeConfigs, priors: dict[str, np.ndarray], seed: int) -> None:
    from diffusers import EulerDiscreteScheduler
    from safetensors.torch import save_file

    from portrait.weights.manifest import write_manifest

    for name in ("unet", "vae", "audio_projector", "emotion_model", "pose_guider", "interpolation"):
        _write_component(
            name, configs, seed, lambda m, d=root / name: m.save_pretrained(d, safe_serialization=True)
        )
    for name in ("image_encoder", "audio_encoder"):
        _write_component(name, configs, seed, lambda m, d=root / name: m.save_pretrained(d))
    _write_emotion_classifier(root, configs, seed)
    _feature_extractor().save_pretrained(root / "audio_encoder")
    EulerDiscreteScheduler.from_config(svd_xt_scheduler_config()).save_pretrained(root / "scheduler")
    (root / EMOTIONS_DIR).mkdir()
    for name, mu in priors.items():
        save_file({EMOTION_PRIOR_KEY: torch.from_numpy(mu)}, root / EMOTIONS_DIR / f"{name}.safetensors")
    write_manifest(root)


def _write_release_checkpoints(release: Path, configs: TreeConfigs, seed: int) -> None:
    """``DICE-Talk/{unet,pose_guider,audio_linear,emo_model}.pth`` and ``RIFE/flownet.pkl`` (float32)."""
    release.mkdir()
    for name, file in (("unet", "unet"), ("pose_guider", "pose_guider"), ("audio_projector", "audio_linear")):
        _write_component(
            name, configs, seed, lambda m, f=release / f"{file}.pth": torch.save(m.state_dict(), f)
        )
    classifier = classifier_tensors(configs.emotion_classifier, seed)
    _write_component(
        "emotion_model", configs, seed,
        lambda m: torch.save({**m.state_dict(), **classifier}, release / "emo_model.pth"),
    )  # fmt: skip
    rife = release.parent / "RIFE"
    rife.mkdir()  # the release pickles RIFE with a DataParallel "module." prefix (compat §7.1)
    _write_component(
        "interpolation", configs, seed,
        lambda m: torch.save({f"module.{k}": v for k, v in m.state_dict().items()}, rife / "flownet.pkl"),
    )  # fmt: skip


def _save_whisper_tiny(encoder: nn.Module, folder: Path) -> None:
    """``encoder`` (a WhisperModel) saved as the public whisper-tiny checkpoint: a
    WhisperForConditionalGeneration (``model.`` key prefix) whose output projection is the tied embedding."""
    from transformers import WhisperForConditionalGeneration

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        whisper = WhisperForConditionalGeneration(encoder.config)
    whisper.model = encoder
    whisper.proj_out.weight = encoder.decoder.embed_tokens.weight
    whisper.save_pretrained(folder)


def _write_dice_talk(root: Path, configs: TreeConfigs, priors: dict[str, np.ndarray], seed: int) -> None:
    _write_release_checkpoints(root / "DICE-Talk", configs, seed)
    svd = root / "stable-video-diffusion-img2vid-xt"
    for name, folder in (("svd_unet", "unet"), ("vae", "vae"), ("image_encoder", "image_encoder")):
        _write_component(
            name, configs, seed, lambda m, d=svd / folder: m.half().save_pretrained(d, variant="fp16")
        )
    (svd / "scheduler").mkdir(parents=True)
    (svd / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(svd_xt_scheduler_config(), indent=2) + "\n"
    )
    _write_component("audio_encoder", configs, seed, lambda m: _save_whisper_tiny(m, root / "whisper-tiny"))
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


def write_weights(root: Path, layout: str = "portrait", seed: int = 0, size: str = "tiny") -> Path:
    """Write a complete random weights tree, one component at a time.

    Args:
        root: folder to write into; created if missing, must be empty.
        layout: ``"portrait"`` (our tree: one folder per component, ``emotions/``, ``manifest.json``) or
            ``"dice-talk"`` (``DICE-Talk/*.pth``, ``stable-video-diffusion-img2vid-xt/``, ``whisper-tiny/``,
            ``examples/emo/*.npy``: the release layout, compat §8).
        seed: weights and priors are a pure function of it.
        size: ``"tiny"`` (the test sizes, ~10 MB) or ``"real"`` (the release's true sizes: ~12 GB of
            files in the DICE-Talk layout; about 7 GB of memory at the peak, the float32 UNet).

    Returns:
        ``root``.

    Raises:
        ValueError: unknown layout or size, or a non-empty ``root``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} is not empty; write the weights into a new folder")
    root.mkdir(parents=True, exist_ok=True)
    configs = tree_configs(size)
    priors = emotion_priors(seed)
    if layout == "portrait":
        _write_portrait(root, configs, priors, seed)
    else:
        _write_dice_talk(root, configs, priors, seed)
    logger.info("wrote %s %s weights (seed %d) to %s", size, layout, seed, root)
    return root


def write_tiny_weights(root: Path, layout: str = "portrait", seed: int = 0) -> Path:
    """Write a complete tiny random weights tree (:func:`write_weights` at the tiny test sizes)."""
    return write_weights(root, layout, seed, size="tiny")
