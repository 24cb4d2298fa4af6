"""One-time converter from the DICE-Talk research release to a portrait weights tree (compat §4.7, 8).

:func:`convert_dice_talk` reads the release checkpoints folder::

    SRC/DICE-Talk/{unet,pose_guider,audio_linear,emo_model}.pth
    SRC/stable-video-diffusion-img2vid-xt/{unet,vae,image_encoder,scheduler}/
    SRC/whisper-tiny/                       (config.json, model.safetensors, preprocessor_config.json)
    SRC/examples/emo/<emotion>.npy          (or SRC/emo, SRC/DICE-Talk/emo, SRC/../examples/emo)

and writes the tree of :mod:`portrait.layout` (safetensors + config.json per component, float32 priors,
``manifest.json``), one component at a time (:mod:`portrait.weights.convert_components`). Loading is
strict where the reference was lax: every unexpected, missing or mis-shaped key is an error, except the
documented ones (the emotion classifier moves from ``emotion_model`` to the optional
``emotion_classifier/``; adapter weights absent from ``unet.pth`` start as copies of the SVD
``to_k``/``to_v``, as in the reference), which are reported.
The tree is written into ``DST/.partial-<host>-<pid>-<random>`` and moved into place only when complete;
such folders left by a converter that was killed are removed when the next conversion starts.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file

from portrait.errors import ConfigError, WeightsError
from portrait.files import owned_prefix, sweep_dead_owners
from portrait.layout import EMOTION_PRIOR_KEY, EMOTIONS_DIR, MANIFEST_FILE, RELEASE_EMOTIONS
from portrait.weights import convert_components as parts
from portrait.weights.convert_components import DTYPES, ComponentReport
from portrait.weights.emotion_priors import find_emotion_folder, load_emotion_priors
from portrait.weights.manifest import write_manifest
from portrait.weights.release import RELEASE_DIR, SVD_DIR, WHISPER_DIR
from portrait.weights.release_config import audio_projector_config, emotion_model_config, pose_guider_config

logger = logging.getLogger(__name__)

#: Files a destination folder may hold and still count as empty.
_IGNORED_IN_DST = {"README.md", ".gitignore", ".gitkeep"}
#: Name prefix of the staging folder a conversion writes inside the destination (``.partial-<host>-<pid>-``).
PARTIAL_PREFIX = ".partial-"


@dataclass
class ConversionReport:
    """Result of :func:`convert_dice_talk`: one :class:`ComponentReport` per component and the priors."""

    src: Path
    dst: Path
    dtype: str
    components: dict[str, ComponentReport] = field(default_factory=dict)
    emotions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [f"converted {self.src} -> {self.dst} (dtype {self.dtype})"]
        for rep in self.components.values():
            extra = f", dropped {len(rep.dropped)}" if rep.dropped else ""
            extra += f", filled {len(rep.filled)}" if rep.filled else ""
            what = f"{rep.tensors} tensors {rep.dtype}" if rep.tensors else "config copied"
            lines.append(f"  {rep.name}: {what}{extra}")
            lines.extend(f"    note: {n}" for n in rep.notes)
        lines.append(f"  emotions: {', '.join(self.emotions)}")
        return "\n".join(lines)


def _locate_release(src: Path) -> Path:
    """The release checkpoints folder (``src`` or ``src/checkpoints``), with every part present.

    Raises:
        WeightsError: listing every missing file and where to download it.
    """
    if not src.is_dir():
        raise WeightsError(f"--from-dice-talk {src} is not a folder; pass the release's checkpoints folder")
    if (src / "checkpoints" / RELEASE_DIR).is_dir() and not (src / RELEASE_DIR).is_dir():
        src = src / "checkpoints"
    needed = [f"{RELEASE_DIR}/{n}.pth" for n in ("unet", "pose_guider", "audio_linear", "emo_model")]
    needed += [f"{SVD_DIR}/{n}/config.json" for n in ("unet", "vae", "image_encoder")]
    needed += [f"{SVD_DIR}/scheduler/scheduler_config.json", f"{WHISPER_DIR}/config.json"]
    missing = [n for n in needed if not (src / n).is_file()]
    if missing:
        raise WeightsError(
            f"{src} is not a DICE-Talk checkpoints folder; missing: {', '.join(missing)}. Download "
            "EEEELY/DICE-Talk, stabilityai/stable-video-diffusion-img2vid-xt and openai/whisper-tiny into it"
        )
    return src


def _prepare_dst(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise WeightsError(f"--weights {dst} is a file; pass a folder")
    if dst.is_dir():
        content = sorted(p.name for p in dst.iterdir() if p.name not in _IGNORED_IN_DST)
        if content and not overwrite:
            raise WeightsError(
                f"{dst} is not empty ({', '.join(content[:5])}); pass --overwrite to replace "
                "the weights tree, or choose an empty folder"
            )
    dst.mkdir(parents=True, exist_ok=True)


def _install(tmp: Path, dst: Path) -> None:
    """Move the finished components from ``tmp`` into ``dst`` (replacing old ones), then drop ``tmp``."""
    (dst / MANIFEST_FILE).unlink(missing_ok=True)  # no manifest while the tree is being swapped
    trash = tmp / ".replaced"
    trash.mkdir()
    for entry in sorted(p for p in tmp.iterdir() if p != trash):
        target = dst / entry.name
        if target.exists():
            os.replace(target, trash / entry.name)
        os.replace(entry, target)
    shutil.rmtree(tmp)


def _find_flownet(src: Path) -> Path | None:
    """The release RIFE weights (``RIFE/flownet.pkl`` beside ``DICE-Talk/``), if present."""
    for candidate in (src / "RIFE" / "flownet.pkl", src / "checkpoints" / "RIFE" / "flownet.pkl"):
        if candidate.is_file():
            return candidate
    return None


def _convert_all(src: Path, tmp: Path, dtype: str, emo_folder: Path, report: ConversionReport) -> None:
    """Every component into ``tmp`` (the not-yet-installed tree)."""
    from diffusers import AutoencoderKLTemporalDecoder
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, WhisperConfig, WhisperModel

    from portrait.models.audio import AudioProjector
    from portrait.models.emotion_model import EmotionModel
    from portrait.models.pose_guider import PoseGuider

    comps, release = report.components, src / RELEASE_DIR
    comps["unet"] = parts.convert_unet(src, tmp / "unet", dtype)
    comps["vae"] = parts.resave(
        "vae", src / SVD_DIR / "vae", tmp, dtype, AutoencoderKLTemporalDecoder.from_config, False
    )
    comps["image_encoder"] = parts.resave(
        "image_encoder", src / SVD_DIR / "image_encoder", tmp, dtype,
        lambda c: CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(c)), True,
    )  # fmt: skip
    comps["scheduler"] = parts.convert_scheduler(src, tmp / "scheduler")
    comps["audio_encoder"] = parts.resave(
        "audio_encoder", src / WHISPER_DIR, tmp, dtype,
        lambda c: WhisperModel(WhisperConfig.from_dict(c)), True, strip="model.", tied=("proj_out.weight",),
    )  # fmt: skip
    whisper = parts.read_json(src / WHISPER_DIR / "config.json")
    parts.copy_preprocessor(src, tmp, comps["audio_encoder"], int(whisper.get("num_mel_bins", 80)))
    infer_audio = partial(audio_projector_config, whisper=whisper)
    comps["audio_projector"], _ = parts.convert_module(
        "audio_projector", release / "audio_linear.pth", tmp, dtype, AudioProjector, infer_audio
    )
    comps["emotion_model"], emo_config = parts.convert_module(
        "emotion_model", release / "emo_model.pth", tmp, dtype, EmotionModel, emotion_model_config,
        drop="classifier.",  # the training-only emotion classifier (compat §3), kept just below
    )  # fmt: skip
    classifier = parts.convert_classifier(release / "emo_model.pth", tmp, dtype)
    if classifier is not None:
        comps["emotion_classifier"] = classifier
    comps["pose_guider"], _ = parts.convert_module(
        "pose_guider", release / "pose_guider.pth", tmp, dtype, PoseGuider, pose_guider_config
    )
    flownet = _find_flownet(src)
    if flownet is not None:
        from portrait.weights.rife import convert_flownet

        convert_flownet(flownet, tmp / "interpolation")
        comps["interpolation"] = ComponentReport("interpolation", sources=[str(flownet)], dtype="float32")
    else:
        logger.warning("no RIFE/flownet.pkl under %s: the tree will have no frame interpolation", src)
    (tmp / EMOTIONS_DIR).mkdir()
    priors = load_emotion_priors(emo_folder, RELEASE_EMOTIONS, emo_config["prior_dim"])
    for name, (mu, path) in priors.items():
        save_file({EMOTION_PRIOR_KEY: torch.from_numpy(mu)}, tmp / EMOTIONS_DIR / f"{name}.safetensors")
        report.emotions[name] = str(path)


def convert_dice_talk(
    src: Path, dst: Path, *, dtype: str = "keep", overwrite: bool = False, emotions_dir: Path | None = None
) -> ConversionReport:
    """Convert the DICE-Talk release checkpoints into a portrait weights tree.

    Args:
        src: the release ``checkpoints/`` folder (or the repository root holding it).
        dst: weights tree to write; must be empty (``README.md`` aside) unless ``overwrite``.
        dtype: ``"keep"`` (each component's source dtype; for the UNet the dtype of ``unet.pth``),
            ``"fp16"`` or ``"fp32"``, for the floating tensors of every model file. Priors stay float32.
        overwrite: replace the components of an existing tree.
        emotions_dir: folder of the ``<emotion>.npy`` priors (default: searched next to ``src``).

    Returns:
        A :class:`ConversionReport`.

    Raises:
        WeightsError: missing, unreadable, unsafe or mismatching source files (names the file, key and fix).
        ConfigError: unknown ``dtype``.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    src, dst = _locate_release(Path(src)), Path(dst)
    emo_folder = find_emotion_folder(src, emotions_dir)
    created = not dst.exists()
    if dst.is_dir():  # staging folders of converters that were killed (their owner is gone)
        sweep_dead_owners(dst, (PARTIAL_PREFIX,))
    _prepare_dst(dst, overwrite)
    report = ConversionReport(src=src, dst=dst, dtype=dtype)
    tmp = dst / f"{owned_prefix(PARTIAL_PREFIX)}{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        _convert_all(src, tmp, dtype, emo_folder, report)
        _install(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(dst.iterdir()):
            dst.rmdir()
        raise
    write_manifest(dst)
    logger.info("converted %s into %s", src, dst)
    return report
