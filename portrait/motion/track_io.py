"""Track JSON: atomic writing and strict reading (every problem is an InputError naming the place).

Format (video pixels, degrees)::

    {"format": "portrait-motion-track", "version": 1, "fps": 25.0, "size": [w, h], "source": "...",
     "gaps": [[start_s, end_s, "interpolated" | "held"], ...],
     "frames": [{"t": 0.0, "landmarks": [[x, y] × 68],
                 "pose": {"yaw", "pitch", "roll", "tx", "ty", "scale"}, "confidence": 0.9}, ...]}

``fps``, ``size`` and ``frames`` (each with ``t`` and ``landmarks``) are required; ``pose`` is computed
when absent, ``confidence`` defaults to 1. NaN/Infinity, unknown keys, wrong shapes, decreasing times and
landmarks far outside ``size`` are refused.
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
from portrait.motion.pose import POSE_KEYS, head_pose
from portrait.motion.track import Track

FORMAT = "portrait-motion-track"
VERSION = 1
#: Largest track file read (bytes): about 3 hours at 25 fps.
MAX_TRACK_BYTES = 512 * 1024 * 1024
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


def _reject_constant(name: str) -> float:
    raise InputError(f"track JSON contains {name}; only finite numbers are allowed")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _frame(raw: Any, index: int, size: tuple[int, int]) -> tuple[float, np.ndarray, np.ndarray | None, float]:
    where = f"track frame {index}"
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be an object, got {type(raw).__name__}")
    unknown = set(raw) - _FRAME_KEYS
    missing = {"t", "landmarks"} - set(raw)
    if unknown or missing:
        raise InputError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    t = _number(raw["t"], f"{where} 't'")
    try:
        points = np.array(raw["landmarks"], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InputError(f"{where} landmarks must be 68 [x, y] number pairs ({error})") from error
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
        raise InputError(f"{where} confidence must be in [0, 1], got {confidence}")
    return t, points, pose, confidence


def _check_size_fits(landmarks: np.ndarray, size: tuple[int, int], path: Path) -> None:
    low = -SIZE_MARGIN * np.array(size)
    high = (1 + SIZE_MARGIN) * np.array(size)
    bad = (landmarks < low) | (landmarks > high)
    if bad.any():
        frame = int(np.argwhere(bad.any(axis=(1, 2)))[0, 0])
        x_range = (float(landmarks[..., 0].min()), float(landmarks[..., 0].max()))
        y_range = (float(landmarks[..., 1].min()), float(landmarks[..., 1].max()))
        raise InputError(
            f"track {path}: size {list(size)} does not match its landmarks "
            f"(x {x_range[0]:.0f}..{x_range[1]:.0f}, y {y_range[0]:.0f}..{y_range[1]:.0f}; "
            f"first outside at frame {frame})"
        )


def track_from_dict(data: Any, path: str | Path = "track") -> Track:
    """Validate a parsed track JSON and build the :class:`Track` (InputError on any problem)."""
    path = Path(path)
    if not isinstance(data, dict):
        raise InputError(f"track {path} must be a JSON object, got {type(data).__name__}")
    unknown, missing = set(data) - _TOP_KEYS, {"fps", "size", "frames"} - set(data)
    if unknown or missing:
        raise InputError(f"track {path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    if data.get("format", FORMAT) != FORMAT or data.get("version", VERSION) != VERSION:
        raise InputError(
            f"track {path} is format {data.get('format')!r} v{data.get('version')}, not {FORMAT} v1"
        )
    fps = _number(data["fps"], f"track {path} fps")
    size_raw = data["size"]
    if (
        not isinstance(size_raw, list) or len(size_raw) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 65536 for v in size_raw)
    ):  # fmt: skip
        raise InputError(f"track {path} size must be [width, height] positive integers, got {size_raw!r}")
    size = (size_raw[0], size_raw[1])
    frames = data["frames"]
    if not isinstance(frames, list) or not frames:
        raise InputError(f"track {path} frames must be a non-empty list")
    parsed = [_frame(raw, i, size) for i, raw in enumerate(frames)]
    times = np.array([p[0] for p in parsed])
    if np.any(np.diff(times) < 0):
        raise InputError(
            f"track {path}: frame times decrease at frame {int(np.argmax(np.diff(times) < 0)) + 1}"
        )
    landmarks = np.stack([p[1] for p in parsed])
    _check_size_fits(landmarks, size, path)
    landmarks = landmarks.astype(np.float32)
    poses = np.stack([p[2] if p[2] is not None else head_pose(p[1], size).as_array() for p in parsed])
    confidence = np.array([p[3] for p in parsed], dtype=np.float32)
    gaps = []
    for gap in data.get("gaps", []):
        if not (isinstance(gap, list) and len(gap) == 3 and gap[2] in ("interpolated", "held")):
            raise InputError(
                f"track {path}: each gap must be [start_s, end_s, 'interpolated'|'held'], got {gap!r}"
            )
        gaps.append((_number(gap[0], "gap start"), _number(gap[1], "gap end"), gap[2]))
    source = data.get("source", str(path))
    return Track(fps, size, times, landmarks, poses.astype(np.float32), confidence, tuple(gaps), str(source))


def read_track(path: str | Path, max_bytes: int = MAX_TRACK_BYTES) -> Track:
    """Read and validate a track JSON file (InputError: missing, too large, malformed or inconsistent)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"track {path} does not exist or is not a file")
    if path.stat().st_size > max_bytes:
        raise InputError(f"track {path} is {path.stat().st_size} bytes, more than the {max_bytes} allowed")
    try:
        with path.open(encoding="utf-8") as stream:
            data = json.load(stream, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"track {path} is not valid JSON: {error}") from error
    return track_from_dict(data, path)
