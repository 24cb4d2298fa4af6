"""One release component into one folder of the weights tree: the steps of :mod:`portrait.weights.convert`.

Each ``convert_*`` / :func:`resave` reads its source files (:mod:`portrait.weights.release`), builds our
module on the meta device, checks every key and shape strictly, writes ``config.json`` and the safetensors
file, and returns a :class:`ComponentReport` of what it read, dropped and filled (compat §4.5, 4.7).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from portrait.constants import STORE_DTYPES
from portrait.errors import WeightsError
from portrait.layout import AUDIO_PREPROCESSOR_FILE, component
from portrait.weights import release as rel
from portrait.weights.load import torch_dtype
from portrait.weights.release import RELEASE_DIR, SVD_DIR, WHISPER_DIR
from portrait.weights.release_config import unet_config

logger = logging.getLogger(__name__)

#: ``convert --dtype``: ``keep`` the source's dtypes, or a stored precision.
DTYPES: dict[str, torch.dtype | None] = {"keep": None} | {name: torch_dtype(name) for name in STORE_DTYPES}
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


def commonest_dtype(tensors: Iterable[torch.Tensor]) -> torch.dtype:
    """The commonest floating dtype of ``tensors`` (float32 when none is floating)."""
    counts = Counter(t.dtype for t in tensors if t.is_floating_point())
    return counts.most_common(1)[0][0] if counts else torch.float32


def save_tensors(
    out: Path,
    name: str,
    tensors: rel.StateDict,
    rep: ComponentReport,
    dtype: str,
    keep: torch.dtype | None = None,
) -> None:
    """Cast the floating tensors and write ``out/<weights file of component name>``.

    ``dtype="keep"`` writes ``keep`` (default: the commonest floating dtype of ``tensors``). ``tensors`` is
    consumed: each entry is replaced by its cast copy as that is made, so a cast holds the source and one
    cast tensor at a time, not two copies of the component (the caller must hold no other reference).
    """
    target = DTYPES[dtype] or keep or commonest_dtype(tensors.values())
    storages = set()
    for key in list(tensors):
        value = tensors[key]
        value = (value.to(target) if value.is_floating_point() else value).contiguous()
        if value.untyped_storage().data_ptr() in storages:  # safetensors refuses shared memory
            value = value.clone()
        storages.add(value.untyped_storage().data_ptr())
        tensors[key] = value
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / component(name).weights_file, metadata={"format": "pt"})
    rep.tensors, rep.dtype = len(tensors), str(target).removeprefix("torch.")
    logger.info("%s: wrote %d tensors (%s)", name, rep.tensors, rep.dtype)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: unreadable JSON config ({err}); re-download it") from err


def _shapes(tensors: rel.StateDict) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in tensors.items()}


def convert_unet(src: Path, out: Path, dtype: str) -> ComponentReport:
    """SVD base UNet + adapter copies of to_k/to_v + every key of ``unet.pth`` overlaid (compat §4.5, 4.7)."""
    from portrait.models.unet import PortraitUNet

    rep = ComponentReport("unet")
    base_dir, pth = src / SVD_DIR / "unet", src / RELEASE_DIR / "unet.pth"
    with torch.device("meta"):
        model = PortraitUNet.from_config(unet_config(read_json(base_dir / "config.json")))
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
    keep = commonest_dtype(overlay.values())
    del base, overlay  # save_tensors frees each source tensor as it casts it
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
    save_tensors(out, "unet", tensors, rep, dtype, keep=keep)
    return rep


def convert_module(name: str, pth: Path, tmp: Path, dtype: str, cls: type, infer: Callable, drop: str = ""):
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
    save_tensors(tmp / name, name, tensors, rep, dtype)
    return rep, config


def convert_classifier(pth: Path, tmp: Path, dtype: str) -> ComponentReport | None:
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
    save_tensors(tmp / "emotion_classifier", "emotion_classifier", keys, rep, dtype)
    return rep


def resave(
    name: str, folder: Path, tmp: Path, dtype: str, build: Callable, hf: bool, strip: str = "", tied=()
):
    """Re-save a diffusers (``hf=False``) / transformers folder as ``tmp/<name>/`` config + safetensors.

    Keys are checked strictly against ``build(config)``. transformers configs get their ``dtype`` field set
    to the dtype written (transformers 5 loads in it). ``position_ids`` buffers saved by old transformers
    versions and ``tied`` keys are dropped; a ``strip`` prefix on every key is removed.
    """
    rep, out = ComponentReport(name), tmp / name
    config = read_json(folder / "config.json")
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
    save_tensors(out, name, tensors, rep, dtype)
    if hf:
        for key in [k for k in ("dtype", "torch_dtype") if k in config] or ["dtype"]:
            config[key] = rep.dtype
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return rep


def convert_scheduler(src: Path, out: Path) -> ComponentReport:
    from diffusers import EulerDiscreteScheduler

    file = src / SVD_DIR / "scheduler" / "scheduler_config.json"
    config = read_json(file)
    if config.get("_class_name", "EulerDiscreteScheduler") != "EulerDiscreteScheduler":
        raise WeightsError(
            f"{file}: expected an EulerDiscreteScheduler config, found {config['_class_name']}"
        )
    EulerDiscreteScheduler.from_config(config)  # fails loudly on a malformed config
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(file, out / component("scheduler").config_file)
    return ComponentReport("scheduler", sources=[str(file)])


def copy_preprocessor(src: Path, dst_root: Path, rep: ComponentReport, num_mel_bins: int) -> None:
    """Copy Whisper's ``preprocessor_config.json`` (or write the defaults, with a warning)."""
    file = src / WHISPER_DIR / "preprocessor_config.json"
    target = dst_root / AUDIO_PREPROCESSOR_FILE
    if file.is_file():
        read_json(file)
        shutil.copyfile(file, target)
        rep.sources.append(str(file))
        return
    from transformers import WhisperFeatureExtractor

    WhisperFeatureExtractor(feature_size=num_mel_bins).save_pretrained(target.parent)
    rep.filled[AUDIO_PREPROCESSOR_FILE] = "WhisperFeatureExtractor defaults"
    logger.warning(
        "%s is missing; wrote WhisperFeatureExtractor defaults (feature_size %d)", file, num_mel_bins
    )
