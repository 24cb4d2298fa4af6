"""Full-frame output: paste the animated face crop back into the whole photo (compat §1.3, §10).

The generator animates a crop around the face at a working size (multiples of 64). :class:`FramePaster`
maps every generated frame back to the crop's place in the photo at the photo's own resolution:

1. **Canvas.** The photo at its original size with width and height rounded down to even numbers (H.264
   4:2:0; the last column/row is dropped), or downscaled with Lanczos so its long side is at most
   ``max_size``. Every output pixel outside the crop is the canvas pixel, bit for bit.
2. **Warp.** The crop box ``(x1, y1, x2, y2)`` is scaled to canvas pixels and rounded; each generated frame
   is resized (bicubic, antialiased) to that box: a pure per-axis scale + offset, the inverse of the
   resize that made the working image. Boxes reaching past the canvas are clipped.
3. **Colour match.** Per channel, ``gain = std_photo / std_generated`` (clamped to [0.5, 2]) and
   ``offset = mean_photo − gain · mean_generated``, statistics weighted by the blend weight over the
   *seam band* (the ring just inside the crop border where the weight is strictly between 0 and 1: the
   only pixels where generated and photo pixels mix). With these weights the blended band has on average
   exactly the photo's colour. The statistics are computed **once**, from the first frame pasted (or an
   explicit :meth:`FramePaster.calibrate`), and reused for every frame, so the correction cannot flicker
   when the head or hair moves through the band; a trained model's frames share the first frame's colour.
4. **Blend.** Alpha blend with a feathered mask: 1 inside a rounded rectangle (corner radius ``corner``
   × the smaller half side; 1.0 gives a circle for a square crop) inset from the crop border, falling
   smoothly (smoothstep) to 0 over ``feather`` × the face size, and 0 in a gap of ``gap`` × the crop side
   (at least 2 px) along the crop border, where the generated frame is never used. Crop sides lying on the
   photo border get no fade: there is no photo beyond them to blend with (faces at the border).

``FramePaster.seam`` marks the feather band, where the tests measure the colour shift of the paste.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from portrait.boxes import Box, CropBox, clip_box
from portrait.errors import InputError

logger = logging.getLogger(__name__)

__all__ = [
    "FramePaster",
    "canvas_size",
    "crop_is_smaller",
    "wants_full_frame",
]

#: Clamp of the per-channel colour-matching gain.
GAIN_RANGE = (0.5, 2.0)
#: Fewer seam-band pixels than this: no colour matching (the statistics would be noise).
MIN_RING_PIXELS = 16
#: Added to both standard deviations (8-bit levels) so flat regions give a gain near 1, not 0 or ∞.
STD_EPS = 2.0


#: Long side of the full-frame output when no ``max_size`` is given (a huge photo is scaled down to it).
DEFAULT_MAX_SIDE = 4096


def canvas_size(size: tuple[int, int], max_size: int | None = None) -> tuple[int, int]:
    """Output ``(W', H')`` for a photo of ``size`` ``(W, H)``: even sides, long side ≤ ``max_size``.

    When the photo fits (``max_size`` None means :data:`DEFAULT_MAX_SIDE`) the sides are rounded down to
    even numbers; otherwise the photo is scaled by ``max_size / max(W, H)`` and each side rounded down to
    an even number.

    Raises:
        InputError: a non-positive ``max_size`` or a result smaller than 2×2.
    """
    width, height = size
    if max_size is not None and max_size < 2:
        raise InputError(f"max_size must be at least 2 pixels, got {max_size}")
    if max_size is None:
        max_size = DEFAULT_MAX_SIDE
    scale = 1.0
    if max_size is not None and max(width, height) > max_size:
        scale = max_size / max(width, height)
    new_w = math.floor(width * scale + 1e-6) // 2 * 2
    new_h = math.floor(height * scale + 1e-6) // 2 * 2
    if new_w < 2 or new_h < 2:
        raise InputError(f"a {width}x{height} photo gives an empty {new_w}x{new_h} full-frame output")
    return new_w, new_h


def crop_is_smaller(crop_box: CropBox, size: tuple[int, int]) -> bool:
    """True when ``crop_box`` (clipped to the ``(W, H)`` photo) leaves out some of the photo."""
    x1, y1, x2, y2 = clip_box(crop_box, size)
    return (x2 - x1) * (y2 - y1) < size[0] * size[1]


def wants_full_frame(setting: bool | str, crop_box: CropBox, size: tuple[int, int]) -> bool:
    """Resolve ``video.full_frame``: ``True`` / ``False`` as given; ``"auto"`` → :func:`crop_is_smaller`."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return crop_is_smaller(crop_box, size)
    raise InputError(f"full_frame must be 'auto', true or false, got {setting!r}")


def smoothstep(t: np.ndarray) -> np.ndarray:
    """``3t² − 2t³`` of ``t`` clipped to [0, 1]: 0 → 0, 1 → 1, zero slope at both ends."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def feather_mask(
    shape: tuple[int, int],
    feather_px: float,
    gap_px: float,
    open_sides: tuple[bool, bool, bool, bool],
    corner: float = 0.5,
) -> np.ndarray:
    """Blend weights over a crop of ``shape`` ``(h, w)``: (h, w) float32 in [0, 1].

    The core (weight 1) is a rounded rectangle inset by ``gap_px + feather_px`` from each closed side;
    the weight falls with a smoothstep of the Euclidean distance to the core over ``feather_px`` and is 0
    within ``gap_px`` of a closed side. ``open_sides`` (left, top, right, bottom) marks sides on the photo
    border: the core extends past them, so the weight is not faded there.
    """
    height, width = shape
    inset = gap_px + feather_px
    left, top, right, bottom = (
        -math.inf if open_sides[0] else inset,
        -math.inf if open_sides[1] else inset,
        math.inf if open_sides[2] else width - inset,
        math.inf if open_sides[3] else height - inset,
    )
    halves = [(right - left) / 2, (bottom - top) / 2]
    finite = [h for h in halves if math.isfinite(h)]
    radius = max(corner * min(finite), 0.0) if finite else 0.0
    xs = np.arange(width, dtype=np.float64) + 0.5
    ys = np.arange(height, dtype=np.float64) + 0.5
    dx = np.maximum(np.maximum(left + radius - xs, xs - (right - radius)), 0.0)
    dy = np.maximum(np.maximum(top + radius - ys, ys - (bottom - radius)), 0.0)
    distance = np.hypot(dy[:, None], dx[None, :]) - radius  # ≤ 0 inside the core
    return (1.0 - smoothstep(distance / max(feather_px, 1e-6))).astype(np.float32)


class FramePaster:
    """Paste generated crop frames into a photo; one instance per video (it keeps the colour statistics).

    Args:
        photo: (H, W, 3) uint8 RGB, the whole original photo.
        crop_box: ``(x1, y1, x2, y2)`` of the animated crop in photo pixels (may reach past the photo).
        face_box: ``(x, y, w, h)`` of the face in photo pixels; sets the feather width (default: half the
            crop, what the reference crop with ``expand_ratio`` 0.5 gives).
        max_size: cap on the long side of the output (None: the photo's size, rounded down to even).
        feather: feather width as a fraction of the face box's longer side.
        color_match: match per-channel mean/std of the generated crop to the photo in the seam band.
        gap: fraction of the crop's shorter side left as a zero-weight gap at the crop border (≥ 2 px).
        corner: corner radius of the core as a fraction of its smaller half side (1: circle/stadium).

    Attributes:
        size: ``(W', H')`` of the output frames (even).
        box: the crop box in output pixels ``(X1, Y1, X2, Y2)`` (not clipped).
        alpha: (H', W') float32 blend weights over the whole canvas (0 outside the crop).
    """

    def __init__(
        self,
        photo: np.ndarray,
        crop_box: CropBox,
        face_box: Box | None = None,
        *,
        max_size: int | None = None,
        feather: float = 0.1,
        color_match: bool = True,
        gap: float = 0.02,
        corner: float = 0.5,
    ) -> None:
        if (
            not isinstance(photo, np.ndarray)
            or photo.dtype != np.uint8
            or photo.ndim != 3
            or photo.shape[2] != 3
        ):
            raise InputError(
                f"photo must be an (H, W, 3) uint8 array, got {getattr(photo, 'shape', photo)!r}"
            )
        if not feather >= 0 or not gap >= 0 or not 0 <= corner <= 1:
            raise InputError(f"feather {feather} and gap {gap} must be >= 0, corner {corner} in [0, 1]")
        height, width = photo.shape[:2]
        x1, y1, x2, y2 = (int(v) for v in crop_box)
        if x2 <= x1 or y2 <= y1 or x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            raise InputError(f"crop box {tuple(crop_box)} is empty or outside the {width}x{height} photo")
        self.size = canvas_size((width, height), max_size)
        rescaled = max_size is not None and max(width, height) > max_size
        if rescaled:
            self.canvas = np.asarray(Image.fromarray(photo).resize(self.size, Image.LANCZOS))
            sx, sy = self.size[0] / width, self.size[1] / height
        else:  # original pixels; the even rounding drops at most the last column and row
            self.canvas = np.ascontiguousarray(photo[: self.size[1], : self.size[0]])
            sx = sy = 1.0
        self.box = (round(x1 * sx), round(y1 * sy), round(x2 * sx), round(y2 * sy))
        self.color_match = color_match
        self.gain: np.ndarray | None = None
        self.offset: np.ndarray | None = None
        # crop sides on the photo border (the even rounding may drop the last column/row beyond them)
        open_sides = (x1 <= 0, y1 <= 0, x2 >= width, y2 >= height)
        self.alpha = self._build_alpha(face_box, (sx, sy), open_sides, feather, gap, corner)
        logger.debug(
            "paster: photo %dx%d -> %dx%d, crop %s -> %s", width, height, *self.size, crop_box, self.box
        )

    # ------------------------------------------------------------------------------------------ geometry
    def _build_alpha(
        self,
        face_box: Box | None,
        scale: tuple[float, float],
        open_sides: tuple[bool, bool, bool, bool],
        feather: float,
        gap: float,
        corner: float,
    ) -> np.ndarray:
        X1, Y1, X2, Y2 = self.box
        crop_w, crop_h = X2 - X1, Y2 - Y1
        face = max(face_box[2] * scale[0], face_box[3] * scale[1]) if face_box else max(crop_w, crop_h) / 2
        gap_px = max(2.0, gap * min(crop_w, crop_h))
        spans = []  # half sides left for feather + core on axes with at least one closed side
        if not (open_sides[0] and open_sides[2]):
            spans.append(crop_w / 2 - gap_px)
        if not (open_sides[1] and open_sides[3]):
            spans.append(crop_h / 2 - gap_px)
        feather_px = feather * face
        if spans:  # keep at least half of the room for the core
            feather_px = min(feather_px, max(0.5 * min(spans), 1.0))
        feather_px = max(feather_px, 1.0)
        local = feather_mask((crop_h, crop_w), feather_px, gap_px, open_sides, corner)
        alpha = np.zeros((self.size[1], self.size[0]), dtype=np.float32)
        (cy1, cy2, cx1, cx2), (ly1, ly2, lx1, lx2) = self._overlap()
        alpha[cy1:cy2, cx1:cx2] = local[ly1:ly2, lx1:lx2]
        self.feather_px, self.gap_px = feather_px, gap_px
        return alpha

    def _overlap(self) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """Rows/columns of the crop inside the canvas: ``(canvas y1, y2, x1, x2), (local y1, y2, x1, x2)``."""
        X1, Y1, X2, Y2 = self.box
        cx1, cy1 = max(X1, 0), max(Y1, 0)
        cx2, cy2 = min(X2, self.size[0]), min(Y2, self.size[1])
        return (cy1, cy2, cx1, cx2), (cy1 - Y1, cy2 - Y1, cx1 - X1, cx2 - X1)

    @property
    def seam(self) -> np.ndarray:
        """(H', W') bool: the feather band, where the weight is strictly between 0 and 1."""
        return (self.alpha > 1e-6) & (self.alpha < 1.0 - 1e-6)

    # ------------------------------------------------------------------------------------------- frames
    def warp(self, frames: torch.Tensor) -> np.ndarray:
        """Resize generated frames to the crop box: (n, 3, h, w) in [0, 1] → (n, crop_h', crop_w', 3)
        float32 in [0, 255], clipped to the canvas (crop_h', crop_w' ≤ the box)."""
        if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
            raise InputError(
                f"frames must be an (n, 3, h, w) tensor, got {getattr(frames, 'shape', frames)!r}"
            )
        X1, Y1, X2, Y2 = self.box
        resized = F.interpolate(
            frames.detach().float(),
            size=(Y2 - Y1, X2 - X1),
            mode="bicubic",
            align_corners=False,
            antialias=True,
        )
        (_, _, _, _), (ly1, ly2, lx1, lx2) = self._overlap()
        resized = resized[:, :, ly1:ly2, lx1:lx2].clamp(0.0, 1.0).mul(255.0)
        return resized.permute(0, 2, 3, 1).to("cpu").numpy()

    def calibrate(self, frame: torch.Tensor) -> None:
        """Fix the colour correction from one generated frame (3, h, w) or (1, 3, h, w) in [0, 1]."""
        if not self.color_match:
            return
        warped = self.warp(frame if frame.ndim == 4 else frame[None])[0]
        (cy1, cy2, cx1, cx2), _ = self._overlap()
        band = self.seam[cy1:cy2, cx1:cx2]
        if int(band.sum()) < MIN_RING_PIXELS:
            logger.debug("seam band of %d pixels: no colour matching", int(band.sum()))
            self.gain, self.offset = np.ones(3, np.float32), np.zeros(3, np.float32)
            return
        weight = self.alpha[cy1:cy2, cx1:cx2][band].astype(np.float64)[:, None]
        generated = warped[band].astype(np.float64)
        photo = self.canvas[cy1:cy2, cx1:cx2][band].astype(np.float64)
        mean_g, std_g = _weighted_stats(generated, weight)
        mean_p, std_p = _weighted_stats(photo, weight)
        gain = np.clip((std_p + STD_EPS) / (std_g + STD_EPS), *GAIN_RANGE)
        offset = mean_p - gain * mean_g
        self.gain, self.offset = gain.astype(np.float32), offset.astype(np.float32)
        logger.debug("colour match: gain %s offset %s", np.round(gain, 3), np.round(offset, 2))

    def paste(self, frames: torch.Tensor) -> np.ndarray:
        """Blend generated frames into the photo.

        Args:
            frames: (n, 3, h, w) float tensor in [0, 1] (any device), the generated crops at working size.

        Returns:
            (n, H', W', 3) uint8 RGB frames; pixels where the weight is 0 equal the canvas exactly.
        """
        if self.color_match and self.gain is None and len(frames):
            self.calibrate(frames[:1])
        warped = self.warp(frames)
        if self.color_match and self.gain is not None:
            warped = warped * self.gain + self.offset
        (cy1, cy2, cx1, cx2), _ = self._overlap()
        region = self.canvas[cy1:cy2, cx1:cx2].astype(np.float32)
        alpha = self.alpha[cy1:cy2, cx1:cx2, None]
        blended = region + alpha * (np.clip(warped, 0.0, 255.0) - region)
        out = np.repeat(self.canvas[None], len(frames), axis=0)
        out[:, cy1:cy2, cx1:cx2] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out


def _weighted_stats(values: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel weighted mean and standard deviation of (n, 3) ``values`` with (n, 1) ``weight``."""
    total = weight.sum()
    mean = (values * weight).sum(0) / total
    std = np.sqrt((((values - mean) ** 2) * weight).sum(0) / total)
    return mean, std
