"""The web demo's "Emotion from a reference" logic (L4): the reference upload's job fields, "Save as emotion".

Nothing here imports gradio, and torch / the classifier load only when a clip is classified. Errors stay
:class:`~portrait.errors.PortraitError` and never name a server path (the page shows them through
:meth:`portrait.app.handler.Studio.message`).
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from portrait.constants import EMOTION_FROM_MODES, MAX_EMOTION_STRENGTH
from portrait.errors import InputError

if TYPE_CHECKING:
    from portrait.app.handler import Studio
    from portrait.app.request import AppRequest

logger = logging.getLogger(__name__)

__all__ = ["REFERENCE_SUFFIXES", "reference_fields", "reference_clip", "save_emotion"]

#: Uploads accepted as an emotion reference: a picture or a video with a face.
REFERENCE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".mp4", ".mov", ".m4v")
REFERENCE_SUFFIXES += (".webm", ".mkv", ".avi")
#: Serialises "Save as emotion" (two visitors saving one name: the second is refused).
_SAVE_LOCK = threading.Lock()


def reference_clip(path: str | Path | None) -> Path | None:
    """The uploaded reference picture / video (None: none given); refuses a missing upload or another kind."""
    if path is None or not str(path).strip():
        return None
    path = Path(path)
    if not path.is_file():
        raise InputError(f"the reference clip upload {path.name} is missing; upload it again")
    if path.suffix.lower() not in REFERENCE_SUFFIXES:
        raise InputError(
            f"reference clip {path.name}: use a picture or a video with a face "
            f"({', '.join(REFERENCE_SUFFIXES)})"
        )
    return path


def _strength(value: Any) -> float:
    if value is None:
        return 1.0
    try:
        strength = float(value)
    except (TypeError, ValueError):
        raise InputError(f"emotion strength must be a number, got {value!r}") from None
    if not math.isfinite(strength) or not 0 <= strength <= MAX_EMOTION_STRENGTH:
        raise InputError(f"emotion strength must be between 0 and {MAX_EMOTION_STRENGTH:g}, got {value!r}")
    return strength


def reference_fields(request: AppRequest) -> dict[str, Any]:
    """:class:`~portrait.inputs.Job` fields of the request's reference clip ({} without one).

    Raises:
        InputError: a missing or unsupported upload, an unknown mode or a strength outside [0, 2].
    """
    clip = reference_clip(request.emotion_from)
    if clip is None:
        return {}
    mode = request.emotion_from_mode or "mean"
    if mode not in EMOTION_FROM_MODES:
        raise InputError(f"emotion-from mode {mode!r} must be one of {', '.join(EMOTION_FROM_MODES)}")
    # The page offers the classifier mapping (one mixture or a timeline); auto picks the learned embedder
    # for a mean when the weights have one, as on the command line.
    return {
        "emotion_from": clip,
        "emotion_from_mode": mode,
        "emotion_strength": _strength(request.emotion_strength),
    }


def save_emotion(
    studio: Studio, name: str | None, clip: str | Path | None, strength: Any = None
) -> list[str]:
    """Add bank entry ``name`` computed from the uploaded ``clip`` to the server's weights tree.

    Only when the operator enabled it (``studio.save_emotions``: ``--allow-save-emotion``, which needs
    ``--auth``), and while the bank holds fewer than ``studio.max_custom_emotions`` custom entries. The prior
    is the clip's mean mixture over the bank (``emotion_reference.reference_prior``), written with
    ``weights.emotion_bank.add_emotion`` and added to the loaded bank, so renders and
    :meth:`Studio.emotion_names` see it at once. Returns the bank's names afterwards.

    Raises:
        InputError: saving is off, the cap is reached, no clip, an invalid name, a release name, a case
        variant of an entry or one that exists (the page never overwrites), or a clip without a usable face.
    """
    from portrait.preprocess.emotion_from_reference import reference_prior
    from portrait.weights.emotion_bank import add_emotion

    if not studio.save_emotions:
        raise InputError(
            "saving emotions is off on this server (the operator enables it with --allow-save-emotion and "
            "--auth); the reference still sets the emotion of a render"
        )
    name = (name or "").strip()
    engine = studio.engine()
    _check_room(studio, name, engine.bank)
    path = reference_clip(clip)
    if path is None:
        raise InputError("no reference clip given; upload a picture or a video with a face first")
    prior, records = reference_prior([path], studio.expression_classifier(), engine.detector, engine.bank,
                                     strength=_strength(strength))  # fmt: skip
    with _SAVE_LOCK:
        _check_room(studio, name, engine.bank)  # another visitor may have saved meanwhile
        add_emotion(engine.weights_root, name, prior)
        engine.bank[name] = prior.to(next(iter(engine.bank.values())).dtype)
    logger.info("saved emotion %r from a reference clip (top class %s)", name, records[0]["top"])
    return studio.emotion_names()


def _check_room(studio: Studio, name: str, bank: dict[str, Any]) -> None:
    """InputError unless ``name`` is a valid new name and the bank has room for one more custom entry."""
    from portrait.layout import RELEASE_EMOTIONS
    from portrait.weights.emotion_bank import check_new_name

    check_new_name(name, [entry for entry in bank if entry != name])  # invalid, release, case variant
    if name in bank:
        raise InputError(f"emotion {name!r} already exists; choose another name (the page never overwrites)")
    custom = [entry for entry in bank if entry not in RELEASE_EMOTIONS]
    if len(custom) >= studio.max_custom_emotions:
        raise InputError(
            f"the emotion bank already holds {len(custom)} custom emotions, the most this server allows; "
            "ask the operator to remove some (`portrait-gen emotions remove NAME`)"
        )
