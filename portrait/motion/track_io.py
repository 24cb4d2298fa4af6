"""Track JSON: atomic writing and strict reading (every problem is an InputError naming the place).

Format (video pixels, degrees)::

    {"format": "portrait-motion-track", "version": 1, "fps": 25.0, "size": [w, h], "source": "...",
     "gaps": [[start_s, end_s, "interpolated" | "held"], ...],
     "frames": [{"t": 0.0, "landmarks": [[x, y] × 68],
                 "pose": {"yaw", "pitch", "roll", "tx", "ty", "scale"}, "confidence": 0.9}, ...]}

``fps``, ``size`` and ``frames`` (each with ``t`` and ``landmarks``) are required; ``pose`` is computed
when absent, ``confidence`` defaults to 1. NaN/Infinity, unknown keys, wrong shapes, decreasing times,
landmarks far outside ``size`` and degenerate faces (points that coincide or lie on a line) are refused.

Reading is bounded before parsing (:func:`portrait.preprocess.json_input.read_json_bounded`): at most
:data:`MAX_TRACK_BYTES`, nesting :data:`MAX_TRACK_DEPTH` and about :data:`VALUES_PER_FRAME` values per frame
for :data:`MAX_TRACK_FRAMES` frames, so a file costs at most a few times its size in memory. Error messages
name the place and the rule, never a value of the file (a JSON file named by mistake is not echoed).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from portrait.errors import InputError
from portrait.motion.landmarks import RIGID
from portrait.motion.pose import POSE_KEYS, head_pose
from portrait.motion.track import Track
from portrait.preprocess.json_input import read_json_bounded

FORMAT = "portrait-motion-track"
VERSION = 1
#: Most frames of a track: 600 s at 30 fps, what ``motion extract`` writes at most.
MAX_TRACK_FRAMES = 18001
#: JSON values one frame may bring (its object, time, 68 point pairs, pose, confidence; gaps included).
VALUES_PER_FRAME = 220
#: Deepest nesting of a track (document → frames → frame → landmarks → point).
MAX_TRACK_DEPTH = 6
#: Largest track file read (bytes): a compact track of MAX_TRACK_FRAMES frames is about 22 MB.
MAX_TRACK_BYTES = 64 * 1024 * 1024
#: Smallest spread of the rigid points (nose, eye corners) a frame may have: RMS distance from their
#: centre in pixels, and the ratio of their two principal axes (a face is not a line).
MIN_FACE_SPREAD_PX = 0.5
MIN_FACE_ASPECT = 0.01
#: How far (fraction of the size) landmarks may lie outside the frame before the size is inconsistent.
SIZE_MARGIN = 0.5

_TOP_KEYS = {"format", "version", "fps", "size", "source", "gaps", "frames"}
_FRAME_KEYS = {"t", "landmarks", "pose", "confidence"}


def track_to_dict(track: Track) -> dict[str, Any]:
    """The JSON-ready dictionary of ``track`` (coordinates rounded to 1/100 pixel)."""
    frames = []
    for t, points, pose, confidence in zip(
        track.times, track.landmarks, track.poses, track.confidence, strict=True
    ):
        frames.append(
            {
                "t": round(float(t), 5),
                "landmarks": np.round(points.astype(np.float64), 2).tolist(),
                "pose": {key: round(float(value), 4) for key, value in zip(POSE_KEYS, pose, strict=True)},
                "confidence": round(float(confidence), 4),
            }
        )
    gaps = [[round(a, 4), round(b, 4), kind] for a, b, kind in track.gaps]
    return {
        "format": FORMAT, "version": VERSION, "fps": track.fps, "size": list(track.size),
        "source": track.source, "gaps": gaps, "frames": frames,
    }  # fmt: skip


def write_track(track: Track, path: str | Path) -> Path:
    """Write ``track`` as JSON atomically (a temporary file renamed over ``path``); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(track_to_dict(track), stream, separators=(",", ":"))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where} must be a finite number (found {type(value).__name__})")
    return float(value)


def _check_keys(raw: dict, allowed: set[str], required: set[str], where: str) -> None:
    """InputError when ``raw`` lacks a required key or has others (counted, not named: no echo)."""
    unknown = sum(1 for key in raw if key not in allowed)
    missing = sorted(required - set(raw))
    if unknown or missing:
        allowed_text = ", ".join(sorted(allowed))
        raise InputError(
            f"{where}: {unknown} unknown keys, missing keys {missing}; allowed keys: {allowed_text}"
        )


def _frame(raw: Any, index: int, size: tuple[int, int]) -> tuple[float, np.ndarray, np.ndarray | None, float]:
    where = f"track frame {index}"
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be an object, got {type(raw).__name__}")
    _check_keys(raw, _FRAME_KEYS, {"t", "landmarks"}, where)
    t = _number(raw["t"], f"{where} 't'")
    try:
        points = np.array(raw["landmarks"], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where} landmarks must be 68 [x, y] number pairs") from None
    if points.shape != (68, 2):
        raise InputError(f"{where} landmarks must have shape (68, 2), got {points.shape}")
    if not np.isfinite(points).all():
        raise InputError(f"{where} landmarks contain non-finite values")
    pose = None
    if "pose" in raw:
        if not isinstance(raw["pose"], dict) or set(raw["pose"]) != set(POSE_KEYS):
            raise InputError(f"{where} pose must be an object with exactly the keys {', '.join(POSE_KEYS)}")
        pose = np.array([_number(raw["pose"][k], f"{where} pose '{k}'") for k in POSE_KEYS], dtype=np.float32)
    confidence = _number(raw.get("confidence", 1.0), f"{where} confidence")
    if not 0.0 <= confidence <= 1.0:
        raise InputError(f"{where} confidence must be in [0, 1]")
    return t, points, pose, confidence


def check_face_shape(landmarks: np.ndarray, where: str = "track") -> None:
    """InputError naming the first frame of (T, 68, 2) ``landmarks`` whose rigid points (nose and eye
    corners) are degenerate: spread under :data:`MIN_FACE_SPREAD_PX` or nearly on a line (the pose fit and
    the similarity transforms of retargeting are undefined there)."""
    rigid = landmarks[:, RIGID].astype(np.float64)
    centred = rigid - rigid.mean(axis=1, keepdims=True)
    singular = np.linalg.svd(centred, compute_uv=False)  # (T, 2), largest first
    spread = np.sqrt((singular**2).sum(axis=1) / len(RIGID))
    bad = (spread < MIN_FACE_SPREAD_PX) | (singular[:, 1] < MIN_FACE_ASPECT * singular[:, 0])
    if bad.any():
        raise InputError(
            f"{where}: frame {int(np.argmax(bad))} is not a face (its nose and eye-corner points coincide "
            "or lie on a line)"
        )


def _check_size_fits(landmarks: np.ndarray, size: tuple[int, int], path: Path) -> None:
    low = -SIZE_MARGIN * np.array(size)
    high = (1 + SIZE_MARGIN) * np.array(size)
    bad = (landmarks < low) | (landmarks > high)
    if bad.any():
        frame = int(np.argwhere(bad.any(axis=(1, 2)))[0, 0])
        raise InputError(
            f"track {path}: its size does not match its landmarks (points more than {SIZE_MARGIN:g} of the "
            f"size outside the frame; first at frame {frame})"
        )


def _size(value: Any, path: Path) -> tuple[int, int]:
    if (
        not isinstance(value, list) or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in value)
    ):  # fmt: skip
        raise InputError(f"track {path} size must be [width, height], two integers in 1..65536")
    return value[0], value[1]


def _gaps(raw: Any, path: Path) -> tuple:
    if not isinstance(raw, list) or len(raw) > MAX_TRACK_FRAMES:
        raise InputError(f"track {path} gaps must be a list of at most {MAX_TRACK_FRAMES} entries")
    gaps = []
    for gap in raw:
        if not (isinstance(gap, list) and len(gap) == 3 and gap[2] in ("interpolated", "held")):
            raise InputError(f"track {path}: each gap must be [start_s, end_s, 'interpolated'|'held']")
        gaps.append((_number(gap[0], "gap start"), _number(gap[1], "gap end"), gap[2]))
    return tuple(gaps)


def track_from_dict(data: Any, path: str | Path = "track") -> Track:
    """Validate a parsed track JSON and build the :class:`Track` (InputError on any problem)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise InputError(f"track {path} must be a JSON object, got {type(data).__name__}")
    _check_keys(data, _TOP_KEYS, {"fps", "size", "frames"}, f"track {path}")
    if data.get("format", FORMAT) != FORMAT or data.get("version", VERSION) != VERSION:
        raise InputError(f"track {path} is not a {FORMAT} v{VERSION} file (its format or version differs)")
    fps = _number(data["fps"], f"track {path} fps")
    size = _size(data["size"], path)
    frames = data["frames"]
    if not isinstance(frames, list) or not frames or len(frames) > MAX_TRACK_FRAMES:
        raise InputError(f"track {path} frames must be a non-empty list of at most {MAX_TRACK_FRAMES} frames")
    parsed = [_frame(raw, i, size) for i, raw in enumerate(frames)]
    times = np.array([p[0] for p in parsed])
    if np.any(np.diff(times) < 0):
        raise InputError(
            f"track {path}: frame times decrease at frame {int(np.argmax(np.diff(times) < 0)) + 1}"
        )
    landmarks = np.stack([p[1] for p in parsed])
    _check_size_fits(landmarks, size, path)
    check_face_shape(landmarks, f"track {path}")
    landmarks = landmarks.astype(np.float32)
    poses = np.stack([p[2] if p[2] is not None else head_pose(p[1], size).as_array() for p in parsed])
    confidence = np.array([p[3] for p in parsed], dtype=np.float32)
    source = data.get("source", str(path))
    gaps = _gaps(data.get("gaps", []), path)
    return Track(fps, size, times, landmarks, poses.astype(np.float32), confidence, gaps, str(source))


def read_track(path: str | Path, max_bytes: int = MAX_TRACK_BYTES) -> Track:
    """Read and validate a track JSON file (InputError: missing, too large, malformed or inconsistent).

    The file's structure is checked before it is parsed (size, nesting, number of values; see the module
    docstring), so neither a deep nesting nor a file of tiny values can exhaust memory or the stack.
    """
    path = Path(path)
    data = read_json_bounded(
        path, f"track {path}", max_bytes=max_bytes, max_depth=MAX_TRACK_DEPTH,
        max_values=MAX_TRACK_FRAMES * VALUES_PER_FRAME + 64,
    )  # fmt: skip
    return track_from_dict(data, path)
