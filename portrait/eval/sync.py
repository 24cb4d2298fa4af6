"""Lip-sync metrics: SyncNet's windows and offsets (LSE-C / LSE-D, see :mod:`portrait.eval.lse` for the
protocols), and an offline proxy that needs no network weights.

**SyncNet** (as ``syncnet_python``'s ``SyncNetInstance.evaluate``): the audio on the int16 scale
(:func:`pcm16`) → MFCC (:func:`mfcc`, python_speech_features' conventions); for every start frame i, five
face crops ``i..i+4`` (25 fps) and MFCC columns ``4i..4i+19`` (100 Hz) give one video and one audio
embedding. For each offset δ in ``[-vshift, vshift]`` the distance is ``mean_i ‖v_i − a_{i+δ}‖`` (audio
padded with zero embeddings). **Sync-D** = the smallest mean distance, **Sync-C** = median − smallest,
**offset** = ``vshift − argmin`` frames.

**Proxy**: mouth opening per frame (:func:`portrait.motion.landmarks.mouth_opening`: mean inner-lip
gap of landmark pairs 61–67, 62–66, 63–65 over the outer eye-corner distance 36–45) against the speech
RMS envelope of each frame's 40 ms of audio. The Pearson correlation is taken at every lag in
``[-max_lag, max_lag]`` frames; positive lag = the mouth moves *after* the sound. ``sync_proxy_corr`` is
the correlation at the best lag.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct

from portrait.eval.metric import Metric, available, unavailable
from portrait.models.syncnet import CROP_SIZE, MFCC_FRAMES, VIDEO_FRAMES, SyncNet

FPS = 25.0
SAMPLE_RATE = 16000
#: Offsets searched by Sync-C/D (frames each way), as syncnet_python's default.
VSHIFT = 15


# ------------------------------------------------------------------------------------------------------
# MFCC (python_speech_features conventions: 25 ms rectangular frames every 10 ms, 512-point FFT,
# 26 mel filters, pre-emphasis 0.97, lifter 22, coefficient 0 replaced by the log frame energy)
# ------------------------------------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(num_filters: int = 26, nfft: int = 512, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``(num_filters, nfft // 2 + 1)`` triangular filters on FFT bins, equally spaced in mel."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(rate / 2), num_filters + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mels) / rate).astype(int)
    bank = np.zeros((num_filters, nfft // 2 + 1))
    for j in range(num_filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for k in range(lo, mid):
            bank[j, k] = (k - lo) / (mid - lo)
        for k in range(mid, hi):
            bank[j, k] = (hi - k) / (hi - mid)
    return bank


def mfcc(samples: np.ndarray, rate: int = SAMPLE_RATE, num_coeffs: int = 13) -> np.ndarray:
    """``(num_coeffs, M)`` MFCCs of mono float samples, M = ``1 + ceil((n − 400) / 160)`` at 16 kHz."""
    signal = np.asarray(samples, dtype=np.float64).reshape(-1)
    if signal.size == 0:
        raise ValueError("mfcc needs at least one sample")
    signal = np.append(signal[0], signal[1:] - 0.97 * signal[:-1])
    length, step, nfft = int(round(0.025 * rate)), int(round(0.01 * rate)), 512
    count = 1 if signal.size <= length else 1 + int(np.ceil((signal.size - length) / step))
    padded = np.concatenate([signal, np.zeros((count - 1) * step + length - signal.size)])
    index = np.arange(length)[None, :] + step * np.arange(count)[:, None]
    power = np.abs(np.fft.rfft(padded[index], nfft)) ** 2 / nfft
    eps = np.finfo(np.float64).eps
    energy = power.sum(axis=1)
    energy[energy == 0] = eps
    bands = power @ mel_filterbank(26, nfft, rate).T
    bands[bands == 0] = eps
    coeffs = dct(np.log(bands), type=2, axis=1, norm="ortho")[:, :num_coeffs]
    coeffs *= 1 + 11.0 * np.sin(np.pi * np.arange(num_coeffs) / 22.0)
    coeffs[:, 0] = np.log(energy)
    return coeffs.T


# ------------------------------------------------------------------------------------------------------
# Sync-C / Sync-D
# ------------------------------------------------------------------------------------------------------


def offset_distances(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """``(N, 2·vshift + 1)`` distances ``‖v_i − a_{i+δ}‖`` for δ = −vshift..vshift (zero-padded audio)."""
    if video.shape != audio.shape or video.ndim != 2:
        raise ValueError(f"video {tuple(video.shape)} and audio {tuple(audio.shape)} must both be (N, D)")
    padded = F.pad(audio, (0, 0, vshift, vshift))
    width = 2 * vshift + 1
    rows = [
        F.pairwise_distance(video[i : i + 1].expand(width, -1), padded[i : i + width])
        for i in range(len(video))
    ]
    return torch.stack(rows)


def sync_scores(distances: torch.Tensor | np.ndarray, vshift: int = VSHIFT) -> dict[str, object]:
    """Sync-D, Sync-C and the offset from ``(N, 2·vshift + 1)`` per-window distances.

    Returns:
        ``{"sync_d": min_δ mean_i d, "sync_c": median_δ − min_δ, "offset": vshift − argmin_δ,
        "mean_distances": list of 2·vshift + 1 floats}``.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[1] != 2 * vshift + 1 or d.shape[0] == 0:
        raise ValueError(f"distances must be (N>0, {2 * vshift + 1}), got {d.shape}")
    mean = d.mean(axis=0)
    best = int(np.argmin(mean))
    return {
        "sync_d": float(mean[best]),
        "sync_c": float(np.median(mean) - mean[best]),
        "offset": vshift - best,
        "mean_distances": [float(v) for v in mean],
    }


@torch.no_grad()
def syncnet_embeddings(
    net: SyncNet, crops: np.ndarray, coeffs: np.ndarray, num_samples: int | None = None, batch: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of every 5-frame / 20-MFCC window.

    Args:
        net: a SyncNet in eval mode (its device is used).
        crops: ``(T, 224, 224, 3)`` uint8 RGB face crops at 25 fps (fed as BGR 0–255, like the release).
        coeffs: ``(13, M)`` MFCCs of the matching 16 kHz audio (:func:`mfcc`).
        num_samples: length of that audio; with it N = ``min(T, num_samples // 640) − 5`` as in
            syncnet_python, else every window that fits, ``min(T − 4, (M − 20) // 4 + 1)``.

    Returns:
        ``(video (N, D), audio (N, D))`` on the CPU (N ≥ 1 required).
    """
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"crops must be (T, {CROP_SIZE}, {CROP_SIZE}, 3), got {crops.shape}")
    count = min(crops.shape[0] - VIDEO_FRAMES + 1, (coeffs.shape[1] - MFCC_FRAMES) // 4 + 1)
    if num_samples is not None:
        count = min(count, min(crops.shape[0], num_samples // 640) - VIDEO_FRAMES)
    if count < 1:
        raise ValueError(f"too short for SyncNet: {crops.shape[0]} frames, {coeffs.shape[1]} MFCC columns")
    device = next(net.parameters()).device
    video = torch.from_numpy(np.ascontiguousarray(crops[..., ::-1])).permute(3, 0, 1, 2).float()  # (3,T,H,W)
    audio = torch.from_numpy(np.ascontiguousarray(coeffs)).float()
    v_out, a_out = [], []
    for start in range(0, count, batch):
        idx = range(start, min(start + batch, count))
        v = torch.stack([video[:, i : i + VIDEO_FRAMES] for i in idx]).to(device)
        a = torch.stack([audio[None, :, 4 * i : 4 * i + MFCC_FRAMES] for i in idx]).to(device)
        v_out.append(net.forward_video(v).cpu())
        a_out.append(net.forward_audio(a).cpu())
    return torch.cat(v_out), torch.cat(a_out)


def pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] on the int16 scale the reference's MFCC sees: ``round(x · 32768)``, clipped.

    syncnet_python reads 16-bit PCM (``ffmpeg -acodec pcm_s16le``) and gives ``python_speech_features.mfcc``
    the int16 values; this is ffmpeg's float → s16 conversion (round half to even, clip), returned as float64.
    """
    scaled = np.rint(np.asarray(samples, dtype=np.float64).reshape(-1) * 32768.0)
    return np.clip(scaled, -32768.0, 32767.0)


def segment_scores(net: SyncNet, crops: np.ndarray, pcm: np.ndarray) -> dict[str, object]:
    """Sync scores of one stretch: 25 fps crops and its int16-scale audio (:func:`pcm16`), from their start.

    Returns:
        :func:`sync_scores`'s dict plus ``"windows"`` (N = ``min(T, samples // 640) − 5``).

    Raises:
        ValueError: too short for one window.
    """
    video, audio = syncnet_embeddings(net, crops, mfcc(pcm), len(pcm))
    return {**sync_scores(offset_distances(video, audio)), "windows": int(video.shape[0])}


def syncnet_metrics(
    net: SyncNet | None, crops: np.ndarray | None, samples: np.ndarray | None, backend: str, reason: str = ""
) -> tuple[Metric, Metric, dict[str, object] | None]:
    """``(sync_c, sync_d, scores)`` of one stretch of crops and float audio in [-1, 1] (scaled by
    :func:`pcm16`); unavailable with ``reason`` when a part is missing."""
    if net is None or crops is None or samples is None:
        why = reason or "needs SyncNet weights (syncnet_v2), face crops and audio"
        return unavailable(backend, why), unavailable(backend, why), None
    try:
        scores = segment_scores(net, crops, pcm16(samples))
    except ValueError as error:
        return unavailable(backend, str(error)), unavailable(backend, str(error)), None
    extra = {"offset_frames": scores["offset"], "windows": scores["windows"]}
    return (
        available(scores["sync_c"], backend, **extra),
        available(scores["sync_d"], backend, **extra),
        scores,
    )


# ------------------------------------------------------------------------------------------------------
# Offline proxy
# ------------------------------------------------------------------------------------------------------


def speech_envelope(
    samples: np.ndarray, num_frames: int, rate: int = SAMPLE_RATE, fps: float = FPS
) -> np.ndarray:
    """``(num_frames,)`` RMS of the samples of each frame, ``[i/fps, (i+1)/fps)``; 0 past the end."""
    samples = np.asarray(samples, dtype=np.float64).reshape(-1)
    out = np.zeros(num_frames)
    for i in range(num_frames):
        chunk = samples[int(round(i * rate / fps)) : int(round((i + 1) * rate / fps))]
        out[i] = float(np.sqrt(np.mean(chunk**2))) if chunk.size else 0.0
    return out


def lagged_correlation(mouth: np.ndarray, envelope: np.ndarray, max_lag: int) -> dict[int, float]:
    """Pearson r of ``mouth[t]`` with ``envelope[t − lag]`` for each lag (over finite overlapping frames)."""
    mouth, envelope = np.asarray(mouth, np.float64), np.asarray(envelope, np.float64)
    n = min(mouth.size, envelope.size)
    out: dict[int, float] = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            x, y = mouth[lag:n], envelope[: n - lag]
        else:
            x, y = mouth[: n + lag], envelope[-lag:n]
        good = np.isfinite(x) & np.isfinite(y)
        x, y = x[good], y[good]
        if x.size < 10 or x.std() == 0 or y.std() == 0:
            out[lag] = float("nan")
        else:
            out[lag] = float(np.corrcoef(x, y)[0, 1])
    return out


def proxy_metrics(
    mouth: np.ndarray | None, envelope: np.ndarray | None, max_lag: int = 10, reason: str = ""
) -> tuple[Metric, Metric]:
    """``(sync_proxy_corr, sync_proxy_lag_frames)`` from per-frame mouth opening and speech envelope."""
    backend = "mouth opening (68-pt landmarks) vs speech RMS envelope, 25 fps"
    if mouth is None or envelope is None:
        why = reason or "needs landmarks and audio"
        return unavailable(backend, why), unavailable(backend, why)
    by_lag = lagged_correlation(mouth, envelope, max_lag)
    finite = {lag: r for lag, r in by_lag.items() if np.isfinite(r)}
    if not finite:
        why = "the mouth or the speech did not vary (or fewer than 10 frames with a face)"
        return unavailable(backend, why), unavailable(backend, why)
    lag = max(finite, key=lambda k: (finite[k], -abs(k)))
    extra = {"max_lag": max_lag, "corr_at_zero": by_lag.get(0)}
    return available(finite[lag], backend, lag=lag, **extra), available(float(lag), backend, corr=finite[lag])
