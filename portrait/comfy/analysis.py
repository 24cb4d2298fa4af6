"""The work of Portrait Motion Track, Emotion From Reference and Evaluate (no ComfyUI import).

Each writes its ComfyUI frames as a clip with the renders' encoder
(:func:`~portrait.comfy.convert.write_clip`) and calls what the CLI calls on a file: ``motion extract``
(a driving video → a landmark track), ``--emotion-from`` (a reference clip → an emotion mixture or
timeline) and ``eval`` (a video → metrics, plus the emotion-QA verdict of ``--emotion-qa``). A track file
is read from ComfyUI's input folder only.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from portrait.comfy.convert import check_fps, image_to_uint8, save_png, save_wav, write_clip
from portrait.comfy.messages import scrub_paths
from portrait.config import RenderConfig, load_config
from portrait.constants import EMOTION_EMBEDDERS, EMOTION_FROM_MODES
from portrait.errors import InputError, PortraitError

if TYPE_CHECKING:
    from portrait.comfy.engines import EngineHandle
    from portrait.motion.track import Track

_D = RenderConfig().motion


@contextmanager
def work_folder(root: Path | None, prefix: str) -> Iterator[Path]:
    """A private folder for one node run, removed afterwards; its path is left out of error messages."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    try:
        yield work
    except PortraitError as err:
        raise scrub_paths(err, work) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


_cache: dict[tuple[str, Any], Any] = {}


def _cached(key: tuple[str, Any], build: Callable[[], Any]) -> Any:
    """One instance per process of a CPU tool (expression classifier, evaluation tools)."""
    if key not in _cache:
        _cache[key] = build()
    return _cache[key]


# ------------------------------------------------------------------------------------------------ motion
@dataclass(frozen=True)
class MotionTrack:
    """A driving track and how it lands on the portrait (the ``PORTRAIT_MOTION`` value).

    Attributes:
        track: the landmark track (``portrait-gen motion extract``'s JSON, in memory).
        values: the ``motion.*`` config values Portrait Render applies with it.
    """

    track: Track
    values: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # ComfyUI prints input values in its error records: keep it short
        return f"MotionTrack({len(self.track.times)} frames at {self.track.fps:g} fps)"

    def summary(self) -> dict[str, Any]:
        """Frames, rate, length, gaps and the retarget settings (JSON-ready)."""
        track = self.track
        gaps = [[round(a, 3), round(b, 3), kind] for a, b, kind in track.gaps]
        facts = {"frames": len(track.times), "fps": track.fps, "duration_s": round(track.duration, 3)}
        return facts | {"size": list(track.size), "gaps": gaps, **self.values}


def motion_values(
    retarget: str = _D.retarget,
    pose_gain: float = _D.pose_gain,
    expression_gain: float = _D.expression_gain,
    mouth: str = _D.mouth,
    extend: str = _D.extend,
) -> dict[str, Any]:
    """``motion.*`` config values, validated as ``--retarget --motion-gain --mouth --motion-extend`` are."""
    values = {
        "motion.retarget": retarget,
        "motion.pose_gain": pose_gain,
        "motion.expression_gain": expression_gain,
        "motion.mouth": mouth,
        "motion.extend": extend,
    }
    load_config(values=values)  # ConfigError naming the key
    return values


def track_from_frames(
    frames: torch.Tensor,
    fps: float,
    *,
    face_index: int | None = None,
    max_seconds: float = 600.0,
    work_root: Path | None = None,
) -> Track:
    """The landmark track of the face in driving-video ``frames`` (``motion extract`` of them)."""
    from portrait.motion.driving import load_motion_source

    pixels = image_to_uint8(frames, "driving video")
    fps = check_fps(fps, "driving video's frame rate")
    if face_index is not None and face_index < 0:
        raise InputError(f"face index must be 0 or more, got {face_index}")
    if not max_seconds > 0:
        raise InputError(f"max seconds must be > 0, got {max_seconds}")
    with work_folder(work_root, "portrait-motion-") as work:
        clip = write_clip(pixels, fps, work / "driving.mp4")
        return load_motion_source(clip, face_index=face_index, max_seconds=max_seconds)


def track_from_file(name: str, input_dir: Path) -> Track:
    """A track ``.json`` of ComfyUI's input folder (``name`` relative to it; nothing outside it is read)."""
    from portrait.motion.track_io import read_track

    folder = input_dir.resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or path.suffix.lower() != ".json":
        raise InputError(f"track file {name!r} must be a .json file in ComfyUI's input folder")
    if not path.is_file():
        raise InputError(f"track file {name!r} is not in ComfyUI's input folder")
    return read_track(path)


# ---------------------------------------------------------------------------------------------- emotion
@dataclass(frozen=True)
class EmotionReference:
    """A reference clip whose expressions set the emotion (the ``PORTRAIT_EMOTION`` value): what
    ``--emotion-from CLIP --emotion-from-mode MODE --emotion-strength S --emotion-embedder E`` give.

    Attributes:
        frames: (B, H, W, 3) uint8 RGB frames; fps: their rate.
    """

    frames: np.ndarray
    fps: float
    mode: str = "mean"
    strength: float = 1.0
    embedder: str = "auto"

    def __repr__(self) -> str:
        return f"EmotionReference({len(self.frames)} frames, {self.mode}, strength {self.strength:g})"

    def write(self, folder: Path) -> Path:
        """The clip as a file in ``folder`` (a PNG for one frame, else an mp4)."""
        return write_clip(self.frames, self.fps, folder / "emotion_reference.mp4")


def emotion_reference(
    handle: EngineHandle,
    frames: torch.Tensor,
    fps: float,
    *,
    mode: str = "mean",
    strength: float = 1.0,
    embedder: str = "auto",
    work_root: Path | None = None,
) -> tuple[EmotionReference, dict[str, Any]]:
    """The reference and what it gives over the engine's emotion bank (``emotion_from`` sidecar record:
    class probabilities and the schedule's keyframes; a timeline spans the clip's own length here and the
    speech's in the render)."""
    from portrait.preprocess.emotion_from_reference import check_strength, reference_emotion
    from portrait.weights.expression_classifier import load_expression_classifier
    from portrait.weights.load import emotion_names, resolve_weights_root

    if mode not in EMOTION_FROM_MODES:
        raise InputError(f"mode must be one of {', '.join(EMOTION_FROM_MODES)}, got {mode!r}")
    if embedder not in EMOTION_EMBEDDERS:
        raise InputError(f"embedder must be one of {', '.join(EMOTION_EMBEDDERS)}, got {embedder!r}")
    check_strength(strength)
    reference = EmotionReference(
        image_to_uint8(frames, "emotion reference"), check_fps(fps), mode, strength, embedder
    )
    names = emotion_names(resolve_weights_root(handle.cfg.runtime.weights))
    if not names:
        raise InputError("the weights tree has no emotion bank; check Portrait Loader's weights")
    classifier = _cached(("expression", None), load_expression_classifier)
    with work_folder(work_root, "portrait-emotion-") as work:
        path = reference.write(work)
        duration = len(reference.frames) / reference.fps
        _, info = reference_emotion(
            path, classifier, _detector(handle), names, duration, mode=mode, strength=strength
        )
    info["file"] = "emotion reference"
    return reference, info | {"embedder": embedder}


def _detector(handle: EngineHandle) -> Any:
    """The engine's face detector, else dlib's (what ``prepare`` falls back to)."""
    from portrait.preprocess.detectors import DlibDetector

    detector = handle.engine().detector
    return detector if detector is not None else DlibDetector()


# ------------------------------------------------------------------------------------------- evaluation
def evaluate(
    frames: torch.Tensor,
    fps: float,
    *,
    audio: Mapping[str, Any] | None = None,
    reference: torch.Tensor | None = None,
    emotion: str = "",
    qa_threshold: float = 0.5,
    weights_root: Path | None = None,
    work_root: Path | None = None,
) -> dict[str, Any]:
    """``portrait-gen eval`` of the frames (muxed with ``audio``) against ``reference`` and ``emotion``,
    plus the emotion-QA verdict (:func:`portrait.eval.qa.passed` with ``qa_threshold``).

    Returns:
        ``{"result": evaluate_video's dict, "qa": scores + "passed"}``.
    """
    from portrait.eval.evaluate import BANK_NAMES, evaluate_video
    from portrait.eval.qa import QASettings, passed, score_attempt
    from portrait.eval.toolkit import default_tools
    from portrait.preprocess.emotion_spec import parse_emotion

    settings = QASettings(threshold=qa_threshold)
    schedule = parse_emotion(emotion.strip(), BANK_NAMES) if emotion.strip() else None
    pixels = image_to_uint8(frames, "video")
    fps = check_fps(fps)
    tools = _cached(("eval", weights_root), lambda: default_tools(weights_root))
    with work_folder(work_root, "portrait-eval-") as work:
        wav = save_wav(audio, work / "audio.wav") if audio is not None else None
        video = write_clip(pixels, fps, work / "video.mp4", audio=wav)
        ref = save_png(reference, work / "reference.png", what="reference") if reference is not None else None
        result = evaluate_video(video, reference=ref, audio=wav, emotion_schedule=schedule, tools=tools)
        # score_attempt hands the prepared job only to its evaluator: here the result is already there.
        scores = score_attempt(video, cast(Any, None), lambda _video, _prepared: result)
    scores["passed"] = passed(scores, settings)
    result["video"] = "frames"
    return {"result": result, "qa": scores | {"threshold": settings.threshold}}
