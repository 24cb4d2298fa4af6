"""Closed-loop emotion QA: the retry loop with fakes, and `--emotion-qa` on tiny weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from media import PORTRAIT, speech_clip

from portrait.cli.main import main
from portrait.config import RenderConfig
from portrait.eval.qa import QASettings, render_with_qa


@dataclass(frozen=True)
class _Job:
    output: Path
    image: Path = PORTRAIT
    dump_frames: Path | None = None


@dataclass(frozen=True)
class _Prepared:
    job: _Job
    schedule: object = None


@dataclass
class _Result:
    output: Path
    sidecar: Path
    info: dict = field(default_factory=dict)


def _fake_render(seen: list[float]):
    def render(prepared, cfg):
        out = prepared.job.output
        seen.append(cfg.sampling.emo_scale_max)
        out.write_bytes(f"video at {cfg.sampling.emo_scale_max}".encode())
        side = out.with_name(out.name + ".json")
        side.write_text(json.dumps({"output": str(out), "emo": cfg.sampling.emo_scale_max}))
        return _Result(out, side)

    return render


def _fake_evaluate(confidences: list[float | None]):
    calls = iter(confidences)

    def evaluate(video, prepared):
        value = next(calls)
        metric = {"value": value, "available": value is not None, "backend": "fake", "reason": "no face"}
        csim = {"value": 0.9, "available": True, "backend": "fake"}
        return {"metrics": {"emotion_confidence": metric, "emotion_accuracy": metric, "csim": csim}}

    return evaluate


def test_retries_grow_the_guidance_and_stop_at_the_first_pass(tmp_path):
    seen: list[float] = []
    prepared = _Prepared(_Job(tmp_path / "out.mp4"))
    result = render_with_qa(
        prepared,
        _fake_render(seen),
        RenderConfig(),
        QASettings(threshold=0.5, retries=4),
        evaluate=_fake_evaluate([0.2, 0.7, 0.9]),
    )
    base = RenderConfig().sampling.emo_scale_max
    assert seen == pytest.approx([base, base * 1.3])  # passed on the second attempt: no third render
    assert result.output == tmp_path / "out.mp4"
    assert result.output.read_bytes() == f"video at {seen[1]}".encode()  # the chosen attempt's file
    qa = json.loads((tmp_path / "out.mp4.json").read_text())["emotion_qa"]
    assert qa["chosen"] == 1 and qa["passed"] is True
    assert [a["emotion_confidence"] for a in qa["attempts"]] == [0.2, 0.7]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out.mp4.json"]


def test_no_pass_keeps_the_most_confident_and_null_scores_keep_a_valid_attempt(tmp_path):
    seen: list[float] = []
    prepared = _Prepared(_Job(tmp_path / "out.mp4"))
    cap = QASettings(retries=2, max_scale=7.0)
    render_with_qa(
        prepared, _fake_render(seen), RenderConfig(), cap, evaluate=_fake_evaluate([0.1, 0.3, 0.2])
    )
    assert max(seen) == 7.0  # capped
    qa = json.loads((tmp_path / "out.mp4.json").read_text())["emotion_qa"]
    assert qa["chosen"] == 1 and qa["passed"] is False and len(qa["attempts"]) == 3
    out = tmp_path / "null"
    out.mkdir()
    render_with_qa(
        _Prepared(_Job(out / "o.mp4")), _fake_render([]), RenderConfig(), evaluate=_fake_evaluate([None] * 3)
    )
    qa = json.loads((out / "o.mp4.json").read_text())["emotion_qa"]
    assert qa["chosen"] == 0 and all(a["emotion_confidence"] is None for a in qa["attempts"])
    assert "no face" in qa["attempts"][0]["reason"]
    assert sorted(p.name for p in out.iterdir()) == ["o.mp4", "o.mp4.json"]


def test_a_failing_render_leaves_no_attempt_files(tmp_path):
    def render(prepared, cfg):
        prepared.job.output.write_bytes(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        render_with_qa(
            _Prepared(_Job(tmp_path / "o.mp4")), render, RenderConfig(), evaluate=_fake_evaluate([])
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_emotion_qa_on_tiny_weights_records_three_attempts(tiny_weights, tmp_path):
    audio = speech_clip(tmp_path / "short.wav", 0.6)
    out = tmp_path / "out" / "qa.mp4"
    out.parent.mkdir()
    argv = ["--quiet", "--weights", str(tiny_weights), "--image", str(PORTRAIT), "--audio", str(audio)]
    argv += ["--size", "64", "--steps", "1", "--no-interpolate", "--detector", "dlib", "--offline"]
    code = main([*argv, "--emotion", "happy", "--emotion-qa", "--qa-retries", "2", "-o", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["qa.mp4", "qa.mp4.json"]
    info = json.loads((out.parent / "qa.mp4.json").read_text())
    assert info["output"] == str(out)
    qa = info["emotion_qa"]
    assert len(qa["attempts"]) == 3 and qa["passed"] is False
    scales = [a["emo_scale"] for a in qa["attempts"]]
    assert scales[1] == pytest.approx(scales[0] * 1.3) and scales[2] == pytest.approx(scales[0] * 1.69)
    for attempt in qa["attempts"]:
        assert {"emotion_accuracy", "emotion_confidence", "csim", "reason"} <= set(attempt)
        if attempt["emotion_confidence"] is None:
            assert attempt["reason"]  # a null score says why
    assert 0 <= qa["chosen"] < 3
    assert out.stat().st_size > 0
