"""portrait.config: defaults, merge precedence, strict schema, range checks, immutability."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from portrait.config import (
    RenderConfig,
    SamplingConfig,
    config_to_dict,
    load_config,
    packaged_default_text,
    with_values,
)
from portrait.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

#: The DICE-Talk reference run-time defaults (docs/compatibility.md §1.3-1.5, §6, §7).
SPEC_DEFAULTS = {
    "sampling": {
        "steps": 25,
        "frames_per_window": 25,
        "overlap": 0,
        "shift_offset": 7,
        "ref_scale_min": 3.0,
        "ref_scale_max": 3.0,
        "emo_scale_min": 6.0,
        "emo_scale_max": 6.0,
        "i2i_noise_strength": 1.0,
        "noise_aug_strength": 0.0,
        "fps": 12.5,
        "motion_bucket_id": 8,
        "motion_bucket_id_exp": 16,
        "decode_chunk_size": 10,
        "ip_audio_scale": 1.0,
        "ip_emo_scale": 1.0,
        "retrieval": False,
        "seed": 72589,
        "emotion_transition": 0.5,
    },
    "preprocess": {
        "min_resolution": 512,
        "face_area": 1.1,
        "crop": False,
        "expand_ratio": 0.5,
        "max_audio_units": 10000,
        "audio_units_per_frame": 2,
        "sample_rate": 16000,
        "face_selection": "reference",
        "yolo_sha256": None,
    },
    "video": {
        "interpolate": True,
        "crf": 17,
        "mux_crf": 18,
        "audio_codec": "aac",
        "full_frame": "auto",
        "max_size": None,
        "feather": 0.1,
        "color_match": True,
    },
    "runtime": {
        "device": "auto",
        "dtype": "auto",
        "weights": None,
        "compile": "off",
        "fast_attention": True,
        "window_batch": 1,
        "offload": "none",
        "offline": False,
    },
    "motion": {  # used only when a job gives a driving source (docs/motion.md)
        "retarget": "relative",
        "pose_gain": 1.0,
        "expression_gain": 1.0,
        "mouth": "audio",
        "extend": "pingpong",
    },
}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_equal_the_reference_values() -> None:
    cfg = load_config()
    assert config_to_dict(cfg) == SPEC_DEFAULTS
    assert cfg == RenderConfig()  # dataclass defaults and default.yaml agree
    assert type(cfg.sampling.fps) is float and type(cfg.sampling.steps) is int


def test_default_yaml_lists_every_key() -> None:
    assert yaml.safe_load(packaged_default_text()) == SPEC_DEFAULTS


def test_the_packaged_default_yaml_is_the_only_copy() -> None:
    packaged = (REPO / "portrait" / "configs" / "default.yaml").read_bytes()
    assert packaged_default_text().encode("utf-8") == packaged
    assert not (REPO / "configs" / "default.yaml").exists()


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return flat


PRESETS = sorted((REPO / "configs" / "presets").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.stem)
def test_preset_changes_only_what_it_says(preset: Path) -> None:
    said = _flat(yaml.safe_load(preset.read_text(encoding="utf-8")))
    default = _flat(config_to_dict(load_config()))
    loaded = _flat(config_to_dict(load_config([preset])))
    assert said and {key: value for key, value in loaded.items() if value != default[key]} == said


def test_the_presets_are_there() -> None:
    assert {path.stem for path in PRESETS} >= {"fast", "quality", "low-vram"}


def test_precedence_default_files_values_overrides(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yaml", "sampling:\n  steps: 10\n  fps: 25\nvideo:\n  crf: 20\n")
    second = _write(tmp_path, "b.yaml", "sampling:\n  steps: 12\n  seed: 1\n")
    values = {"sampling.steps": 14, "sampling": {"seed": None, "overlap": 3}, "runtime.weights": "/w"}
    cfg = load_config([first, second], overrides=["sampling.steps=16"], values=values)
    assert cfg.sampling.steps == 16  # override beats values beats files
    assert cfg.sampling.seed == 1  # None in values is skipped, the file value stays
    assert cfg.sampling.overlap == 3  # nested values
    assert cfg.runtime.weights == "/w"  # dotted values
    assert cfg.sampling.fps == 25.0 and isinstance(cfg.sampling.fps, float)  # int coerced to float
    assert cfg.video.crf == 20  # first file, untouched by the second
    assert cfg.sampling.decode_chunk_size == 10  # packaged default
    assert load_config([second, first]).sampling.steps == 10  # later files win


def test_values_accept_paths_and_yaml_typed_overrides(tmp_path: Path) -> None:
    cfg = load_config(
        values={"runtime.weights": tmp_path},
        overrides=["runtime.device=cuda:1", "video.interpolate=false", "sampling.fps=1e1"],
    )
    assert cfg.runtime.weights == str(tmp_path)
    assert cfg.runtime.device == "cuda:1" and cfg.video.interpolate is False and cfg.sampling.fps == 10.0


def test_unknown_key_in_file_names_key_and_file(tmp_path: Path) -> None:
    preset = _write(tmp_path, "preset.yaml", "sampling:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config([preset])
    assert "sampling.stepz" in str(info.value) and str(preset) in str(info.value)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"overrides": ["sampling.stepz=3"]}, "sampling.stepz"),
        ({"overrides": ["colour.hue=3"]}, "colour"),
        ({"values": {"video.codec": "x"}}, "video.codec"),
        ({"values": {"nosuch": {"key": 1}}}, "nosuch"),
    ],
)
def test_unknown_key_is_rejected(kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError, match="unknown config key") as info:
        load_config(**kwargs)
    assert key in str(info.value)


#: ``--set`` values of the wrong type: the message quotes the override and names the key.
WRONG_TYPES = [
    ("sampling.steps=abc", "sampling.steps"),
    ("sampling.steps=2.5", "sampling.steps"),
    ("sampling.retrieval=maybe", "sampling.retrieval"),
    ("sampling.fps=fast", "sampling.fps"),
    ("sampling.seed=null", "sampling.seed"),
    ("sampling=5", "sampling"),
]
#: Values out of range: the message names ``key=`` in an "invalid configuration" list.
OUT_OF_RANGE = [
    ("sampling.steps=0", "sampling.steps"),
    ("sampling.overlap=25", "sampling.overlap"),
    ("sampling.overlap=-1", "sampling.overlap"),
    ("sampling.frames_per_window=0", "sampling.frames_per_window"),
    ("sampling.ref_scale_min=-0.5", "sampling.ref_scale_min"),
    ("sampling.emo_scale_max=-1", "sampling.emo_scale_max"),
    ("sampling.ip_emo_scale=-1", "sampling.ip_emo_scale"),
    ("sampling.ref_scale_max=.nan", "sampling.ref_scale_max"),
    ("sampling.decode_chunk_size=0", "sampling.decode_chunk_size"),
    ("sampling.fps=0", "sampling.fps"),
    ("sampling.i2i_noise_strength=0", "sampling.i2i_noise_strength"),
    ("sampling.i2i_noise_strength=1.5", "sampling.i2i_noise_strength"),
    ("runtime.dtype=fp8", "runtime.dtype"),
    ("runtime.device=gpu", "runtime.device"),
    ("runtime.device=cuda:x", "runtime.device"),
    ("preprocess.face_selection=first", "preprocess.face_selection"),
    ("preprocess.min_resolution=500", "preprocess.min_resolution"),
    ("preprocess.min_resolution=0", "preprocess.min_resolution"),
    ("preprocess.audio_units_per_frame=0", "preprocess.audio_units_per_frame"),
    ("video.crf=52", "video.crf"),
    ("video.audio_codec=-vf x", "video.audio_codec"),
]
#: Upper bounds that keep one (hostile) request from asking for unbounded work or memory.
UPPER_BOUNDS = [
    ("sampling.steps=100000", "sampling.steps=100000 must be in [1, 500]"),
    ("preprocess.min_resolution=65536", "must be <= 2048"),
    ("preprocess.max_audio_units=100000000", "must be <= 45000"),
]


@pytest.mark.parametrize(
    "override, fragments",
    [(o, (repr(o), key)) for o, key in WRONG_TYPES]
    + [(o, (f"{key}=", "invalid configuration")) for o, key in OUT_OF_RANGE]
    + [(o, (fragment,)) for o, fragment in UPPER_BOUNDS],
)
def test_bad_override_is_rejected(override: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=[override])
    assert all(fragment in str(info.value) for fragment in fragments), str(info.value)


def test_wrong_type_in_file_names_the_file(tmp_path: Path) -> None:
    preset = _write(tmp_path, "bad.yaml", "preprocess:\n  min_resolution: big\n")
    with pytest.raises(ConfigError, match="preprocess.min_resolution") as info:
        load_config([preset])
    assert str(preset) in str(info.value)


@pytest.mark.parametrize(
    "text, fragment",
    [("sampling: [unclosed\n", "invalid YAML"), ("- 1\n- 2\n", "mapping")],
)
def test_malformed_file_is_rejected(tmp_path: Path, text: str, fragment: str) -> None:
    preset = _write(tmp_path, "broken.yaml", text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_config([preset])
    assert str(preset) in str(info.value)


def test_missing_file_and_malformed_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config([tmp_path / "absent.yaml"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["sampling.steps"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(overrides=["=3"])


@pytest.mark.parametrize(
    "override",
    [
        "sampling.overlap=24",
        "runtime.device=cuda:3",
        "runtime.device=mps",
        "runtime.dtype=bf16",
        "preprocess.min_resolution=576",
        "preprocess.face_selection=largest",
        "sampling.ref_scale_min=0",
    ],
)
def test_boundary_values_are_accepted(override: str) -> None:
    load_config(overrides=[override])


def test_every_range_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=["sampling.steps=0", "runtime.dtype=fp8"])
    assert "sampling.steps=0" in str(info.value) and "runtime.dtype='fp8'" in str(info.value)


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampling.steps = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.sampling = SamplingConfig()  # type: ignore[misc]


def test_to_dict_round_trip_through_json() -> None:
    cfg = load_config(overrides=["sampling.steps=7", "runtime.weights=/x/w", "video.interpolate=false"])
    plain = json.loads(json.dumps(config_to_dict(cfg)))
    assert plain["sampling"]["steps"] == 7
    assert load_config(values=plain) == cfg
    assert with_values(RenderConfig(), plain) == cfg


def test_with_values_returns_a_new_validated_config() -> None:
    base = load_config()
    job = with_values(base, {"sampling.seed": 3, "sampling": {"steps": 5}, "video.crf": None})
    assert (job.sampling.seed, job.sampling.steps, job.video.crf) == (3, 5, 17)
    assert base.sampling.seed == 72589 and base.sampling.steps == 25  # the original is untouched
    with pytest.raises(ConfigError, match="sampling.steps=0"):
        with_values(base, {"sampling.steps": 0})
    with pytest.raises(ConfigError, match="sampling.nope"):
        with_values(base, {"sampling.nope": 1})
    with pytest.raises(ConfigError, match="sampling.steps"):
        with_values(base, {"sampling.steps": "many"})


def test_motion_section_is_validated() -> None:
    cfg = load_config(overrides=["motion.retarget=fixed", "motion.pose_gain=0", "motion.extend=hold"])
    assert (cfg.motion.retarget, cfg.motion.pose_gain, cfg.motion.extend) == ("fixed", 0.0, "hold")
    assert load_config(values={"motion.expression_gain": 4}).motion.expression_gain == 4.0
    for override, key in (
        ("motion.retarget=mirror", "motion.retarget"),
        ("motion.mouth=both", "motion.mouth"),
        ("motion.extend=loop", "motion.extend"),
        ("motion.pose_gain=4.5", "motion.pose_gain"),
        ("motion.expression_gain=-1", "motion.expression_gain"),
        ("motion.pose_gain=.nan", "motion.pose_gain"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(overrides=[override])


def test_yolo_sha256_must_be_hex_digests() -> None:
    digest = "ab" * 32
    assert load_config(overrides=[f"preprocess.yolo_sha256={digest}"]).preprocess.yolo_sha256 == digest
    two = f"{digest},{'CD' * 32}"
    assert load_config(values={"preprocess.yolo_sha256": two}).preprocess.yolo_sha256 == two
    for bad in ("abc", "zz" * 32, ""):
        with pytest.raises(ConfigError, match="preprocess.yolo_sha256"):
            load_config(values={"preprocess.yolo_sha256": bad})
