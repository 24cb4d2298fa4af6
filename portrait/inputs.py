"""A job and its prepared inputs: everything is checked and decoded once, before any model loads.

:func:`prepare` reads the photo (decode, face, crop, mask, tensors), the audio (16 kHz mono samples) and the
emotion (a parsed schedule, or a custom prior) and returns one :class:`PreparedJob` that
:func:`portrait.generate.generate` consumes; nothing is decoded, detected or parsed twice. Every failure is a
:class:`~portrait.errors.PortraitError` that names the file and the fix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from portrait.config import MotionConfig, RenderConfig
from portrait.constants import EMOTION_PRIOR_SUFFIXES, EMOTION_TIMELINE_SUFFIXES, UNIT_SECONDS
from portrait.engine import Engine
from portrait.errors import HINT_FACE_BOX, InputError
from portrait.models.audio import frame_audio_windows, whisper_hidden_states
from portrait.models.identity import IdentityEncoding
from portrait.preprocess.audio import load_audio
from portrait.preprocess.audio_features import AudioFeatures, audio_features
from portrait.preprocess.detectors import FaceDetector
from portrait.preprocess.emotion_from_reference import reference_emotion
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


@dataclass(frozen=True)
class Job:
    """One generation request. ``emotion``: a spec (see preprocess.emotion), a prior or a timeline file."""

    image: Path
    audio: Path
    output: Path
    emotion: str = "neutral"
    face_box: tuple[float, float, float, float] | None = None
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
    #: Per-job overrides of the ``motion`` config section (None: ``cfg.motion``; see :func:`motion_settings`).
    retarget: str | None = None
    motion_gain: tuple[float, float] | None = None
    mouth: str | None = None
    motion_extend: str | None = None


@dataclass(frozen=True)
class PreparedJob:
    """A job with every input decoded and checked once (:func:`prepare`); what ``generate`` consumes.

    Attributes:
        photo: the decoded photo (EXIF-rotated RGB), before any crop.
        portrait: the pipeline's image tensors of the (cropped) working image.
        image_info: face box, how it was found, crop box, full-frame flag and working size (sidecar fields).
        full_frame: paste the animated crop back into ``photo``.
        samples: (S,) float32 mono audio at ``sample_rate`` (16 kHz).
        schedule: the emotion schedule over time.
        extra_priors: bank entries the job brings itself (a custom prior file), name → (1, D).
        image_key: what the image side depends on (for reusing identity encodings across jobs).
    """

    job: Job
    photo: Image.Image
    portrait: PortraitTensors
    image_info: dict[str, Any]
    full_frame: bool
    samples: np.ndarray
    sample_rate: int
    schedule: EmotionSchedule
    extra_priors: dict[str, torch.Tensor] = field(default_factory=dict)
    image_key: tuple = ()
    #: Sidecar fields of the emotion (``{"emotion_from": ...}`` for a reference clip), merged by generate.
    emotion_info: dict[str, Any] = field(default_factory=dict)
    #: (N, 3, H, W) float32 motion maps in [0, 1] at the working size (``job.motion``), or None.
    motion_maps: np.ndarray | None = None
    #: Sidecar record of the motion (source, mode, gains, per-second pose summary), {} without motion.
    motion_info: dict[str, Any] = field(default_factory=dict)
    #: (N,) float64 head-motion energy of the retargeted landmarks per frame (face sizes per second), the
    #: release-weights-only path's input (``portrait.motion.bucket``); None without motion.
    motion_energy: np.ndarray | None = None
    #: Inputs of the learned emotion embedder, consumed in generate by ``learned_emotion.learned_emotion``:
    #: ``{"visual": (T_v, C) float32 classifier probabilities}`` or ``{"audio_samples": (S,) float32}`` (an
    #: audio-only reference); None when the emotion does not come from the learned embedder.
    embedder_inputs: dict[str, Any] | None = None

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def photo_array(self) -> np.ndarray | None:
        """(H, W, 3) uint8 photo to paste into in full-frame mode; None otherwise."""
        return np.asarray(self.photo) if self.full_frame else None


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
) -> PreparedJob:
    """Check and decode every input of ``job`` once (image → face → crop, audio, emotion); no model needed.

    ``emotion_names``: the names of the emotion bank the job may use. ``detector`` may be None only when the
    job gives its face box. ``expression_classifier``: for ``job.emotion_from`` (default: the offline
    ``fer`` classifier, loaded on the CPU only when needed).
    """
    check_output(job)
    photo = load_image(job.image)
    image_info, tensors, full_frame = _prepare_image(job, photo, cfg, detector)
    pre = cfg.preprocess
    samples = load_audio(job.audio, pre.sample_rate, max_seconds=pre.max_audio_units * UNIT_SECONDS)
    schedule, extra = _prepare_emotion(job.emotion, list(emotion_names), cfg.sampling.emotion_transition)
    emotion_info: dict[str, Any] = {}
    embedder_inputs = None
    if job.emotion_from is not None:
        schedule, emotion_info, embedder_inputs = _reference_emotion(
            job, list(emotion_names), len(samples) / pre.sample_rate, cfg, detector, expression_classifier
        )
    check_schedule_fits(schedule, len(samples) / pre.sample_rate)
    key = image_cache_key(job, cfg)
    prepared = PreparedJob(
        job, photo, tensors, image_info, full_frame, samples, pre.sample_rate, schedule, extra, key,
        emotion_info, embedder_inputs=embedder_inputs,
    )  # fmt: skip
    return _with_motion(prepared, cfg, detector) if job.motion is not None else prepared


def _with_motion(prepared: PreparedJob, cfg: RenderConfig, detector: FaceDetector | None) -> PreparedJob:
    """Add the job's motion maps: the driving track retargeted onto the portrait's own working image."""
    from dataclasses import replace

    from portrait.motion.driving import motion_for_job
    from portrait.preprocess.audio_features import SAMPLES_PER_UNIT

    job, pre, info = prepared.job, cfg.preprocess, prepared.image_info
    if not Path(job.motion).is_file():
        raise InputError(f"motion source {job.motion} does not exist (a driving video or a track .json)")
    image = prepared.photo
    if "crop_box" in info:  # the crop of _prepare_image: the face box of the tensors is in its pixels
        image = crop_image(image, tuple(info["crop_box"]))
    units = min(len(prepared.samples) // SAMPLES_PER_UNIT, pre.max_audio_units)
    num_frames = max(units // pre.audio_units_per_frame, 1)
    tensors, m = prepared.portrait, motion_settings(job, cfg)
    motion = motion_for_job(
        job.motion, image, tensors.face_box, tensors.size, num_frames, cfg.sampling.fps,
        mode=m.retarget, gains=(m.pose_gain, m.expression_gain), mouth=m.mouth, extend=m.extend,
        detector=detector,
    )  # fmt: skip
    return replace(prepared, motion_maps=motion.maps, motion_info=motion.summary, motion_energy=motion.energy)


def motion_settings(job: Job, cfg: RenderConfig) -> MotionConfig:
    """The job's motion options: the ``motion`` config section with the job's own fields (when set) on top."""
    m = cfg.motion
    pose, expression = job.motion_gain if job.motion_gain is not None else (m.pose_gain, m.expression_gain)
    return MotionConfig(
        retarget=job.retarget or m.retarget,
        pose_gain=float(pose),
        expression_gain=float(expression),
        mouth=job.mouth or m.mouth,
        extend=job.motion_extend or m.extend,
    )


#: ``--retarget fixed`` without a landmark guider: this motion bucket for the whole clip (experimental).
FIXED_MOTION_BUCKET = 2


def motion_arguments(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Extra pipeline arguments for the job's motion and its sidecar record (both empty without motion).

    With a ``landmark_guider`` in the weights the maps steer the head frame by frame. With the release
    weights alone one warning says so and the motion bucket is steered instead (experimental): ``fixed``
    lowers it for the whole clip (a calmer head); the other modes give the pipeline a per-frame table
    ``motion_bucket_ids`` (N,) from the retargeted head-motion energy (``portrait.motion.bucket``) that it
    averages per window. A prepared job without an energy table (none was computed) changes nothing.
    """
    if prepared.motion_maps is None:
        return {}, {}
    info = dict(prepared.motion_info)
    if getattr(engine.pipe, "landmark_guider", None) is not None:
        info["applied"] = "landmark_guider"
        return {"motion_maps": torch.from_numpy(prepared.motion_maps)}, info
    mode = motion_settings(prepared.job, cfg).retarget
    energy = getattr(prepared, "motion_energy", None)
    if mode == "fixed":
        instead = "fixed: a lower motion bucket instead, experimental"
    elif energy is None:
        instead = "ignored"
    else:
        instead = "its motion energy sets the motion bucket per window instead, experimental"
    message = "the weights have no landmark_guider: --motion cannot steer the head (%s); see docs/motion.md"
    logger.warning(message, instead)
    if mode != "fixed":
        if energy is None:
            info["applied"] = "none"
            return {}, info
        return _energy_buckets(energy, cfg, info)
    bucket = min(cfg.sampling.motion_bucket_id, FIXED_MOTION_BUCKET)
    info.update(applied="motion_bucket", motion_bucket_id=bucket)
    return {"motion_bucket_id": bucket}, info


def _energy_buckets(
    energy: np.ndarray, cfg: RenderConfig, info: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``{"motion_bucket_ids": (N,) float64 tensor}`` from per-frame energy, and the sidecar's record."""
    from portrait.motion import bucket as mb

    center = cfg.sampling.motion_bucket_id
    table = mb.motion_bucket_table(energy, center=center)
    info.update(
        applied="motion_bucket",
        motion_bucket={
            "source": "head_motion_energy",
            "scale": {"energy": [0.0, mb.ENERGY_MID, mb.ENERGY_HIGH], "bucket": [
                min(mb.BUCKET_LOW, center), float(center), max(mb.BUCKET_HIGH, center)]},
            "window": "mean of the window's frames, rounded",
            "per_second": mb.per_second_buckets(table, cfg.sampling.fps),
        },
    )  # fmt: skip
    return {"motion_bucket_ids": torch.from_numpy(table)}, info


def _reference_emotion(
    job: Job,
    names: list[str],
    duration: float,
    cfg: RenderConfig,
    detector: FaceDetector | None,
    classifier: ExpressionClassifier | None,
) -> tuple[EmotionSchedule, dict[str, Any], dict[str, Any] | None]:
    """Schedule, sidecar record and learned-embedder inputs of ``--emotion-from``.

    The classifier mapping (emotion_reference) always runs on a picture; with the learned embedder its
    per-frame probabilities are also its visual input and generate replaces the schedule. An audio-only
    reference is accepted only by the learned embedder (its audio branch).
    """
    from portrait.preprocess.emotion_from_reference import _audio_only, check_strength

    embedder = embedder_choice(job, cfg)
    if embedder == "learned" and _audio_only(Path(job.emotion_from)):
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
        job.emotion_from,
        classifier,
        detector,
        names,
        duration,
        mode=job.emotion_from_mode,
        strength=job.emotion_strength,
        transition=cfg.sampling.emotion_transition,
        keep_frames=True,
    )
    frames = info.pop("frames")
    info["embedder"] = embedder
    if embedder == "classifier":
        return schedule, {"emotion_from": info}, None
    info["input"] = "video+audio"
    return schedule, {"emotion_from": info}, {"visual": np.asarray(frames["probs"], dtype=np.float32)}


#: ``--emotion-embedder`` choices.
EMBEDDER_CHOICES = ("auto", "learned", "classifier")
NEUTRAL_NAME = "neutral"


def embedder_choice(job: Job, cfg: RenderConfig) -> str:
    """``"learned"`` or ``"classifier"`` for ``job.emotion_from`` (``auto``: learned when the weights tree
    has ``emotion_embedder/`` and the mode is ``mean``: the embedder gives one prior per clip)."""
    from portrait.weights.load import resolve_weights_root

    choice = job.emotion_embedder
    if choice not in EMBEDDER_CHOICES:
        raise InputError(f"--emotion-embedder must be one of {', '.join(EMBEDDER_CHOICES)}, got {choice!r}")
    root = resolve_weights_root(cfg.runtime.weights)
    present = (root / "emotion_embedder" / "config.json").is_file()
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
) -> tuple[dict[str, Any], PortraitTensors, bool]:
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
    info: dict[str, Any] = {"face_box": [round(float(v), 2) for v in box], "face_detection": how}
    crop = reference_crop_box(box, image.width, image.height, cfg.preprocess.expand_ratio)
    full_frame = wants_full_frame(cfg.video.full_frame, crop, image.size)
    info["full_frame"] = full_frame
    if cfg.preprocess.crop or full_frame:
        image = crop_image(image, crop)
        box = (box[0] - crop[0], box[1] - crop[1], box[2], box[3])
        info["crop_box"] = list(crop)
    tensors = prepare_portrait(image, box, cfg.preprocess.min_resolution, cfg.preprocess.face_area)
    info["size"] = list(tensors.size)
    return info, tensors, full_frame


def _prepare_emotion(
    spec: str, names: list[str], transition: float
) -> tuple[EmotionSchedule, dict[str, torch.Tensor]]:
    """An emotion spec, a prior file (.safetensors / release .npy) or a timeline file (.json/.yaml)."""
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in EMOTION_PRIOR_SUFFIXES:
        prior = load_prior_file(path)
        return parse_emotion(CUSTOM_PRIOR, [CUSTOM_PRIOR], transition), {CUSTOM_PRIOR: prior}
    if suffix in EMOTION_TIMELINE_SUFFIXES:
        if not path.is_file():
            raise InputError(f"emotion timeline file {path} does not exist")
        return load_timeline_file(path, names, transition), {}
    return parse_emotion(spec, names, transition), {}


def load_prior_file(path: Path) -> torch.Tensor:
    """A custom emotion prior (1, D): safetensors holding ``mu``, or a release ``.npy`` (safe reader)."""
    if not path.is_file():
        raise InputError(f"emotion prior file {path} does not exist")
    if path.suffix.lower() == ".npy":
        from portrait.weights.emotion_priors import load_emotion_prior

        prior = torch.from_numpy(load_emotion_prior(path))
    else:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises several types for a corrupt file
            raise InputError(f"cannot read emotion prior {path}: {err}") from err
        if "mu" not in tensors:
            raise InputError(f"emotion prior {path} has no tensor 'mu'")
        prior = tensors["mu"]
    return prior.float().reshape(1, -1)


def emotion_bank(prepared: PreparedJob, engine: Engine) -> dict[str, torch.Tensor]:
    """The engine's bank plus the job's own priors, each checked against the bank's prior size."""
    bank = dict(engine.bank)
    dim = next(iter(bank.values())).shape[-1]
    for name, prior in prepared.extra_priors.items():
        if prior.shape[-1] != dim:
            raise InputError(
                f"emotion prior {prepared.job.emotion} has {prior.shape[-1]} values; the bank uses {dim}"
            )
        bank[name] = prior
    return bank


# ------------------------------------------------------------------------------------ model-side inputs
def audio_windows(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig
) -> tuple[AudioFeatures, torch.Tensor]:
    """Whisper features of the job's samples and the per-frame windows (N, 10, blocks, channels)."""
    pre = cfg.preprocess
    features = audio_features(
        prepared.samples, engine.feature_extractor, pre.max_audio_units, pre.audio_units_per_frame
    )
    hidden = whisper_hidden_states(engine.pipe.audio_encoder.encoder, features.mel)
    windows = frame_audio_windows(hidden, features.audio_len, features.num_frames, pre.audio_units_per_frame)
    return features, windows


#: Identity encodings reused across jobs of one process: key from :func:`image_cache_key`.
IdentityCache = dict[tuple, IdentityEncoding]


def image_cache_key(job: Job, cfg: RenderConfig) -> tuple:
    """What the prepared image depends on: the file (path, size, mtime), the face choice and preprocessing."""
    stat = job.image.stat()
    pre = cfg.preprocess
    return (
        str(job.image.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        job.face_box,
        job.face_index,
        pre.crop,
        pre.expand_ratio,
        pre.min_resolution,
        pre.face_area,
        pre.face_selection,
        cfg.sampling.noise_aug_strength,
        cfg.video.full_frame,
    )


def encode_identity(
    prepared: PreparedJob, engine: Engine, cfg: RenderConfig, cache: IdentityCache | None = None
) -> IdentityEncoding | None:
    """CLIP embedding and VAE latents of the portrait, from ``cache`` when possible.

    None when noise augmentation is on: the pipeline then encodes with its seeded noise (RNG draw #1).
    """
    if cfg.sampling.noise_aug_strength != 0:
        return None
    if cache is not None and prepared.image_key in cache:
        return cache[prepared.image_key]
    tensors = prepared.portrait
    zeros = torch.zeros_like(tensors.ref_image)
    identity = engine.pipe.encode_identity(tensors.ref_image, tensors.clip_image, zeros, 0.0)
    if cache is not None:
        cache[prepared.image_key] = identity
    return identity
