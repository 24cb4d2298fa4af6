"""Pure tensor maths of the windowed DICE-Talk sampler (compat §6.5-6.10).

The pipeline denoises a clip of ``N`` real frames padded with ``F`` (= ``frames_per_window``, 25)
padding frames, ``L = N + F`` frames in all. Every denoising step splits the cyclic frame axis into
windows of ``F`` frames, rotated by a per-step shift; each window is denoised by the UNet, guided with
three branches, advanced by one Euler step, and the windows are scatter-added and averaged back into
the full latent clip. This module holds every piece of that arithmetic except the UNet call, written
so that it reproduces the reference bit for bit: the same ops, in the same order, in the same dtypes.

Everything here is a pure function of its arguments (torch only): no I/O, no device choice, no random
numbers. In particular :func:`euler_step` draws nothing: the reference (diffusers 0.29
``EulerDiscreteScheduler.step``) draws one random tensor per window per step from the global CUDA
generator, but only uses it when ``s_churn > 0`` (``gamma > 0``); with ``s_churn = 0`` it is discarded
and, since that draw comes after the initial noise and nothing later draws from that generator, the
output does not depend on it (compat §6.11). diffusers 0.42.1 no longer makes that draw at all.

Mixed-dtype arithmetic follows PyTorch's rules on purpose: the sigmas are 0-d float32 tensors kept on
the CPU (as diffusers keeps them), and a 0-d tensor never promotes the dtype of a dimensioned one, so
``fp16_tensor * sigma`` stays fp16 while ``fp32_tensor + fp16_tensor`` is fp32. Callers must pass the
sigmas as such tensors (``scheduler.sigmas[i]``), not as Python floats, to keep that behaviour.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Window schedule
# --------------------------------------------------------------------------------------------------


def padded_length(num_frames: int, frames_per_window: int) -> int:
    """Length ``L = N + F`` of the cyclic frame axis: ``N`` real frames plus ``F`` padding frames.

    Args:
        num_frames: ``N >= 1``, the number of real video frames.
        frames_per_window: ``F >= 1``, the window length (25 in the reference).

    Returns:
        ``N + F``. The ``F`` padding frames separate the last real frame from frame 0 in the cyclic
        order, so no window ever holds both (compat §6.10).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if frames_per_window < 1:
        raise ValueError(f"frames_per_window must be >= 1, got {frames_per_window}")
    return num_frames + frames_per_window


def shift_at_step(step: int, shift_offset: int, frames_per_window: int) -> int:
    """Window shift used in denoising step ``step`` (0-based).

    The reference starts with ``shift = 0`` and after each step sets
    ``shift = (shift + shift_offset) % frames_per_window``; so step ``i`` uses
    ``(i * shift_offset) % frames_per_window``: 0, 7, 14, 21, 3, 10, ... for offset 7 and F = 25.

    Returns:
        An int in ``[0, frames_per_window)``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if frames_per_window < 1:
        raise ValueError(f"frames_per_window must be >= 1, got {frames_per_window}")
    return (step * shift_offset) % frames_per_window


def window_indices(length: int, frames_per_window: int, overlap: int, shift: int) -> torch.Tensor:
    """Frame indices of every window of one denoising step.

    Raw window starts are ``range(0, length, frames_per_window - overlap)``; window ``k`` covers
    ``idx[k, j] = (start_k - shift + j) mod length`` for ``j = 0 .. F-1`` (negative starts wrap
    around to the end of the clip, the last window wraps onto the start).

    Args:
        length: ``L``, the padded clip length (:func:`padded_length`); must be ``>= F`` so that the
            ``F`` indices of a window are distinct.
        frames_per_window: ``F >= 1``.
        overlap: ``0 <= overlap < F``; the stride between raw starts is ``F - overlap``.
        shift: any int (the reference uses ``shift_at_step``, in ``[0, F)``).

    Returns:
        LongTensor (W, F) on the CPU, values in ``[0, length)``, ``W = ceil(length / (F - overlap))``.
    """
    if frames_per_window < 1:
        raise ValueError(f"frames_per_window must be >= 1, got {frames_per_window}")
    if not 0 <= overlap < frames_per_window:
        raise ValueError(f"overlap must be in [0, frames_per_window={frames_per_window}), got {overlap}")
    if length < frames_per_window:
        raise ValueError(
            f"length ({length}) must be >= frames_per_window ({frames_per_window}), otherwise a window "
            "would hold the same frame twice"
        )
    starts = torch.arange(0, length, frames_per_window - overlap, dtype=torch.long)
    offsets = torch.arange(frames_per_window, dtype=torch.long)
    return torch.remainder(starts[:, None] - shift + offsets[None, :], length)


def gather_frames(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Frames ``idx`` of a clip: ``x[:, idx]``.

    Args:
        x: (B, L, ...) any dtype and device.
        idx: LongTensor (F,), values in ``[0, L)`` (one row of :func:`window_indices`).

    Returns:
        A new tensor (B, F, ...) in x's dtype and on x's device.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have a batch and a frame axis, got shape {tuple(x.shape)}")
    return x[:, idx.to(x.device)]


def _check_distinct(idx: torch.Tensor) -> None:
    if idx.dim() != 1 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a 1-d LongTensor, got {idx.dtype} of shape {tuple(idx.shape)}")
    if torch.unique(idx).numel() != idx.numel():
        raise ValueError("idx must not repeat a frame (indexed += would drop all but one addition)")


def scatter_add_frames(
    acc: torch.Tensor, count: torch.Tensor, idx: torch.Tensor, values: torch.Tensor
) -> None:
    """Add one denoised window into the step accumulators, **in place**.

    Reference semantics: ``acc[:, idx] += values`` and ``count[:, idx] += 1``, both in the latents'
    dtype (fp16 in the reference). The indices of a window are distinct, so every element gets exactly
    one rounded addition, as in the reference's per-frame loop.

    Args:
        acc: (B, L, ...) accumulator of denoised latents, modified in place.
        count: (1, L, 1, ...) number of windows added so far per frame (same number of dims as acc),
            modified in place.
        idx: LongTensor (F,) of distinct frame indices in ``[0, L)``.
        values: (B, F, ...) the window's denoised latents, same dtype as ``acc``.
    """
    _check_distinct(idx)
    if values.shape[0] != acc.shape[0] or values.shape[1] != idx.numel() or values.shape[2:] != acc.shape[2:]:
        raise ValueError(
            f"values shape {tuple(values.shape)} does not fit acc {tuple(acc.shape)} "
            f"with {idx.numel()} indices"
        )
    if count.dim() != acc.dim() or count.shape[1] != acc.shape[1]:
        raise ValueError(
            f"count shape {tuple(count.shape)} must be (1, L, 1, ...) for acc {tuple(acc.shape)}"
        )
    acc[:, idx.to(acc.device)] += values
    count[:, idx.to(count.device)] += 1


def average_frames(acc: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Average of the windows covering each frame: ``acc / count`` (fp16 in the reference).

    Args:
        acc: (B, L, ...) summed window latents.
        count: (1, L, 1, ...) window counts, all >= 1 (every frame is covered).

    Returns:
        (B, L, ...) new latents; a frame covered twice with values a, b becomes (a + b) / 2.
    """
    return acc / count


# --------------------------------------------------------------------------------------------------
# Guidance
# --------------------------------------------------------------------------------------------------


def guidance_scales(min_scale: float, max_scale: float, steps: int) -> torch.Tensor:
    """Per-step guidance scales: ``torch.linspace(min_scale, max_scale, steps)`` in float32 (compat §6.9).

    Returns:
        float32 CPU tensor (steps,). The reference then casts it to the latents' dtype on the device;
        :func:`combine_guidance` does that cast itself.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(min_scale, max_scale, steps, dtype=torch.float32)


def _as_scale(scale: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A guidance scale as a 0-d tensor in ``like``'s dtype and device (float -> float32 -> dtype)."""
    if isinstance(scale, torch.Tensor):
        if scale.dim() != 0:
            raise ValueError(
                f"a guidance scale must be a float or a 0-d tensor, got shape {tuple(scale.shape)}"
            )
        return scale.to(device=like.device, dtype=like.dtype)
    return torch.tensor(float(scale), dtype=torch.float32).to(device=like.device, dtype=like.dtype)


def combine_guidance(
    v: torch.Tensor, scale_ref: torch.Tensor | float, scale_emo: torch.Tensor | float
) -> torch.Tensor:
    """Three-branch classifier-free guidance (compat §6.10f).

    ``v_u + g1 * (v_d - v_u) + g2 * (v_c - v_d)``, evaluated left to right in v's dtype. The scales are
    first cast to v's dtype (a Python float goes through float32, like the reference's linspace), as
    the reference indexes an fp16 tensor of scales.

    Args:
        v: (3, ...) the UNet output with the branches stacked as [uncond, drop-audio, cond].
        scale_ref: ``g1`` (3.0 by default), a float or a 0-d tensor.
        scale_emo: ``g2`` (6.0 by default), a float or a 0-d tensor.

    Returns:
        (1, ...) guided prediction in v's dtype.
    """
    if v.dim() < 1 or v.shape[0] != 3:
        raise ValueError(f"v must stack 3 branches on dim 0, got shape {tuple(v.shape)}")
    g1 = _as_scale(scale_ref, v)
    g2 = _as_scale(scale_emo, v)
    v_u, v_d, v_c = v.chunk(3)
    return v_u + g1 * (v_d - v_u) + g2 * (v_c - v_d)


# --------------------------------------------------------------------------------------------------
# Euler (v-prediction) scheduler arithmetic, as diffusers' EulerDiscreteScheduler
# --------------------------------------------------------------------------------------------------


def _check_sigma(name: str, sigma: torch.Tensor) -> None:
    if not isinstance(sigma, torch.Tensor) or sigma.dim() != 0:
        raise ValueError(f"{name} must be a 0-d tensor (e.g. scheduler.sigmas[i]), got {sigma!r}")
    if sigma.dtype != torch.float32 or sigma.device.type != "cpu":
        raise ValueError(
            f"{name} must be a float32 CPU tensor like diffusers' scheduler.sigmas (its dtype and device "
            f"decide the rounding), got {sigma.dtype} on {sigma.device}"
        )


def scale_model_input(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Scale the UNet input: ``x / ((sigma**2 + 1) ** 0.5)``.

    Same expression as ``EulerDiscreteScheduler.scale_model_input`` (diffusers 0.42.1): the divisor is
    a 0-d float32 CPU tensor, so the result keeps x's dtype.

    Args:
        x: (...) latents, any float dtype and device.
        sigma: 0-d float32 CPU tensor, the current sigma.

    Returns:
        Tensor like x.
    """
    _check_sigma("sigma", sigma)
    return x / ((sigma**2 + 1) ** 0.5)


def euler_step(
    sample: torch.Tensor, model_output: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor
) -> torch.Tensor:
    """One Euler step for a v-prediction model; ``EulerDiscreteScheduler.step`` with ``s_churn = 0``.

    Op for op as diffusers 0.42.1 (``gamma = 0`` so ``sigma_hat = sigma``)::

        sample = sample.float()
        x0 = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        derivative = (sample - x0) / sigma_hat
        prev = sample + derivative * (sigma_next - sigma_hat)

    ``model_output * c_out`` is computed in model_output's dtype (fp16 in the reference), the rest in
    float32; the result is cast to model_output's dtype. No random numbers are drawn (see the module
    docstring).

    Args:
        sample: (...) current latents x_t (the unscaled window latents), any float dtype.
        model_output: (...) guided v prediction, same shape as sample.
        sigma: 0-d float32 CPU tensor, sigma_i > 0.
        sigma_next: 0-d float32 CPU tensor, sigma_{i+1} (0 at the last step).

    Returns:
        (...) latents at sigma_next in model_output's dtype.
    """
    _check_sigma("sigma", sigma)
    _check_sigma("sigma_next", sigma_next)
    if sample.shape != model_output.shape:
        raise ValueError(
            f"sample {tuple(sample.shape)} and model_output {tuple(model_output.shape)} differ in shape"
        )
    if not float(sigma) > 0.0:
        raise ValueError(f"sigma must be > 0, got {float(sigma)}")
    sample = sample.to(torch.float32)
    sigma_hat = sigma * (0.0 + 1)  # gamma = 0; kept as the same (exact) op as the scheduler
    pred_original_sample = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    derivative = (sample - pred_original_sample) / sigma_hat
    dt = sigma_next - sigma_hat
    prev_sample = sample + derivative * dt
    return prev_sample.to(model_output.dtype)


def initial_latents(ref_latent: torch.Tensor, noise: torch.Tensor, sigma_max: torch.Tensor) -> torch.Tensor:
    """Initial clip latents: the reference latent on every frame plus noise at ``sigma_max`` (compat §6.7).

    ``ref_latent[:, None] + noise * sigma`` with sigma (and ref_latent) cast to noise's dtype and
    device; equal to ``EulerDiscreteScheduler.add_noise(ref_latent[:, None], noise, timesteps[:1])``
    when ref_latent and noise share a dtype (fp16 in the reference, where sigma_max = 700 is exact).

    Args:
        ref_latent: (1, 4, h, w) VAE latent of the reference image (unscaled by the scheduler).
        noise: (1, L, 4, h, w) standard normal noise.
        sigma_max: 0-d tensor, ``scheduler.sigmas[0]``.

    Returns:
        (1, L, 4, h, w) in noise's dtype.
    """
    if ref_latent.dim() != 4 or noise.dim() != 5 or noise.shape[2:] != ref_latent.shape[1:]:
        raise ValueError(
            f"ref_latent (1, C, h, w) and noise (1, L, C, h, w) do not match: "
            f"{tuple(ref_latent.shape)} vs {tuple(noise.shape)}"
        )
    if not isinstance(sigma_max, torch.Tensor) or sigma_max.numel() != 1:
        raise ValueError(f"sigma_max must be a 0-d tensor, got {sigma_max!r}")
    sigma = sigma_max.reshape(()).to(device=noise.device, dtype=noise.dtype)
    original = ref_latent.to(device=noise.device, dtype=noise.dtype)[:, None]
    return original + noise * sigma


def added_time_ids(
    fps: float,
    motion_bucket_id: int,
    motion_bucket_id_exp: int,
    batch: int,
    dtype: torch.dtype,
    device: torch.device | str,
) -> torch.Tensor:
    """SVD "added time ids" as the reference builds them: ``[fps, motion_bucket_id, motion_bucket_id_exp]``.

    The third slot (SVD's noise-augmentation strength) carries ``motion_bucket_id_exp``; the model was
    trained that way (compat §6.5), so the default vector is ``[12.5, 8, 16]``; fps is not reduced by 1.

    Returns:
        (batch, 3) tensor in ``dtype`` on ``device`` (batch = 3 CFG branches in the reference).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    ids = torch.tensor([[fps, motion_bucket_id, motion_bucket_id_exp]], dtype=dtype)
    return ids.repeat(batch, 1).to(device)
