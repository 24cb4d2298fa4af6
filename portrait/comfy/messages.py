"""What ComfyUI's error panel shows for a mistake a user can fix: one line, phrased for the nodes.

A :class:`~portrait.errors.PortraitError` raised inside a node becomes a :class:`PortraitNodeError` whose
message is :func:`portrait.errors.describe` with :data:`COMFY_HINTS` (the node and widget to change), raised
from the node's own ``execute`` without the library's frames (``from None``). Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from portrait.errors import (
    HINT_DLIB_DETECTOR,
    HINT_FACE_BOX,
    HINT_SHORTER_AUDIO,
    HINT_USE_CPU,
    PortraitError,
    describe,
)

#: The nodes' words for the library's hints (see portrait.errors).
COMFY_HINTS = {
    HINT_FACE_BOX: "give the face position in Portrait Render's face_box (X,Y,W,H)",
    HINT_SHORTER_AUDIO: "trim the audio",
    HINT_USE_CPU: "set Portrait Loader's device to cpu",
    HINT_DLIB_DETECTOR: "or set Portrait Loader's detector to dlib",
}


class PortraitNodeError(PortraitError):
    """A user's mistake, as ComfyUI shows it (the message already carries the hint)."""


def node_message(err: BaseException) -> str:
    """The one line the error panel shows for ``err``."""
    return describe(err, COMFY_HINTS)


@contextmanager
def user_errors(node: str) -> Iterator[None]:
    """Turn a :class:`PortraitError` raised inside into one :class:`PortraitNodeError` line for ``node``."""
    try:
        yield
    except PortraitNodeError:
        raise
    except PortraitError as err:
        raise PortraitNodeError(f"{node}: {node_message(err)}") from None


def scrub_paths(err: PortraitError, folder: Path) -> PortraitError:
    """``err`` with the node's private work ``folder`` left out of its message (``folder/portrait.png`` reads
    ``portrait.png``): the panel names the input, not a temporary path."""
    text = str(err)
    for path in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True):
        text = text.replace(path + os.sep, "").replace(path, "the work folder")
    err.args = (text,)
    return err
