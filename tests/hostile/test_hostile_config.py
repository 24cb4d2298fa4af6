"""Hostile config values: OmegaConf interpolation must never resolve, and sizes have upper bounds."""

from __future__ import annotations

import pytest

from portrait.config import load_config, with_values
from portrait.errors import ConfigError

SECRET = "hunter2-do-not-leak"


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORTRAIT_TEST_SECRET", SECRET)


@pytest.mark.parametrize(
    "value",
    [
        "${oc.env:PORTRAIT_TEST_SECRET}",
        "cpu${oc.env:PORTRAIT_TEST_SECRET}",
        "${sampling.steps}",
        "${oc.env:NOPE}",
    ],
)
def test_set_overrides_refuse_interpolation(value: str) -> None:
    with pytest.raises(ConfigError, match="interpolation is not allowed in 'runtime.device'") as excinfo:
        load_config(overrides=[f"runtime.device={value}"])
    assert SECRET not in str(excinfo.value)


def test_values_and_job_values_refuse_interpolation() -> None:
    with pytest.raises(ConfigError, match="interpolation is not allowed in 'sampling.steps'"):
        load_config(values={"sampling": {"steps": "${oc.env:PORTRAIT_TEST_SECRET}"}})
    base = load_config()
    with pytest.raises(ConfigError, match="job values: interpolation") as excinfo:
        with_values(base, {"runtime.device": "${oc.env:PORTRAIT_TEST_SECRET}"})
    assert SECRET not in str(excinfo.value)
    assert base.runtime.device != SECRET


def test_preset_files_refuse_interpolation(tmp_path) -> None:
    preset = tmp_path / "p.yaml"
    preset.write_text("runtime:\n  device: ${oc.env:PORTRAIT_TEST_SECRET}\n")
    with pytest.raises(ConfigError, match="interpolation is not allowed"):
        load_config(files=[preset])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("sampling.steps=100000", "sampling.steps=100000 must be in [1, 500]"),
        ("preprocess.min_resolution=65536", "must be <= 2048"),
        ("preprocess.max_audio_units=100000000", "must be <= 45000"),
    ],
)
def test_upper_bounds(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_config(overrides=[override])
    assert fragment in str(excinfo.value)


def test_ordinary_values_still_work() -> None:
    cfg = load_config(overrides=["sampling.steps=500", "runtime.device=cpu"])
    assert cfg.sampling.steps == 500 and cfg.runtime.device == "cpu"
