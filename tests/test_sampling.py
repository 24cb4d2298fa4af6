"""Tests of portrait.sampling: window schedule, accumulation, guidance and Euler arithmetic.

The scheduler arithmetic is checked bit for bit against diffusers' EulerDiscreteScheduler configured
as SVD-XT's (spec 6.6).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import EulerDiscreteScheduler

from portrait.sampling import (
    added_time_ids,
    average_frames,
    combine_guidance,
    euler_step,
    gather_frames,
    guidance_scales,
    initial_latents,
    padded_length,
    scale_model_input,
    scatter_add_frames,
    shift_at_step,
    window_indices,
)

F = 25
STEPS = 25

# Spec 6.6 [RUN] values.
# fmt: off
SPEC_SIGMAS = [
    700.0, 545.729248, 421.569122, 322.453674, 244.023071, 182.547134, 134.854446, 98.267136, 70.54084,
    49.809792, 34.536739, 23.467512, 15.589968, 10.09713, 6.354266, 3.869697, 2.269116, 1.273177, 0.678146,
    0.339378, 0.157405, 0.066399, 0.024803, 0.007882, 0.002, 0.0,
]
SPEC_TIMESTEPS = [
    1.63777, 1.575531, 1.510996, 1.44399, 1.374316, 1.301752, 1.226049, 1.146922, 1.064048, 0.977053,
    0.885506, 0.788904, 0.686657, 0.578063, 0.462282, 0.338294, 0.204848, 0.060379, -0.097098, -0.27016,
    -0.462234, -0.678018, -0.924202, -1.210778, -1.553652,
]
# fmt: on


@pytest.fixture(scope="module")
def scheduler() -> EulerDiscreteScheduler:
    sched = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        interpolation_type="linear",
        sigma_min=0.002,
        sigma_max=700.0,
        use_karras_sigmas=True,
        timestep_spacing="leading",
        steps_offset=1,
        timestep_type="continuous",
    )
    sched.set_timesteps(STEPS)
    return sched


# ---------------------------------------------------------------------------------------------- windows


def window_counts(indices: torch.Tensor, length: int) -> torch.Tensor:
    """How many windows cover each frame.

    Args:
        indices: LongTensor (W, F) from :func:`window_indices`, values in ``[0, length)``.
        length: ``L``.

    Returns:
        LongTensor (length,) with the number of windows holding each frame.
    """
    if indices.dtype != torch.long or indices.dim() != 2:
        raise ValueError(
            f"indices must be a 2-d LongTensor, got {indices.dtype} of shape {tuple(indices.shape)}"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= length):
        raise ValueError(f"indices must lie in [0, {length})")
    return torch.bincount(indices.flatten(), minlength=length)


# --------------------------------------------------------------------------------------------------
# Gather / scatter-average along the frame axis (dim 1)
# --------------------------------------------------------------------------------------------------


def test_padded_length_and_errors() -> None:
    assert padded_length(53, 25) == 78
    assert padded_length(1, 25) == 26
    with pytest.raises(ValueError):
        padded_length(0, 25)
    with pytest.raises(ValueError):
        padded_length(5, 0)


def test_shift_sequence_matches_spec() -> None:
    expected = [0, 7, 14, 21, 3, 10, 17, 24, 6, 13, 20, 2, 9, 16, 23, 5, 12, 19, 1, 8, 15, 22, 4, 11, 18]
    assert [shift_at_step(i, 7, F) for i in range(STEPS)] == expected
    # Same as the reference's running update shift = (shift + offset) % F.
    shift = 0
    for i in range(40):
        assert shift_at_step(i, 7, F) == shift
        shift = (shift + 7) % F
    with pytest.raises(ValueError):
        shift_at_step(-1, 7, F)


@pytest.mark.parametrize("num_frames", [1, 24, 25, 26, 50])
def test_window_schedule_properties(num_frames: int) -> None:
    length = padded_length(num_frames, F)
    num_windows = -(-length // F)
    for shift in range(F):
        idx = window_indices(length, F, 0, shift)
        assert idx.dtype == torch.long and idx.shape == (num_windows, F)
        assert int(idx.min()) >= 0 and int(idx.max()) < length
        for row in idx:
            assert torch.unique(row).numel() == F  # distinct within a window
            # consecutive in cyclic order (wrap-around by one step mod length)
            assert torch.equal(
                torch.remainder(row[1:] - row[:-1], length), torch.ones(F - 1, dtype=torch.long)
            )
            # A window never runs from the last real frame across the padding into frame 0 (the F
            # padding frames lie between them in cyclic order): frame 0 never follows frame N - 1.
            pos = {int(f): j for j, f in enumerate(row)}
            if num_frames >= 2 and 0 in pos and num_frames - 1 in pos:
                assert pos[0] < pos[num_frames - 1]
        counts = window_counts(idx, length)
        assert counts.shape == (length,)
        assert int(counts.min()) == 1 and int(counts.max()) <= 2
        assert int(counts.sum()) == num_windows * F
        assert int((counts == 2).sum()) == num_windows * F - length
        assert idx[0, 0] == (-shift) % length  # first window starts at -shift (wraps when shift > 0)


def _cyc(a: int, b: int) -> list[int]:
    return list(range(a, b + 1))


def test_appendix_a_example() -> None:
    length = padded_length(53, F)
    assert length == 78
    expected = {
        0: [_cyc(0, 24), _cyc(25, 49), _cyc(50, 74), _cyc(75, 77) + _cyc(0, 21)],
        1: [_cyc(71, 77) + _cyc(0, 17), _cyc(18, 42), _cyc(43, 67), _cyc(68, 77) + _cyc(0, 14)],
        2: [_cyc(64, 77) + _cyc(0, 10), _cyc(11, 35), _cyc(36, 60), _cyc(61, 77) + _cyc(0, 7)],
    }
    doubled = {0: set(_cyc(0, 21)), 1: set(_cyc(71, 77) + _cyc(0, 14))}
    for step, windows in expected.items():
        idx = window_indices(length, F, 0, shift_at_step(step, 7, F))
        assert idx.tolist() == windows
        counts = window_counts(idx, length)
        assert int((counts == 2).sum()) == 22
        if step in doubled:
            assert set(torch.nonzero(counts == 2).flatten().tolist()) == doubled[step]


def test_window_indices_with_overlap() -> None:
    idx = window_indices(30, 10, 4, 3)  # stride 6: starts 0, 6, 12, 18, 24
    assert idx.shape == (5, 10)
    assert idx[0].tolist() == [27, 28, 29, 0, 1, 2, 3, 4, 5, 6]
    assert idx[4].tolist() == [21, 22, 23, 24, 25, 26, 27, 28, 29, 0]
    counts = window_counts(idx, 30)
    assert int(counts.min()) >= 1 and int(counts.sum()) == 50
    assert counts.tolist() == [
        2,
        1,
        1,
        2,
        2,
        2,
        2,
        1,
        1,
        2,
        2,
        2,
        2,
        1,
        1,
        2,
        2,
        2,
        2,
        1,
        1,
        2,
        2,
        2,
        2,
        1,
        1,
        2,
        2,
        2,
    ]


def test_window_indices_errors() -> None:
    with pytest.raises(ValueError):
        window_indices(30, 0, 0, 0)
    with pytest.raises(ValueError):
        window_indices(30, 10, 10, 0)
    with pytest.raises(ValueError):
        window_indices(30, 10, -1, 0)
    with pytest.raises(ValueError):
        window_indices(9, 10, 0, 0)
    assert window_indices(10, 10, 0, 4)[0].tolist() == [6, 7, 8, 9, 0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError):
        window_counts(torch.tensor([[0, 10]]), 10)


# ----------------------------------------------------------------------------------- gather / scatter


def test_gather_scatter_average_weights() -> None:
    length = 6
    x = torch.arange(2 * length * 3, dtype=torch.float16).reshape(2, length, 3)
    idx_a = torch.tensor([4, 5, 0, 1])
    idx_b = torch.tensor([1, 2, 3, 4])
    assert torch.equal(gather_frames(x, idx_a), x[:, [4, 5, 0, 1]])

    acc = torch.zeros_like(x)
    count = torch.zeros(1, length, 1, dtype=x.dtype)
    a = torch.full((2, 4, 3), 1.0, dtype=x.dtype)
    b = torch.full((2, 4, 3), 4.0, dtype=x.dtype)
    assert scatter_add_frames(acc, count, idx_a, a) is None
    scatter_add_frames(acc, count, idx_b, b)
    assert count.flatten().tolist() == [1, 2, 1, 1, 2, 1]
    assert count.dtype == torch.float16 and acc.dtype == torch.float16
    out = average_frames(acc, count)
    per_frame = out[0, :, 0].tolist()
    assert per_frame == [1.0, 2.5, 4.0, 4.0, 2.5, 1.0]  # twice-covered frames get (a + b) / 2
    assert out.dtype == torch.float16 and out.shape == x.shape


def test_scatter_rejects_bad_input() -> None:
    acc = torch.zeros(1, 5, 2)
    count = torch.zeros(1, 5, 1)
    with pytest.raises(ValueError):
        scatter_add_frames(acc, count, torch.tensor([0, 0]), torch.ones(1, 2, 2))
    with pytest.raises(ValueError):
        scatter_add_frames(acc, count, torch.tensor([0, 1]), torch.ones(1, 3, 2))


def test_window_round_trip_reconstructs_clip() -> None:
    """Gathering every window and scatter-averaging it back unchanged gives the clip back."""
    length = padded_length(26, F)
    x = torch.randn(1, length, 4, 2, 2, generator=torch.Generator().manual_seed(0)).half()
    acc = torch.zeros_like(x)
    count = torch.zeros(1, length, 1, 1, 1, dtype=x.dtype)
    for row in window_indices(length, F, 0, 17):
        scatter_add_frames(acc, count, row, gather_frames(x, row))
    assert torch.allclose(average_frames(acc, count).float(), x.float(), rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------------------- guidance


def test_guidance_scales() -> None:
    g = guidance_scales(3.0, 6.0, 4)
    assert g.dtype == torch.float32 and g.tolist() == [3.0, 4.0, 5.0, 6.0]
    assert guidance_scales(3.0, 3.0, STEPS).tolist() == [3.0] * STEPS
    assert torch.equal(guidance_scales(1.0, 2.5, 7), torch.linspace(1.0, 2.5, 7))
    with pytest.raises(ValueError):
        guidance_scales(1.0, 2.0, 0)


def test_combine_guidance_algebra() -> None:
    gen = torch.Generator().manual_seed(1)
    v = torch.randn(3, 2, 4, 3, 3, generator=gen, dtype=torch.float64)
    w = torch.randn(3, 2, 4, 3, 3, generator=gen, dtype=torch.float64)
    v_u, v_d, v_c = v[0:1], v[1:2], v[2:3]
    assert torch.equal(combine_guidance(v, 0.0, 0.0), v_u)
    assert torch.allclose(combine_guidance(v, 1.0, 1.0), v_c)
    assert torch.allclose(combine_guidance(v, 1.0, 0.0), v_d)
    out = combine_guidance(v, 3.0, 6.0)
    assert out.shape == (1, 2, 4, 3, 3)
    assert torch.allclose(out, v_u + 3.0 * (v_d - v_u) + 6.0 * (v_c - v_d))
    assert torch.allclose(
        combine_guidance(2.0 * v - 0.5 * w, 3.0, 6.0),
        2.0 * combine_guidance(v, 3.0, 6.0) - 0.5 * combine_guidance(w, 3.0, 6.0),
    )
    with pytest.raises(ValueError):
        combine_guidance(v[:2], 1.0, 1.0)
    with pytest.raises(ValueError):
        combine_guidance(v, torch.tensor([1.0, 2.0]), 1.0)


def test_combine_guidance_fp16_matches_reference_order() -> None:
    v = torch.randn(3, 25, 4, 2, 2, generator=torch.Generator().manual_seed(2)).half()
    g1 = torch.linspace(2.3, 3.1, STEPS).to(torch.float16)  # as the reference: float32 linspace -> fp16
    g2 = torch.linspace(6.0, 6.7, STEPS).to(torch.float16)
    v_u, v_d, v_c = v.chunk(3)
    for i in (0, 7, 24):
        expected = v_u + g1[i] * (v_d - v_u) + g2[i] * (v_c - v_d)
        out = combine_guidance(v, guidance_scales(2.3, 3.1, STEPS)[i], guidance_scales(6.0, 6.7, STEPS)[i])
        assert out.dtype == torch.float16
        assert torch.equal(out, expected)
    # A float scale is rounded like the reference's fp16 scale table.
    expected = v_u + torch.tensor(2.3).half() * (v_d - v_u) + torch.tensor(6.1).half() * (v_c - v_d)
    assert torch.equal(combine_guidance(v, 2.3, 6.1), expected)


# ------------------------------------------------------------------------------------ scheduler maths


def test_sigma_table_matches_spec(scheduler: EulerDiscreteScheduler) -> None:
    sigmas = scheduler.sigmas
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu" and len(sigmas) == STEPS + 1
    expected = torch.tensor(SPEC_SIGMAS, dtype=torch.float64)
    assert torch.allclose(sigmas.double(), expected, rtol=1e-4, atol=0.0)
    assert torch.allclose(
        scheduler.timesteps.double(), torch.tensor(SPEC_TIMESTEPS, dtype=torch.float64), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("step", [0, 1, 12, 23, 24])
def test_scale_and_euler_bit_equal_to_diffusers(
    scheduler: EulerDiscreteScheduler, dtype: torch.dtype, step: int
) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    sigma, sigma_next = scheduler.sigmas[step], scheduler.sigmas[step + 1]
    t = scheduler.timesteps[step]
    sample = (torch.randn(1, 25, 4, 3, 3, generator=gen) * float(sigma)).to(dtype)
    model_output = torch.randn(1, 25, 4, 3, 3, generator=gen).to(dtype)

    scheduler._step_index = None
    expected_scaled = scheduler.scale_model_input(sample, t)
    scaled = scale_model_input(sample, sigma)
    assert scaled.dtype == dtype
    assert torch.equal(scaled, expected_scaled)

    scheduler._step_index = None
    expected = scheduler.step(model_output, t, sample).prev_sample
    out = euler_step(sample, model_output, sigma, sigma_next)
    assert out.dtype == dtype and expected.dtype == dtype
    assert torch.equal(out, expected)


def test_euler_step_last_step_returns_x0(scheduler: EulerDiscreteScheduler) -> None:
    """At sigma_next = 0 the step lands on x0 = c_skip * x + c_out * v (algebraic identity)."""
    sigma, sigma_next = scheduler.sigmas[STEPS - 1], scheduler.sigmas[STEPS]
    assert float(sigma_next) == 0.0
    x = torch.randn(2, 3, dtype=torch.float64).float()
    v = torch.randn(2, 3, dtype=torch.float64).float()
    s = float(sigma)
    x0 = x / (s * s + 1) - v * s / (s * s + 1) ** 0.5
    assert torch.allclose(euler_step(x, v, sigma, sigma_next), x0, rtol=1e-5, atol=1e-6)


def test_scheduler_maths_rejects_bad_sigma(scheduler: EulerDiscreteScheduler) -> None:
    x = torch.zeros(2, 2)
    with pytest.raises(ValueError):
        scale_model_input(x, 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        scale_model_input(x, scheduler.sigmas[:2])
    with pytest.raises(ValueError):
        scale_model_input(x, scheduler.sigmas[0].double())
    with pytest.raises(ValueError):
        euler_step(x, x, scheduler.sigmas[STEPS], scheduler.sigmas[STEPS])
    with pytest.raises(ValueError):
        euler_step(x, torch.zeros(2, 3), scheduler.sigmas[0], scheduler.sigmas[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_initial_latents_equal_add_noise(scheduler: EulerDiscreteScheduler, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    ref_latent = torch.randn(1, 4, 8, 8, generator=gen).to(dtype)
    noise = torch.randn(1, 30, 4, 8, 8, generator=gen).to(dtype)
    expected = scheduler.add_noise(ref_latent[:, None], noise, scheduler.timesteps[:1])
    out = initial_latents(ref_latent, noise, scheduler.sigmas[0])
    assert out.shape == (1, 30, 4, 8, 8) and out.dtype == dtype
    assert torch.equal(out, expected)
    with pytest.raises(ValueError):
        initial_latents(ref_latent, noise[:, :, :3], scheduler.sigmas[0])


def test_added_time_ids() -> None:
    ids = added_time_ids(12.5, 8, 16, 3, torch.float16, "cpu")
    assert ids.shape == (3, 3) and ids.dtype == torch.float16
    assert ids.tolist() == [[12.5, 8.0, 16.0]] * 3
    with pytest.raises(ValueError):
        added_time_ids(12.5, 8, 16, 0, torch.float16, "cpu")
