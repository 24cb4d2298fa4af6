"""The job flows one way: on a CLI run each input is decoded, detected and parsed exactly once."""

from __future__ import annotations

import functools
import sys
from collections import Counter
from pathlib import Path

import pytest

from portrait.cli.main import main

ASSETS = Path(__file__).resolve().parents[1] / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"


def _spy(monkeypatch: pytest.MonkeyPatch, calls: Counter, owner: object, name: str, label: str) -> None:
    """Count calls of ``owner.name`` wherever the same object is bound (modules that imported it by name)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def counted(*args, **kwargs):
        calls[label] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("portrait") and getattr(module, name, None) is original:
            monkeypatch.setattr(module, name, counted)


def test_each_input_is_read_once_per_cli_job(tiny_weights, tmp_path, monkeypatch):
    import portrait.engine  # noqa: F401  (bind the names the spies replace)
    import portrait.generate  # noqa: F401
    import portrait.inputs  # noqa: F401
    from portrait.preprocess import audio, detectors, emotion_spec, image

    calls: Counter = Counter()
    _spy(monkeypatch, calls, image, "load_image", "image decoded")
    _spy(monkeypatch, calls, detectors.DlibDetector, "detect", "face detected")
    _spy(monkeypatch, calls, audio, "load_audio", "audio decoded")
    _spy(monkeypatch, calls, audio, "resample", "audio resampled")
    _spy(monkeypatch, calls, emotion_spec, "parse_emotion", "emotion parsed")
    out = tmp_path / "out.mp4"
    argv = ["--weights", str(tiny_weights), "--device", "cpu", "--detector", "dlib", "--quiet",
            "--image", str(PORTRAIT), "--audio", str(SPEECH), "--emotion", "0:neutral, 1.5:happy:0.8",
            "--size", "64", "--steps", "1", "--no-interpolate", "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert out.is_file()
    assert calls == Counter(
        {
            "image decoded": 1,
            "face detected": 1,
            "audio decoded": 1,
            "audio resampled": 1,
            "emotion parsed": 1,
        }
    )
