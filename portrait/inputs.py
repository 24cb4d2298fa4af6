"""A job and its prepared inputs: everything is checked and decoded once, before any model loads.

:func:`prepare` reads the photo (decode, face, crop, mask, tensors), the audio (16 kHz mono samples), the
emotion (a parsed schedule, a custom prior, or a reference clip's expressions) and the driving motion
(retargeted motion maps) and returns one :class:`PreparedJob`; no model is needed here (the expression
classifier and face detector are small CPU tools passed in). :func:`portrait.conditioning.encode` then runs
the engine's encoders on it and :func:`portrait.generate.generate` renders it; nothing is decoded, detected
or parsed twice. Every failure is a :class:`~portrait.errors.PortraitError` that names the file and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from portrait.boxes import Box, CropBox
from portrait.config import RenderConfig
from portrait.constants import (
    EMOTION_EMBEDDERS,
    EMOTION_PRIOR_SUFFIXES,
    EMOTION_TIMELINE_SUFFIXES,
    UNIT_SECONDS,
)
from portrait.errors import HINT_FACE_BOX, InputError
from portrait.preprocess.audio import load_audio
from portrait.preprocess.detectors import FaceDetector
from portrait.preprocess.emotion_from_reference import is_audio_only, reference_emotion
from portrait.preprocess.emotion_spec import (
    EmotionSchedule,
    check_schedule_fits,
    load_timeline_file,
    parse_emotion,
)
from portrait.preprocess.face import check_face_box, crop_image, reference_crop_box, select_face
from portrait.preprocess.face_expressions import ExpressionClassifier
from portrait.preprocess.image import PortraitTensors, load_image, prepare_portrait
from portrait.render.paste import wants_full_frame

logger = logging.getLogger(__name__)

#: Bank name given to a custom prior file (``--emotion my_prior.safetensors``).
CUSTOM_PRIOR = "custom"
NEUTRAL_NAME = "neutral"


@dataclass(frozen=True)
class Job:
    """One generation request. ``emotion``: a spec (see preprocess.emotion_spec), a prior or a timeline file.

    Per-job render settings (guidance, motion retargeting, ...) are not here: they are config values
    (``portrait.config.with_values``), so the CLI, batch lines, the app and the nodes spell them one way.
    """

    image: Path
    audio: Path
    output: Path
    emotion: str = "neutral"
    face_box: Box | None = None
    face_index: int | None = None
    seed: int | None = None
    dump_frames: Path | None = None
    #: A reference image/video whose facial expression sets the emotion (replaces ``emotion``).
    emotion_from: Path | None = None
    emotion_strength: float = 1.0
    emotion_from_mode: str = "mean"
    #: ``auto`` (the learned embedder when the weights have ``emotion_embedder/`` and the mode is mean),
    #: ``learned`` or ``classifier`` (the expression classifier's mapping); see docs/emotion.md.
    emotion_embedder: str = "auto"
    #: A driving video or track ``.json`` whose head motion the portrait follows (docs/motion.md).
    motion: Path | None = None


@dataclass(frozen=True)
class ImageInfo:
    """Where the face is and how the photo became the working image (also the sidecar's fields).

    Attributes:
        face_box: (x, y, w, h) of the face in the photo's pixels, rounded to 0.01.
        face_detection: ``"given"`` or ``"<detector> (<n> found)"``.
        full_frame: the animated crop is pasted back into the whole photo.
        crop_box: (x0, y0, x1, y1) of the reference crop in the photo's pixels (may reach outside it), or
            None when the whole photo is the working image.
        size: (width, height) of the working image the pipeline renders.
    """

    face_box: Box
    face_detection: str
    full_frame: bool
    crop_box: CropBox | None
    size: tuple[int, int]

    def sidecar(self) -> dict[str, Any]:
        """The sidecar's fields (``crop_box`` only when the photo was cropped)."""
        info: dict[str, Any] = {
            "face_box": list(self.face_box),
            "face_detection": self.face_detection,
            "full_frame": self.full_frame,
        }
        if self.crop_box is not None:
            info["crop_box"] = list(self.crop_box)
        return info | {"size": list(self.size)}


@dataclass(frozen=True)
class PreparedJob:
    """A job with every input decoded and checked once (:func:`prepare`); what the engine encodes.

    Attributes:
        photo: the decoded photo (EXIF-rotated RGB), before any crop.
        portrait: the pipeline's image tensors of the (cropped) working image.
        image: face box, crop box, full-frame flag and working size.
        samples: (S,) float32 mono audio at ``sample_rate`` (16 kHz).
        schedule: the emotion schedule over time.
        extra_priors: bank entries the job brings itself (a custom prior file), name → (1, D).
        image_key: what the image side depends on (for reusing identity encodings across jobs).
        emotion_info: sidecar fields of the emotion (``{"emotion_from": ...}`` for a reference clip).
        motion_maps: (N, 3, H, W) float32 motion maps in [0, 1] at the working size (``job.motion``), or None.
        motion_info: sidecar record of the motion (source, mode, gains, per-second pose summary), {} without.
        motion_energy: (N,) float64 head-motion energy of the retargeted landmarks per frame (face sizes
            per second), the release-weights-only path's input (``portrait.motion.bucket``); None without.
        embedder_inputs: inputs of the learned emotion embedder (``portrait.conditioning.learned_emotion``):
            ``{"visual": (T_v, C) float32 classifier probabilities}`` or ``{"audio_samples": (S,) float32}``
            (an audio-only reference); None when the emotion does not come from the learned embedder.
    """

    job: Job
    photo: Image.Image
    portrait: PortraitTensors
    image: ImageInfo
    samples: np.ndarray
    sample_rate: int
    schedule: EmotionSchedule
    extra_priors: dict[str, torch.Tensor] = field(default_factory=dict)
    image_key: tuple = ()
    emotion_info: dict[str, Any] = field(default_factory=dict)
    motion_maps: np.ndarray | None = None
    motion_info: dict[str, Any] = field(default_factory=dict)
    motion_energy: np.ndarray | None = None
    embedder_inputs: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def photo_array(self) -> np.ndarray | None:
        """(H, W, 3) uint8 photo to paste into in full-frame mode; None otherwise."""
        return np.asarray(self.photo) if self.image.full_frame else None


# ---------------------------------------------------------------------------------------------- inputs
def check_output(job: Job) -> None:
    """Refuse an output that would overwrite an input or land in a folder we cannot write."""
    out = job.output.resolve()
    for source in (job.image, job.audio):
        if source.exists() and out == source.resolve():
            raise InputError(f"output {job.output} is the same file as the input {source}; choose another -o")
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"output folder {folder} does not exist; create it or choose another -o")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {folder} is not writable; choose another -o")
    if out.suffix.lower() != ".mp4":
        raise InputError(f"output {job.output} must end in .mp4")


def prepare(
    job: Job,
    cfg: RenderConfig,
    detector: FaceDetector | None,
    emotion_names: Iterable[str],
    *,
    expression_classifier: ExpressionClassifier | None = None,
    check: Callable[[], None] | None = None,
) -> PreparedJob:
    """Check and decode every input of ``job`` once (image → face → crop, audio, emotion); no model needed.

    ``emotion_names``: the names of the emotion bank the job may use. ``detector`` may be None only when the
    job gives its face box. ``expression_classifier``: for ``job.emotion_from`` (default: the offline
    ``fer`` classifier, loaded on the CPU only when needed). ``check``: called before each frame of a
    reference clip or driving video is analysed; it raises to stop the work (the app's Cancel).
    """
    photo, image, tensors, samples, schedule, extra = _decode_inputs(job, cfg, detector, emotion_names)
    pre = cfg.preprocess
    emotion_info: dict[str, Any] = {}
    embedder_inputs = None
    if job.emotion_from is not None:
        schedule, emotion_info, embedder_inputs = _reference_emotion(
            job, list(emotion_names), len(samples) / pre.sample_rate, cfg, detector, expression_classifier,
            check,
        )  # fmt: skip
    check_schedule_fits(schedule, len(samples) / pre.sample_rate)
    key = image_cache_key(job, cfg)
    prepared = PreparedJob(
        job, photo, tensors, image, samples, pre.sample_rate, schedule, extra, key, emotion_info,
        embedder_inputs=embedder_inputs,
    )  # fmt: skip
    return _with_motion(prepared, cfg, detector, check) if job.motion is not None else prepared


def check_job(
    job: Job, cfg: RenderConfig, detector: FaceDetector | None, emotion_names: Iterable[str]
) -> None:
    """:func:`prepare`'s checks without its costly analyses (PortraitError as :func:`prepare` raises it).

    A reference clip is only checked to be a readable picture or video (nothing classified), a motion
    source to be a valid track JSON or a readable video (nothing tracked): the batch checks every line
    so before any model loads, and its worker's :func:`prepare` analyses each clip once.
    """
    from portrait.motion.driving import check_motion_source
    from portrait.preprocess.emotion_from_reference import check_reference_file, check_reference_options

    *_, samples, schedule, _ = _decode_inputs(job, cfg, detector, emotion_names)
    if job.emotion_from is None:
        check_schedule_fits(schedule, len(samples) / cfg.preprocess.sample_rate)
    else:
        check_reference_options(job.emotion_from_mode, job.emotion_strength)
        embedder = embedder_choice(job, cfg)
        if not (embedder == "learned" and is_audio_only(Path(job.emotion_from))):
            check_reference_file(job.emotion_from)
    if job.motion is not None:
        check_motion_source(job.motion)


def _decode_inputs(
    job: Job, cfg: RenderConfig, detector: FaceDetector | None, emotion_names: Iterable[str]
) -> tuple[Image.Image, ImageInfo, PortraitTensors, np.ndarray, EmotionSchedule, dict[str, torch.Tensor]]:
    """The output check, the photo (decoded, face, crop, tensors), the audio samples and the emotion."""
    check_output(job)
    photo = load_image(job.image)
    image, tensors = _prepare_image(job, photo, cfg, detector)
    pre = cfg.preprocess
    samples = load_audio(job.audio, pre.sample_rate, max_seconds=pre.max_audio_units * UNIT_SECONDS)
    schedule, extra = _prepare_emotion(job.emotion, list(emotion_names), cfg.sampling.emotion_transition)
    return photo, image, tensors, samples, schedule, extra


def _with_motion(
    prepared: PreparedJob, cfg: RenderConfig, detector: FaceDetector | None, check: Callable[[], None] | None
) -> PreparedJob:
    """Add the job's motion maps: the driving track retargeted onto the portrait's own working image."""
    from portrait.motion.driving import motion_for_job
    from portrait.preprocess.audio_features import SAMPLES_PER_UNIT

    job, pre, crop = prepared.job, cfg.preprocess, prepared.image.crop_box
    if not Path(job.motion).is_file():
        raise InputError(f"motion source {job.motion} does not exist (a driving video or a track .json)")
    image = prepared.photo
    if crop is not None:  # the crop of _prepare_image: the face box of the tensors is in its pixels
        image = crop_image(image, crop)
    units = min(len(prepared.samples) // SAMPLES_PER_UNIT, pre.max_audio_units)
    num_frames = max(units // pre.audio_units_per_frame, 1)
    tensors, m = prepared.portrait, cfg.motion
    motion = motion_for_job(
        job.motion, image, tensors.face_box, tensors.size, num_frames, cfg.sampling.fps,
        mode=m.retarget, gains=(m.pose_gain, m.expression_gain), mouth=m.mouth, extend=m.extend,
        detector=detector, check=check,
    )  # fmt: skip
    return replace(prepared, motion_maps=motion.maps, motion_info=motion.summary, motion_energy=motion.energy)


def _reference_emotion(
    job: Job,
    names: list[str],
    duration: float,
    cfg: RenderConfig,
    detector: FaceDetector | None,
    classifier: ExpressionClassifier | None,
    check: Callable[[], None] | None = None,
) -> tuple[EmotionSchedule, dict[str, Any], dict[str, Any] | None]:
    """Schedule, sidecar record and learned-embedder inputs of ``--emotion-from``.

    The classifier mapping (emotion_reference) always runs on a picture; with the learned embedder its
    per-frame probabilities are also its visual input and generate replaces the schedule. An audio-only
    reference is accepted only by the learned embedder (its audio branch).
    """
    from portrait.preprocess.emotion_from_reference import check_strength

    embedder = embedder_choice(job, cfg)
    if embedder == "learned" and is_audio_only(Path(job.emotion_from)):
        check_strength(job.emotion_strength)
        pre = cfg.preprocess
        reference = load_audio(job.emotion_from, pre.sample_rate, pre.max_audio_units * UNIT_SECONDS)
        record = {"file": str(job.emotion_from), "mode": job.emotion_from_mode, "embedder": "learned"}
        record |= {"strength": job.emotion_strength, "input": "audio"}
        placeholder = parse_emotion(NEUTRAL_NAME, names, cfg.sampling.emotion_transition)
        return placeholder, {"emotion_from": record}, {"audio_samples": reference}
    if classifier is None:
        from portrait.weights.expression_classifier import load_expression_classifier

        classifier = load_expression_classifier()
    if detector is None:
        from portrait.preprocess.detectors import DlibDetector

        detector = DlibDetector()
    schedule, info = reference_emotion(
        job.emotion_from, classifier, detector, names, duration, mode=job.emotion_from_mode, check=check,
        strength=job.emotion_strength, transition=cfg.sampling.emotion_transition, keep_frames=True,
    )  # fmt: skip
    frames = info.pop("frames")
    info["embedder"] = embedder
    if embedder == "classifier":
        return schedule, {"emotion_from": info}, None
    info["input"] = "video+audio"
    return schedule, {"emotion_from": info}, {"visual": np.asarray(frames["probs"], dtype=np.float32)}


def embedder_choice(job: Job, cfg: RenderConfig) -> str:
    """``"learned"`` or ``"classifier"`` for ``job.emotion_from`` (``auto``: learned when the weights tree
    has ``emotion_embedder/`` and the mode is ``mean``: the embedder gives one prior per clip)."""
    from portrait.weights.load import has_component, resolve_weights_root

    choice = job.emotion_embedder
    if choice not in EMOTION_EMBEDDERS:
        raise InputError(f"--emotion-embedder must be one of {', '.join(EMOTION_EMBEDDERS)}, got {choice!r}")
    root = resolve_weights_root(cfg.runtime.weights)
    present = has_component(root, "emotion_embedder")
    if choice == "learned" and not present:
        raise InputError(
            f"--emotion-embedder learned: the weights tree {root} has no emotion_embedder/ component (the "
            "release ships none; it needs training, docs/emotion.md); use --emotion-embedder classifier"
        )
    if choice == "learned" and job.emotion_from_mode != "mean":
        raise InputError(
            "the learned emotion embedder gives one prior per clip: use --emotion-from-mode mean with it, "
            "or --emotion-embedder classifier for a timeline"
        )
    if choice == "auto":
        return "learned" if present and job.emotion_from_mode == "mean" else "classifier"
    return choice


def _prepare_image(
    job: Job, image: Image.Image, cfg: RenderConfig, detector: FaceDetector | None
) -> tuple[ImageInfo, PortraitTensors]:
    """Face (given or detected), the reference's crop box, optional crop, the image tensors (compat §1.2–1.4).

    In full-frame mode (``video.full_frame``; "auto": when the face crop is smaller than the photo) the face
    crop is animated and pasted back into the whole photo afterwards.
    """
    if job.face_box is not None:
        check_face_box(job.face_box, image.size)
        box, how = job.face_box, "given"
    else:
        if detector is None:
            raise InputError(f"no face detector to find the face in {job.image}", hint=HINT_FACE_BOX)
        faces = detector.detect(np.asarray(image)[:, :, ::-1].copy())
        face = select_face(faces, cfg.preprocess.face_selection, job.face_index, source=str(job.image))
        box, how = face.box, f"{detector.name} ({len(faces)} found)"
    face_box = tuple(round(float(v), 2) for v in box)
    crop = reference_crop_box(box, image.width, image.height, cfg.preprocess.expand_ratio)
    full_frame = wants_full_frame(cfg.video.full_frame, crop, image.size)
    cropped = cfg.preprocess.crop or full_frame
    if cropped:
        image = crop_image(image, crop)
        box = (box[0] - crop[0], box[1] - crop[1], box[2], box[3])
    tensors = prepare_portrait(image, box, cfg.preprocess.min_resolution, cfg.preprocess.face_area)
    info = ImageInfo(face_box, how, full_frame, tuple(crop) if cropped else None, tuple(tensors.size))
    return info, tensors


def _prepare_emotion(
    spec: str, names: list[str], transition: float
) -> tuple[EmotionSchedule, dict[str, torch.Tensor]]:
    """An emotion spec, a prior file (.safetensors / release .npy) or a timeline file (.json/.yaml)."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in EMOTION_PRIOR_SUFFIXES:
        from portrait.weights.emotion_priors import load_prior_file

        prior = load_prior_file(path)
        return parse_emotion(CUSTOM_PRIOR, [CUSTOM_PRIOR], transition), {CUSTOM_PRIOR: prior}
    if suffix in EMOTION_TIMELINE_SUFFIXES:
        if not path.is_file():
            raise InputError(f"emotion timeline file {path} does not exist")
        return load_timeline_file(path, names, transition), {}
    return parse_emotion(spec, names, transition), {}


def image_cache_key(job: Job, cfg: RenderConfig) -> tuple:
    """What the prepared image depends on: the file (path, size, mtime), the face choice and preprocessing."""
    stat = job.image.stat()
    pre = cfg.preprocess
    return (
        str(job.image.resolve()), stat.st_size, stat.st_mtime_ns, job.face_box, job.face_index, pre.crop,
        pre.expand_ratio, pre.min_resolution, pre.face_area, pre.face_selection,
        cfg.sampling.noise_aug_strength, cfg.video.full_frame,
    )  # fmt: skip
