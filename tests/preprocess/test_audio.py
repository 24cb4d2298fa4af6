"""Audio decoding (any container via ffmpeg, mono, resampling, bad inputs) and Whisper features (spec 1.5).

Real speech: espeak-ng writes a sentence to a temporary wav, ffmpeg converts it to other containers.
"""

from __future__ import annotations

import importlib.resources
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from portrait.errors import HINT_SHORTER_AUDIO, InputError
from portrait.ffmpeg import run_ffmpeg
from portrait.preprocess.audio import load_audio, resample
from portrait.preprocess.audio_features import PIECE_SAMPLES, AudioFeatures, audio_features

SENTENCE = "The quick brown fox jumps over the lazy dog."
ASSET = importlib.resources.files("portrait") / "assets" / "sample_speech.wav"


# --------------------------------------------------------------------------------------------------------
# Fixtures: real speech in several containers
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng speech (22 050 Hz mono wav) and ffmpeg conversions of it."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng); needed for real speech")
    folder = tmp_path_factory.mktemp("speech")
    wav = folder / "speech.wav"
    subprocess.run([espeak, "-v", "en-us", "-w", str(wav), SENTENCE], check=True, capture_output=True)
    conversions = {
        "speech.mp3": ["-c:a", "libmp3lame", "-ar", "44100", "-ac", "2"],
        "speech.m4a": ["-c:a", "aac", "-ar", "48000"],
        "speech.ogg": ["-c:a", "libvorbis"],
        "speech.flac": ["-c:a", "flac"],
    }
    for name, options in conversions.items():
        run_ffmpeg(["-i", str(wav), *options, "-y", str(folder / name)])
    # A video file whose audio track is the speech (the video track is longer than the audio).
    run_ffmpeg(
        ["-f", "lavfi", "-i", "color=c=gray:s=64x64:r=12.5:d=6", "-i", str(wav)]
        + ["-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-c:a", "aac", "-y", str(folder / "speech.mp4")]
    )
    run_ffmpeg(
        ["-f", "lavfi", "-i", "color=c=gray:s=64x64:r=12.5:d=1", "-y", str(folder / "silent_video.mp4")]
    )
    return folder


def _write(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def _tone(seconds: float, rate: int = 16000, freq: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# load_audio: containers, mono, resampling
# --------------------------------------------------------------------------------------------------------


def test_wav_at_16k_decodes_to_the_exact_samples() -> None:
    """A 16-kHz mono wav needs no resampling: ffmpeg's int16 -> float equals soundfile's (librosa's)."""
    path = Path(str(ASSET))
    expected, rate = sf.read(str(path), dtype="float32")
    assert rate == 16000
    got = load_audio(path)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    assert 3.5 < got.shape[0] / 16000 < 4.5


@pytest.mark.parametrize("name", ["speech.mp3", "speech.m4a", "speech.ogg", "speech.flac", "speech.mp4"])
def test_every_container_decodes_to_the_same_duration(speech_dir: Path, name: str) -> None:
    reference = load_audio(speech_dir / "speech.wav")
    got = load_audio(speech_dir / name)
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(got.shape[0] - reference.shape[0]) / 16000 <= 0.030, (got.shape, reference.shape)
    assert 0.1 < np.abs(got).max() <= 1.5


def test_flac_is_lossless(speech_dir: Path) -> None:
    np.testing.assert_array_equal(
        load_audio(speech_dir / "speech.flac"), load_audio(speech_dir / "speech.wav")
    )


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    left, right = _tone(0.5, freq=300.0), _tone(0.5, freq=1200.0, amplitude=0.25)
    path = _write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    got = load_audio(path)
    np.testing.assert_array_equal(got, np.stack([left, right]).mean(axis=0))


def test_resampling_44k1_to_16k_matches_soxr_hq_and_librosa_length(tmp_path: Path) -> None:
    samples = _tone(44101 / 44100, rate=44100)  # 44 101 samples: ceil(44101 · 16000 / 44100) = 16 001
    path = _write(tmp_path / "tone44k.wav", samples, 44100, subtype="FLOAT")
    got = load_audio(path)
    assert got.shape == (16001,)
    expected = soxr.resample(samples, 44100, 16000, quality="HQ")
    n = min(expected.shape[0], 16001)
    np.testing.assert_array_equal(got[:n], expected[:n])
    assert resample(samples[:44100], 44100, 16000).shape == (16000,)
    assert resample(samples, 16000, 16000) is samples


def test_matches_librosa_load_when_available(tmp_path: Path) -> None:
    librosa = pytest.importorskip("librosa", reason="librosa is not installed (not a dependency)")
    stereo = np.stack([_tone(0.7, 44100, 300.0), _tone(0.7, 44100, 900.0, 0.2)], axis=1)
    path = _write(tmp_path / "stereo44k.wav", stereo, 44100)
    expected, _ = librosa.load(str(path), sr=16000)
    np.testing.assert_allclose(load_audio(path), expected, atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------------
# load_audio: unusable input
# --------------------------------------------------------------------------------------------------------


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as excinfo:
        load_audio(tmp_path / "nope.wav")
    assert "nope.wav" in str(excinfo.value)
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(InputError, match="not a file"):
        load_audio(tmp_path)


def test_text_file_named_wav_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(InputError, match="not a readable audio") as excinfo:
        load_audio(path)
    assert "notes.wav" in str(excinfo.value)


def test_png_has_no_audio_stream(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "picture.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(path)
    with pytest.raises(InputError, match="no audio stream"):
        load_audio(path)


def test_video_without_audio_has_no_audio_stream(speech_dir: Path) -> None:
    with pytest.raises(InputError, match="silent_video.mp4: has no audio stream"):
        load_audio(speech_dir / "silent_video.mp4")


def test_silent_audio_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "silence.wav", np.zeros(16000, np.float32), 16000)
    with pytest.raises(InputError, match="silent"):
        load_audio(path)


def test_audio_shorter_than_one_frame_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "blip.wav", _tone(0.030), 16000)
    with pytest.raises(InputError, match=r"30 ms long; at least 80 ms"):
        load_audio(path)
    assert load_audio(_write(tmp_path / "frame.wav", _tone(0.080), 16000)).shape == (1280,)


def test_audio_longer_than_the_limit_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path / "long.wav", _tone(3.0), 16000)
    with pytest.raises(InputError, match=r"is 3\.0 s long; the limit is 2 s") as caught:
        load_audio(path, max_seconds=2.0)
    assert caught.value.hint == HINT_SHORTER_AUDIO  # the CLI says "set preprocess.max_audio_units or trim it"
    assert load_audio(path, max_seconds=None).shape == (48000,)
    assert load_audio(path, max_seconds=3.0).shape == (48000,)


def test_file_names_are_never_seen_by_a_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tone = _tone(0.2)
    for name in ["a $(touch pwned).wav", "b `touch pwned2`.wav", 'c"; touch pwned3; ".wav', "-y.wav"]:
        _write(tmp_path / name, tone, 16000)
        np.testing.assert_allclose(load_audio(Path(name)), tone, atol=1 / 32768)
    assert not list(tmp_path.glob("pwned*"))


# --------------------------------------------------------------------------------------------------------
# audio_features
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor():
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor(
        feature_size=80, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
    )


def _noise(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n) * 0.1).astype(np.float32)


@pytest.mark.parametrize(
    "num_samples, audio_len, num_frames",
    [(68732, 107, 53), (145742, 227, 113), (64645, 101, 50), (162432, 253, 126), (1280, 2, 1)],
)
def test_frame_counts_of_the_reference_examples(extractor, num_samples, audio_len, num_frames) -> None:
    samples = _noise(num_samples)
    features = audio_features(samples, extractor)
    assert isinstance(features, AudioFeatures)
    assert (features.audio_len, features.num_frames) == (audio_len, num_frames)
    assert features.mel.shape == (1, 80, 3000) and features.mel.dtype == torch.float32
    assert features.duration == pytest.approx(num_samples / 16000)
    assert features.samples is samples


def test_too_few_samples_for_one_frame(extractor) -> None:
    with pytest.raises(InputError, match="one video frame needs 1280"):
        audio_features(_noise(1279), extractor)
    with pytest.raises(InputError, match="1-D"):
        audio_features(np.zeros((2, 16000), np.float32), extractor)


def test_pieces_are_independent_and_concatenated(extractor) -> None:
    samples = _noise(PIECE_SAMPLES + 20000, seed=1)
    features = audio_features(samples, extractor)
    assert features.mel.shape == (1, 80, 6000)
    assert features.audio_len == (PIECE_SAMPLES + 20000) // 640
    second = extractor(samples[PIECE_SAMPLES:], sampling_rate=16000, return_tensors="pt").input_features
    torch.testing.assert_close(features.mel[..., 3000:], second, rtol=0, atol=0)


def test_cap_on_audio_units(extractor) -> None:
    samples = _noise(PIECE_SAMPLES + 20000, seed=2)
    features = audio_features(samples, extractor, max_audio_units=100, units_per_frame=2)
    assert (features.audio_len, features.num_frames) == (100, 50)
    assert features.mel.shape == (1, 80, 3000)  # the piece past the cap is not computed (not needed)
    uncapped = audio_features(samples, extractor)
    torch.testing.assert_close(features.mel, uncapped.mel[..., :3000], rtol=0, atol=0)
    assert audio_features(samples[:16000], extractor, units_per_frame=5).num_frames == 5


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    return np.where(hz < 1000.0, linear, 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / (np.log(6.4) / 27.0))


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel < 15.0, mel * (200.0 / 3), 1000.0 * np.exp((mel - 15.0) * (np.log(6.4) / 27.0)))


def _reference_log_mel(samples: np.ndarray) -> np.ndarray:
    """Spec 1.5 written out in float64: (80, 3000) features of one zero-padded 30-s piece."""
    n_fft, hop = 400, 160
    x = np.zeros(PIECE_SAMPLES)
    x[: samples.shape[0]] = samples
    x = np.pad(x, n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]  # (3001, 400)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (3001, 201)
    power = power[:-1].T  # drop the last frame -> (201, 3000)
    fft_hz = np.linspace(0, 8000, 201)
    edges = _slaney_hz(np.linspace(_slaney_mel(0.0), _slaney_mel(8000.0), 82))
    filters = np.zeros((80, 201))
    for m in range(80):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising, falling = (fft_hz - lo) / (mid - lo), (hi - fft_hz) / (hi - mid)
        filters[m] = np.maximum(0.0, np.minimum(rising, falling)) * 2.0 / (hi - lo)
    log_mel = np.log10(np.maximum(filters @ power, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return (log_mel + 4.0) / 4.0


def test_log_mel_matches_the_spec_formula(extractor) -> None:
    t = np.arange(16000) / 16000
    sine = (0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 3100.0 * t)).astype(np.float32)
    features = audio_features(sine, extractor)
    expected = _reference_log_mel(sine.astype(np.float64))
    got = features.mel[0].numpy().astype(np.float64)
    assert got.shape == expected.shape == (80, 3000)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    # The floor really applies over the padding (max - 8 in log10 units, i.e. -2 after (x+4)/4).
    assert got[:, -1].max() == pytest.approx(got.max() - 2.0, abs=1e-5)
