"""Exception hierarchy of portrait.

Every error a user can cause or fix is a :class:`PortraitError`; its message names the offending value.
What the user should do is a structured :attr:`PortraitError.hint` (one of the ``HINT_*`` names), never
flag text: each entry point phrases it in its own words (the CLI names a flag, the web page a widget) with
:func:`describe`. The CLI prints the result as one line and exits 1.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Give the face position by hand (CLI ``--face-box``; web page: Advanced → Face box).
HINT_FACE_BOX = "face_box"
#: Shorten the audio (or raise the audio length limit).
HINT_SHORTER_AUDIO = "shorter_audio"
#: Run on the CPU instead of a missing GPU.
HINT_USE_CPU = "use_cpu"
#: Use the offline dlib face detector.
HINT_DLIB_DETECTOR = "dlib_detector"


class PortraitError(Exception):
    """Base class of every error that the user can act on.

    Args:
        message: what is wrong, naming the offending value.
        hint: what to do about it, as a ``HINT_*`` name that each entry point phrases (None: nothing to add).
    """

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def describe(err: BaseException, hints: Mapping[str, str]) -> str:
    """One line: the message, then ``hints[err.hint]`` when the entry point has words for that hint."""
    text = " ".join(str(err).split())
    phrase = hints.get(getattr(err, "hint", None) or "")
    return f"{text}; {phrase}" if phrase else text


class ConfigError(PortraitError):
    """A configuration file or ``--set`` override is invalid (unknown key, wrong type, bad value)."""


class InputError(PortraitError):
    """An input file or tensor is unusable (unreadable, wrong shape, out of range)."""


class NoFaceError(InputError):
    """No face was found in the portrait image."""


class WeightsError(PortraitError):
    """A weights tree, file or tensor is missing, corrupt or does not match the expected layout."""


class FFmpegError(PortraitError):
    """ffmpeg is missing or failed; the message carries its stderr."""


class DistributedError(PortraitError):
    """A multi-process (torchrun / srun) run cannot start or lost one of its ranks."""
