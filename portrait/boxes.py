"""The two rectangles every layer passes around, defined once, and the conversions the code needs.

Both live in image pixels: the origin is the top-left corner of the top-left pixel, x grows to the right and
y downwards, so pixel ``(i, j)`` (column, row) covers ``[i, i + 1) × [j, j + 1)``.

- :data:`Box` ``(x, y, w, h)``: a face as a detector, a landmarker or the user (``--face-box X,Y,W,H``) gives
  it. Floats; the top-left corner, then width and height (> 0); it may reach past the image border.
- :data:`CropBox` ``(x1, y1, x2, y2)``: a crop window. Integers; ``x2`` and ``y2`` are exclusive (the crop
  holds columns ``x1 .. x2 - 1``, as in a ``[y1:y2, x1:x2]`` array slice or ``PIL.Image.crop``); it may
  reach past the image border (:func:`clip_box` gives what a crop of the image keeps).

No imports beyond the standard library: cheap for every layer.
"""

from __future__ import annotations

__all__ = ["Box", "CropBox", "clip_box", "corners", "iou"]

#: ``(x, y, w, h)`` float face box in image pixels: top-left corner, width, height (see the module).
Box = tuple[float, float, float, float]
#: ``(x1, y1, x2, y2)`` integer crop corners in image pixels, ``x2``/``y2`` exclusive (see the module).
CropBox = tuple[int, int, int, int]


def corners(box: Box) -> tuple[float, float, float, float]:
    """``(x1, y1, x2, y2)`` float corners of an ``(x, y, w, h)`` box: ``x2 = x + w``, ``y2 = y + h``."""
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes (0 when they do not overlap or are empty)."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def clip_box(box: CropBox, size: tuple[int, int]) -> CropBox:
    """``box`` as integers clipped to a ``(W, H)`` image: what a crop of the image keeps (may be empty)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return max(x1, 0), max(y1, 0), min(x2, size[0]), min(y2, size[1])
