"""LandmarkGuider and the pipeline's ``motion_maps``: the three exactness rules on tiny weights, gathering
per window, the padding rule and input checks."""

from __future__ import annotations

import logging

import pytest
import torch
from tiny_inputs import H, W, pipeline_inputs

from portrait.errors import InputError
from portrait.models.landmark_guider import LandmarkGuider
from portrait.pipeline import PortraitPipeline
from portrait.testing.configs import tiny_pose_guider_config
from portrait.testing.trees import randomize_

N = 30  # two windows of 25 with the 25 padding frames: several windows per step


def _maps(num_frames: int = N, seed: int = 1) -> torch.Tensor:
    """Per-frame maps that differ frame to frame (a moving blob per channel)."""
    maps = torch.zeros(num_frames, 3, H, W)
    for i in range(num_frames):
        x = 10 + i % 40
        maps[i, :, 20:40, x : x + 12] = torch.tensor([1.0, 0.5, 0.25])[:, None, None]
    return maps


def _noise(num_frames: int = N) -> torch.Tensor:
    return torch.randn(1, num_frames + 25, 4, 8, 8, generator=torch.Generator().manual_seed(5))


def _with_guider(pipe: PortraitPipeline, guider: LandmarkGuider | None) -> PortraitPipeline:
    """A new pipeline sharing ``pipe``'s modules plus ``guider`` (the session pipeline is not mutated)."""
    parts = {k: v for k, v in pipe.components.items() if k != "landmark_guider"}
    new = PortraitPipeline(**parts, landmark_guider=guider)
    new.set_progress_bar_config(disable=True)
    return new


def _zero_guider(pipe: PortraitPipeline) -> LandmarkGuider:
    return LandmarkGuider.from_pose_guider(pipe.pose_guider.state_dict(), **tiny_pose_guider_config()).eval()


def _random_guider(seed: int = 0) -> LandmarkGuider:
    return randomize_(LandmarkGuider(**tiny_pose_guider_config()), seed, "landmark_guider").eval()


def _run(pipe, maps=None, **kw):
    ref, clip, mask, windows, prior = pipeline_inputs(N)
    return pipe(ref, clip, mask, windows, prior, steps=1, latents=_noise(), motion_maps=maps, **kw).frames


@pytest.fixture(scope="module")
def baseline(tiny_pipe):
    """Today's output: the pipeline without a landmark guider and without the argument."""
    ref, clip, mask, windows, prior = pipeline_inputs(N)
    return tiny_pipe(ref, clip, mask, windows, prior, steps=1, latents=_noise()).frames


def test_no_motion_is_identical_to_today(tiny_pipe, baseline):
    """A (non-zero) guider present but no motion maps: the output is bit-identical."""
    assert torch.equal(_run(tiny_pipe), baseline)
    assert torch.equal(_run(_with_guider(tiny_pipe, _random_guider())), baseline)


def test_zero_initialised_guider_adds_exactly_nothing(tiny_pipe, baseline):
    guider = _zero_guider(tiny_pipe)
    assert guider.is_zero
    assert torch.equal(guider(_maps()[:4]), torch.zeros(4, 32, 8, 8))
    for batch in (1, 3):  # also with batched windows (the (3k, F) gather path)
        frames = _run(_with_guider(tiny_pipe, guider), _maps(), window_batch=batch)
        expected = baseline if batch == 1 else _run(tiny_pipe, window_batch=batch)
        assert torch.equal(frames, expected)


def test_non_zero_guider_changes_the_output_per_frame(tiny_pipe, baseline):
    pipe = _with_guider(tiny_pipe, _random_guider())
    moving = _run(pipe, _maps())
    assert (moving - baseline).abs().max() > 1e-3
    still = _run(pipe, _maps()[:1].expand(N, 3, H, W).contiguous())
    assert (moving - still).abs().max() > 1e-3  # the frames' own maps matter, not only the first
    # Batched windows gather the same per-frame features (window-major [uncond, drop, cond] order).
    batched = _run(pipe, _maps(), window_batch=3)
    assert (batched - moving).abs().max() <= 1e-4


def test_padding_frames_hold_the_last_map(tiny_pipe):
    pipe = _with_guider(tiny_pipe, _random_guider())
    maps = _maps(5)
    features = pipe.encode_motion(maps, frames_per_window=25, chunk=2)
    assert features.shape == (30, 32, 8, 8)
    direct = pipe.landmark_guider(maps)
    torch.testing.assert_close(features[:5], direct, rtol=0, atol=1e-6)
    for row in features[5:]:
        assert torch.equal(row, features[4])
    assert not torch.equal(features[0], features[4])


def test_motion_without_guider_warns_and_changes_nothing(tiny_pipe, baseline, caplog):
    with caplog.at_level(logging.WARNING, logger="portrait.pipeline"):
        frames = _run(tiny_pipe, _maps())
    assert torch.equal(frames, baseline)
    assert any("no landmark_guider" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "maps, message",
    [
        (torch.zeros(N - 1, 3, H, W), "motion_maps must be"),
        (torch.zeros(N, 1, H, W), "motion_maps must be"),
        (torch.zeros(N, 3, H, 32), "motion_maps must be"),
        (torch.full((N, 3, H, W), 2.0), "in \\[0, 1\\]"),
        (torch.full((N, 3, H, W), float("nan")), "in \\[0, 1\\]"),
    ],
)
def test_bad_motion_maps_are_input_errors(tiny_pipe, maps, message):
    with pytest.raises(InputError, match=message):
        _run(_with_guider(tiny_pipe, _zero_guider(tiny_pipe)), maps)


def test_from_pose_guider_copies_all_but_the_output_conv(tiny_pipe):
    guider = _zero_guider(tiny_pipe)
    pose = tiny_pipe.pose_guider.state_dict()
    for key, value in guider.state_dict().items():
        if key.startswith("conv_out."):
            assert not value.any()
        else:
            assert torch.equal(value, pose[key]), key
    assert guider.config.conditioning_channels == 3
    with pytest.raises(ValueError, match="does not fit"):
        LandmarkGuider.from_pose_guider(pose, conditioning_embedding_channels=32, block_out_channels=(4, 8))
    assert not _random_guider().is_zero
