"""Exception hierarchy of portrait.

Every error a user can cause or fix is a :class:`PortraitError`; its message names the offending value
and says what to do. The CLI prints ``str(error)`` as one line and exits 1.
"""

from __future__ import annotations


class PortraitError(Exception):
    """Base class of every error that the user can act on."""


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
