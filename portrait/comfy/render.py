"""Portrait Render's work (no ComfyUI import): ComfyUI values → :class:`~portrait.inputs.Job` + config →
:func:`portrait.rendering.render_job` → frames, the audio trimmed to them, the frame rate and the sidecar.

The node writes the portrait as a PNG and the speech as a float WAV into a private work folder, builds the
same job and config the CLI builds from ``portrait-gen --image P.png --audio S.wav ... --dump-frames D``
and returns the dumped frames: the CLI's frames, bit for bit. With emotion QA, ``render_with_qa`` keeps
no frame dump, so the frames are decoded from the chosen attempt's video.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from portrait.comfy.convert import read_png_frames, save_png, save_wav, trimmed_audio, uint8_to_image
from portrait.comfy.messages import scrub_paths
from portrait.config import RenderConfig, with_values
from portrait.errors import InputError, PortraitError

if TYPE_CHECKING:
    from portrait.comfy.analysis import EmotionReference, MotionTrack
    from portrait.comfy.engines import EngineHandle
    from portrait.eval.qa import QASettings
    from portrait.inputs import Job

logger = logging.getLogger(__name__)

_D = RenderConfig()
#: Characters that make an emotion spec more than one name (then ``intensity`` must stay 1).
_SPEC_SYNTAX = (":", "+", ",")


@dataclass(frozen=True)
class RenderRequest:
    """Portrait Render's widgets; every default is the CLI's (the packaged config's)."""

    emotion: str = "neutral"
    intensity: float = 1.0
    ref_scale: float = _D.sampling.ref_scale_min
    emo_scale: float = _D.sampling.emo_scale_min
    steps: int = _D.sampling.steps
    seed: int = _D.sampling.seed
    framing: str = "auto"
    interpolate: bool = _D.video.interpolate
    size: int = _D.preprocess.min_resolution
    face_box: str = ""
    face_index: int = -1
    emotion_qa: bool = False
    qa_threshold: float = 0.5
    qa_retries: int = 2

    def config_values(self) -> dict[str, Any]:
        """Dotted config values, as ``portrait-gen``'s flags give them (framing as the web page's)."""
        from portrait.app.request import framing_values

        return {
            "sampling.steps": self.steps,
            "sampling.seed": self.seed,
            "sampling.ref_scale_min": self.ref_scale,
            "sampling.ref_scale_max": self.ref_scale,
            "sampling.emo_scale_min": self.emo_scale,
            "sampling.emo_scale_max": self.emo_scale,
            "preprocess.min_resolution": self.size,
            "video.interpolate": self.interpolate,
            **framing_values(self.framing),
        }

    def emotion_spec(self) -> str:
        """The ``--emotion`` spec: the text, with ``intensity`` appended to a single name (``sad:0.6``).

        The text is always parsed as a spec, never opened as a file (a workflow must not read files).
        """
        from portrait.app.request import emotion_spec

        text = str(self.emotion).strip() or "neutral"
        if self.intensity != 1 and any(mark in text for mark in _SPEC_SYNTAX):
            raise InputError(
                f"intensity {self.intensity:g} applies to one emotion name; the spec {text!r} sets its own "
                "intensities (e.g. happy:0.6+surprised:0.4): leave intensity at 1"
            )
        return emotion_spec(text, self.intensity)

    def qa(self) -> QASettings | None:
        """The emotion-QA settings when asked for."""
        from portrait.eval.qa import QASettings

        return QASettings(threshold=self.qa_threshold, retries=self.qa_retries) if self.emotion_qa else None


@dataclass
class RenderOutput:
    """What Portrait Render returns: (B, H, W, 3) frames in [0, 1], the audio cut to them, the frame rate
    and the sidecar record (server paths reduced to file names)."""

    frames: torch.Tensor
    audio: dict[str, Any]
    fps: float
    info: dict[str, Any] = field(default_factory=dict)


StepCallback = Callable[[int, int, torch.Tensor], None]


def step_callback(
    progress: Callable[[int, int], None] | None, check_cancel: Callable[[], None] | None
) -> StepCallback:
    """``render_job``'s callback: report ``(done, steps)`` after each denoising step, then let
    ``check_cancel`` raise to stop the render between steps."""

    def callback(step: int, steps: int, latents: torch.Tensor) -> None:
        if progress is not None:
            progress(step + 1, steps)
        if check_cancel is not None:
            check_cancel()

    return callback


def build_job(
    request: RenderRequest,
    work: Path,
    image: torch.Tensor,
    audio: Mapping[str, Any],
    motion: MotionTrack | None = None,
    emotion_reference: EmotionReference | None = None,
) -> Job:
    """Write the inputs into ``work`` and make the CLI's job of them (``--dump-frames work/frames``)."""
    from portrait.inputs import Job
    from portrait.motion.track_io import write_track
    from portrait.preprocess.face import parse_face_box

    box = parse_face_box(request.face_box) if request.face_box.strip() else None
    reference = emotion_reference.write(work) if emotion_reference is not None else None
    return Job(
        save_png(image, work / "portrait.png"),
        save_wav(audio, work / "speech.wav", "speech"),
        work / "portrait.mp4",
        emotion=request.emotion_spec(),
        face_box=box,
        face_index=None if request.face_index < 0 else request.face_index,
        seed=request.seed,
        dump_frames=None if request.emotion_qa else work / "frames",
        emotion_from=reference,
        emotion_strength=emotion_reference.strength if emotion_reference is not None else 1.0,
        emotion_from_mode=emotion_reference.mode if emotion_reference is not None else "mean",
        emotion_embedder=emotion_reference.embedder if emotion_reference is not None else "auto",
        motion=write_track(motion.track, work / "motion.json") if motion is not None else None,
    )


def render(
    handle: EngineHandle,
    image: torch.Tensor,
    audio: Mapping[str, Any],
    request: RenderRequest,
    *,
    motion: MotionTrack | None = None,
    emotion_reference: EmotionReference | None = None,
    work_root: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    check_cancel: Callable[[], None] | None = None,
) -> RenderOutput:
    """One Portrait Render: the inputs are prepared and checked before sampling starts; the work folder
    goes in every case. ``check_cancel`` runs before sampling and after every step (raise to stop).

    Raises:
        PortraitError: any input, config or weights problem (paths of the work folder left out).
    """
    from portrait.inputs import prepare
    from portrait.rendering import render_job

    work = Path(tempfile.mkdtemp(prefix="portrait-render-", dir=work_root))
    try:
        cfg = with_values(handle.cfg, request.config_values() | (motion.values if motion is not None else {}))
        qa = request.qa()
        engine = handle.engine()
        job = build_job(request, work, image, audio, motion, emotion_reference)
        prepared = prepare(job, cfg, engine.detector, engine.bank)
        if check_cancel is not None:
            check_cancel()
        logger.info("portrait: sampling %d steps (%.2f s of audio)", cfg.sampling.steps, prepared.duration)
        result = render_job(
            prepared, engine, cfg, qa=qa, evaluate=_qa_evaluator() if qa is not None else None,
            callback=step_callback(progress, check_cancel),
        )  # fmt: skip
        frames = read_png_frames(job.dump_frames) if job.dump_frames is not None else decoded(result.output)
        info = _public_info(result.sidecar)
        seconds = info["video_frames"] / info["fps"]
        return RenderOutput(frames, trimmed_audio(audio, seconds), float(info["fps"]), info)
    except PortraitError as err:
        raise scrub_paths(err, work) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def decoded(video: Path) -> torch.Tensor:
    """Every frame of ``video`` as a ComfyUI ``IMAGE``."""
    from portrait.preprocess.video import iter_frames

    return uint8_to_image(np.stack([frame for _, frame in iter_frames(video)]))


def _public_info(sidecar: Path) -> dict[str, Any]:
    """The sidecar with every absolute path reduced to its file name (the web page's public copy)."""
    from portrait.app.present import public_sidecar

    return json.loads(public_sidecar(sidecar).read_text(encoding="utf-8"))


_evaluator: list[Any] = []


def _qa_evaluator() -> Any:
    """The emotion-QA evaluator, built once per process (its face tools load on the first QA render)."""
    from portrait.eval.qa import default_evaluator

    if not _evaluator:
        _evaluator.append(default_evaluator())
    return _evaluator[0]
