"""Hostile config values: OmegaConf interpolation must never resolve (the upper bounds on sizes are checked
with the other rejected values in tests/test_config.py, UPPER_BOUNDS)."""

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


def test_ordinary_values_still_work() -> None:
    cfg = load_config(overrides=["sampling.steps=500", "runtime.device=cpu"])
    assert cfg.sampling.steps == 500 and cfg.runtime.device == "cpu"
