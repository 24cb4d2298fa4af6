"""Emotion specs: parsing, intensity and mixture arithmetic, timelines with smooth transitions, errors."""

from __future__ import annotations

import json

import pytest
import torch

from portrait.errors import InputError
from portrait.preprocess.emotion_spec import (
    MAX_INTENSITY,
    check_schedule_fits,
    frame_blend,
    load_timeline_file,
    mix_prior,
    parse_emotion,
    schedule_priors,
    schedule_summary,
)

NAMES = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")


@pytest.fixture
def bank():
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(1, 8, generator=gen) for name in NAMES}


def test_single_name_at_intensity_one_is_the_bank_entry_itself(bank):
    schedule = parse_emotion("sad", NAMES)
    priors = schedule_priors(schedule, bank, num_frames=10, fps=12.5)
    assert priors.shape == (1, 8)
    assert torch.equal(priors, bank["sad"])
    assert torch.equal(schedule_priors(parse_emotion("sad:1", NAMES), bank, 10, 12.5), bank["sad"])


def test_intensity_scales_away_from_neutral(bank):
    n, s = bank["neutral"], bank["sad"]
    torch.testing.assert_close(mix_prior(parse_emotion("sad:0", NAMES).keyframes[0].mix, bank), n)
    torch.testing.assert_close(
        mix_prior(parse_emotion("sad:0.6", NAMES).keyframes[0].mix, bank), n + 0.6 * (s - n)
    )
    torch.testing.assert_close(
        mix_prior(parse_emotion("sad:1.5", NAMES).keyframes[0].mix, bank), n + 1.5 * (s - n)
    )


def test_mixture_is_the_convex_blend_when_weights_sum_to_one(bank):
    mix = parse_emotion(" happy:0.6 + surprised:0.4 ", NAMES).keyframes[0].mix
    torch.testing.assert_close(
        mix_prior(mix, bank), 0.6 * bank["happy"] + 0.4 * bank["surprised"], atol=1e-6, rtol=0
    )


def test_timeline_switches_with_smooth_transitions(bank):
    schedule = parse_emotion("0:neutral, 2.5:happy:0.8, 6:sad", NAMES, transition=0.5)
    assert [k.time for k in schedule.keyframes] == [0.0, 2.5, 6.0]
    priors = schedule_priors(schedule, bank, num_frames=100, fps=12.5)
    assert priors.shape == (100, 8)
    happy = bank["neutral"] + 0.8 * (bank["happy"] - bank["neutral"])
    assert torch.equal(priors[0], bank["neutral"][0]) and torch.equal(
        priors[31], bank["neutral"][0]
    )  # t < 2.5
    torch.testing.assert_close(priors[45], happy[0])  # t = 3.6: after the ramp
    assert torch.equal(priors[99], bank["sad"][0])  # t = 7.92
    mid = priors[32:38]  # t = 2.56 .. 2.96: inside the 0.5-s ramp
    dist = [(row - bank["neutral"][0]).norm() / (happy[0] - bank["neutral"][0]).norm() for row in mid]
    assert all(0 < d < 1 for d in dist[:5]) and all(a < b for a, b in zip(dist, dist[1:], strict=False))


def test_zero_transition_is_a_hard_cut(bank):
    schedule = parse_emotion("0:neutral,1:sad", NAMES, transition=0)
    assert frame_blend(schedule, 0.99) == (0, 0, 1.0)
    assert frame_blend(schedule, 1.0) == (1, 1, 1.0)


def test_summary_per_second(bank):
    summary = schedule_summary(parse_emotion("0:neutral, 2:happy", NAMES), duration=3.4)
    assert [row["time"] for row in summary] == [0.0, 1.0, 2.0, 3.0]
    assert summary[0]["emotion"] == {"neutral": 1.0}
    assert summary[2]["emotion"] == {"neutral": 1.0}  # the ramp starts at t = 2
    assert summary[3]["emotion"] == {"happy": 1.0}


def test_timeline_file_json_and_yaml(tmp_path, bank):
    rows = [{"time": 0, "emotion": "neutral"}, {"time": 1.5, "emotion": "sad", "intensity": 0.5}]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    (tmp_path / "t.yaml").write_text(
        "transition: 0.2\ntimeline:\n  - {time: 0, emotion: neutral}\n"
        "  - {time: 1.5, emotion: sad, intensity: 0.5}\n"
    )
    a = load_timeline_file(tmp_path / "t.json", NAMES)
    b = load_timeline_file(tmp_path / "t.yaml", NAMES)
    assert a.keyframes == b.keyframes and b.transition == 0.2
    assert a.keyframes[1].mix.terms == (("sad", 0.5),)


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("hapy", "unknown emotion"),
        ("happy:lots", "intensity must be a number"),
        ("happy:-0.5", "intensity must be in"),
        (f"happy:{MAX_INTENSITY + 0.1}", "intensity must be in"),
        ("happy:0+sad:0", "sum to zero"),
        ("happy:1.5+sad:1", "sum to"),
        ("happy+happy:0.5", "named twice"),
        ("0:neutral, 2:happy, 1:sad", "must increase"),
        ("1:neutral, 2:happy", "start at 0"),
        ("0:neutral, x:happy", "time must be a number"),
        ("0:neutral, 2", "SECONDS:EMOTION"),
        ("", "empty emotion"),
        ("happy+", "empty emotion term"),
    ],
)
def test_bad_specs_name_the_token(spec, fragment):
    with pytest.raises(InputError, match=fragment):
        parse_emotion(spec, NAMES)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(InputError, match="valid: angry, contempt"):
        parse_emotion("0:neutral, 2:hapy", NAMES)


def test_times_beyond_the_audio_are_rejected():
    schedule = parse_emotion("0:neutral, 5:happy", NAMES)
    check_schedule_fits(schedule, duration=6.0)
    with pytest.raises(InputError, match="beyond the audio"):
        check_schedule_fits(schedule, duration=4.0)


def test_mixtures_need_neutral(bank):
    del bank["neutral"]
    with pytest.raises(InputError, match="neutral"):
        mix_prior(parse_emotion("sad:0.5", NAMES).keyframes[0].mix, bank)
