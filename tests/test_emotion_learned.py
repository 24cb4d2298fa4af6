"""The learned emotion embedder inside a render (portrait.conditioning, --emotion-embedder)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait.cli.main import main
from portrait.conditioning import tokens_from_windows
from portrait.layout import RELEASE_EMOTIONS
from portrait.models.audio import frame_audio_windows

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
FAST = ["--size", "64", "--steps", "1", "--no-interpolate", "--quiet", "--offline"]


@pytest.fixture(scope="module")
def learned_weights(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from portrait.testing.trees import write_tiny_emotion_embedder

    root = tmp_path_factory.mktemp("learned") / "weights"
    shutil.copytree(tiny_weights, root)
    write_tiny_emotion_embedder(root, seed=3)
    return root


def _argv(weights: Path, out: Path, *extra: str) -> list[str]:
    return ["--weights", str(weights), "--image", str(PORTRAIT), "--audio", str(SPEECH), "-o", str(out)]


def _sidecar(out: Path) -> dict:
    return json.loads(out.with_name(out.name + ".json").read_text())


def test_tokens_come_back_exactly_from_the_frame_windows() -> None:
    hidden = torch.randn(60, 3, 5)
    windows = frame_audio_windows(hidden, audio_len=25, num_frames=12, units_per_frame=2)
    tokens = tokens_from_windows(windows, units_per_frame=2)
    assert tokens.shape == (1, 48, 3, 5)
    assert torch.equal(tokens[0], hidden[:48])


def _expected_learned(weights: Path, fer) -> dict[str, torch.Tensor]:
    """The embedder's heads recomputed here from the loaded parts (job audio tokens, fer probabilities)."""
    from transformers import WhisperFeatureExtractor

    from portrait.config import RenderConfig
    from portrait.models.audio import whisper_hidden_states
    from portrait.preprocess.audio import load_audio
    from portrait.preprocess.audio_features import audio_features
    from portrait.preprocess.detectors import DlibDetector
    from portrait.preprocess.face_expressions import classify_media
    from portrait.weights.load import load_component

    model = load_component("emotion_embedder", weights)
    whisper = load_component("audio_encoder", weights)
    extractor = WhisperFeatureExtractor.from_pretrained(weights / "audio_encoder")
    pre = RenderConfig().preprocess
    samples = load_audio(SPEECH, pre.sample_rate)
    features = audio_features(samples, extractor, pre.max_audio_units, pre.audio_units_per_frame)
    with torch.no_grad():
        hidden = whisper_hidden_states(whisper.encoder, features.mel)
        audio = hidden[: 4 * features.num_frames][None]
        summary = classify_media(PORTRAIT, fer, DlibDetector(), keep_frames=True)
        visual = torch.as_tensor(summary["frames"]["probs"], dtype=torch.float32)[None]
        return model(audio, visual)


def test_auto_uses_the_learned_embedder_when_the_weights_have_it(
    learned_weights: Path, tmp_path: Path
) -> None:
    from portrait.weights.expression_classifier import load_expression_classifier

    out = tmp_path / "learned.mp4"
    argv = _argv(learned_weights, out) + ["--emotion-from", str(PORTRAIT), "--emotion-strength", "0.5"]
    assert main(argv + FAST) == 0
    record = _sidecar(out)["emotion_from"]
    assert record["embedder"] == "learned" and record["input"] == "video+audio"
    learned = record["learned"]
    assert list(learned["weights"]) == list(RELEASE_EMOTIONS)
    expected = _expected_learned(learned_weights, load_expression_classifier())
    got = torch.tensor([learned["weights"][n] for n in RELEASE_EMOTIONS])
    assert torch.allclose(got, expected["weights"][0], atol=2e-4)
    assert learned["intensity"] == pytest.approx(0.5 * float(expected["intensity"][0]), abs=2e-4)
    assert learned["top"] == RELEASE_EMOTIONS[int(expected["weights"][0].argmax())]
    assert record["probabilities"]["top"] == "happy"  # the classifier's reading is still recorded


def test_embedder_choice(learned_weights: Path, tiny_weights: Path, tmp_path: Path, capsys) -> None:
    from portrait.config import load_config
    from portrait.inputs import Job, embedder_choice

    def choice(weights: Path, **job) -> str:
        cfg = load_config(values={"runtime.weights": str(weights)})
        return embedder_choice(Job(PORTRAIT, SPEECH, tmp_path / "o.mp4", emotion_from=PORTRAIT, **job), cfg)

    assert choice(learned_weights) == "learned" and choice(tiny_weights) == "classifier"
    assert choice(learned_weights, emotion_from_mode="timeline") == "classifier"
    assert choice(learned_weights, emotion_embedder="classifier") == "classifier"
    # learned without the component, and learned with a timeline, are refused before anything loads.
    bad = _argv(tiny_weights, tmp_path / "x.mp4") + ["--emotion-from", str(PORTRAIT)]
    assert main(bad + ["--emotion-embedder", "learned"] + FAST) == 1
    assert "has no emotion_embedder/ component" in capsys.readouterr().err
    bad = _argv(learned_weights, tmp_path / "y.mp4") + ["--emotion-from", str(PORTRAIT)]
    bad += ["--emotion-embedder", "learned", "--emotion-from-mode", "timeline"]
    assert main(bad + FAST) == 1
    assert "one prior per clip" in capsys.readouterr().err


def test_audio_only_reference_uses_the_audio_branch(learned_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "audio_ref.mp4"
    argv = _argv(learned_weights, out) + ["--emotion-from", str(SPEECH), "--emotion-embedder", "learned"]
    assert main(argv + FAST) == 0
    info = _sidecar(out)
    record = info["emotion_from"]
    assert record["embedder"] == "learned" and record["input"] == "audio"
    weights = np.array(list(record["learned"]["weights"].values()))
    assert weights.shape == (8,) and weights.sum() == pytest.approx(1.0, abs=1e-3)
    assert info["emotion_schedule"][0]["emotion"] == {"_learned": 1.0}
