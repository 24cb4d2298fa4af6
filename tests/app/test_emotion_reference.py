"""The web demo's "Emotion from a reference": the reference upload in a render and "Save as emotion"."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from media import PORTRAIT, SPEECH, speech_clip
from safetensors.torch import load_file

from portrait.app.emotion_reference import reference_fields, save_emotion
from portrait.app.handler import Studio
from portrait.app.request import AppRequest
from portrait.app.workspace import Workspace
from portrait.config import load_config
from portrait.errors import InputError

if importlib.util.find_spec("dlib") is None:
    pytest.skip("needs dlib", allow_module_level=True)

FAST = dict(size=64, steps=1, framing="photo", interpolate=False, seed=3)


def test_reference_fields_are_checked(tmp_path):
    assert reference_fields(AppRequest(None, None)) == {}
    assert reference_fields(AppRequest(None, None, emotion_from="")) == {}
    fields = reference_fields(AppRequest(None, None, emotion_from=str(PORTRAIT)))
    assert fields == {"emotion_from": PORTRAIT, "emotion_from_mode": "mean", "emotion_strength": 1.0}
    fields = reference_fields(
        AppRequest(None, None, emotion_from=PORTRAIT, emotion_from_mode="timeline", emotion_strength=0.4)
    )
    assert (fields["emotion_from_mode"], fields["emotion_strength"]) == ("timeline", 0.4)
    with pytest.raises(InputError, match="use a picture or a video"):
        reference_fields(AppRequest(None, None, emotion_from=SPEECH))
    with pytest.raises(InputError, match="gone.mp4 is missing; upload it again"):
        reference_fields(AppRequest(None, None, emotion_from=tmp_path / "gone.mp4"))
    with pytest.raises(InputError, match="must be one of mean, timeline"):
        reference_fields(AppRequest(None, None, emotion_from=PORTRAIT, emotion_from_mode="median"))
    for bad in (2.5, -1, float("nan"), "x"):
        with pytest.raises(InputError, match="emotion strength must be"):
            reference_fields(AppRequest(None, None, emotion_from=PORTRAIT, emotion_strength=bad))


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    """A studio on its own tiny weights tree whose operator allows "Save as emotion" (it writes there)."""
    from portrait.testing.trees import write_tiny_weights

    root = write_tiny_weights(tmp_path_factory.mktemp("emo") / "w", layout="portrait", seed=0)
    cfg = load_config(values={"runtime.weights": str(root), "sampling.steps": 1})
    workspace = Workspace(tmp_path_factory.mktemp("app"))
    return Studio(cfg, detector="dlib", max_seconds=3.0, workspace=workspace, save_emotions=True)


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    return speech_clip(tmp_path_factory.mktemp("speech") / "hello.wav", 0.6)


def test_render_with_a_reference_clip_records_it(studio, short_speech):
    request = AppRequest(
        PORTRAIT, short_speech, emotion="sad", emotion_from=str(PORTRAIT), emotion_strength=0.8, **FAST
    )
    result = studio.run(request)
    assert result.video.is_file() and result.video.stat().st_size > 0
    server = json.loads(result.sidecar.with_name("portrait.mp4.json").read_text())
    record = server["emotion_from"]
    assert record["file"] == str(PORTRAIT) and record["mode"] == "mean" and record["strength"] == 0.8
    assert record["probabilities"]["top"] == "happy"  # the smiling sample portrait, not the dropdown's "sad"
    first = record["schedule"][0]["emotion"]
    assert sum(first.values()) == pytest.approx(0.8, abs=2e-3) and max(first, key=first.get) == "happy"
    assert server["emotion_schedule"][0]["emotion"] == pytest.approx(first, abs=2e-3)
    public = json.loads(result.sidecar.read_text())
    assert public["emotion_from"]["file"] == PORTRAIT.name  # the visitor's copy has no server path
    assert result.info["emotion"] == f"from {PORTRAIT.name} (mean)"
    assert result.info["emotion_from"]["top"] == "happy" and result.info["emotion_from"]["strength"] == 0.8


def test_save_as_emotion_adds_a_custom_entry_and_refuses_bad_names(studio, short_speech):
    from portrait.preprocess.emotion_from_reference import reference_prior
    from portrait.weights.emotion_bank import list_emotions

    root = studio.engine().weights_root
    before = studio.emotion_names()
    assert "smile" not in before
    names = save_emotion(studio, " smile ", str(PORTRAIT), 1.0)
    assert names == studio.emotion_names() == sorted(before + ["smile"])
    kinds = {name: kind for name, kind, _ in list_emotions(root)}
    assert kinds["smile"] == "custom" and kinds["happy"] == "release"
    manifest = json.loads((root / "manifest.json").read_text())
    assert "smile" in manifest["custom_emotions"] and "emotions/smile.safetensors" in manifest["files"]
    stored = load_file(str(root / "emotions" / "smile.safetensors"))["mu"]
    engine = studio.engine()
    expected, _ = reference_prior([PORTRAIT], studio.expression_classifier(), engine.detector, engine.bank)
    assert torch.allclose(stored, expected) and torch.equal(engine.bank["smile"], stored)
    assert not torch.allclose(stored, engine.bank["neutral"])  # a smiling face: not the neutral prior
    rendered = studio.run(AppRequest(PORTRAIT, short_speech, emotion="smile", **FAST))  # usable at once
    assert json.loads(rendered.sidecar.read_text())["emotion"] == "smile"

    def refused(name, clip=str(PORTRAIT)):
        with pytest.raises(InputError) as info:
            save_emotion(studio, name, clip)
        message = studio.message(info.value, AppRequest(None, None, emotion_from=clip))
        assert str(root) not in message and str(root.resolve()) not in message
        return message

    assert "invalid emotion name '../evil'" in refused("../evil")
    assert "invalid emotion name ''" in refused("  ")
    assert "invalid emotion name 'a:b'" in refused("a:b")
    assert "'happy' is a release emotion" in refused("happy")
    assert "emotion 'smile' already exists" in refused("smile")
    assert "no reference clip given" in refused("other", clip=None)
    assert "use a picture or a video" in refused("other", clip=str(SPEECH))
    assert not (root / "emotions" / "other.safetensors").exists()
    assert studio.emotion_names() == names


def test_page_has_the_reference_accordion_and_save_shows_readable_errors(studio):
    gr = pytest.importorskip("gradio")
    from portrait.app.ui import build_demo

    demo = build_demo(studio)
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"Emotion from a reference", "Reference picture or video", "New emotion name"} <= labels
    save = next(fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "save_as_emotion")
    with pytest.raises(gr.Error) as info:
        save("happy", str(PORTRAIT), 1.0)
    assert (
        "release emotion" in info.value.message
        and str(studio.engine().weights_root) not in info.value.message
    )
    update, status = save("grin", str(PORTRAIT), 0.5)
    assert "grin" in update["choices"] and update["value"] == "grin" and "grin" in status
    assert "grin" in studio.emotion_names()
