"""Typed, immutable run-time configuration: the schema, the merge of its layers, the range checks (no torch).

The schema is a tree of frozen dataclasses whose defaults equal the packaged ``portrait/configs/default.yaml``
(the DICE-Talk reference values). :func:`load_config` merges, once and in this order,

    packaged default.yaml < each preset file < ``values`` (CLI flags) < ``overrides`` (``--set a.b=c``)

with OmegaConf in structured mode, so unknown keys and values of the wrong type are rejected, then checks the
value ranges. Every problem is raised as :class:`~portrait.errors.ConfigError` naming the key, the value and
where it came from. The result is never mutated; :func:`with_values` derives a new config for one job.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from portrait.constants import (
    COMPILE_MODES,
    EXTEND_MODES,
    FACE_SELECTIONS,
    MAX_MOTION_GAIN,
    MOUTH_MODES,
    OFFLOAD_MODES,
    RETARGET_MODES,
    RUNTIME_DTYPES,
)
from portrait.errors import ConfigError, PortraitError

__all__ = ["MotionConfig", "PreprocessConfig", "RenderConfig", "RuntimeConfig", "SamplingConfig",
           "VideoConfig", "config_to_dict", "load_config", "packaged_default_text", "read_text_file",
           "validate_config", "with_values"]  # fmt: skip

_DEVICE_RE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_CODEC_RE = re.compile(r"[A-Za-z0-9_]+")
_SHA256_RE = re.compile(r"[0-9A-Fa-f]{64}")
_DEFAULT_SOURCE = "packaged default.yaml"
#: Upper bounds that keep one request from asking for unbounded work or memory.
MAX_STEPS = 500
MAX_RESOLUTION = 2048
MAX_AUDIO_UNITS = 45000  # 30 minutes of 40-ms units
MAX_SAMPLE_RATE = 192000


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
    """Interpolation, encoding and muxing (compat §7), and full-frame paste-back (compat §10)."""

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
    """Where and how to run (device, precision, weights tree, compile and offload tiers)."""

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
    """Landmark-guided motion control (docs/motion.md); used only when a job gives a driving source."""

    retarget: str = "relative"
    pose_gain: float = 1.0
    expression_gain: float = 1.0
    mouth: str = "audio"
    extend: str = "pingpong"


@dataclass(frozen=True)
class RenderConfig:
    """The whole run-time configuration of one render; every key is documented once, by its comment in the
    packaged default.yaml (:func:`packaged_default_text`)."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)


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
    layers = [(_DEFAULT_SOURCE, _parse_yaml(packaged_default_text(), _DEFAULT_SOURCE))]
    for path in files:
        layers.append((str(path), _parse_yaml(read_text_file(path, "config file"), str(path))))
    if values:
        layers.append(("values", _values_layer(values, "values")))
    for item in overrides:
        layers.append((f"override {item!r}", _parse_override(item)))
    cfg = _merge(OmegaConf.structured(RenderConfig), layers)
    validate_config(cfg, source=", ".join(source for source, _ in layers))
    return cfg


def with_values(cfg: RenderConfig, values: Mapping[str, Any]) -> RenderConfig:
    """A NEW validated config (per-job overrides): ``cfg``, itself unchanged, with ``values`` (nested or
    dotted keys; None skipped) applied. ConfigError as :func:`load_config`."""
    if not isinstance(cfg, RenderConfig):
        raise TypeError(f"with_values expects a RenderConfig, got {type(cfg).__name__}")
    source = "job values"
    new = _merge(OmegaConf.structured(cfg), [(source, _values_layer(values, source))])
    validate_config(new, source=source)
    return new


def config_to_dict(cfg: RenderConfig) -> dict[str, Any]:
    """``cfg`` as a plain JSON-ready nested dict; ``load_config(values=config_to_dict(cfg))`` rebuilds it."""
    return dataclasses.asdict(cfg)


def read_text_file(path: str | Path, what: str, error: type[PortraitError] = ConfigError) -> str:
    """The UTF-8 text (BOM dropped) of a file a user named (preset, manifest); else ``error`` naming it."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise error(f"cannot read {what} {path}: it does not exist") from exc
    except IsADirectoryError as exc:
        raise error(f"cannot read {what} {path}: it is a folder") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text: {exc}") from exc


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


class _Rule(NamedTuple):
    """A range check: ``section.name`` for each of the space-separated ``names`` must satisfy ``ok`` (a
    comparison with NaN is False, so every range rejects NaN)."""

    section: str
    names: str
    ok: Callable[[Any], bool]
    rule: str


def _one_of(section: str, name: str, choices: Sequence[str]) -> _Rule:
    return _Rule(section, name, lambda v: v in choices, f"must be one of {', '.join(choices)}")


def _between(section: str, names: str, low: float, high: float) -> _Rule:
    return _Rule(section, names, lambda v: low <= v <= high, f"must be in [{low:g}, {high:g}]")


def _at_least(section: str, names: str, low: float) -> _Rule:
    return _Rule(section, names, lambda v: v >= low, f"must be >= {low:g}")


def _at_most(section: str, names: str, high: float) -> _Rule:
    return _Rule(section, names, lambda v: v <= high, f"must be <= {high:g}")


def _digests(value: str | None) -> bool:
    digests = (value or "").replace(",", " ").split()
    return value is None or (bool(digests) and all(_SHA256_RE.fullmatch(d) for d in digests))


_SCALES = "ref_scale_min ref_scale_max emo_scale_min emo_scale_max ip_audio_scale ip_emo_scale"
_RULES: tuple[_Rule, ...] = (
    _between("sampling", "steps", 1, MAX_STEPS),
    _Rule("sampling", "emotion_transition", lambda v: 0 <= v < math.inf, "must be >= 0 seconds and finite"),
    _at_least("sampling", "frames_per_window decode_chunk_size", 1),
    _at_least("sampling", "shift_offset motion_bucket_id motion_bucket_id_exp", 0),
    _Rule(
        "sampling", f"{_SCALES} noise_aug_strength", lambda v: 0 <= v < math.inf, "must be >= 0 and finite"
    ),
    _Rule("sampling", "i2i_noise_strength", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    _Rule("sampling", "fps", lambda v: v > 0, "must be > 0"),
    _Rule(
        "preprocess", "min_resolution", lambda v: v > 0 and not v % 64, "must be a positive multiple of 64"
    ),
    _at_most("preprocess", "min_resolution", MAX_RESOLUTION),
    _at_most("preprocess", "max_audio_units", MAX_AUDIO_UNITS),
    _at_most("preprocess", "sample_rate", MAX_SAMPLE_RATE),
    _Rule("preprocess", "face_area", lambda v: v > 0, "must be > 0"),
    _at_least("preprocess", "expand_ratio", 0),
    _at_least("preprocess", "max_audio_units audio_units_per_frame sample_rate", 1),
    _Rule("preprocess", "yolo_sha256", _digests, "must be sha256 hex digests (64 hex chars)"),
    _one_of("preprocess", "face_selection", FACE_SELECTIONS),
    _between("video", "crf mux_crf", 0, 51),
    _Rule("video", "audio_codec", _CODEC_RE.fullmatch, "must be an ffmpeg encoder name such as aac"),
    _Rule("video", "full_frame", lambda v: isinstance(v, bool) or v == "auto", "must be auto, true or false"),
    _Rule("video", "max_size", lambda v: v is None or v >= 64, "must be >= 64 pixels or null"),
    _between("video", "feather", 0, 1),
    _Rule("runtime", "device", _DEVICE_RE.fullmatch, "must be auto, cpu, cuda, cuda:N or mps"),
    _one_of("runtime", "dtype", RUNTIME_DTYPES),
    _Rule("runtime", "weights", lambda v: v is None or bool(v.strip()), "must be a folder path or null"),
    _one_of("runtime", "compile", COMPILE_MODES),
    _at_least("runtime", "window_batch", 1),
    _one_of("runtime", "offload", OFFLOAD_MODES),
    _one_of("motion", "retarget", RETARGET_MODES),
    _one_of("motion", "mouth", MOUTH_MODES),
    _one_of("motion", "extend", EXTEND_MODES),
    _between("motion", "pose_gain expression_gain", 0, MAX_MOTION_GAIN),
)


def validate_config(cfg: RenderConfig, source: str = "config") -> None:
    """Check value ranges; raise :class:`ConfigError` listing every bad ``key=value`` and ``source``."""
    problems = []
    for rule in _RULES:
        for name in rule.names.split():
            value = getattr(getattr(cfg, rule.section), name)
            if not rule.ok(value):
                problems.append(f"{rule.section}.{name}={value!r} {rule.rule}")
    overlap, window = cfg.sampling.overlap, cfg.sampling.frames_per_window
    if not 0 <= overlap < max(window, 1):
        problems.append(f"sampling.overlap={overlap!r} must be in [0, frames_per_window={window})")
    if problems:
        raise ConfigError(f"invalid configuration (from {source}): " + "; ".join(problems))
