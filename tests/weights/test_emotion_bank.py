"""Custom emotion-bank entries: ``portrait-gen emotions add/list/remove`` (portrait.weights.emotion_bank)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from portrait.cli.main import main
from portrait.errors import InputError
from portrait.layout import MANIFEST_FILE
from portrait.weights.emotion_bank import add_emotion, check_emotion_name, list_emotions, remove_emotion
from portrait.weights.load import load_emotion_bank, verify_manifest

ASSETS = Path(__file__).resolve().parents[2] / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
FAST = ["--size", "64", "--steps", "1", "--no-interpolate", "--quiet", "--offline"]


@pytest.fixture
def tree(tiny_weights: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_weights, tmp_path / "weights"))


def test_names_and_refusals(tree: Path) -> None:
    for bad in ("", "../evil", "a/b", "x.y", "1st", "a" * 41, "happy:2"):
        with pytest.raises(InputError, match="invalid emotion name"):
            check_emotion_name(bad)
    prior = torch.ones(1, load_emotion_bank(tree)["neutral"].shape[-1])
    with pytest.raises(InputError, match="release emotion and cannot be replaced"):
        add_emotion(tree, "happy", prior)
    with pytest.raises(InputError, match="must be"):
        add_emotion(tree, "wide", torch.ones(1, 3))
    add_emotion(tree, "calm", prior)
    with pytest.raises(InputError, match="already exists .*--overwrite"):
        add_emotion(tree, "calm", prior * 2)
    add_emotion(tree, "calm", prior * 2, overwrite=True)
    assert torch.equal(load_emotion_bank(tree)["calm"], prior * 2)
    assert verify_manifest(tree) == []  # hash of the new file recorded
    with pytest.raises(InputError, match="release emotion and cannot be removed"):
        remove_emotion(tree, "sad")
    with pytest.raises(InputError, match="no emotion 'nope'"):
        remove_emotion(tree, "nope")


def test_add_list_render_remove_round_trip(tree: Path, tmp_path: Path, capsys) -> None:
    weights = ["--weights", str(tree)]
    assert main(["emotions", "add", "astro", "--from", str(PORTRAIT), *weights]) == 0
    assert "wrote" in capsys.readouterr().out
    stored = load_file(str(tree / "emotions" / "astro.safetensors"))["mu"]
    bank = load_emotion_bank(tree)
    # The astronaut is classified happy with p > 0.98: the prior lies close to the happy prior.
    assert torch.dist(stored, bank["happy"]) < 0.1 * torch.dist(bank["neutral"], bank["happy"])
    manifest = json.loads((tree / MANIFEST_FILE).read_text())
    assert manifest["custom_emotions"] == ["astro"] and "emotions/astro.safetensors" in manifest["files"]
    assert verify_manifest(tree) == []
    assert ("astro", "custom", stored.shape[-1]) in list_emotions(tree)
    assert main(["emotions", "list", *weights]) == 0
    listing = capsys.readouterr().out
    assert "astro" in listing and "custom" in listing and "happy" in listing and "release" in listing
    assert main(["emotions", "add", "astro", "--from", str(PORTRAIT), *weights]) == 1  # exists
    assert main(["emotions", "add", "../x", "--from", str(PORTRAIT), *weights]) == 1
    assert "invalid emotion name" in capsys.readouterr().err
    out = tmp_path / "talk.mp4"
    argv = [*weights, "--image", str(PORTRAIT), "--audio", str(SPEECH), "-o", str(out)]
    assert main([*argv, "--emotion", "0:neutral, 1:astro:0.5", *FAST]) == 0
    info = json.loads(out.with_name(out.name + ".json").read_text())
    assert info["emotion_schedule"][-1]["emotion"] == {"astro": 0.5}
    assert main(["emotions", "remove", "astro", *weights]) == 0
    assert main(["emotions", "remove", "happy", *weights]) == 1
    assert "astro" not in load_emotion_bank(tree) and verify_manifest(tree) == []
    assert json.loads((tree / MANIFEST_FILE).read_text())["custom_emotions"] == []


def test_classify_prints_the_top_class(capsys) -> None:
    assert main(["emotions", "classify", str(PORTRAIT), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["top"] == "happy" and len(summary["per_second"]) == 1
    assert main(["emotions", "classify", str(PORTRAIT), "--face-box", "160,60,110,110"]) == 0
    assert "<- top" in capsys.readouterr().out


def test_weights_flag_works_before_and_after_the_action() -> None:
    from portrait.cli.main import build_parser, route

    parser = build_parser()
    for argv, expected in (
        (["emotions", "--weights", "A", "add", "calm", "--from", "x.png"], "A"),
        (["emotions", "add", "calm", "--from", "x.png", "--weights", "B"], "B"),
        (["emotions", "--weights", "A", "remove", "calm", "--weights", "C"], "C"),
        (["emotions", "--weights", "A", "list"], "A"),
        (["emotions", "list"], None),
    ):
        weights = parser.parse_args(route(argv)).weights
        assert (str(weights) if weights is not None else None) == expected, argv
