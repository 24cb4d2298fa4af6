"""The engine: every model of a render loaded once (pipeline, audio features, face detector, interpolator,
emotion bank), with the device/dtype choice and the run-time options (offload tier, compile)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from portrait.config import RenderConfig
from portrait.errors import HINT_USE_CPU, InputError, WeightsError
from portrait.layout import AUDIO_PREPROCESSOR_FILE
from portrait.pipeline import PortraitPipeline
from portrait.preprocess.detectors import FaceDetector, detector_from_name
from portrait.weights.load import (
    has_component,
    load_component,
    load_emotion_bank,
    load_pipeline,
    resolve_weights_root,
    torch_dtype,
)

logger = logging.getLogger(__name__)


@dataclass
class Engine:
    """Everything loaded once per process: pipeline, audio features, detector, interpolator, emotion bank."""

    pipe: PortraitPipeline
    feature_extractor: Any
    detector: FaceDetector | None
    interpolator: torch.nn.Module | None
    bank: dict[str, torch.Tensor]
    weights_root: Path
    device: torch.device
    dtype: torch.dtype
    #: The optional learned audio-visual emotion embedder (``emotion_embedder/``, float32), or None.
    emotion_embedder: torch.nn.Module | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available", hint=HINT_USE_CPU)
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` → fp16 on CUDA (the reference), fp32 on CPU."""
    if name == "auto":
        return torch_dtype("fp16" if device.type == "cuda" else "fp32")
    return torch_dtype(name)


def load_engine(cfg: RenderConfig, detector: str | FaceDetector = "auto") -> Engine:
    """Load every component named by ``cfg.runtime`` (weights root, device, dtype) once.

    ``detector``: a detector name (see ``detector_from_name``) or an already built detector.
    """
    from transformers import WhisperFeatureExtractor

    root = resolve_weights_root(cfg.runtime.weights)
    device = resolve_device(cfg.runtime.device)
    dtype = resolve_dtype(cfg.runtime.dtype, device)
    offload = cfg.runtime.offload != "none" and device.type == "cuda"
    pipe = load_pipeline(root, device="cpu" if offload else device, dtype=dtype)
    if has_component(root, "landmark_guider"):  # optional: steers the head from --motion
        guider = load_component("landmark_guider", root, "cpu" if offload else device, dtype)
        pipe.register_modules(landmark_guider=guider)
    apply_runtime_options(pipe, cfg.runtime.offload if offload else "none", cfg.runtime.compile, device)
    try:
        extractor = WhisperFeatureExtractor.from_pretrained((root / AUDIO_PREPROCESSOR_FILE).parent)
    except OSError as err:
        raise WeightsError(f"cannot read {root / AUDIO_PREPROCESSOR_FILE}: {err}") from err
    interpolator = None
    if cfg.video.interpolate:
        if has_component(root, "interpolation"):
            interpolator = load_component("interpolation", root, device, torch.float32)
        else:
            logger.warning("no frame-interpolation weights in %s/interpolation: writing 12.5 fps video", root)
    if isinstance(detector, str):
        detector = detector_from_name(detector, root, yolo_sha256=cfg.preprocess.yolo_sha256)
    embedder = None
    if has_component(root, "emotion_embedder"):  # optional: --emotion-from, docs/emotion.md
        embedder = load_component("emotion_embedder", root, device, torch.float32)
    return Engine(
        pipe,
        extractor,
        detector,
        interpolator,
        load_emotion_bank(root),
        root,
        device,
        dtype,
        embedder,
    )


def apply_runtime_options(
    pipe: PortraitPipeline, offload: str, compile_mode: str, device: torch.device
) -> None:
    """Memory tier (CPU offload) and torch.compile, both output-preserving."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    if compile_mode == "off":
        return
    # A persistent compile cache makes every later process start warm.
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "portrait" / "inductor"))
    if compile_mode == "blocks":
        pipe.unet.compile_repeated_blocks(fullgraph=True, dynamic=False)
    else:
        pipe.unet = torch.compile(pipe.unet, fullgraph=False, dynamic=False)
