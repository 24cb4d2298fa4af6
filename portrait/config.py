"""Typed, immutable run-time configuration (the knobs of ``configs/default.yaml``).

The schema is a tree of frozen dataclasses whose defaults equal the packaged ``portrait/configs/default.yaml``
(the DICE-Talk reference values). :func:`load_config` merges, once and in this order,

    packaged default.yaml < each preset file < ``values`` (CLI flags) < ``overrides`` (``--set a.b=c``)

with OmegaConf in structured mode, so unknown keys and values of the wrong type are rejected, then checks the
value ranges. Every problem is raised as :class:`~portrait.errors.ConfigError` naming the key, the value and
where it came from. The result is never mutated; :func:`with_values` derives a new config for one job.

This module must stay light: it imports no torch.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from portrait.constants import (
    EXTEND_MODES,
    FACE_SELECTIONS,
    MAX_MOTION_GAIN,
    MOUTH_MODES,
    RETARGET_MODES,
)
from portrait.errors import ConfigError

__all__ = [
    "DTYPES",
    "MotionConfig",
    "PreprocessConfig",
    "RenderConfig",
    "RuntimeConfig",
    "SamplingConfig",
    "VideoConfig",
    "config_to_dict",
    "load_config",
    "packaged_default_text",
    "validate_config",
    "with_values",
]

#: Accepted ``runtime.dtype`` values.
DTYPES: tuple[str, ...] = ("auto", "fp16", "bf16", "fp32")
#: Accepted ``preprocess.face_selection`` values: the reference's maxface quirk (compat §1.2) or the largest.
#: torch.compile modes: off, the repeated UNet blocks one class at a time (short compile), or the whole UNet.
COMPILE_MODES = ("off", "blocks", "full")
#: Memory tiers: everything on the GPU, whole models swapped to the CPU when idle, or layer-by-layer offload.
OFFLOAD_MODES = ("none", "model", "sequential")
_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_CODEC_RE = re.compile(r"[A-Za-z0-9_]+")
_SHA256_RE = re.compile(r"[0-9A-Fa-f]{64}")
_DEFAULT_SOURCE = "packaged default.yaml"


@dataclass(frozen=True)
class SamplingConfig:
    """Denoising and guidance (compat §6.5-6.12)."""

    steps: int = 25
    frames_per_window: int = 25
    overlap: int = 0
    shift_offset: int = 7
    ref_scale_min: float = 3.0
    ref_scale_max: float = 3.0
    emo_scale_min: float = 6.0
    emo_scale_max: float = 6.0
    i2i_noise_strength: float = 1.0
    noise_aug_strength: float = 0.0
    fps: float = 12.5
    motion_bucket_id: int = 8
    motion_bucket_id_exp: int = 16
    decode_chunk_size: int = 10
    ip_audio_scale: float = 1.0
    ip_emo_scale: float = 1.0
    retrieval: bool = False
    seed: int = 72589
    emotion_transition: float = 0.5


@dataclass(frozen=True)
class PreprocessConfig:
    """Image, face and audio preparation (compat §1.3-1.5)."""

    min_resolution: int = 512
    face_area: float = 1.1
    crop: bool = False
    expand_ratio: float = 0.5
    max_audio_units: int = 10000
    audio_units_per_frame: int = 2
    sample_rate: int = 16000
    face_selection: str = "reference"
    yolo_sha256: str | None = None


@dataclass(frozen=True)
class VideoConfig:
    """Interpolation, encoding and muxing (compat §7), and full-frame paste-back (issue 8).

    ``full_frame``: ``"auto"`` (paste the animated face crop back into the whole photo when the crop is
    smaller than the photo), ``True`` or ``False`` (the reference: the working image only).
    ``max_size``: cap on the long side of full-frame output (None: the photo's size, even-rounded).
    ``feather``: blend feather width as a fraction of the face box; ``color_match``: match the crop's
    per-channel colour statistics to the photo around the seam.
    """

    interpolate: bool = True
    crf: int = 17
    mux_crf: int = 18
    audio_codec: str = "aac"
    full_frame: bool | str = "auto"
    max_size: int | None = None
    feather: float = 0.1
    color_match: bool = True


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how to run; ``weights`` None means ``$PORTRAIT_WEIGHTS``, else ``./weights``."""

    device: str = "auto"
    dtype: str = "auto"
    weights: str | None = None
    compile: str = "off"
    fast_attention: bool = True
    window_batch: int = 1
    offload: str = "none"
    offline: bool = False


@dataclass(frozen=True)
class MotionConfig:
    """Landmark-guided motion control (docs/motion.md); used only when a job gives a driving source.

    ``retarget``: how the driving landmarks land on the portrait (relative, offset, naive, fixed);
    ``pose_gain`` / ``expression_gain``: multipliers in [0, 4] of the head motion and the expression;
    ``mouth``: lips from the audio (blank lips channel) or from the driving video; ``extend``: how a
    driving track shorter than the audio continues (pingpong: back and forth, hold: the last frame).
    """

    retarget: str = "relative"
    pose_gain: float = 1.0
    expression_gain: float = 1.0
    mouth: str = "audio"
    extend: str = "pingpong"


@dataclass(frozen=True)
class RenderConfig:
    """The whole run-time configuration of one render."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)


# ----------------------------------------------------------------------------------------------- loading


def packaged_default_text() -> str:
    """Return the text of the packaged ``portrait/configs/default.yaml``."""
    return resources.files("portrait").joinpath("configs", "default.yaml").read_text(encoding="utf-8")


def load_config(
    files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> RenderConfig:
    """Merge the packaged defaults, preset files, CLI values and ``--set`` overrides into one config.

    Args:
        files: YAML presets (partial trees), applied in order; later files win.
        overrides: ``"a.b=c"`` strings; the value is parsed as YAML (``10``, ``1e-3``, ``true``, ``null``).
        values: nested (``{"sampling": {"steps": 10}}``) or dotted (``{"sampling.steps": 10}``) keys, e.g.
            from CLI flags; entries whose value is None are skipped (flag not given).

    Returns:
        A frozen :class:`RenderConfig`.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value; the message names the
            key, the value and its source.
    """
    if isinstance(files, (str, Path)) or isinstance(overrides, str):
        raise TypeError("load_config takes sequences of files and overrides, not a single string")
    layers: list[tuple[str, DictConfig]] = [
        (_DEFAULT_SOURCE, _parse_yaml(packaged_default_text(), _DEFAULT_SOURCE))
    ]
    for path in files:
        layers.append((str(path), _read_yaml_file(Path(path))))
    if values:
        layers.append(("values", _values_layer(values, "values")))
    for item in overrides:
        layers.append((f"override {item!r}", _parse_override(item)))
    cfg = _merge(OmegaConf.structured(RenderConfig), layers)
    validate_config(cfg, source=", ".join(source for source, _ in layers))
    return cfg


def with_values(cfg: RenderConfig, values: Mapping[str, Any]) -> RenderConfig:
    """Return a NEW validated config equal to ``cfg`` with ``values`` (nested or dotted keys) applied.

    Used for per-job overrides; ``cfg`` itself is unchanged. None values are skipped, as in
    :func:`load_config`.

    Raises:
        ConfigError: unknown key, wrong type or out-of-range value.
    """
    if not isinstance(cfg, RenderConfig):
        raise TypeError(f"with_values expects a RenderConfig, got {type(cfg).__name__}")
    source = "job values"
    new = _merge(OmegaConf.structured(cfg), [(source, _values_layer(values, source))])
    validate_config(new, source=source)
    return new


def config_to_dict(cfg: RenderConfig) -> dict[str, Any]:
    """Return ``cfg`` as a plain nested dict of str/int/float/bool/None (JSON-serialisable).

    ``load_config(values=config_to_dict(cfg))`` rebuilds an equal config.
    """
    return dataclasses.asdict(cfg)


def _read_yaml_file(path: Path) -> DictConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from exc
    return _parse_yaml(text, str(path))


def _parse_yaml(text: str, source: str) -> DictConfig:
    try:
        node = OmegaConf.create(text)
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"{source}: invalid YAML: {_first_line(exc)}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got a list")
    return node


def _parse_override(item: str) -> DictConfig:
    if not isinstance(item, str):
        raise ConfigError(f"override {item!r} must be a string 'section.key=value'")
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {item!r} is not of the form 'section.key=value' (e.g. sampling.steps=10)"
        )
    try:
        return OmegaConf.from_dotlist([item])
    except (yaml.YAMLError, OmegaConfBaseException) as exc:
        raise ConfigError(f"override {item!r}: cannot parse: {_first_line(exc)}") from exc


def _values_layer(values: Mapping[str, Any], source: str) -> DictConfig:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(values).__name__}")
    nested: dict[str, Any] = {}
    for dotted, value in _flatten(values, ""):
        parts = dotted.split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: key {dotted!r} conflicts with a value given for {part!r}")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise ConfigError(f"{source}: key {dotted!r} is a section; give its keys instead")
        node[parts[-1]] = str(value) if isinstance(value, Path) else value
    try:
        return OmegaConf.create(nested)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: unsupported value: {_first_line(exc)}") from exc


def _flatten(values: Mapping[str, Any], prefix: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = []
    for key, value in values.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"invalid config key {prefix}{key!r}: use 'section.key' names")
        if isinstance(value, Mapping):
            items.extend(_flatten(value, f"{prefix}{key}."))
        elif value is not None:
            items.append((f"{prefix}{key}", value))
    return items


def _refuse_interpolation(node: Any, source: str, prefix: str = "") -> None:
    """Raise :class:`ConfigError` for any ``${...}`` in a key or string value of an unresolved layer.

    Values come from users, manifests and web forms; OmegaConf would resolve ``${oc.env:NAME}`` (an
    environment variable of the server) or ``${...}`` references when the config is built.
    """
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        dotted = f"{prefix}{key}"
        if isinstance(key, str) and "${" in key:
            raise ConfigError(f"{source}: interpolation is not allowed in config keys ({key!r})")
        if isinstance(value, str) and "${" in value:
            raise ConfigError(
                f"{source}: interpolation is not allowed in {dotted!r} (a value may not contain '${{')"
            )
        if isinstance(value, (Mapping, list)):
            _refuse_interpolation(value, source, f"{dotted}.")


def _merge(base: DictConfig, layers: Sequence[tuple[str, DictConfig]]) -> RenderConfig:
    merged = base
    for source, layer in layers:
        if source != _DEFAULT_SOURCE:
            _refuse_interpolation(OmegaConf.to_container(layer, resolve=False), source)
        try:
            merged = OmegaConf.merge(merged, layer)
        except ConfigKeyError as exc:
            key = exc.full_key or _first_line(exc)
            raise ConfigError(f"{source}: unknown config key {key!r} ({_first_line(exc)})") from exc
        except OmegaConfBaseException as exc:
            key = f" for {exc.full_key!r}" if getattr(exc, "full_key", None) else ""
            raise ConfigError(f"{source}: invalid value{key}: {_first_line(exc)}") from exc
    cfg = OmegaConf.to_object(merged)
    if not isinstance(cfg, RenderConfig):  # the structured base guarantees this
        raise ConfigError(f"configuration did not produce a RenderConfig but {type(cfg).__name__}")
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -------------------------------------------------------------------------------------------- validation


def validate_config(cfg: RenderConfig, source: str = "config") -> None:
    """Check value ranges; raise :class:`ConfigError` listing every bad ``key=value`` and ``source``."""
    problems = [*_sampling_problems(cfg.sampling), *_preprocess_problems(cfg.preprocess)]
    problems += [*_video_problems(cfg.video), *_runtime_problems(cfg.runtime)]
    problems += _motion_problems(cfg.motion)
    if problems:
        raise ConfigError(f"invalid configuration (from {source}): " + "; ".join(problems))


#: Upper bounds that keep one request from asking for unbounded work or memory.
MAX_STEPS = 500
MAX_RESOLUTION = 2048
MAX_AUDIO_UNITS = 45000  # 30 minutes of 40-ms units
MAX_SAMPLE_RATE = 192000


def _bad(key: str, value: Any, rule: str) -> str:
    return f"{key}={value!r} {rule}"


def _sampling_problems(s: SamplingConfig) -> list[str]:
    out: list[str] = []
    if not 1 <= s.steps <= MAX_STEPS:
        out.append(_bad("sampling.steps", s.steps, f"must be in [1, {MAX_STEPS}]"))
    if not 0 <= s.emotion_transition < float("inf"):  # also rejects NaN
        out.append(
            _bad("sampling.emotion_transition", s.emotion_transition, "must be >= 0 seconds and finite")
        )
    if s.frames_per_window < 1:
        out.append(_bad("sampling.frames_per_window", s.frames_per_window, "must be >= 1"))
    if not 0 <= s.overlap < max(s.frames_per_window, 1):
        out.append(
            _bad("sampling.overlap", s.overlap, f"must be in [0, frames_per_window={s.frames_per_window})")
        )
    if s.shift_offset < 0:
        out.append(_bad("sampling.shift_offset", s.shift_offset, "must be >= 0"))
    for name in (
        "ref_scale_min",
        "ref_scale_max",
        "emo_scale_min",
        "emo_scale_max",
        "ip_audio_scale",
        "ip_emo_scale",
        "noise_aug_strength",
    ):
        if not 0 <= getattr(s, name) < float("inf"):  # also rejects NaN
            out.append(_bad(f"sampling.{name}", getattr(s, name), "must be >= 0 and finite"))
    if not 0 < s.i2i_noise_strength <= 1:
        out.append(_bad("sampling.i2i_noise_strength", s.i2i_noise_strength, "must be in (0, 1]"))
    if not s.fps > 0:
        out.append(_bad("sampling.fps", s.fps, "must be > 0"))
    for name in ("motion_bucket_id", "motion_bucket_id_exp"):
        if getattr(s, name) < 0:
            out.append(_bad(f"sampling.{name}", getattr(s, name), "must be >= 0"))
    if s.decode_chunk_size < 1:
        out.append(_bad("sampling.decode_chunk_size", s.decode_chunk_size, "must be >= 1"))
    return out


def _preprocess_problems(p: PreprocessConfig) -> list[str]:
    out: list[str] = []
    if p.min_resolution < 64 or p.min_resolution % 64:
        out.append(_bad("preprocess.min_resolution", p.min_resolution, "must be a positive multiple of 64"))
    elif p.min_resolution > MAX_RESOLUTION:
        out.append(_bad("preprocess.min_resolution", p.min_resolution, f"must be <= {MAX_RESOLUTION}"))
    if p.max_audio_units > MAX_AUDIO_UNITS:
        out.append(_bad("preprocess.max_audio_units", p.max_audio_units, f"must be <= {MAX_AUDIO_UNITS}"))
    if p.sample_rate > MAX_SAMPLE_RATE:
        out.append(_bad("preprocess.sample_rate", p.sample_rate, f"must be <= {MAX_SAMPLE_RATE}"))
    if not p.face_area > 0:
        out.append(_bad("preprocess.face_area", p.face_area, "must be > 0"))
    if not p.expand_ratio >= 0:
        out.append(_bad("preprocess.expand_ratio", p.expand_ratio, "must be >= 0"))
    for name in ("max_audio_units", "audio_units_per_frame", "sample_rate"):
        if getattr(p, name) < 1:
            out.append(_bad(f"preprocess.{name}", getattr(p, name), "must be >= 1"))
    digests = (p.yolo_sha256 or "").replace(",", " ").split()
    if p.yolo_sha256 is not None and (not digests or not all(_SHA256_RE.fullmatch(d) for d in digests)):
        out.append(_bad("preprocess.yolo_sha256", p.yolo_sha256, "must be sha256 hex digests (64 hex chars)"))
    if p.face_selection not in FACE_SELECTIONS:
        out.append(
            _bad(
                "preprocess.face_selection", p.face_selection, f"must be one of {', '.join(FACE_SELECTIONS)}"
            )
        )
    return out


def _video_problems(v: VideoConfig) -> list[str]:
    out: list[str] = []
    for name in ("crf", "mux_crf"):
        if not 0 <= getattr(v, name) <= 51:
            out.append(_bad(f"video.{name}", getattr(v, name), "must be in [0, 51]"))
    if not _CODEC_RE.fullmatch(v.audio_codec):
        out.append(_bad("video.audio_codec", v.audio_codec, "must be an ffmpeg encoder name such as aac"))
    if not isinstance(v.full_frame, bool) and v.full_frame != "auto":
        out.append(_bad("video.full_frame", v.full_frame, "must be auto, true or false"))
    if v.max_size is not None and v.max_size < 64:
        out.append(_bad("video.max_size", v.max_size, "must be >= 64 pixels or null"))
    if not 0 <= v.feather <= 1:
        out.append(_bad("video.feather", v.feather, "must be in [0, 1]"))
    return out


def _runtime_problems(r: RuntimeConfig) -> list[str]:
    out: list[str] = []
    if not _DEVICE_RE.fullmatch(r.device):
        out.append(_bad("runtime.device", r.device, "must be auto, cpu, cuda, cuda:N or mps"))
    if r.dtype not in DTYPES:
        out.append(_bad("runtime.dtype", r.dtype, f"must be one of {', '.join(DTYPES)}"))
    if r.weights is not None and not r.weights.strip():
        out.append(_bad("runtime.weights", r.weights, "must be a folder path or null"))
    if r.compile not in COMPILE_MODES:
        out.append(_bad("runtime.compile", r.compile, f"must be one of {', '.join(COMPILE_MODES)}"))
    if r.window_batch < 1:
        out.append(_bad("runtime.window_batch", r.window_batch, "must be >= 1"))
    if r.offload not in OFFLOAD_MODES:
        out.append(_bad("runtime.offload", r.offload, f"must be one of {', '.join(OFFLOAD_MODES)}"))
    return out


def _motion_problems(m: MotionConfig) -> list[str]:
    out: list[str] = []
    for name, allowed in (("retarget", RETARGET_MODES), ("mouth", MOUTH_MODES), ("extend", EXTEND_MODES)):
        if getattr(m, name) not in allowed:
            out.append(_bad(f"motion.{name}", getattr(m, name), f"must be one of {', '.join(allowed)}"))
    for name in ("pose_gain", "expression_gain"):
        if not 0 <= getattr(m, name) <= MAX_MOTION_GAIN:  # also rejects NaN
            out.append(_bad(f"motion.{name}", getattr(m, name), f"must be in [0, {MAX_MOTION_GAIN:g}]"))
    return out
