"""Emotion QA in the web demo: request validation, the info panel, and the handler on tiny weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from media import PORTRAIT, speech_clip
from tiny_inputs import studio_on

from portrait.app.present import summary
from portrait.app.request import MAX_QA_RETRIES, AppRequest, qa_values
from portrait.errors import InputError

FAST = dict(size=64, steps=1, framing="photo", interpolate=False)


def test_qa_values_are_checked_and_ignored_when_qa_is_off():
    assert qa_values(AppRequest(None, None)) is None
    assert qa_values(AppRequest(None, None, qa_threshold=7, qa_retries=99)) is None  # QA off: not used
    assert qa_values(AppRequest(None, None, emotion_qa=True)) == {}  # QASettings' defaults
    assert qa_values(AppRequest(None, None, emotion_qa=True, qa_threshold=0.7, qa_retries=1.0)) == {
        "threshold": 0.7,
        "retries": 1,
    }
    for bad, match in (
        (dict(qa_threshold=1.5), "between 0 and 1"),
        (dict(qa_threshold="x"), "must be a number"),
        (dict(qa_retries=MAX_QA_RETRIES + 1), f"0 to {MAX_QA_RETRIES}"),
        (dict(qa_retries=1.5), "whole number"),
        (dict(qa_retries=-1), "whole number"),
    ):
        with pytest.raises(InputError, match=match):
            qa_values(AppRequest(None, None, emotion_qa=True, **bad))


def test_summary_shows_each_attempts_scores_and_the_chosen_one():
    info = {"audio_seconds": 1.0, "video_frames": 13, "fps": 12.5, "seed": 3, "emotion": "happy"}
    assert "emotion_qa" not in summary(info, 1.0)
    attempts = [
        {"emo_scale": 4.5, "emotion_confidence": 0.2, "emotion_accuracy": 0.0, "csim": 0.91, "passed": False},
        {"emo_scale": 5.85, "emotion_confidence": 0.6, "emotion_accuracy": 1.0, "csim": 0.88, "passed": True},
    ]
    attempts[0]["reason"] = "long text the panel leaves out"
    qa = {"attempts": attempts, "chosen": 1, "passed": True, "threshold": 0.5, "csim_threshold": 0.6}
    panel = summary({**info, "emotion_qa": qa}, 1.0)["emotion_qa"]
    assert panel["chosen"] == 1 and panel["passed"] is True and panel["threshold"] == 0.5
    assert [a["emotion_confidence"] for a in panel["attempts"]] == [0.2, 0.6]
    assert [a["csim"] for a in panel["attempts"]] == [0.91, 0.88]
    assert "reason" not in panel["attempts"][0]


@pytest.fixture(scope="module")
def studio(tiny_weights, tmp_path_factory):
    yield from studio_on(tiny_weights, tmp_path_factory.mktemp("app"), steps=1)


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    return speech_clip(tmp_path_factory.mktemp("speech") / "short.wav", 0.6)


def test_handler_qa_retries_and_shows_the_scores(studio, short_speech, monkeypatch):
    import portrait.eval.toolkit as tools

    built: list[int] = []
    real = tools.default_tools
    monkeypatch.setattr(tools, "default_tools", lambda *a, **k: built.append(1) or real(*a, **k))

    plain = studio.run(AppRequest(PORTRAIT, short_speech, "happy", seed=5, **FAST))
    assert "emotion_qa" not in plain.info and built == []  # QA off: nothing is evaluated

    request = AppRequest(PORTRAIT, short_speech, "happy", seed=5, emotion_qa=True, qa_threshold=1.0,
                         qa_retries=1, **FAST)  # fmt: skip
    result = studio.run(request)
    panel = result.info["emotion_qa"]
    assert len(panel["attempts"]) == 2 and panel["passed"] is False  # confidence 1.0 is never reached
    assert panel["threshold"] == 1.0 and panel["chosen"] in (0, 1)
    scales = [a["emo_scale"] for a in panel["attempts"]]
    assert scales[1] == pytest.approx(scales[0] * 1.3)
    assert {"emotion_confidence", "csim"} <= set(panel["attempts"][0])
    assert sorted(p.name for p in result.video.parent.iterdir()) == [
        "portrait.mp4",
        "portrait.mp4.json",
        "portrait.mp4.public.json",
    ]  # no attempt file is left
    public = json.loads(result.sidecar.read_text())
    assert len(public["emotion_qa"]["attempts"]) == 2 and public["output"] == "portrait.mp4"
    if panel["chosen"] == 0:  # attempt 0 uses the request's own guidance: the plain render's video
        assert result.video.read_bytes() == plain.video.read_bytes()

    again = studio.run(dataclass_replace(request, qa_retries=0))
    assert len(again.info["emotion_qa"]["attempts"]) == 1
    assert built == [1]  # the evaluator's tools are built once per app, on the first QA request


def dataclass_replace(request: AppRequest, **changes) -> AppRequest:
    import dataclasses

    return dataclasses.replace(request, **changes)
