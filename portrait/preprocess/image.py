"""Portrait image decoding and the reference's image tensors (compat §1.4 and 10).

``load_image`` decodes any file Pillow reads into an RGB image with loud errors for unusable files.
``prepare_portrait`` reproduces ``image_audio_emo_to_tensor`` of the reference exactly: rectangular face mask
with floor arithmetic, resize of image and mask with LANCZOS so the short side becomes 512 and both sides
are multiples of 64 (Python half-to-even ``round``), ToTensor / Normalize(0.5, 0.5), and the CLIP input
squashed to 224×224 then processed as ``transformers.CLIPImageProcessor()`` with library defaults does.

Two deliberate differences from the reference are on by default and can be switched off:

* ``load_image(respect_exif=True)`` applies the EXIF orientation (the reference does not in generation, only
  in its optional OpenCV crop); ``respect_exif=False`` gives the reference behaviour.
* ``load_image(composite_alpha=True)`` composites transparent pixels on white (the reference drops the alpha
  channel, so transparent areas take whatever colour they store, often black); ``composite_alpha=False``
  gives the reference behaviour (``convert("RGB")``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from portrait.boxes import Box
from portrait.errors import InputError

logger = logging.getLogger(__name__)

#: Side of the CLIP image-encoder input.
CLIP_SIZE = 224
#: ``OPENAI_CLIP_MEAN`` / ``OPENAI_CLIP_STD``, the defaults of ``CLIPImageProcessor``.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: ``CLIPImageProcessor``'s default ``rescale_factor`` (a float64 Python float).
CLIP_RESCALE = 1 / 255
#: Working sizes are multiples of this (the VAE / UNet stride).
SIZE_MULTIPLE = 64

#: The only formats Pillow may identify a portrait as (never EPS/PS/PDF, whatever the file is named).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
#: Most elongated accepted photo (long side / short side).
MAX_ASPECT = 8.0
#: Longest side of the working size :func:`resize_to_reference` may produce.
MAX_WORKING_SIDE = 4096
#: Largest accepted picture (and video frame, :mod:`portrait.preprocess.video`): pixels and pixels per side.
MAX_PIXELS = 50_000_000
MAX_SIDE = 16384

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def load_image(
    path: Path,
    max_pixels: int = MAX_PIXELS,
    max_side: int = MAX_SIDE,
    *,
    respect_exif: bool = True,
    composite_alpha: bool = True,
) -> Image.Image:
    """Decode an image file (JPEG, PNG, WebP, ... whatever Pillow reads) into an RGB image.

    The header is checked against ``max_pixels`` and ``max_side`` before the pixels are decoded, so a
    decompression bomb is rejected without allocating it. Multi-frame files give their first frame.

    Args:
        path: image file.
        max_pixels: largest accepted width·height.
        max_side: largest accepted width or height.
        respect_exif: apply the EXIF orientation tag (``False``: the reference, which ignores it).
        composite_alpha: composite transparency on white (``False``: the reference, which drops alpha).

    Returns:
        A fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, independent of the file.

    Raises:
        InputError: the file is missing, empty, not an image, corrupt or truncated, or too large.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"image {path} is empty (0 bytes)")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as opened:
            width, height = opened.size
            if width <= 0 or height <= 0:
                raise InputError(f"image {path} has an invalid size {width}x{height}")
            if width > max_side or height > max_side or width * height > max_pixels:
                raise InputError(
                    f"image {path} is too large ({width}x{height}; limits: {max_side} px per side, "
                    f"{max_pixels} pixels); downscale it first"
                )
            if max(width, height) > MAX_ASPECT * min(width, height):
                raise InputError(
                    f"image {path} is {width}x{height}, more elongated than {MAX_ASPECT:g}:1; crop it "
                    "to the person first"
                )
            opened.load()
            image = ImageOps.exif_transpose(opened) if respect_exif else opened.copy()
    except InputError:
        raise
    except Image.UnidentifiedImageError as error:
        raise InputError(
            f"{path} is not a JPEG, PNG or WebP image ({' '.join(str(error).split())})"
        ) from error
    except _DECODE_ERRORS as error:
        raise InputError(f"image {path} is corrupt, truncated or too large to decode: {error}") from error
    return _to_rgb(image, composite_alpha)


def _to_rgb(image: Image.Image, composite_alpha: bool) -> Image.Image:
    """RGB copy of ``image``; transparent pixels on white when ``composite_alpha``, else alpha dropped."""
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if composite_alpha and has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def resize_to_reference(size: tuple[int, int], min_resolution: int = 512) -> tuple[int, int]:
    """Working size of the reference (compat §1.4 step 4).

    ``scale = min_resolution / min(w, h)``; each side becomes ``round(side·scale / 64)·64`` with Python's
    half-to-even ``round``. The short side becomes ``min_resolution`` (for a multiple of 64); the long side
    is rounded to a multiple of 64, so the aspect ratio may change slightly.

    Args:
        size: ``(width, height)`` of the original image.
        min_resolution: target short side (the reference passes 512).

    Returns:
        ``(new_width, new_height)``.
    """
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    scale = min_resolution / min(width, height)
    new_width = round(width * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE
    new_height = round(height * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE
    if new_width <= 0 or new_height <= 0:
        raise InputError(f"min_resolution {min_resolution} gives an empty working size for {width}x{height}")
    if max(new_width, new_height) > MAX_WORKING_SIDE:
        raise InputError(
            f"a {width}x{height} portrait gives a {new_width}x{new_height} working size; the limit is "
            f"{MAX_WORKING_SIDE} px per side (crop the photo closer to a square)"
        )
    return new_width, new_height


@dataclass(frozen=True)
class PortraitTensors:
    """The reference's image conditioning for one portrait (compat §1.4, batch dimension added as in 1.7).

    Attributes:
        ref_image: (1, 3, H, W) float32 in [-1, 1], the resized portrait.
        clip_image: (1, 3, 224, 224) float32, CLIP-normalised squashed portrait.
        face_mask: (1, 3, H, W) float32 in [0, 1], three identical channels (not binary after LANCZOS).
        size: ``(W, H)``, the working size of ``ref_image`` and ``face_mask``.
        face_box: ``(x, y, w, h)`` of the face in original-image pixels.
    """

    ref_image: torch.Tensor
    clip_image: torch.Tensor
    face_mask: torch.Tensor
    size: tuple[int, int]
    face_box: Box


def face_mask_array(face_box: Box, size: tuple[int, int], area: float = 1.1) -> np.ndarray:
    """Rectangular face mask of the reference, in original pixels (compat §1.4 step 3).

    The box is enlarged by ``area`` about its floored centre with Python floor division on floats:
    ``cx = (x1 + x2) // 2``, ``X1 = max(cx - ww // 2, 0)``, ``X2 = min(cx + ww // 2, W)`` (same for y),
    where ``ww = (x2 - x1)·area``; the rows ``int(Y1):int(Y2)`` and columns ``int(X1):int(X2)`` are 255.

    Args:
        face_box: ``(x, y, w, h)`` floats in original pixels.
        size: ``(W, H)`` of the original image.
        area: enlargement factor of the box sides (reference: 1.1).

    Returns:
        (H, W, 3) uint8 array with values 0 and 255 (three identical channels).

    Raises:
        InputError: the enlarged box does not cover a single pixel of the image.
    """
    width, height = size
    x1, y1, box_w, box_h = (float(v) for v in face_box)
    x2, y2 = x1 + box_w, y1 + box_h
    ww, hh = (x2 - x1) * area, (y2 - y1) * area
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left, top = max(cx - ww // 2, 0), max(cy - hh // 2, 0)
    right, bottom = min(cx + ww // 2, width), min(cy + hh // 2, height)
    # left, top >= 0, so right > left also rules out the negative indices numpy would wrap around.
    if int(right) <= int(left) or int(bottom) <= int(top):
        raise InputError(
            f"face box {tuple(face_box)} (enlarged x{area}) covers no pixel of the {width}x{height} image"
        )
    mask = np.zeros((height, width, 3), dtype=np.uint8)
    mask[int(top) : int(bottom), int(left) : int(right)] = 255
    return mask


def to_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """torchvision ``ToTensor`` for uint8 images: (H, W, 3) uint8 → (3, H, W) float32 in [0, 1] (x / 255)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3:
        raise InputError(f"expected an (H, W, C) uint8 image, got {array.dtype} array of shape {array.shape}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def clip_pixel_values(image: Image.Image) -> torch.Tensor:
    """CLIP input exactly as ``CLIPImageProcessor()`` with library defaults computes it (compat §1.4 step 7).

    For a 224×224 RGB input the default resize (shortest edge 224, bicubic) and centre crop are no-ops;
    what remains is ``(uint8 in float64 · (1/255)) → float32``, then ``(x - mean) / std`` in float32 with
    the OpenAI CLIP mean and std. Computed here by hand so the result does not depend on which transformers
    backend (PIL / torchvision "fast") happens to be installed; tests check it against the library.

    Args:
        image: RGB image of exactly 224×224.

    Returns:
        (3, 224, 224) float32 tensor.
    """
    if image.mode != "RGB" or image.size != (CLIP_SIZE, CLIP_SIZE):
        raise InputError(f"CLIP input must be a {CLIP_SIZE}² RGB image, got {image.mode} {image.size}")
    array = np.asarray(image)
    scaled = (array.astype(np.float64) * CLIP_RESCALE).astype(np.float32)
    mean = np.array(CLIP_MEAN, dtype=np.float32)
    std = np.array(CLIP_STD, dtype=np.float32)
    normalised = (scaled - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def prepare_portrait(
    image: Image.Image,
    face_box: Box,
    min_resolution: int = 512,
    area: float = 1.1,
) -> PortraitTensors:
    """Image tensors of the reference for one portrait (compat §1.4 steps 3 to 7).

    Args:
        image: RGB portrait (as returned by :func:`load_image`).
        face_box: ``(x, y, w, h)`` of the chosen face in ``image`` pixels.
        min_resolution: short side of the working size (reference: 512).
        area: face-mask enlargement (reference: 1.1).

    Returns:
        :class:`PortraitTensors` with batch dimension 1, on the CPU.
    """
    if image.mode != "RGB":
        raise InputError(f"portrait must be an RGB image, got mode {image.mode!r}; decode it with load_image")
    size = image.size
    mask = Image.fromarray(face_mask_array(face_box, size, area))
    new_size = resize_to_reference(size, min_resolution)
    if new_size != size:
        image = image.resize(new_size, Image.LANCZOS)
        mask = mask.resize(new_size, Image.LANCZOS)
    logger.debug("portrait %dx%d -> working size %dx%d", size[0], size[1], new_size[0], new_size[1])
    ref_image = to_tensor(image).sub(0.5).div(0.5)
    face_mask = to_tensor(mask)
    clip_image = clip_pixel_values(image.resize((CLIP_SIZE, CLIP_SIZE), Image.LANCZOS))
    return PortraitTensors(
        ref_image=ref_image.unsqueeze(0),
        clip_image=clip_image.unsqueeze(0),
        face_mask=face_mask.unsqueeze(0),
        size=new_size,
        face_box=tuple(float(v) for v in face_box),
    )
