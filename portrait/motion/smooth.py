"""Temporal filters for tracks: a zero-lag One-Euro filter and a Savitzky-Golay smoother (numpy only)."""

from __future__ import annotations

import numpy as np


def _alpha(cutoff: np.ndarray | float, period: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / period)


def one_euro(
    values: np.ndarray, fps: float, min_cutoff: float = 1.0, beta: float = 0.5, d_cutoff: float = 1.0
) -> np.ndarray:
    """Causal One-Euro filter (Casiez et al. 2012) along axis 0.

    Args:
        values: (T, ...) samples at ``fps``; every trailing element is filtered independently.
        min_cutoff: cutoff (Hz) when the signal is still; lower = smoother.
        beta: how fast the cutoff rises with speed (per unit of ``values`` per second).
        d_cutoff: cutoff (Hz) of the speed estimate.

    Returns:
        (T, ...) float64 filtered values.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    if len(x) == 0:
        return out
    period = 1.0 / fps
    out[0] = x[0]
    speed = np.zeros_like(x[0])
    a_d = _alpha(d_cutoff, period)
    for i in range(1, len(x)):
        raw_speed = (x[i] - out[i - 1]) / period
        speed = speed + a_d * (raw_speed - speed)
        a = _alpha(min_cutoff + beta * np.abs(speed), period)
        out[i] = out[i - 1] + a * (x[i] - out[i - 1])
    return out


def one_euro_zero_lag(values: np.ndarray, fps: float, **kwargs: float) -> np.ndarray:
    """:func:`one_euro` run forward and then backward over the result: the two phase lags cancel."""
    forward = one_euro(values, fps, **kwargs)
    return one_euro(forward[::-1], fps, **kwargs)[::-1].copy()


def savgol_coefficients(window: int, order: int) -> np.ndarray:
    """(window,) weights of the centred least-squares polynomial fit (Savitzky-Golay smoothing)."""
    if window % 2 != 1 or window < 1 or order >= window:
        raise ValueError(f"Savitzky-Golay needs an odd window > order, got window={window} order={order}")
    half = window // 2
    positions = np.arange(-half, half + 1, dtype=np.float64)
    vandermonde = positions[:, None] ** np.arange(order + 1)[None, :]
    return np.linalg.pinv(vandermonde)[0]


def savgol(values: np.ndarray, window: int, order: int) -> np.ndarray:
    """Savitzky-Golay smoothing along axis 0 with edge samples repeated: (T, ...) → (T, ...) float64."""
    x = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(x) < 2:
        return x.copy()
    coefficients = savgol_coefficients(window, order)
    half = window // 2
    padded = np.concatenate([np.repeat(x[:1], half, 0), x, np.repeat(x[-1:], half, 0)])
    out = np.zeros_like(x)
    for k, c in enumerate(coefficients):
        out += c * padded[k : k + len(x)]
    return out
