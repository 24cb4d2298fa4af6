"""The page's values → job fields and config values: the request dataclass and its checks (light imports)."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from portrait.config import RenderConfig
from portrait.constants import MOUTH_MODES, RETARGET_MODES
from portrait.errors import (
    InputError,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

#: Most emotion-QA re-renders one request may ask for (each is a full render on a shared server).
MAX_QA_RETRIES = 3
#: Uploads accepted as a driving source: a `portrait-gen motion extract` track or a video ffmpeg reads.
MOTION_SUFFIXES = (".json", ".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi")

#: Framing choices → config values: full frame when the face crop is smaller than the photo (auto), always
#: full frame (the animated crop pasted back into the photo), the whole photo resized (the reference), or a
#: square crop around the face.
FRAMINGS: dict[str, dict[str, Any]] = {
    "auto": {"preprocess.crop": False, "video.full_frame": "auto"},
    "full": {"preprocess.crop": False, "video.full_frame": True},
    "photo": {"preprocess.crop": False, "video.full_frame": False},
    "crop": {"preprocess.crop": True, "video.full_frame": False},
}


@dataclass(frozen=True)
class AppRequest:
    """The values of the page's widgets (None: the launch config's default).

    ``timeline``: rows ``(time s, emotion, intensity)`` (list of lists, ``{"data": rows}`` or a DataFrame);
    ``emotion_text``: a full spec (mixes, timelines) that wins over the dropdown and the table;
    ``emotion_file``: an uploaded prior / timeline file that wins over everything; ``seed`` < 0 or
    ``random_seed``: a fresh random seed; ``framing``: one of :data:`FRAMINGS`; ``face_box``: ``"X,Y,W,H"``
    or empty (detect); ``max_size``: cap on the full-frame output's long side; ``emotion_qa``: render
    through the closed-loop emotion QA (:mod:`portrait.eval.qa`) with ``qa_threshold`` / ``qa_retries``
    (None: its defaults; retries at most :data:`MAX_QA_RETRIES`); ``motion``: an uploaded driving video or
    track ``.json`` whose head motion the portrait follows, with ``retarget`` / ``mouth`` (None: the launch
    config's ``motion`` section; docs/motion.md); ``emotion_from``: an uploaded picture or video whose facial
    expression sets the emotion (wins over every other emotion control) with ``emotion_from_mode`` (mean |
    timeline) and ``emotion_strength`` (0..2; docs/emotion.md).
    """

    image: str | Path | None
    audio: str | Path | None
    emotion: str = "neutral"
    intensity: float = 1.0
    timeline: Any = None
    emotion_text: str = ""
    emotion_file: str | Path | None = None
    ref_scale: float | None = None
    emo_scale: float | None = None
    steps: int | None = None
    seed: int | None = None
    random_seed: bool = False
    framing: str | None = None
    interpolate: bool | None = None
    size: int | None = None
    face_box: str = ""
    face_index: int | None = None
    max_size: int | None = None
    emotion_qa: bool = False
    qa_threshold: float | None = None
    qa_retries: int | None = None
    motion: str | Path | None = None
    retarget: str | None = None
    mouth: str | None = None
    emotion_from: str | Path | None = None
    emotion_from_mode: str | None = None
    emotion_strength: float | None = None


@dataclass
class AppResult:
    """One finished render: the mp4, its sidecar JSON, the input with the face box, the info panel."""

    video: Path
    sidecar: Path
    preview: Image.Image
    info: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ UI values → job
def _is_blank(cell: Any) -> bool:
    text = "" if cell is None else str(cell).strip()
    return text in ("", "nan", "None")


def _number(cell: Any, what: str) -> float:
    try:
        value = float(str(cell).strip())
    except ValueError:
        raise InputError(f"{what} must be a number, got {cell!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} must be finite, got {cell!r}")
    return value


def timeline_rows(table: Any) -> list[tuple[float, str, float]]:
    """Non-blank rows ``(time, emotion, intensity)`` of the timeline table; a blank intensity means 1."""
    if table is None:
        return []
    if isinstance(table, Mapping):
        table = table.get("data") or []
    elif hasattr(table, "columns") and hasattr(table, "values"):  # a pandas DataFrame
        table = table.values.tolist()
    rows = []
    for number, row in enumerate(table, start=1):
        cells = (list(row) + [None, None, None])[:3]
        if all(_is_blank(c) for c in cells):
            continue
        time_cell, name, weight = cells
        if _is_blank(time_cell) or _is_blank(name):
            raise InputError(f"emotion timeline row {number} needs a time and an emotion, got {list(row)}")
        intensity = 1.0 if _is_blank(weight) else _number(weight, f"emotion timeline row {number} intensity")
        rows.append((_number(time_cell, f"emotion timeline row {number} time"), str(name).strip(), intensity))
    return rows


def _term(name: str, intensity: float) -> str:
    return name if intensity == 1 else f"{name}:{intensity:g}"


def emotion_spec(emotion: str, intensity: float = 1.0, timeline: Any = None, text: str = "") -> str:
    """The ``--emotion`` spec of the page: ``text`` if given, else the timeline table, else ``name[:w]``.

    >>> emotion_spec("happy", 0.5, [[0, "neutral", ""], [2.5, "happy", 0.8]])
    '0:neutral, 2.5:happy:0.8'
    """
    if text and text.strip():
        return text.strip()
    rows = timeline_rows(timeline)
    if rows:
        return ", ".join(f"{t:g}:{_term(name, w)}" for t, name, w in rows)
    return _term(str(emotion).strip(), float(intensity))


def resolve_seed(seed: float | None, random_seed: bool = False) -> int:
    """The seed to use: a fresh random one when asked (``random_seed``, no seed, or a negative seed)."""
    if random_seed or seed is None or seed < 0:
        return secrets.randbelow(2**31)
    if seed != int(seed) or seed >= 2**63:
        raise InputError(f"seed {seed!r} must be a whole number in [0, 2^63)")
    return int(seed)


def request_values(request: AppRequest) -> dict[str, Any]:
    """Dotted config values of one request (None: keep the launch config's value)."""

    def finite(value: float | None, what: str) -> float | None:
        if value is None:
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{what} must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise InputError(f"{what} must be a finite number, got {value!r}")
        return number

    def whole(value: float | None, what: str) -> int | None:
        number = finite(value, what)
        return None if number is None else int(round(number))

    ref_scale, emo_scale = finite(request.ref_scale, "ref scale"), finite(request.emo_scale, "emo scale")
    return {
        "sampling.steps": whole(request.steps, "steps"),
        "sampling.ref_scale_min": ref_scale,
        "sampling.ref_scale_max": ref_scale,
        "sampling.emo_scale_min": emo_scale,
        "sampling.emo_scale_max": emo_scale,
        "preprocess.min_resolution": whole(request.size, "size"),
        "video.interpolate": request.interpolate,
        "video.max_size": whole(request.max_size, "max size"),
        **framing_values(request.framing),
        **motion_values(request),
    }


def motion_values(request: AppRequest) -> dict[str, Any]:
    """Config values of the motion choices (None or empty: keep the launch config's ``motion`` section)."""
    values: dict[str, Any] = {}
    for key, value, allowed in (
        ("retarget", request.retarget, RETARGET_MODES),
        ("mouth", request.mouth, MOUTH_MODES),
    ):
        if value is None or not str(value).strip():
            continue
        if value not in allowed:
            raise InputError(f"{key} {value!r} must be one of {', '.join(allowed)}")
        values[f"motion.{key}"] = value
    return values


def motion_source(request: AppRequest) -> Path | None:
    """The uploaded driving video / track file (None: no motion); refuses other kinds of file."""
    if request.motion is None or not str(request.motion).strip():
        return None
    path = existing_upload(request.motion, "driving video")
    if path.suffix.lower() not in MOTION_SUFFIXES:
        raise InputError(f"driving video {path.name}: use a video ({', '.join(MOTION_SUFFIXES)}) or a track")
    return path


def framing_values(framing: str | None) -> dict[str, Any]:
    """Config values of a :data:`FRAMINGS` choice (None: keep the launch config's framing)."""
    if framing is None:
        return {}
    if framing not in FRAMINGS:
        raise InputError(f"framing {framing!r} must be one of {', '.join(FRAMINGS)}")
    return FRAMINGS[framing]


def qa_values(request: AppRequest) -> dict[str, Any] | None:
    """``{"threshold": P, "retries": K}`` (only the given ones) when the request asks for emotion QA, else
    None.

    Raises:
        InputError: a threshold outside [0, 1] or retries outside [0, :data:`MAX_QA_RETRIES`].
    """
    if not request.emotion_qa:
        return None
    values: dict[str, Any] = {}
    if request.qa_threshold is not None:
        threshold = _number(request.qa_threshold, "QA threshold")
        if not 0 <= threshold <= 1:
            raise InputError(f"QA threshold must be between 0 and 1, got {threshold:g}")
        values["threshold"] = threshold
    if request.qa_retries is not None:
        retries = _number(request.qa_retries, "QA retries")
        if retries != int(retries) or not 0 <= retries <= MAX_QA_RETRIES:
            raise InputError(f"QA retries must be a whole number from 0 to {MAX_QA_RETRIES}, got {retries:g}")
        values["retries"] = int(retries)
    return values


def default_framing(cfg: RenderConfig) -> str:
    """The :data:`FRAMINGS` choice matching ``cfg``."""
    if cfg.preprocess.crop:
        return "crop"
    full = getattr(cfg.video, "full_frame", False)
    return "auto" if full == "auto" else "full" if full else "photo"


def existing_upload(path: str | Path | None, what: str) -> Path:
    if path is None or not str(path).strip():
        raise InputError(f"no {what} given; upload one")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the {what} upload {path.name} is missing; upload it again")
    return path
