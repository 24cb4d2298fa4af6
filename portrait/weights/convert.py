"""One-time converter from the DICE-Talk research release to a portrait weights tree (compat §4.7, 8).

:func:`convert_dice_talk` reads the release checkpoints folder::

    SRC/DICE-Talk/{unet,pose_guider,audio_linear,emo_model}.pth
    SRC/stable-video-diffusion-img2vid-xt/{unet,vae,image_encoder,scheduler}/
    SRC/whisper-tiny/                       (config.json, model.safetensors, preprocessor_config.json)
    SRC/examples/emo/<emotion>.npy          (or SRC/emo, SRC/DICE-Talk/emo, SRC/../examples/emo)

and writes the tree of :mod:`portrait.layout` (safetensors + config.json per component, float32 priors,
``manifest.json``). Loading is strict where the reference was lax: every unexpected, missing or mis-shaped
key is an error, except the documented ones (the emotion classifier moves from ``emotion_model`` to the
optional ``emotion_classifier/``; adapter weights absent
from ``unet.pth`` start as copies of the SVD ``to_k``/``to_v``, as in the reference), which are reported.
The tree is written into ``DST/.partial-<host>-<pid>-<random>`` and moved into place only when complete;
such folders left by a converter that was killed are removed when the next conversion starts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from portrait.errors import ConfigError, WeightsError
from portrait.ffmpeg import owned_prefix, sweep_dead_owners
from portrait.layout import (
    AUDIO_PREPROCESSOR_FILE,
    COMPONENTS,
    EMOTION_PRIOR_KEY,
    EMOTIONS_DIR,
    MANIFEST_FILE,
    OPTIONAL_COMPONENTS,
    RELEASE_EMOTIONS,
    component,
)
from portrait.weights import release as rel
from portrait.weights.load import file_sha256
from portrait.weights.release import RELEASE_DIR, SVD_DIR, WHISPER_DIR

logger = logging.getLogger(__name__)

DTYPES = {"keep": None, "fp16": torch.float16, "fp32": torch.float32}
#: Files a destination folder may hold and still count as empty.
_IGNORED_IN_DST = {"README.md", ".gitignore", ".gitkeep"}
#: Name prefix of the staging folder a conversion writes inside the destination (``.partial-<host>-<pid>-``).
PARTIAL_PREFIX = ".partial-"
_IP_KEY = re.compile(r"^(?P<attn>.+)\.processor\.to_(?P<kv>[kv])_ip\.\d+\.weight$")


@dataclass
class ComponentReport:
    """What the converter did for one component.

    Attributes:
        name: component (sub-folder) name.
        sources: files read.
        tensors: tensors written.
        dtype: dtype of the floating tensors written.
        dropped: source keys deliberately not written.
        filled: written keys absent from the main source → how they were filled.
        notes: anything else worth knowing (prefix stripped, default config created, ...).
    """

    name: str
    sources: list[str] = field(default_factory=list)
    tensors: int = 0
    dtype: str = ""
    dropped: list[str] = field(default_factory=list)
    filled: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


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


def write_manifest(root: Path, sources: Mapping[str, Any] | None = None) -> Path:
    """Write ``root/manifest.json``: the sha256 of every file of the component folders and ``emotions/``.

    ``sources`` (the download's record of each hub file: revision, sha256, verified) is stored under
    ``"sources"``. Written to a temporary name and renamed, so a manifest only exists for a complete tree.
    """
    files: dict[str, str] = {}
    for top in [c.name for c in COMPONENTS + OPTIONAL_COMPONENTS] + [EMOTIONS_DIR, "face_detector"]:
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = file_sha256(path)
    manifest = {"format": "portrait-weights", "version": 1, "files": dict(sorted(files.items()))}
    if sources:
        manifest["sources"] = dict(sorted(sources.items()))
    tmp = root / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST_FILE)
    return root / MANIFEST_FILE


def _save(out: Path, name: str, tensors: rel.StateDict, rep: ComponentReport, dtype: str, ref=()) -> None:
    """Cast the floating tensors and write ``out/<weights file of component name>``.

    ``dtype="keep"`` takes the commonest floating dtype of ``ref`` (default: of ``tensors``).
    """
    target = DTYPES[dtype]
    if target is None:
        counts = Counter(t.dtype for t in (list(ref) or tensors.values()) if t.is_floating_point())
        target = counts.most_common(1)[0][0] if counts else torch.float32
    written, storages = {}, set()
    for key, value in tensors.items():
        value = (value.to(target) if value.is_floating_point() else value).contiguous()
        if value.untyped_storage().data_ptr() in storages:  # safetensors refuses shared memory
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        written[key] = value
    tensors = written
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / component(name).weights_file, metadata={"format": "pt"})
    rep.tensors, rep.dtype = len(tensors), str(target).removeprefix("torch.")
    logger.info("%s: wrote %d tensors (%s)", name, rep.tensors, rep.dtype)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: unreadable JSON config ({err}); re-download it") from err


def _shapes(tensors: rel.StateDict) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in tensors.items()}


def _convert_unet(src: Path, out: Path, dtype: str) -> ComponentReport:
    """SVD base UNet + adapter copies of to_k/to_v + every key of ``unet.pth`` overlaid (compat §4.5, 4.7)."""
    from portrait.models.unet import PortraitUNet

    rep = ComponentReport("unet")
    base_dir, pth = src / SVD_DIR / "unet", src / RELEASE_DIR / "unet.pth"
    with torch.device("meta"):
        model = PortraitUNet.from_config(rel.unet_config(_read_json(base_dir / "config.json")))
    expected = _shapes(model.state_dict())
    ip_keys = {k for k in expected if _IP_KEY.match(k)}
    base_file = rel.find_weights_file(base_dir, "diffusion_pytorch_model")
    base_expected = {k: v for k, v in expected.items() if k not in ip_keys}
    rel.check_keys(rel.file_shapes(base_file), base_expected, base_file, "the SVD UNet")
    overlay, rep.notes = rel.load_pth(pth)
    rel.check_keys(_shapes(overlay), expected, pth, "the DICE-Talk UNet", allow_missing=True)
    rep.sources = [str(base_file), str(pth)]

    # Keys unet.pth lacks come from the SVD base; adapter keys from their attention's own to_k / to_v.
    origin = {k: k for k in base_expected if k not in overlay}
    missing_ip = sorted(ip_keys - set(overlay))
    for key in missing_ip:
        match = _IP_KEY.match(key)
        origin[key] = f"{match['attn']}.to_{match['kv']}.weight"
    base, _ = rel.read_tensors(base_file, sorted(set(origin.values())))
    tensors = {**{k: base[o] for k, o in origin.items()}, **overlay}
    rep.filled = {
        k: f"copy of the SVD base {o}" if k in ip_keys else "kept from the SVD base"
        for k, o in origin.items()
    }
    if origin:
        logger.warning(
            "%s lacks %d adapter keys and %d base keys (e.g. %s): adapter weights start as copies of the SVD "
            "to_k/to_v (as in the reference), base weights are kept from %s",
            pth, len(missing_ip), len(origin) - len(missing_ip), min(origin), base_file,
        )  # fmt: skip
    model.save_config(out)
    _save(out, "unet", tensors, rep, dtype, ref=overlay.values())
    return rep


def _convert_module(name: str, pth: Path, tmp: Path, dtype: str, cls: type, infer: Callable, drop: str = ""):
    """A strict release ``.pth`` → one of our ModelMixin components, its config inferred from the shapes.

    Returns:
        ``(report, config)``.
    """
    rep = ComponentReport(name, sources=[str(pth)])
    tensors, rep.notes = rel.load_pth(pth)
    config = infer(tensors, pth)
    rep.dropped = sorted(k for k in tensors if drop and k.startswith(drop))
    if rep.dropped:
        tensors = {k: v for k, v in tensors.items() if k not in rep.dropped}
        logger.info("%s: dropped %d unused %s* keys", pth, len(rep.dropped), drop)
    with torch.device("meta"):
        model = cls.from_config(config)
    rel.check_keys(_shapes(tensors), _shapes(model.state_dict()), pth, cls.__name__)
    model.save_config(tmp / name)
    _save(tmp / name, name, tensors, rep, dtype)
    return rep, config


def _convert_classifier(pth: Path, tmp: Path, dtype: str) -> ComponentReport | None:
    """``emo_model.pth``'s ``classifier.*`` keys as the optional ``emotion_classifier/`` (None: none)."""
    from portrait.models.emotion_classifier import EmotionClassifier

    tensors, _ = rel.load_pth(pth)
    keys = {k.removeprefix("classifier."): v for k, v in tensors.items() if k.startswith("classifier.")}
    if not keys:
        return None
    try:
        config = {
            "in_channels": keys["fc1.weight"].shape[1],
            "hidden_dims": [keys["fc1.weight"].shape[0], keys["fc2.weight"].shape[0]],
            "num_classes": keys["fc3.weight"].shape[0],
        }
    except KeyError as err:
        raise WeightsError(f"{pth}: the classifier.* keys lack {err}; found {sorted(keys)}") from err
    rep = ComponentReport("emotion_classifier", sources=[str(pth)])
    with torch.device("meta"):
        model = EmotionClassifier.from_config(config)
    rel.check_keys(_shapes(keys), _shapes(model.state_dict()), pth, "EmotionClassifier")
    model.save_config(tmp / "emotion_classifier")
    _save(tmp / "emotion_classifier", "emotion_classifier", keys, rep, dtype)
    return rep


def _resave(
    name: str, folder: Path, tmp: Path, dtype: str, build: Callable, hf: bool, strip: str = "", tied=()
):
    """Re-save a diffusers (``hf=False``) / transformers folder as ``tmp/<name>/`` config + safetensors.

    Keys are checked strictly against ``build(config)``. transformers configs get their ``dtype`` field set
    to the dtype written (transformers 5 loads in it). ``position_ids`` buffers saved by old transformers
    versions and ``tied`` keys are dropped; a ``strip`` prefix on every key is removed.
    """
    rep, out = ComponentReport(name), tmp / name
    config = _read_json(folder / "config.json")
    file = rel.find_weights_file(folder, "model" if hf else "diffusion_pytorch_model")
    tensors, rep.notes = rel.read_tensors(file)
    rep.sources = [str(folder / "config.json"), str(file)]
    rep.dropped = sorted(k for k in tensors if k in tied or k.endswith(".position_ids"))
    tensors = {k: v for k, v in tensors.items() if k not in rep.dropped}
    if strip and tensors and all(k.startswith(strip) for k in tensors):
        tensors = {k.removeprefix(strip): v for k, v in tensors.items()}
        rep.notes.append(f"stripped the {strip!r} prefix (checkpoint of the full generation model)")
    with torch.device("meta"):
        model = build({k: v for k, v in config.items() if k not in ("dtype", "torch_dtype")})
    rel.check_keys(_shapes(tensors), _shapes(model.state_dict()), file, type(model).__name__)
    _save(out, name, tensors, rep, dtype)
    if hf:
        for key in [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]:
            config[key] = rep.dtype
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return rep


def _convert_scheduler(src: Path, out: Path) -> ComponentReport:
    from diffusers import EulerDiscreteScheduler

    file = src / SVD_DIR / "scheduler" / "scheduler_config.json"
    config = _read_json(file)
    if config.get("_class_name", "EulerDiscreteScheduler") != "EulerDiscreteScheduler":
        raise WeightsError(
            f"{file}: expected an EulerDiscreteScheduler config, found {config['_class_name']}"
        )
    EulerDiscreteScheduler.from_config(config)  # fails loudly on a malformed config
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, out / component("scheduler").config_file)
    return ComponentReport("scheduler", sources=[str(file)])


def _copy_preprocessor(src: Path, dst_root: Path, rep: ComponentReport, num_mel_bins: int) -> None:
    """Copy Whisper's ``preprocessor_config.json`` (or write the defaults, with a warning)."""
    file = src / WHISPER_DIR / "preprocessor_config.json"
    target = dst_root / AUDIO_PREPROCESSOR_FILE
    if file.is_file():
        _read_json(file)
        shutil.copyfile(file, target)
        rep.sources.append(str(file))
        return
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(target.parent)
    rep.filled[AUDIO_PREPROCESSOR_FILE] = "WhisperFeatureExtractor defaults"
    logger.warning(
        "%s is missing; wrote WhisperFeatureExtractor defaults (feature_size %d)", file, num_mel_bins
    )


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
    comps["unet"] = _convert_unet(src, tmp / "unet", dtype)
    comps["vae"] = _resave(
        "vae", src / SVD_DIR / "vae", tmp, dtype, AutoencoderKLTemporalDecoder.from_config, False
    )
    comps["image_encoder"] = _resave(
        "image_encoder", src / SVD_DIR / "image_encoder", tmp, dtype,
        lambda c: CLIPVisionModelWithProjection(CLIPVisionConfig.from_dict(c)), True,
    )  # fmt: skip
    comps["scheduler"] = _convert_scheduler(src, tmp / "scheduler")
    comps["audio_encoder"] = _resave(
        "audio_encoder", src / WHISPER_DIR, tmp, dtype,
        lambda c: WhisperModel(WhisperConfig.from_dict(c)), True, strip="model.", tied=("proj_out.weight",),
    )  # fmt: skip
    whisper = _read_json(src / WHISPER_DIR / "config.json")
    _copy_preprocessor(src, tmp, comps["audio_encoder"], int(whisper.get("num_mel_bins", 80)))
    infer_audio = partial(rel.audio_projector_config, whisper=whisper)
    comps["audio_projector"], _ = _convert_module(
        "audio_projector", release / "audio_linear.pth", tmp, dtype, AudioProjector, infer_audio
    )
    comps["emotion_model"], emo_config = _convert_module(
        "emotion_model", release / "emo_model.pth", tmp, dtype, EmotionModel, rel.emotion_model_config,
        drop="classifier.",  # the training-only emotion classifier (compat §3), kept just below
    )  # fmt: skip
    classifier = _convert_classifier(release / "emo_model.pth", tmp, dtype)
    if classifier is not None:
        comps["emotion_classifier"] = classifier
    comps["pose_guider"], _ = _convert_module(
        "pose_guider", release / "pose_guider.pth", tmp, dtype, PoseGuider, rel.pose_guider_config
    )
    flownet = _find_flownet(src)
    if flownet is not None:
        from portrait.weights.rife import convert_flownet

        convert_flownet(flownet, tmp / "interpolation")
        comps["interpolation"] = ComponentReport("interpolation", sources=[str(flownet)], dtype="float32")
    else:
        logger.warning("no RIFE/flownet.pkl under %s: the tree will have no frame interpolation", src)
    (tmp / EMOTIONS_DIR).mkdir()
    priors = rel.load_emotion_priors(emo_folder, RELEASE_EMOTIONS, emo_config["prior_dim"])
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
    emo_folder = rel.find_emotion_folder(src, emotions_dir)
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
