"""Typed values of one manifest line: strings, paths (inputs, the confined output), numbers, booleans, face
boxes, ``set`` overrides.

Each parser raises :class:`LineError` naming the key; the line then becomes an ``InvalidLine``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import yaml

from portrait.boxes import Box

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class LineError(Exception):
    """A problem with one manifest line (becomes an :class:`InvalidLine`)."""


def text_value(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LineError(f"{key!r} must be a non-empty string, got {value!r}")
    if any(ord(char) < 32 for char in value):
        raise LineError(f"{key!r} contains a control character (NUL, newline, ...): {value!r}")
    return value.strip()


def input_path(value: Any, key: str, base: Path) -> Path:
    path = Path(text_value(value, key)).expanduser()
    return Path(os.path.normpath(path if path.is_absolute() else base / path))


def output_path(value: Any, out_root: Path) -> Path:
    """``output``: a relative ``.mp4`` name joined to ``out_root``; refuses what could land outside it."""
    name = text_value(value, "output")
    if (
        PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        raise LineError(f"output {name!r} is an absolute path; give a name relative to --out-dir")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise LineError(f"output {name!r} contains '..'; outputs must stay inside --out-dir")
    if not name.lower().endswith(".mp4") or name.lower().endswith(".partial.mp4"):
        raise LineError(f"output {name!r} must end in .mp4 (and not .partial.mp4)")
    path = (out_root / name).resolve()
    if not path.is_relative_to(out_root):
        raise LineError(f"output {name!r} resolves to {path}, outside --out-dir {out_root}")
    return path


def integer_value(value: Any, key: str, minimum: int | None = None) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise LineError(f"{key!r} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineError(f"{key!r} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise LineError(f"{key!r} must be >= {minimum}, got {value}")
    return value


def number_value(value: Any, key: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise LineError(f"{key!r} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LineError(f"{key!r} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise LineError(f"{key!r} must be a finite number, got {value!r}")
    return float(value)


def boolean_value(value: Any, key: str) -> bool:
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    if not isinstance(value, bool):
        raise LineError(f"{key!r} must be true or false, got {value!r}")
    return value


def face_box_value(value: Any) -> Box:
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else None
    if parts is None or len(parts) != 4:
        raise LineError(f"'face_box' must be X,Y,W,H (four numbers), got {value!r}")
    x, y, w, h = (number_value(part, "face_box") for part in parts)
    if not (w > 0 and h > 0):
        raise LineError(f"'face_box' {value!r} must have a positive width and height")
    return (x, y, w, h)


def set_values(value: Any) -> list[tuple[str, Any]]:
    """``set``: a mapping of dotted config keys, or ``"a.b=1; c.d=x"``; ``runtime.*`` is per batch only."""
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split(";") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise LineError(f"'set' must be 'section.key=value; ...', got {value!r}")
        try:
            value = {k.strip(): yaml.safe_load(v) for k, _, v in pairs}
        except yaml.YAMLError as err:
            raise LineError(f"'set' {value!r}: cannot parse a value: {err}") from None
    if not isinstance(value, dict):
        raise LineError(f"'set' must be an object of dotted config keys, got {value!r}")
    for key in value:
        if not isinstance(key, str) or "." not in key or key.startswith("runtime."):
            raise LineError(f"'set' key {key!r}: give section.key (runtime.* is set for the whole batch)")
    return sorted(value.items())
