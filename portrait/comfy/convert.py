"""ComfyUI values ↔ portrait's inputs and outputs (pure conversions; nothing here imports ComfyUI).

ComfyUI's ``IMAGE`` is a float tensor (B, H, W, C) in [0, 1] (C = 3; 1 or 4 are accepted here) and its
``AUDIO`` a dict ``{"waveform": (B, C, T) float, "sample_rate": int}``. The library reads files, so a node
writes its inputs losslessly into a work folder (PNG, float WAV) and reads the frames back: a ComfyUI image
loaded from an 8-bit file becomes the same bytes again (``round(x · 255)`` inverts ``k / 255``), which is
what keeps a node's render bit-identical to the CLI's on the same files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from portrait.errors import InputError

#: Largest frame batch turned into a clip (about 10 minutes at 25 fps): a bound on the memory a graph asks.
MAX_CLIP_FRAMES = 15000


def image_to_uint8(image: torch.Tensor, what: str = "image") -> np.ndarray:
    """A ComfyUI ``IMAGE`` (B, H, W, C) float in [0, 1] → (B, H, W, 3) uint8 RGB (rounded, clamped).

    One channel is repeated to three; a fourth (alpha) is dropped, as ComfyUI's own loaders do.

    Raises:
        InputError: not a 4-d float tensor with 1, 3 or 4 channels, an empty batch, or NaN values.
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise InputError(f"the {what} must be a ComfyUI IMAGE (B, H, W, C), got {shape}")
    batch, height, width, channels = image.shape
    if batch == 0 or height == 0 or width == 0:
        raise InputError(f"the {what} is empty: {tuple(image.shape)}")
    if channels not in (1, 3, 4):
        raise InputError(f"the {what} must have 1, 3 or 4 channels, got {channels}")
    if not image.is_floating_point():
        raise InputError(f"the {what} must be float in [0, 1], got {image.dtype}")
    pixels = image.detach().to("cpu", torch.float32)
    if torch.isnan(pixels).any():
        raise InputError(f"the {what} contains NaN values")
    if channels == 1:
        pixels = pixels.expand(-1, -1, -1, 3)
    pixels = pixels[..., :3]
    return (pixels.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()


def uint8_to_image(frames: np.ndarray | Iterable[np.ndarray]) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB frames (an array, or a sequence of (H, W, 3) arrays) → ComfyUI ``IMAGE``."""
    array = frames if isinstance(frames, np.ndarray) else np.stack(list(frames))
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError(f"frames must be (B, H, W, 3) uint8, got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32) / 255.0


def save_png(image: torch.Tensor, path: Path, index: int = 0, what: str = "portrait") -> Path:
    """Frame ``index`` of a ComfyUI ``IMAGE`` as a lossless PNG at ``path``."""
    frames = image_to_uint8(image[index : index + 1] if isinstance(image, torch.Tensor) else image, what)
    Image.fromarray(frames[0]).save(path, format="PNG")
    return path


def read_png_frames(folder: Path) -> torch.Tensor:
    """The ``frame_*.png`` files of ``folder`` (``--dump-frames``), in name order, as a ComfyUI ``IMAGE``."""
    paths = sorted(folder.glob("frame_*.png"))
    if not paths:
        raise InputError(f"no frames were written to {folder}")
    return uint8_to_image([np.asarray(Image.open(path).convert("RGB")) for path in paths])


def audio_waveform(audio: Mapping[str, Any], what: str = "audio") -> tuple[np.ndarray, int]:
    """The first item of a ComfyUI ``AUDIO``: ((T, C) float32 samples, sample rate).

    Raises:
        InputError: not ``{"waveform": (B, C, T), "sample_rate": int}``, no samples, or non-finite values.
    """
    if not isinstance(audio, Mapping) or "waveform" not in audio or "sample_rate" not in audio:
        raise InputError(f"the {what} must be a ComfyUI AUDIO {{'waveform': (B, C, T), 'sample_rate'}}")
    waveform, rate = audio["waveform"], audio["sample_rate"]
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 3:
        shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise InputError(f"the {what} waveform must be (B, C, T), got {shape}")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise InputError(f"the {what} sample rate must be a positive whole number, got {rate!r}")
    if waveform.shape[0] == 0 or waveform.shape[1] == 0 or waveform.shape[2] == 0:
        raise InputError(f"the {what} has no samples: waveform {tuple(waveform.shape)}")
    samples = waveform[0].detach().to("cpu", torch.float32).numpy().T
    if not np.isfinite(samples).all():
        raise InputError(f"the {what} contains NaN or infinite samples")
    return np.ascontiguousarray(samples), rate


def save_wav(audio: Mapping[str, Any], path: Path, what: str = "audio") -> Path:
    """The first item of a ComfyUI ``AUDIO`` as a 32-bit float WAV (every sample kept as it is)."""
    import soundfile as sf

    samples, rate = audio_waveform(audio, what)
    sf.write(str(path), samples, rate, subtype="FLOAT", format="WAV")
    return path


def trimmed_audio(audio: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    """``audio`` cut to its first ``seconds`` (the video's length), as a new ComfyUI ``AUDIO``."""
    waveform, rate = audio["waveform"], int(audio["sample_rate"])
    keep = min(waveform.shape[-1], max(0, math.floor(seconds * rate + 0.5)))
    return {"waveform": waveform[..., :keep].clone(), "sample_rate": rate}


def check_fps(fps: float, what: str = "frame rate") -> float:
    """A finite frame rate > 0 (ComfyUI's FLOAT widgets may carry anything from a linked node)."""
    if not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise InputError(f"the {what} must be a positive number, got {fps!r}")
    return float(fps)


def write_clip(
    frames: np.ndarray, fps: float, path: Path, audio: Path | None = None, *, crf: int = 17
) -> Path:
    """(B, H, W, 3) uint8 frames → an H.264 mp4 at ``path`` with the renders' encoder (and ``audio`` muxed):
    what the CLI's motion, emotion-reference and eval commands read. One frame → a PNG instead (``path``
    with the suffix ``.png``; those commands read a still image as an image). Odd sizes lose their last
    row/column (H.264 4:2:0 needs even ones)."""
    if len(frames) > MAX_CLIP_FRAMES:
        raise InputError(f"{len(frames)} frames is more than the {MAX_CLIP_FRAMES} a clip may have")
    if len(frames) == 1 and audio is None:
        png = path.with_suffix(".png")
        Image.fromarray(frames[0]).save(png, format="PNG")
        return png
    from portrait.render.mux import mux_audio
    from portrait.render.video import VideoWriter

    height, width = frames.shape[1] // 2 * 2, frames.shape[2] // 2 * 2
    silent = path.with_name(f"{path.stem}.silent.mp4") if audio is not None else path
    with VideoWriter(silent, fps, crf=crf) as writer:
        writer.write(np.ascontiguousarray(frames[:, :height, :width]))
    if audio is None:
        return path
    try:
        mux_audio(silent, audio, path)
    finally:
        silent.unlink(missing_ok=True)
    return path
