"""Audio input: decode any container with ffmpeg, mix to mono, resample, Whisper log-mel features.

Two steps, as the reference's ``librosa.load(path, sr=16000)`` then ``get_audio_feature`` (compat §1.5):

1. :func:`load_audio` decodes the first audio stream of anything ffmpeg reads (wav, mp3, m4a, ogg, flac,
   the audio track of a video) to float32 at the file's native rate with all its channels, averages the
   channels (librosa's mono), and resamples with soxr "HQ" (librosa's default ``soxr_hq``) including
   librosa's length fix ``ceil(n · sr_out / sr_in)``. Unusable input raises :class:`InputError` naming
   the file.
2. :func:`audio_features` cuts the 16-kHz samples into 30-s pieces, runs the Whisper feature extractor on
   each and counts 40-ms units and video frames.
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import torch

from portrait.constants import SAMPLE_RATE
from portrait.errors import HINT_SHORTER_AUDIO, FFmpegError, InputError, WeightsError
from portrait.ffmpeg import AUDIO_FORMATS, ffmpeg_binary, locked_input

logger = logging.getLogger(__name__)

__all__ = [
    "AudioFeatures",
    "MIN_SECONDS",
    "PIECE_SAMPLES",
    "SAMPLES_PER_UNIT",
    "SILENCE_PEAK",
    "audio_features",
    "load_audio",
    "resample",
]

#: Whisper's sampling rate; the unit and piece sizes below are counted at this rate.
#: Samples per audio unit (40 ms at 16 kHz); the reference's ``len(audio) // 640``.
SAMPLES_PER_UNIT = 640
#: Samples per Whisper piece (750 units = 30 s); each becomes 3000 mel frames.
PIECE_SAMPLES = 750 * SAMPLES_PER_UNIT
#: Peak absolute amplitude below which the audio counts as silent.
SILENCE_PEAK = 1e-4
#: Shortest usable audio: one video frame (two 40-ms units).
MIN_SECONDS = 0.08

#: Highest rate and channel count decoded as they are (then mixed and resampled like librosa); beyond
#: them ffmpeg itself mixes to mono and resamples, with a warning.
MAX_NATIVE_RATE = 48000
MAX_NATIVE_CHANNELS = 2
#: Seconds one decode may run before ffmpeg is killed.
DECODE_TIMEOUT_S = 300.0

_STDERR_TAIL_LINES = 15
_STDERR_KEEP_BYTES = 64 * 1024
_READ_CHUNK = 1 << 20
_HEADER_BYTES = 4096
_BUDGET_SLACK = 1 << 20
_UNBOUNDED_SECONDS = 4 * 3600.0
_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_AUDIO_STREAM_RE = re.compile(r"Stream #\d+:\d+\S*: Audio:")


# --------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------


def load_audio(path: Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = 400.0) -> np.ndarray:
    """Decode an audio file to mono float32 samples at ``sample_rate`` (the reference's ``librosa.load``).

    Args:
        path: any file ffmpeg can read that has an audio stream (its first audio stream is used).
        sample_rate: output rate in Hz.
        max_seconds: longest accepted audio (``None``: no limit). Decoding stops shortly after this point,
            so a very long file costs little before it is rejected.

    Returns:
        ``(num_samples,)`` float32, nominally in [-1, 1].

    Raises:
        InputError: the file is missing, empty, not decodable, has no audio stream, is silent
            (peak < 1e-4), shorter than one video frame (80 ms) or longer than ``max_seconds``.
        FFmpegError: no ffmpeg binary could be found.
    """
    path = Path(path)
    _check_file(path)
    pcm, native_rate, stderr = _decode(path, max_seconds, sample_rate)
    # librosa.to_mono: mean over the channel axis of the (channels, samples) array.
    mono = pcm[:, 0].copy() if pcm.shape[1] == 1 else pcm.T.mean(axis=0)
    seconds = mono.shape[0] / native_rate
    if max_seconds is not None and seconds > max_seconds:
        declared = _declared_duration(stderr)
        length = f"is {declared:.1f} s long" if declared and declared > max_seconds else "is longer"
        raise InputError(
            f"{path}: the audio {length}; the limit is {max_seconds:g} s",
            hint=HINT_SHORTER_AUDIO,
        )
    if seconds < MIN_SECONDS:
        raise InputError(
            f"{path}: the audio is {seconds * 1000:.0f} ms long; at least {MIN_SECONDS * 1000:.0f} ms "
            "(one video frame) is needed"
        )
    peak = float(np.max(np.abs(mono)))
    if not peak >= SILENCE_PEAK:  # also catches NaN
        raise InputError(f"{path}: the audio is silent (peak amplitude {peak:.2g} < {SILENCE_PEAK:g})")
    samples = resample(mono, native_rate, sample_rate)
    logger.debug(
        "decoded %s: %d Hz, %d channel(s), %.3f s -> %d samples at %d Hz",
        path,
        native_rate,
        pcm.shape[1],
        seconds,
        samples.shape[0],
        sample_rate,
    )
    return samples


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample mono float32 samples like ``librosa.resample(res_type="soxr_hq")``.

    soxr quality "HQ", then the length fixed (zero-padded or trimmed) to ``ceil(n · rate_out / rate_in)``
    as librosa does.

    Args:
        samples: ``(n,)`` float32.
        rate_in: rate of ``samples`` in Hz.
        rate_out: wanted rate in Hz.

    Returns:
        ``(ceil(n · rate_out / rate_in),)`` float32 (``samples`` itself when the rates are equal).
    """
    if rate_in == rate_out:
        return samples
    out = soxr.resample(samples, rate_in, rate_out, quality="HQ")
    length = int(np.ceil(samples.shape[-1] * (float(rate_out) / rate_in)))
    if out.shape[-1] > length:
        out = out[:length]
    elif out.shape[-1] < length:
        out = np.pad(out, (0, length - out.shape[-1]))
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: audio file not found")
    if not path.is_file():
        raise InputError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the audio file is empty (0 bytes)")


def _decode(
    path: Path, max_seconds: float | None, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, int, str]:
    """Decode the first audio stream to ``(samples, channels)`` float32 (native rate when it is modest).

    ffmpeg writes a float WAV to its stdout; the WAV header says the rate and channel count, so nothing
    has to be parsed from ffmpeg's human-readable log. Within :data:`MAX_NATIVE_RATE` and
    :data:`MAX_NATIVE_CHANNELS` the stream is kept as it is (mixed and resampled afterwards exactly as
    librosa does); beyond them ffmpeg is restarted to mix to mono and resample to ``sample_rate`` itself,
    so a tiny many-channel, high-rate file cannot expand to gigabytes. The pipe read has a byte budget.
    """
    pcm, rate, stderr, forced = _run_decode(path, max_seconds, sample_rate, force=False)
    if forced:
        logger.warning(
            "%s: %d Hz with %d channel(s) exceeds %d Hz / %d channels; ffmpeg mixes it to mono at %d Hz",
            path, forced[0], forced[1], MAX_NATIVE_RATE, MAX_NATIVE_CHANNELS, sample_rate,
        )  # fmt: skip
        pcm, rate, stderr, _ = _run_decode(path, max_seconds, sample_rate, force=True)
    if pcm.shape[0] == 0:
        raise InputError(f"{path}: the audio stream contains no samples")
    return pcm, rate, stderr


def _run_decode(
    path: Path, max_seconds: float | None, sample_rate: int, *, force: bool
) -> tuple[np.ndarray, int, str, tuple[int, int] | None]:
    """One ffmpeg run; returns ``(pcm, rate, stderr, None)``, or ``(.., (rate, channels))`` when the
    stream is beyond the native bounds (only when not ``force``; ffmpeg was stopped after the header)."""
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", *locked_input(path, AUDIO_FORMATS)]
    command += ["-map", "0:a:0", "-acodec", "pcm_f32le", "-f", "wav", "-map_metadata", "-1"]
    if max_seconds is not None:  # a little over the limit, to tell "too long"
        command += ["-t", str(float(max_seconds) + 1.0)]
    if force:
        command += ["-ac", "1", "-ar", str(int(sample_rate))]
    command.append("pipe:1")
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as exc:
            raise FFmpegError(f"could not start ffmpeg ({command[0]}): {exc}") from exc
        expired = threading.Event()

        def _expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(DECODE_TIMEOUT_S, _expire)
        timer.start()
        try:
            data, verdict = _read_budgeted(proc, max_seconds, force)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        err.seek(max(0, err.seek(0, 2) - _STDERR_KEEP_BYTES))
        stderr = err.read().decode("utf-8", errors="replace")
    if isinstance(verdict, tuple):
        return np.zeros((0, 1), np.float32), 0, stderr, verdict
    if verdict == "budget":
        raise InputError(
            f"{path}: the decoded audio exceeds the memory budget for {max_seconds:g} s",
            hint=HINT_SHORTER_AUDIO,
        )
    if expired.is_set():
        raise InputError(f"{path}: decoding took longer than {DECODE_TIMEOUT_S:g} s")
    if proc.returncode != 0:
        if "Format not on whitelist" in stderr:
            raise InputError(
                f"{path}: is not an allowed audio format (wav, mp3, flac, ogg, m4a/mp4, mkv/webm, ...); "
                "playlists and lists of other files are refused"
            )
        if "matches no streams" in stderr or ("Input #0" in stderr and not _AUDIO_STREAM_RE.search(stderr)):
            raise InputError(f"{path}: has no audio stream")
        raise InputError(
            f"{path}: is not a readable audio or video file (ffmpeg could not decode it):\n{_tail(stderr)}"
        )
    try:
        pcm, rate = _parse_float_wav(data)
    except ValueError as exc:
        raise InputError(f"{path}: ffmpeg produced no usable audio ({exc})") from exc
    return pcm, rate, stderr, None


def _read_budgeted(
    proc: subprocess.Popen[bytes], max_seconds: float | None, force: bool
) -> tuple[bytes, str | tuple[int, int]]:
    """Read ffmpeg's WAV from its stdout within a byte budget set by the header's rate and channels.

    Returns the bytes and ``"ok"``, ``"budget"`` (stopped: more than the budget), or ``(rate, channels)``
    (stopped after the header: beyond the native bounds and not ``force``).
    """
    assert proc.stdout is not None
    buffer = bytearray()
    budget: int | None = None
    while True:
        chunk = proc.stdout.read1(_READ_CHUNK)
        if not chunk:
            return bytes(buffer), "ok"
        buffer += chunk
        if budget is None and (b"data" in buffer or len(buffer) >= _HEADER_BYTES):
            header = _wav_format(bytes(buffer[:_HEADER_BYTES]))
            if header is None:
                budget = _HEADER_BYTES  # not a WAV stream: the parser will say so
                continue
            rate, channels = header
            if not force and (rate > MAX_NATIVE_RATE or channels > MAX_NATIVE_CHANNELS):
                return b"", (rate, channels)
            seconds = _UNBOUNDED_SECONDS if max_seconds is None else float(max_seconds) + 2.0
            budget = int(seconds * rate * channels * 4) + _BUDGET_SLACK
        if budget is not None and len(buffer) > budget:
            return b"", "budget"


def _wav_format(head: bytes) -> tuple[int, int] | None:
    """``(rate, channels)`` from the fmt chunk at the start of a WAV stream (None when there is none)."""
    if len(head) < 36 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if chunk == b"fmt " and pos + 24 <= len(head):
            _, channels, rate = struct.unpack_from("<HHI", head, pos + 8)
            return rate, channels
        if chunk == b"data":
            return None
        pos += 8 + size + (size & 1)
    return None


def _ffmpeg_binary() -> str:
    """The ffmpeg to run: ``ffmpeg`` on PATH, else imageio-ffmpeg's static build.

    The same rule as :func:`portrait.ffmpeg.ffmpeg_binary`, repeated here because preprocess may
    not import render (ARCHITECTURE.md section 2).
    """
    system = shutil.which("ffmpeg")
    if system:
        return system
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        raise FFmpegError(
            f"ffmpeg is needed to decode audio but was not found ({exc}); install ffmpeg "
            "(e.g. `apt-get install ffmpeg`) or `pip install imageio-ffmpeg`"
        ) from exc


def _tail(stderr: str) -> str:
    lines = [line.rstrip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:])


def _parse_float_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Parse the 32-bit float WAV ffmpeg streams to a pipe (its chunk sizes are placeholders).

    Returns:
        ``(samples, channels)`` float32 and the sample rate.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE stream")
    pos, channels, rate = 12, 0, 0
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk == b"fmt ":
            if body + 16 > len(data):
                raise ValueError("truncated fmt chunk")
            _, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if bits != 32:
                raise ValueError(f"expected 32-bit float samples, got {bits}-bit")
        elif chunk == b"data":
            if not channels or not rate:
                raise ValueError("data chunk before fmt chunk")
            payload = data[body:]  # the size field is a placeholder when written to a pipe
            usable = len(payload) // (4 * channels) * (4 * channels)
            pcm = np.frombuffer(payload[:usable], dtype="<f4").astype(np.float32)
            return pcm.reshape(-1, channels), rate
        pos = body + size + (size & 1)
    raise ValueError("no data chunk")


def _declared_duration(stderr: str) -> float | None:
    """The container's duration from ffmpeg's ``Duration: HH:MM:SS.ss`` line (None when absent/N/A)."""
    match = _DURATION_RE.search(stderr)
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


# --------------------------------------------------------------------------------------------------------
# Whisper features
# --------------------------------------------------------------------------------------------------------


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
        samples: ``(S,)`` float mono samples at 16 kHz (from :func:`load_audio`).
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
    if max_audio_units < 1 or units_per_frame < 1:
        raise ValueError(
            f"max_audio_units {max_audio_units} and units_per_frame {units_per_frame} must be >= 1"
        )
    _check_extractor(feature_extractor)
    audio_len = min(samples.shape[0] // SAMPLES_PER_UNIT, max_audio_units)
    num_frames = audio_len // units_per_frame
    if num_frames < 1:
        raise InputError(
            f"the audio has {samples.shape[0]} samples ({samples.shape[0] / SAMPLE_RATE * 1000:.0f} ms at "
            f"16 kHz); one video frame needs {SAMPLES_PER_UNIT * units_per_frame}"
        )
    capped = samples.shape[0] // SAMPLES_PER_UNIT > max_audio_units
    used = audio_len * SAMPLES_PER_UNIT if capped else samples.shape[0]
    pieces = [
        feature_extractor(
            samples[start : start + PIECE_SAMPLES],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            padding="max_length",
        ).input_features
        for start in range(0, used, PIECE_SAMPLES)
    ]
    mel = torch.cat(pieces, dim=-1).to(torch.float32)
    logger.debug(
        "audio features: %d samples, %d pieces, audio_len %d, %d frames",
        samples.shape[0],
        len(pieces),
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


def _check_extractor(feature_extractor: Any) -> None:
    n_samples = getattr(feature_extractor, "n_samples", PIECE_SAMPLES)
    rate = getattr(feature_extractor, "sampling_rate", SAMPLE_RATE)
    if n_samples != PIECE_SAMPLES or rate != SAMPLE_RATE:
        raise WeightsError(
            f"the Whisper feature extractor pads to {n_samples} samples at {rate} Hz; expected "
            f"{PIECE_SAMPLES} at {SAMPLE_RATE} Hz (chunk_length 30); check "
            "audio_encoder/preprocessor_config.json"
        )
