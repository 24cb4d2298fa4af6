"""Emotion from a reference clip (portrait.preprocess.emotion_from_reference, --emotion-from)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from portrait.cli.main import main
from portrait.errors import InputError, NoFaceError
from portrait.ffmpeg import media_path, run_ffmpeg
from portrait.layout import RELEASE_EMOTIONS
from portrait.preprocess.emotion_from_reference import (
    probs_to_mix,
    probs_to_schedule,
    reference_emotion,
    smooth_probs,
)
from portrait.preprocess.emotion_spec import Mix, mix_prior, schedule_priors

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
FIXTURE = ROOT / "tests" / "fixtures" / "expression_fer.npz"
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NAMES = list(RELEASE_EMOTIONS)
FAST = ["--size", "64", "--steps", "1", "--no-interpolate", "--quiet", "--offline"]


def _bank(dim: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {n: torch.randn(1, dim, generator=gen) for n in NAMES}


def test_one_hot_gives_the_bank_entry_exactly() -> None:
    bank = _bank()
    for i, cls in enumerate(CLASSES):
        probs = np.eye(len(CLASSES))[i]
        mix = probs_to_mix(CLASSES, probs, NAMES)
        target = {"disgust": "disgusted", "surprise": "surprised"}.get(cls, cls)
        assert mix == Mix(((target, 1.0),))
        assert torch.equal(mix_prior(mix, bank), bank[target])


def test_intensity_rules() -> None:
    bank, n = _bank(), _bank()["neutral"]
    probs = np.array([0, 0, 0, 0.6, 0.2, 0, 0.2])
    mix = probs_to_mix(CLASSES, probs, NAMES, strength=1.5)
    assert mix.as_dict() == {"happy": 0.9, "sad": 0.3, "neutral": 0.3}
    assert mix.total == pytest.approx(1.5)
    expected = n + 0.9 * (bank["happy"] - n) + 0.3 * (bank["sad"] - n)
    assert torch.allclose(mix_prior(mix, bank), expected, atol=1e-6)
    # Strength 0 is the neutral prior itself; a one-hot at strength 2 doubles the deviation.
    assert torch.equal(mix_prior(probs_to_mix(CLASSES, probs, NAMES, 0.0), bank), n)
    two = mix_prior(probs_to_mix(CLASSES, np.eye(7)[4], NAMES, 2.0), bank)
    assert torch.allclose(two, n + 2 * (bank["sad"] - n))
    # Tiny weights are dropped and the rest renormalised; classes absent from the bank are ignored.
    assert probs_to_mix(CLASSES, [0.005, 0, 0, 0.995, 0, 0, 0], NAMES).terms == (("happy", 1.0),)
    assert probs_to_mix(CLASSES, [0.5, 0, 0, 0.5, 0, 0, 0], ["happy", "neutral"]).terms == (("happy", 1.0),)
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(InputError, match="emotion-strength must be in"):
            probs_to_mix(CLASSES, probs, NAMES, bad)
    with pytest.raises(InputError, match="none of the classifier's classes"):
        probs_to_mix(("a", "b"), [0.5, 0.5], NAMES)


def test_smoothing_is_a_centred_moving_average() -> None:
    times = [0.0, 0.5, 1.0, 1.5]
    probs = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    out = smooth_probs(times, probs, 1.0)
    assert out[0] == pytest.approx([1, 0]) and out[1] == pytest.approx([2 / 3, 1 / 3])
    assert out[2] == pytest.approx([1 / 3, 2 / 3]) and out[3] == pytest.approx([0, 1])


def test_timeline_follows_changes_and_is_stretched_to_the_audio() -> None:
    times = np.arange(8) * 0.5  # 4 s of reference at 2 fps: happy for 2 s, then sad
    probs = np.zeros((8, 7))
    probs[:4, 3] = 1
    probs[4:, 4] = 1
    schedule = probs_to_schedule(CLASSES, times, probs, NAMES, duration=8.0)
    keys = schedule.keyframes
    assert keys[0].time == 0 and keys[0].mix.terms == (("happy", 1.0),)
    change = [k for k in keys if k.mix.as_dict().get("sad", 0) > 0.5][0]
    assert change.time == pytest.approx(4.0)  # reference 2.0 s, stretched ×2
    assert keys[-1].mix.terms == (("sad", 1.0),)
    assert all(b.time > a.time for a, b in zip(keys, keys[1:], strict=False)) and keys[-1].time < 8
    priors = schedule_priors(schedule, _bank(), 40, 5.0)
    assert torch.equal(priors[0:1], _bank()["happy"]) and torch.equal(priors[-1:], _bank()["sad"])
    # Constant reference → one keyframe.
    flat = probs_to_schedule(CLASSES, times, np.tile(np.eye(7)[6], (8, 1)), NAMES, duration=3.0)
    assert flat.is_constant and flat.keyframes[0].mix.terms == (("neutral", 1.0),)


# ---- real faces through the offline classifier --------------------------------------------------------


@pytest.fixture(scope="module")
def fer():
    from portrait.weights.expression_classifier import load_expression_classifier

    return load_expression_classifier()


def _two_face_video(out: Path) -> Path:
    """4 s at 10 fps, 120×120: 2 s of a smiling face (classified happy), then 2 s of an angry one."""
    crops = np.load(FIXTURE)["crops"]
    frames = out.parent / "frames"
    frames.mkdir()
    for i in range(40):
        crop = crops[1] if i < 20 else crops[18]
        Image.fromarray(crop).resize((120, 120)).save(frames / f"{i:03d}.png")
    run_ffmpeg(
        ["-framerate", "10", "-i", media_path(frames / "%03d.png"), "-c:v", "libx264", "-pix_fmt", "yuv444p"]
        + ["-crf", "0", "-y", media_path(out)],
        timeout=60,
    )
    return out


def test_timeline_from_a_video_whose_expression_changes(fer, tmp_path: Path) -> None:
    video = _two_face_video(tmp_path / "ref.mp4")
    box = (10, 10, 100, 100)
    schedule, info = reference_emotion(video, fer, None, NAMES, duration=4.0, mode="timeline", face_box=box)
    tops = [max(k.mix.terms, key=lambda t: t[1])[0] for k in schedule.keyframes]
    assert tops[0] == "happy" and tops[-1] == "angry"
    switch = next(k.time for k in schedule.keyframes if max(k.mix.terms, key=lambda t: t[1])[0] == "angry")
    assert switch == pytest.approx(2.0)
    assert [e["top"] for e in info["probabilities"]["per_second"]] == ["happy", "happy", "angry", "angry"]
    assert info["schedule"][0]["time"] == 0 and info["mode"] == "timeline" and info["classifier"] == "fer"
    mean, _ = reference_emotion(video, fer, None, NAMES, duration=4.0, mode="mean", face_box=box)
    assert mean.is_constant and {"happy", "angry"} <= set(mean.keyframes[0].mix.as_dict())


def test_bad_references(fer, tmp_path: Path) -> None:
    from portrait.preprocess.detectors import DlibDetector

    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 160), (128, 128, 128)).save(blank)
    with pytest.raises(NoFaceError, match="no face found in .*blank.png"):
        reference_emotion(blank, fer, DlibDetector(), NAMES, 2.0)
    with pytest.raises(InputError, match=r"is 30x30 px, too small .* at least 48x48"):
        reference_emotion(PORTRAIT, fer, None, NAMES, 2.0, face_box=(200, 60, 30, 30))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match="corrupt.mp4"):
        reference_emotion(corrupt, fer, None, NAMES, 2.0, face_box=(0, 0, 60, 60))
    with pytest.raises(InputError, match="has no picture .*an audio file"):
        reference_emotion(SPEECH, fer, None, NAMES, 2.0, face_box=(0, 0, 60, 60))
    with pytest.raises(InputError, match="emotion-from-mode must be one of mean, timeline"):
        reference_emotion(PORTRAIT, fer, None, NAMES, 2.0, mode="median")


@pytest.mark.parametrize("mode", ["mean", "timeline"])
def test_emotion_from_renders_on_tiny_weights(tiny_weights: Path, tmp_path: Path, mode: str) -> None:
    reference = tmp_path / "ref.mp4"
    run_ffmpeg(
        ["-loop", "1", "-framerate", "10", "-i", media_path(PORTRAIT), "-t", "2"]
        + ["-vf", "scale=384:384", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-y", media_path(reference)],
        timeout=60,
    )
    out = tmp_path / "talk.mp4"
    argv = ["--weights", str(tiny_weights), "--image", str(PORTRAIT), "--audio", str(SPEECH), "-o", str(out)]
    argv += ["--emotion-from", str(reference), "--emotion-from-mode", mode, "--emotion-strength", "0.8"]
    assert main(argv + FAST) == 0
    info = json.loads(out.with_name(out.name + ".json").read_text())
    record = info["emotion_from"]
    assert record["mode"] == mode and record["strength"] == 0.8 and record["probabilities"]["top"] == "happy"
    first = record["schedule"][0]["emotion"]
    assert sum(first.values()) == pytest.approx(0.8, abs=2e-3) and max(first, key=first.get) == "happy"
    assert info["emotion_schedule"][0]["emotion"] == pytest.approx(first, abs=2e-3)
