"""Whisper log-mel features of 16-kHz speech and the frame counts they give (reference ``get_audio_feature``).

:func:`audio_features` cuts the samples of :func:`portrait.preprocess.audio.load_audio` into 30-s pieces,
runs the Whisper feature extractor on each and counts 40-ms units and video frames
(:func:`frame_counts`; compat §1.5).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from portrait.constants import SAMPLE_RATE
from portrait.errors import InputError, WeightsError

logger = logging.getLogger(__name__)

__all__ = [
    "AudioFeatures",
    "PIECE_SAMPLES",
    "SAMPLES_PER_UNIT",
    "audio_features",
    "frame_counts",
]

#: Samples per audio unit (40 ms at 16 kHz); the reference's ``len(audio) // 640``.
SAMPLES_PER_UNIT = 640
#: Samples per Whisper piece (750 units = 30 s); each becomes 3000 mel frames.
PIECE_SAMPLES = 750 * SAMPLES_PER_UNIT


@dataclass(frozen=True, eq=False)
class AudioFeatures:
    """Audio prepared for the pipeline (compat §1.5).

    Attributes:
        samples: ``(S,)`` float32 mono samples at 16 kHz.
        mel: ``(1, 80, 3000·K)`` float32 Whisper log-mel features of ``K`` 30-s pieces, roughly in
            [-1.5, 1.5].
        audio_len: whole 40-ms units, ``min(S // 640, max_audio_units)``.
        num_frames: video frames ``N = audio_len // units_per_frame`` (12.5 fps for 2 units per frame).
        duration: ``S / 16000`` seconds.
    """

    samples: np.ndarray
    mel: torch.Tensor
    audio_len: int
    num_frames: int
    duration: float


def frame_counts(num_samples: int, max_audio_units: int = 10000, units_per_frame: int = 2) -> tuple[int, int]:
    """``(audio_len, num_frames)`` of ``num_samples`` 16-kHz samples.

    ``audio_len = min(num_samples // 640, max_audio_units)`` whole 40-ms units and ``num_frames =
    audio_len // units_per_frame`` video frames (the reference's ``frame_num`` cap and ``step``).

    Raises:
        ValueError: ``max_audio_units`` or ``units_per_frame`` below 1.
    """
    if max_audio_units < 1 or units_per_frame < 1:
        raise ValueError(
            f"max_audio_units {max_audio_units} and units_per_frame {units_per_frame} must be >= 1"
        )
    audio_len = min(num_samples // SAMPLES_PER_UNIT, max_audio_units)
    return audio_len, audio_len // units_per_frame


def audio_features(
    samples: np.ndarray,
    feature_extractor: Any,
    max_audio_units: int = 10000,
    units_per_frame: int = 2,
) -> AudioFeatures:
    """Whisper log-mel features and frame count of 16-kHz mono samples (reference ``get_audio_feature``).

    Each 480 000-sample piece ``samples[i : i + 480000]`` goes through ``feature_extractor(piece,
    sampling_rate=16000, return_tensors="pt", padding="max_length")`` (zero-padded to 30 s; with torch
    installed transformers uses ``torch.stft`` and floors each piece at its own max − 8, padding
    included); the pieces are concatenated on the time axis. When ``max_audio_units`` caps the length,
    pieces that lie wholly beyond the cap are not computed (each piece is independent, so the kept ones
    are unchanged).

    Args:
        samples: ``(S,)`` float mono samples at 16 kHz (from :func:`~portrait.preprocess.audio.load_audio`).
        feature_extractor: a transformers ``WhisperFeatureExtractor`` (80 mel bins, 30-s chunks), loaded by
            the caller from ``<weights>/audio_encoder/preprocessor_config.json``.
        max_audio_units: cap on ``audio_len`` (the reference's ``frame_num``).
        units_per_frame: 40-ms units per video frame (the reference's ``step``).

    Returns:
        The :class:`AudioFeatures`.

    Raises:
        InputError: ``samples`` is not 1-D or gives no video frame (fewer than ``640·units_per_frame``).
        WeightsError: the feature extractor does not pad to 30 s at 16 kHz.
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise InputError(f"audio samples must be 1-D (mono), got shape {samples.shape}")
    audio_len, num_frames = frame_counts(samples.shape[0], max_audio_units, units_per_frame)
    _check_extractor(feature_extractor)
    if num_frames < 1:
        raise InputError(
            f"the audio has {samples.shape[0]} samples ({samples.shape[0] / SAMPLE_RATE * 1000:.0f} ms at "
            f"16 kHz); one video frame needs {SAMPLES_PER_UNIT * units_per_frame}"
        )
    capped = samples.shape[0] // SAMPLES_PER_UNIT > max_audio_units
    used = audio_len * SAMPLES_PER_UNIT if capped else samples.shape[0]
    mel, pieces = _log_mel(samples, used, feature_extractor)
    logger.debug(
        "audio features: %d samples, %d pieces, audio_len %d, %d frames",
        samples.shape[0],
        pieces,
        audio_len,
        num_frames,
    )
    return AudioFeatures(
        samples=samples,
        mel=mel,
        audio_len=audio_len,
        num_frames=num_frames,
        duration=samples.shape[0] / SAMPLE_RATE,
    )


def _log_mel(samples: np.ndarray, used: int, feature_extractor: Any) -> tuple[torch.Tensor, int]:
    """``(1, 80, 3000·K)`` float32 features of the ``K`` 30-s pieces starting before ``used``, and ``K``.

    A piece is cut from ``samples`` as a whole (the last one may reach past ``used``), as the reference.
    """
    pieces = [
        feature_extractor(
            samples[start : start + PIECE_SAMPLES],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            padding="max_length",
        ).input_features
        for start in range(0, used, PIECE_SAMPLES)
    ]
    return torch.cat(pieces, dim=-1).to(torch.float32), len(pieces)


def _check_extractor(feature_extractor: Any) -> None:
    n_samples = getattr(feature_extractor, "n_samples", PIECE_SAMPLES)
    rate = getattr(feature_extractor, "sampling_rate", SAMPLE_RATE)
    if n_samples != PIECE_SAMPLES or rate != SAMPLE_RATE:
        raise WeightsError(
            f"the Whisper feature extractor pads to {n_samples} samples at {rate} Hz; expected "
            f"{PIECE_SAMPLES} at {SAMPLE_RATE} Hz (chunk_length 30); check "
            "audio_encoder/preprocessor_config.json"
        )
