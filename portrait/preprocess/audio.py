"""Audio input: decode any container with ffmpeg, mix to mono, resample (the reference's ``librosa.load``).

:func:`load_audio` decodes the first audio stream of anything ffmpeg reads (wav, mp3, m4a, ogg, flac, the
audio track of a video) to float32 at the file's native rate with all its channels, averages the channels
(librosa's mono), and resamples with soxr "HQ" (librosa's default ``soxr_hq``) including librosa's length
fix ``ceil(n · sr_out / sr_in)`` (compat §1.5). Unusable input raises :class:`InputError` naming the file.
The Whisper features of the samples are :mod:`portrait.preprocess.audio_features`'.
"""

from __future__ import annotations

import logging
import re
import struct
from pathlib import Path

import numpy as np
import soxr

from portrait.constants import SAMPLE_RATE
from portrait.errors import HINT_SHORTER_AUDIO, InputError
from portrait.ffmpeg import (
    AUDIO_FORMATS,
    FFmpegProcess,
    ffmpeg_binary,
    locked_input,
    parse_duration,
    stderr_tail,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DECODE_TIMEOUT_S",
    "MAX_NATIVE_CHANNELS",
    "MAX_NATIVE_RATE",
    "MIN_SECONDS",
    "SILENCE_PEAK",
    "load_audio",
    "resample",
]

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

_READ_CHUNK = 1 << 20
_HEADER_BYTES = 4096
_BUDGET_SLACK = 1 << 20
_UNBOUNDED_SECONDS = 4 * 3600.0
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
        declared = parse_duration(stderr)
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
    command = _decode_command(path, max_seconds, sample_rate, force=force)
    with FFmpegProcess(command, stdout=True, timeout=DECODE_TIMEOUT_S) as ffmpeg:
        data, verdict = _read_budgeted(ffmpeg, max_seconds, force)
    stderr = ffmpeg.stderr_text()
    if isinstance(verdict, tuple):
        return np.zeros((0, 1), np.float32), 0, stderr, verdict
    if verdict == "budget":
        raise InputError(
            f"{path}: the decoded audio exceeds the memory budget for {max_seconds:g} s",
            hint=HINT_SHORTER_AUDIO,
        )
    if ffmpeg.timed_out:
        raise InputError(f"{path}: decoding took longer than {DECODE_TIMEOUT_S:g} s")
    if ffmpeg.returncode != 0:
        raise _decode_failure(path, stderr)
    try:
        pcm, rate = _parse_float_wav(data)
    except ValueError as exc:
        raise InputError(f"{path}: ffmpeg produced no usable audio ({exc})") from exc
    return pcm, rate, stderr, None


def _decode_command(path: Path, max_seconds: float | None, sample_rate: int, *, force: bool) -> list[str]:
    """ffmpeg writing the first audio stream of ``path`` as a 32-bit float WAV to its stdout."""
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", *locked_input(path, AUDIO_FORMATS)]
    command += ["-map", "0:a:0", "-acodec", "pcm_f32le", "-f", "wav", "-map_metadata", "-1"]
    if max_seconds is not None:  # a little over the limit, to tell "too long"
        command += ["-t", str(float(max_seconds) + 1.0)]
    if force:
        command += ["-ac", "1", "-ar", str(int(sample_rate))]
    return command + ["pipe:1"]


def _decode_failure(path: Path, stderr: str) -> InputError:
    """The :class:`InputError` of a failed decode, from what ffmpeg's stderr says went wrong."""
    if "Format not on whitelist" in stderr:
        return InputError(
            f"{path}: is not an allowed audio format (wav, mp3, flac, ogg, m4a/mp4, mkv/webm, ...); "
            "playlists and lists of other files are refused"
        )
    if "matches no streams" in stderr or ("Input #0" in stderr and not _AUDIO_STREAM_RE.search(stderr)):
        return InputError(f"{path}: has no audio stream")
    return InputError(
        f"{path}: is not a readable audio or video file (ffmpeg could not decode it):\n{stderr_tail(stderr)}"
    )


def _read_budgeted(
    ffmpeg: FFmpegProcess, max_seconds: float | None, force: bool
) -> tuple[bytes, str | tuple[int, int]]:
    """Read ffmpeg's WAV from its stdout within a byte budget set by the header's rate and channels.

    Returns the bytes and ``"ok"``, ``"budget"`` (stopped: more than the budget), or ``(rate, channels)``
    (stopped after the header: beyond the native bounds and not ``force``).
    """
    buffer = bytearray()
    budget: int | None = None
    while True:
        chunk = ffmpeg.read1(_READ_CHUNK)
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
