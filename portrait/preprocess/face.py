"""Face choice and the reference's crop box (compat §1.2, 1.3 and 10); detectors in ``detectors.py``.

:func:`select_face` reproduces the reference's choice among several faces.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from portrait.boxes import Box, CropBox, clip_box, corners
from portrait.constants import FACE_SELECTIONS
from portrait.errors import HINT_FACE_BOX, ConfigError, InputError, NoFaceError
from portrait.preprocess.detectors import Face

logger = logging.getLogger(__name__)


def select_face(
    faces: Sequence[Face], mode: str = "reference", index: int | None = None, source: str | Path = "the image"
) -> Face:
    """Choose the face to animate.

    Args:
        faces: detections sorted by descending score.
        mode: ``"reference"``: the reference's ``maxface`` bug (compat §1.2): the LAST face, in score
            order, whose area exceeds face 0's area, else face 0. ``"largest"``: the face of largest area.
        index: when given, overrides ``mode``: position in the faces sorted by descending area (0 = largest;
            ties keep score order).
        source: file name used in the error message.

    Raises:
        NoFaceError: ``faces`` is empty. InputError: ``index`` out of range. ConfigError: unknown ``mode``.
    """
    if not faces:
        raise NoFaceError(f"no face found in {source}", hint=HINT_FACE_BOX)
    if index is not None:
        by_area = sorted(faces, key=lambda f: -f.area)
        if not 0 <= index < len(by_area):
            raise InputError(f"face index {index} is out of range: {len(by_area)} face(s) found in {source}")
        chosen = by_area[index]
    elif mode == "reference":
        chosen = faces[0]
        for face in faces[1:]:
            if face.area > faces[0].area:  # the running maximum is never updated, as in the reference
                chosen = face
    elif mode == "largest":
        chosen = max(faces, key=lambda f: f.area)
    else:
        raise ConfigError(f"unknown face selection {mode!r}; choose one of {', '.join(FACE_SELECTIONS)}")
    if len(faces) > 1:
        logger.info("%d faces in %s; using box %s (score %.3f)", len(faces), source, chosen.box, chosen.score)
    return chosen


def parse_face_box(text: str) -> Box:
    """``"X,Y,W,H"`` (pixels, floats allowed) → ``(x, y, w, h)``; InputError on anything else."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 4:
        raise InputError(f"face box {text!r} must be four numbers X,Y,W,H (top-left corner, width, height)")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError as error:
        raise InputError(f"face box {text!r} must be four numbers X,Y,W,H: {error}") from error
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"face box {text!r} must hold finite numbers")
    if values[2] <= 0 or values[3] <= 0:
        raise InputError(f"face box {text!r} must have a positive width and height")
    return values


def check_face_box(box: Box, size: tuple[int, int]) -> None:
    """Raise InputError unless ``box`` ``(x, y, w, h)`` overlaps the ``(W, H)`` image."""
    x, y, w, h = box
    width, height = size
    if w <= 0 or h <= 0 or x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise InputError(f"face box {tuple(box)} does not overlap the {width}x{height} image")


def reference_crop_box(box: Box, width: int, height: int, expand_ratio: float = 0.5) -> CropBox:
    """The reference's square crop around a face (``process_bbox``, compat §1.3).

    The box is expanded by ``expand_ratio`` of its size on every side and clipped to the image, then
    reduced to a square of the smaller side, shifted towards the face centre along the longer side by at
    most the difference; corners are rounded with Python's half-to-even ``round``.

    Returns:
        The ``(x1, y1, x2, y2)`` integer corners of the crop.
    """
    x1, y1, x2, y2 = corners(box)
    bw, bh = x2 - x1, y2 - y1
    ex1, ey1 = max(x1 - expand_ratio * bw, 0), max(y1 - expand_ratio * bh, 0)
    ex2, ey2 = min(x2 + expand_ratio * bw, width), min(y2 + expand_ratio * bh, height)
    eh, ew = ey2 - ey1, ex2 - ex1
    half = min(eh, ew) / 2
    ecx, ecy = (ex1 + ex2) / 2, (ey1 + ey2) / 2
    scx, scy = (x1 + x2) / 2, (y1 + y2) / 2
    if ew < eh:
        shift = min((eh - ew) / 2, abs(scy - ecy))
        ecy += shift if scy > ecy else -shift
    else:
        shift = min(abs(eh - ew) / 2, abs(scx - ecx))
        ecx += shift if scx > ecx else -shift
    return round(ecx - half), round(ecy - half), round(ecx + half), round(ecy + half)


def crop_image(image: Image.Image, crop_box: CropBox) -> Image.Image:
    """Crop like the reference's array slice (clipped to the image, never padded)."""
    width, height = image.size
    x1, y1, x2, y2 = clip_box(crop_box, image.size)
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"crop box {tuple(crop_box)} is empty inside the {width}x{height} image")
    return image.crop((x1, y1, x2, y2))
