"""Untrusted JSON: its structure is measured before it is parsed (nesting, number of values, long numbers).

:func:`json.loads` recurses once per ``[``/``{`` (a file of ``[[[[...`` is a ``RecursionError``) and builds
Python objects far larger than the text (``[[],[],...`` is about 25 bytes of objects per byte of text).
:func:`loads_bounded` therefore first blanks every string, measures the deepest nesting and counts the
values (commas plus containers, an upper bound) with C-speed passes over the bytes, refuses what exceeds
the caller's limits, and only then parses, refusing NaN/Infinity and integers longer than
:data:`MAX_DIGITS` digits. Errors are :class:`~portrait.errors.InputError` messages that never quote the
file's content (a file named by mistake, e.g. a secret, is not echoed into logs or results).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from portrait.errors import InputError

__all__ = ["MAX_DIGITS", "json_structure", "loads_bounded", "read_json_bounded"]

#: Longest integer accepted (digits); Python refuses more than 4300 with a ValueError of its own.
MAX_DIGITS = 32

#: A JSON string (escapes included), unrolled so that long strings match without backtracking.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
#: Every byte but the four brackets (deleted by ``bytes.translate`` to leave the brackets alone).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: Brackets examined at a time when the nesting is measured (bounds the scratch memory).
_CHUNK = 1 << 20


def json_structure(data: bytes) -> tuple[int, int]:
    """``(deepest nesting, upper bound of the number of values)`` of the JSON text ``data``.

    Strings are blanked first, so brackets and commas inside them do not count. The bound counts every
    comma and container once, plus one (an exact count for compact JSON without empty containers).
    """
    import numpy as np  # here: the batch manifest reader (and so `portrait-gen --help`) stays light

    blank = _STRING.sub(b'""', data)
    brackets = blank.translate(None, _NOT_BRACKETS)
    values = blank.count(b",") + len(brackets) // 2 + 1
    deepest = depth = 0
    for start in range(0, len(brackets), _CHUNK):
        part = np.frombuffer(brackets, np.uint8, count=min(_CHUNK, len(brackets) - start), offset=start)
        steps = np.where((part == ord("[")) | (part == ord("{")), 1, -1).astype(np.int64)
        levels = depth + np.cumsum(steps)
        deepest = max(deepest, int(levels.max()))
        depth = int(levels[-1])
    return deepest, values


def _reject_constant(name: str) -> Any:
    raise InputError(f"contains {name}; only finite numbers are allowed")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise InputError(f"contains an integer of {len(text.lstrip('-'))} digits (at most {MAX_DIGITS})")
    return int(text)


def loads_bounded(data: bytes | str, what: str, *, max_depth: int, max_values: int) -> Any:
    """Parse the JSON text ``data`` once its structure is within the limits.

    Args:
        data: the text (bytes are decoded as UTF-8).
        what: how errors name the input (``"track face.json"``).
        max_depth: deepest ``[``/``{`` nesting accepted.
        max_values: most values (numbers, strings, containers, ...) accepted.

    Raises:
        InputError: not UTF-8, nested deeper than ``max_depth``, more than ``max_values`` values, not valid
            JSON, NaN/Infinity, or an integer longer than :data:`MAX_DIGITS` digits. The message names
            the limit or the position, never the content.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    depth, values = json_structure(raw)
    if depth > max_depth:
        raise InputError(f"{what}: JSON nested deeper than {max_depth} levels")
    if values > max_values:
        raise InputError(f"{what}: up to {values} JSON values, more than the {max_values} allowed")
    try:
        text = raw.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(text, parse_constant=_reject_constant, parse_int=_bounded_int)
    except UnicodeDecodeError as err:
        raise InputError(f"{what} is not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{what} is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        ) from None
    except InputError as err:
        raise InputError(f"{what} {err}") from None
    except (RecursionError, ValueError) as err:  # nothing the checks above let through should reach this
        raise InputError(f"{what} cannot be parsed as JSON ({type(err).__name__})") from None


def read_json_bounded(path: str | Path, what: str, *, max_bytes: int, max_depth: int, max_values: int) -> Any:
    """:func:`loads_bounded` of the file at ``path``, refused unread when it is larger than ``max_bytes``.

    Raises:
        InputError: missing or not a regular file, too large, or see :func:`loads_bounded`.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} does not exist or is not a file")
    try:
        with path.open("rb") as stream:  # never more than max_bytes + 1, even if the file grows meanwhile
            data = stream.read(max_bytes + 1)
    except OSError as err:
        raise InputError(f"{what} cannot be read: {err.strerror or type(err).__name__}") from None
    if len(data) > max_bytes:
        raise InputError(f"{what} is larger than the {max_bytes} bytes allowed")
    return loads_bounded(data, what, max_depth=max_depth, max_values=max_values)
