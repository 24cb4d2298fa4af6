"""Hostile audio: playlists that point at other server files, and many-channel high-rate memory bombs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hostile_support import FAST, PORTRAIT, run_cli_measured

from portrait.errors import InputError
from portrait.ffmpeg import run_ffmpeg
from portrait.preprocess.audio import load_audio
from portrait.render.mux import mux_audio

GIB = 1 << 30


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    """A "server file" the uploader must never get back: a loud 1-s 997 Hz tone."""
    t = np.arange(16000) / 16000
    path = tmp_path / "secret.wav"
    sf.write(str(path), (0.5 * np.sin(2 * np.pi * 997 * t)).astype(np.float32), 16000)
    return path


def _playlists(folder: Path, secret: Path) -> list[Path]:
    hls = folder / "upload.m3u8"
    hls.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n")
    concat = folder / "upload.wav"  # an ffconcat list named like audio, with a safe relative entry
    concat.write_text(f"ffconcat version 1.0\nfile {secret.name}\n")
    return [hls, concat]


def test_playlists_are_refused_and_the_secret_is_not_decoded(tmp_path: Path, secret: Path) -> None:
    for upload in _playlists(tmp_path, secret):
        with pytest.raises(InputError, match="not an allowed audio format") as excinfo:
            load_audio(upload)
        assert "playlists" in str(excinfo.value)


def test_mux_refuses_a_playlist_as_audio(tmp_path: Path, secret: Path) -> None:
    video = tmp_path / "silent.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=64x64:r=12.5:d=1", "-c:v", "libx264", "-y", str(video)])
    out = tmp_path / "out.mp4"
    for upload in _playlists(tmp_path, secret):
        with pytest.raises(InputError, match="not an allowed audio format"):
            mux_audio(video, upload, out)
        assert not out.exists() and not list(tmp_path.glob("*partial*"))


def test_cli_with_a_playlist_exits_1_without_the_secret(hostile_weights: Path, tmp_path: Path, secret: Path):
    for upload in _playlists(tmp_path, secret)[1:]:  # the ffconcat list (one CLI run: slow start)
        out = tmp_path / "o" / "x.mp4"
        out.parent.mkdir(exist_ok=True)
        rc, stdout, stderr, _ = run_cli_measured(
            "--weights", str(hostile_weights), "--image", str(PORTRAIT), "--audio", str(upload),
            "-o", str(out), *FAST,
        )  # fmt: skip
        lines = stderr.strip().splitlines()
        assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), stderr
        assert "not an allowed audio format" in lines[0]
        assert list(out.parent.iterdir()) == []


def _write_bomb(path: Path, seconds: float, tone: bool) -> Path:
    """8 channels at 384 kHz: tiny as FLAC, ~1.2 GB of float PCM per 100 s at native rate."""
    source = "sine=f=440:r=384000" if tone else "anullsrc=r=384000:cl=7.1"
    extra = ["-ac", "8"] if tone else []
    run_ffmpeg(["-f", "lavfi", "-i", source, "-t", str(seconds), *extra, "-c:a", "flac", "-y", str(path)])
    return path


def test_many_channel_high_rate_audio_is_mixed_by_ffmpeg(tmp_path: Path, caplog) -> None:
    bomb = _write_bomb(tmp_path / "tone.flac", 1.0, tone=True)
    with caplog.at_level(logging.WARNING, logger="portrait.preprocess.audio"):
        samples = load_audio(bomb)
    assert samples.shape == (16000,) and samples.dtype == np.float32
    assert "384000 Hz with 8 channel(s)" in caplog.text
    t = np.arange(16000) / 16000
    expected = 0.125 * np.sin(2 * np.pi * 440 * t)  # lavfi's sine has amplitude 1/8
    np.testing.assert_allclose(samples[800:-800], expected[800:-800], atol=2e-3)


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX system")
def test_cli_on_an_audio_bomb_stays_under_1_gib(hostile_weights: Path, tmp_path: Path) -> None:
    bomb = _write_bomb(tmp_path / "bomb.flac", 40.0, tone=False)  # ~0.5 MB file, 491 MB native PCM
    assert bomb.stat().st_size < 2_000_000
    out = tmp_path / "o" / "x.mp4"
    out.parent.mkdir()
    rc, _, stderr, rss = run_cli_measured(
        "--weights", str(hostile_weights), "--image", str(PORTRAIT), "--audio", str(bomb), "-o", str(out),
        *FAST,
    )  # fmt: skip
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert rc == 1 and len(errors) == 1 and "silent" in errors[0], stderr
    assert "ffmpeg mixes it to mono" in stderr  # the warning of the forced downmix
    print(f"peak RSS of the CLI on the audio bomb: {rss / 2**20:.0f} MiB")
    assert rss < GIB, f"peak RSS {rss / 2**20:.0f} MiB"
    assert list(out.parent.iterdir()) == []
