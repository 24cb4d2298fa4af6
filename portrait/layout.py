"""The on-disk layout of a portrait weights tree (names only; no I/O, no heavy imports).

A weights tree is a folder holding one sub-folder per component, each with the component's architecture in
``config.json`` (or ``scheduler_config.json``) next to a single safetensors file, plus ``emotions/`` with one
prior per emotion and ``manifest.json`` with the sha256 of every file. :mod:`portrait.weights.load` reads it,
:mod:`portrait.weights.convert` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Component:
    """One loadable component of the weights tree.

    Attributes:
        name: attribute name on the pipeline and sub-folder name in the tree.
        library: ``"diffusers"``, ``"transformers"`` or ``"portrait"`` (where the class lives).
        class_name: class to instantiate from ``config_file``.
        config_file: architecture file inside the sub-folder.
        weights_file: safetensors file inside the sub-folder (``None`` for the scheduler).
    """

    name: str
    library: str
    class_name: str
    config_file: str = "config.json"
    weights_file: str | None = "diffusion_pytorch_model.safetensors"


COMPONENTS: tuple[Component, ...] = (
    Component("unet", "portrait", "PortraitUNet"),
    Component("vae", "diffusers", "AutoencoderKLTemporalDecoder"),
    Component(
        "image_encoder", "transformers", "CLIPVisionModelWithProjection", weights_file="model.safetensors"
    ),
    Component("scheduler", "diffusers", "EulerDiscreteScheduler", "scheduler_config.json", None),
    Component("audio_encoder", "transformers", "WhisperModel", weights_file="model.safetensors"),
    Component("audio_projector", "portrait", "AudioProjector"),
    Component("emotion_model", "portrait", "EmotionModel"),
    Component("pose_guider", "portrait", "PoseGuider"),
)

#: Optional components: generation works without them (interpolation off → 12.5 fps output; no landmark
#: guider → ``--motion`` cannot steer the head, docs/motion.md).
OPTIONAL_COMPONENTS: tuple[Component, ...] = (
    Component("interpolation", "portrait", "IFNet"),
    Component("landmark_guider", "portrait", "LandmarkGuider"),
    # The learned audio-visual emotion embedder (portrait.models.emotion_embedder).
    Component("emotion_embedder", "portrait", "EmotionEmbedder", weights_file="model.safetensors"),
    # The release's latent 22-way emotion classifier from emo_model.pth (kept, unused at inference).
    Component("emotion_classifier", "portrait", "EmotionClassifier"),
)

#: Whisper feature-extractor settings, stored next to the audio encoder.
AUDIO_PREPROCESSOR_FILE = "audio_encoder/preprocessor_config.json"
#: Folder of emotion priors: ``emotions/<name>.safetensors``, one float32 tensor ``"mu"`` of shape (1, D).
EMOTIONS_DIR = "emotions"
EMOTION_PRIOR_KEY = "mu"
#: The eight emotions of the DICE-Talk release, in the order of its demo.
RELEASE_EMOTIONS: tuple[str, ...] = (
    "angry",
    "contempt",
    "disgusted",
    "fear",
    "happy",
    "neutral",
    "sad",
    "surprised",
)
#: sha256 of every file of the tree, written by the converter, checked by ``portrait-gen doctor``.
MANIFEST_FILE = "manifest.json"


def component(name: str) -> Component:
    """Return the component called ``name`` (KeyError with the valid names otherwise)."""
    for comp in COMPONENTS + OPTIONAL_COMPONENTS:
        if comp.name == name:
            return comp
    known = ", ".join(c.name for c in COMPONENTS + OPTIONAL_COMPONENTS)
    raise KeyError(f"unknown component {name!r}; known: {known}")


#: sha256 digests of ``face_detector/yoloface_v5m.pt`` (TorchScript: loading it runs code from the file) that
#: may be loaded without the user naming a digest. Empty: the digest of the release file (EEEELY/DICE-Talk)
#: has not been verified yet, so nothing is pinned; the user allows a file with ``preprocess.yolo_sha256``
#: (``--yolo-sha256``). Put the release digest here once it is checked.
YOLO_SHA256_PINNED: tuple[str, ...] = ()
