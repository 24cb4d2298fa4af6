"""Batch manifests: read a JSONL or CSV job list, check every line, name and confine the outputs.

One job per line: ``image``, ``audio``, optional ``emotion`` and ``output`` (a relative ``.mp4`` name inside
the output folder) and optional per-job overrides (:data:`OVERRIDE_KEYS`). Relative input paths resolve
against the manifest's folder. ``emotion_qa: true`` (optional ``qa_threshold``, ``qa_retries``) renders the
job through the emotion-QA loop (:mod:`portrait.eval.qa`); ``emotion_from`` (:data:`EMOTION_FROM_KEYS`)
takes the emotion from a reference clip. A bad line becomes an :class:`InvalidLine` (line number + reason)
and does not stop the others; only an unreadable or empty manifest raises. Also here: the per-job result
record (:class:`JobRecord`); static shards are in :mod:`portrait.batch.shard`, value parsers in
:mod:`portrait.batch.fields`.

This module stays light (no torch): the CLI parses and validates before importing any model code.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from portrait.batch.fields import (
    LineError,
    boolean_value,
    face_box_value,
    input_path,
    integer_value,
    number_value,
    output_path,
    set_values,
    text_value,
)
from portrait.boxes import Box
from portrait.config import read_text_file
from portrait.constants import (
    EMOTION_EMBEDDERS,
    EMOTION_FILE_SUFFIXES,
    EMOTION_FROM_MODES,
    EXTEND_MODES,
    MAX_EMOTION_STRENGTH,
    MOUTH_MODES,
    RETARGET_MODES,
)
from portrait.errors import InputError
from portrait.preprocess.json_input import loads_bounded

__all__ = [
    "OVERRIDE_KEYS",
    "InvalidLine",
    "JobRecord",
    "ManifestJob",
    "read_manifest",
]

#: Per-job override keys → the config keys they set (``ref_scale``/``emo_scale`` set both min and max).
OVERRIDE_KEYS: dict[str, tuple[str, ...]] = {
    "steps": ("sampling.steps",),
    "ref_scale": ("sampling.ref_scale_min", "sampling.ref_scale_max"),
    "emo_scale": ("sampling.emo_scale_min", "sampling.emo_scale_max"),
    "size": ("preprocess.min_resolution",),
    "crop": ("preprocess.crop",),
    "interpolate": ("video.interpolate",),
    # motion control (with a ``motion`` source; docs/motion.md): ``motion_gain`` is POSE,EXPR or one number
    "retarget": ("motion.retarget",),
    "motion_gain": ("motion.pose_gain", "motion.expression_gain"),
    "mouth": ("motion.mouth",),
    "motion_extend": ("motion.extend",),
}
#: Override keys whose value is one of a fixed set of words.
_CHOICE_KEYS: dict[str, tuple[str, ...]] = {
    "retarget": RETARGET_MODES,
    "mouth": MOUTH_MODES,
    "motion_extend": EXTEND_MODES,
}
_JOB_KEYS = ("image", "audio", "emotion", "output", "seed", "face_box", "face_index", "set", "motion")
#: Emotion from a reference clip (``emotion_from``: an image/video resolved like ``image``; docs/emotion.md).
EMOTION_FROM_KEYS = ("emotion_from", "emotion_strength", "emotion_from_mode", "emotion_embedder")
#: Closed-loop emotion QA keys (``emotion_qa: true`` plus optional ``qa_threshold`` / ``qa_retries``).
QA_KEYS = ("emotion_qa", "qa_threshold", "qa_retries")
#: Most QA re-renders one manifest line may ask for (each is a full render).
MAX_QA_RETRIES = 5
KNOWN_KEYS: tuple[str, ...] = _JOB_KEYS + tuple(OVERRIDE_KEYS) + QA_KEYS + EMOTION_FROM_KEYS
#: Deepest JSON nesting a manifest line may have (a real job line has 2).
MAX_JSON_DEPTH = 8
#: Most JSON values one manifest line may hold (a real job line has a few dozen).
MAX_LINE_VALUES = 10_000


@dataclass(frozen=True)
class ManifestJob:
    """One valid manifest line: absolute input paths, an output inside the output folder, overrides.

    ``values``: dotted config keys for :func:`portrait.config.with_values` (e.g. ``("sampling.steps", 10)``).
    ``qa``: ``(threshold, retries)`` of closed-loop emotion QA (:mod:`portrait.eval.qa`), None when off.
    """

    line: int
    image: Path
    audio: Path
    output: Path
    emotion: str = "neutral"
    face_box: Box | None = None
    face_index: int | None = None
    seed: int | None = None
    values: tuple[tuple[str, Any], ...] = ()
    qa: tuple[float, int] | None = None
    #: A driving video or track ``.json`` (resolved like ``image``) whose head motion the job follows.
    motion: Path | None = None
    #: A reference image/video whose facial expression sets the emotion (resolved like ``image``), and its
    #: strength (0..2), mode (mean | timeline) and embedder (auto | learned | classifier).
    emotion_from: Path | None = None
    emotion_strength: float = 1.0
    emotion_from_mode: str = "mean"
    emotion_embedder: str = "auto"


@dataclass(frozen=True)
class InvalidLine:
    """A manifest line that cannot become a job, with the reason."""

    line: int
    error: str
    error_class: str = "InputError"


@dataclass
class JobRecord:
    """The outcome of one job: one line of ``results.jsonl``.

    ``status``: ``ok``, ``skipped`` (already done), ``failed`` or ``invalid``. ``retryable`` (not written):
    the failure may go away on another attempt (out of memory, a lost worker), unlike a bad input.
    ``qa`` (written only for an emotion-QA job): ``{"chosen", "passed", "attempts": [scores...]}``.
    """

    line: int
    status: str
    output: str | None
    seconds: float = 0.0
    error_class: str | None = None
    error: str | None = None
    attempts: int = 0
    worker: str | None = None
    retryable: bool = field(default=False, compare=False)
    qa: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("retryable")
        if data["qa"] is None:
            data.pop("qa")
        return data


# ------------------------------------------------------------------------------------------------ reading
def read_manifest(path: Path, out_dir: Path) -> list[ManifestJob | InvalidLine]:
    """Every job line of ``path`` (JSONL or CSV) in file order, each valid or invalid.

    The format is taken from the suffix (``.jsonl``/``.ndjson``/``.json``: JSON lines, ``.csv``: CSV with a
    header row), else sniffed from the first character. Blank lines and JSONL lines starting with ``#`` are
    not jobs. A later job whose output equals an earlier one's is invalid.

    Raises:
        InputError: the manifest is missing, unreadable, not UTF-8, has a bad CSV header or has no job.
    """
    path = Path(path)
    text = read_text_file(path, "manifest", InputError)
    suffix = path.suffix.lower()
    is_csv = suffix == ".csv" or (suffix not in (".jsonl", ".ndjson", ".json") and not _looks_like_json(text))
    rows = _csv_rows(text, path) if is_csv else _jsonl_rows(text)
    if not rows:
        raise InputError(f"manifest {path} has no jobs (one JSON object or CSV row per line)")
    base, out_root = path.resolve().parent, Path(out_dir).resolve()
    entries: list[ManifestJob | InvalidLine] = []
    for line, row in rows:
        try:
            if isinstance(row, LineError):
                raise row
            entries.append(_job_from_row(line, row, base, out_root))
        except LineError as err:
            entries.append(InvalidLine(line, str(err)))
    return _reject_duplicates(entries)


def _looks_like_json(text: str) -> bool:
    return text.lstrip().startswith("{")


def _jsonl_rows(text: str) -> list[tuple[int, dict[str, Any] | LineError]]:
    rows: list[tuple[int, dict[str, Any] | LineError]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            row = loads_bounded(stripped, "line", max_depth=MAX_JSON_DEPTH, max_values=MAX_LINE_VALUES)
        except InputError as err:
            rows.append((number, LineError(str(err))))
            continue
        if not isinstance(row, dict):
            rows.append((number, LineError(f"must be a JSON object, got {type(row).__name__}")))
            continue
        rows.append((number, {k: v for k, v in row.items() if v is not None}))
    return rows


def _csv_rows(text: str, path: Path) -> list[tuple[int, dict[str, Any] | LineError]]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return []
    except csv.Error as err:
        raise InputError(f"manifest {path}: bad CSV header: {err}") from err
    unknown = [name for name in header if name not in KNOWN_KEYS]
    if unknown or not {"image", "audio"} <= set(header) or len(set(header)) != len(header):
        raise InputError(
            f"manifest {path}: CSV header (line 1) must name image and audio once each and only known "
            f"columns ({', '.join(KNOWN_KEYS)}); unknown: {', '.join(unknown) or 'none'}"
        )
    rows: list[tuple[int, dict[str, Any] | LineError]] = []
    end = reader.line_num
    while True:
        start = end + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            rows.append((start, LineError(f"bad CSV: {err}")))
            end = reader.line_num
            continue
        end = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != len(header):
            rows.append((start, LineError(f"has {len(cells)} cells; the header has {len(header)}")))
            continue
        rows.append((start, {k: v.strip() for k, v in zip(header, cells, strict=True) if v.strip()}))
    return rows


# ------------------------------------------------------------------------------------------------ one job
def _job_from_row(line: int, row: Mapping[str, Any], base: Path, out_root: Path) -> ManifestJob:
    unknown = sorted(set(row) - set(KNOWN_KEYS))
    if unknown:
        raise LineError(f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(KNOWN_KEYS)}")
    for key in ("image", "audio"):
        if key not in row:
            raise LineError(f"missing {key!r}")
    image, audio = input_path(row["image"], "image", base), input_path(row["audio"], "audio", base)
    emotion = text_value(row.get("emotion", "neutral"), "emotion")
    if Path(emotion).suffix.lower() in EMOTION_FILE_SUFFIXES:
        emotion = str(input_path(emotion, "emotion", base))
    if "output" in row:
        output = output_path(row["output"], out_root)
    else:
        output = out_root / f"{line}_{image.stem}_{audio.stem}.mp4"
    values: list[tuple[str, Any]] = []
    for key, targets in OVERRIDE_KEYS.items():
        if key in row:
            values.extend(zip(targets, _override_value(key, row[key], len(targets)), strict=True))
    if "set" in row:
        values.extend(set_values(row["set"]))
    return ManifestJob(
        line,
        image,
        audio,
        output,
        emotion=emotion,
        face_box=face_box_value(row["face_box"]) if "face_box" in row else None,
        face_index=integer_value(row["face_index"], "face_index", minimum=0) if "face_index" in row else None,
        seed=integer_value(row["seed"], "seed", minimum=0) if "seed" in row else None,
        values=tuple(values),
        qa=_qa(row),
        motion=input_path(row["motion"], "motion", base) if "motion" in row else None,
        **_emotion_from(row, base),
    )


def _emotion_from(row: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """``ManifestJob`` fields of the emotion-from keys; their options without ``emotion_from`` are refused."""
    if "emotion_from" not in row:
        given = [key for key in EMOTION_FROM_KEYS[1:] if key in row]
        if given:
            raise LineError(f"{', '.join(map(repr, given))} given without 'emotion_from'")
        return {}
    fields: dict[str, Any] = {"emotion_from": input_path(row["emotion_from"], "emotion_from", base)}
    if "emotion_strength" in row:
        strength = number_value(row["emotion_strength"], "emotion_strength")
        if not 0.0 <= strength <= MAX_EMOTION_STRENGTH:
            raise LineError(
                f"'emotion_strength' must be between 0 and {MAX_EMOTION_STRENGTH:g}, got {strength:g}"
            )
        fields["emotion_strength"] = strength
    for key, choices in (("emotion_from_mode", EMOTION_FROM_MODES), ("emotion_embedder", EMOTION_EMBEDDERS)):
        if key in row:
            value = text_value(row[key], key)
            if value not in choices:
                raise LineError(f"{key!r} must be one of {', '.join(choices)}, got {row[key]!r}")
            fields[key] = value
    return fields


def _qa(row: Mapping[str, Any]) -> tuple[float, int] | None:
    """``(threshold, retries)`` when the line sets ``emotion_qa: true`` (defaults: :class:`QASettings`'s).

    ``qa_threshold`` / ``qa_retries`` without ``emotion_qa: true`` are refused rather than ignored.
    """
    enabled = boolean_value(row["emotion_qa"], "emotion_qa") if "emotion_qa" in row else False
    given = [key for key in ("qa_threshold", "qa_retries") if key in row]
    if not enabled:
        if given:
            raise LineError(f"{', '.join(map(repr, given))} given without 'emotion_qa': true")
        return None
    threshold = number_value(row["qa_threshold"], "qa_threshold") if "qa_threshold" in row else 0.5
    if not 0.0 <= threshold <= 1.0:
        raise LineError(f"'qa_threshold' must be between 0 and 1, got {threshold:g}")
    retries = integer_value(row["qa_retries"], "qa_retries", minimum=0) if "qa_retries" in row else 2
    if retries > MAX_QA_RETRIES:
        raise LineError(f"'qa_retries' must be <= {MAX_QA_RETRIES}, got {retries}")
    return (threshold, retries)


def _reject_duplicates(entries: list[ManifestJob | InvalidLine]) -> list[ManifestJob | InvalidLine]:
    first: dict[str, int] = {}
    out: list[ManifestJob | InvalidLine] = []
    for entry in entries:
        if isinstance(entry, ManifestJob):
            key = os.path.normcase(str(entry.output))
            if key in first:
                entry = InvalidLine(
                    entry.line, f"output {entry.output} is also the output of line {first[key]}"
                )
            else:
                first[key] = entry.line
        out.append(entry)
    return out


def _override_value(key: str, value: Any, width: int) -> tuple[Any, ...]:
    """The config value(s) of one override key (a scale may be ``[min, max]`` or ``"min,max"``)."""
    if key in ("crop", "interpolate"):
        return (boolean_value(value, key),)
    if key in _CHOICE_KEYS:
        if text_value(value, key) not in _CHOICE_KEYS[key]:
            raise LineError(f"{key!r} must be one of {', '.join(_CHOICE_KEYS[key])}, got {value!r}")
        return (value.strip(),)
    if key in ("steps", "size"):
        return (integer_value(value, key),)
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    if len(parts) not in (1, width):
        raise LineError(f"{key!r} must be a number or [min, max], got {value!r}")
    numbers = tuple(number_value(part, key) for part in parts)
    return numbers * width if len(numbers) == 1 else numbers
