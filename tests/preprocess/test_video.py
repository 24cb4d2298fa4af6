"""The streaming ffmpeg frame reader: probe, frames and timestamps, resampling, limits, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from portrait.errors import InputError
from portrait.ffmpeg import media_path, run_ffmpeg
from portrait.preprocess.video import iter_frames, media_kind, output_size, parse_probe, probe_video

SAMPLE = Path(__file__).resolve().parents[2] / "portrait" / "assets" / "sample_portrait.jpg"


@pytest.fixture(scope="module")
def red_blue(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s, 25 fps, 96x64: red for the first second, blue for the second (lossless FFV1 in Matroska)."""
    out = tmp_path_factory.mktemp("video") / "red_blue.mkv"
    graph = "color=c=red:s=96x64:r=25:d=1[a];color=c=blue:s=96x64:r=25:d=1[b];[a][b]concat=n=2:v=1[v]"
    run_ffmpeg(
        ["-f", "lavfi", "-i", "nullsrc=s=16x16:d=0.01", "-filter_complex", graph, "-map", "[v]"]
        + ["-c:v", "ffv1", "-pix_fmt", "yuv444p", "-y", media_path(out)],
        timeout=60,
    )
    return out


def test_probe_reports_size_rate_duration(red_blue: Path) -> None:
    info = probe_video(red_blue)
    assert (info.width, info.height) == (96, 64)
    assert info.fps == pytest.approx(25.0)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.frames_estimate == 50


def test_all_frames_with_timestamps_and_colours(red_blue: Path) -> None:
    frames = list(iter_frames(red_blue))
    assert len(frames) == 50
    times = [t for t, _ in frames]
    assert times == pytest.approx([i / 25 for i in range(50)])
    first, last = frames[0][1], frames[-1][1]
    assert first.shape == (64, 96, 3) and first.dtype == np.uint8
    assert np.abs(first.astype(int) - [255, 0, 0]).max() <= 3
    assert np.abs(last.astype(int) - [0, 0, 255]).max() <= 3


def test_fps_resampling_max_frames_and_max_side(red_blue: Path) -> None:
    frames = list(iter_frames(red_blue, fps=5))
    assert [t for t, _ in frames] == pytest.approx([i / 5 for i in range(10)])
    reds = [bool(f[32, 48, 0] > 200) for _, f in frames]
    assert reds == [True] * 5 + [False] * 5  # the switch at 1 s lands between samples 4 and 5

    capped = list(iter_frames(red_blue, fps=5, max_frames=3, max_side=48))
    assert len(capped) == 3
    assert capped[0][1].shape == (32, 48, 3)


def test_stopping_early_and_bad_arguments(red_blue: Path) -> None:
    frames = iter_frames(red_blue)
    t, frame = next(frames)
    assert t == 0.0 and frame.shape == (64, 96, 3)
    frames.close()  # kills ffmpeg; must not hang or raise
    with pytest.raises(InputError, match="frame rate"):
        next(iter_frames(red_blue, fps=0))
    with pytest.raises(InputError, match="max_frames"):
        next(iter_frames(red_blue, max_frames=0))


def test_rotation_metadata_swaps_the_size(red_blue: Path, tmp_path: Path) -> None:
    rotated = tmp_path / "rotated.mkv"
    run_ffmpeg(["-display_rotation", "90", "-i", media_path(red_blue), "-c", "copy", media_path(rotated)])
    info = probe_video(rotated)
    assert (info.width, info.height) == (64, 96)
    _, frame = next(iter_frames(rotated))
    assert frame.shape == (96, 64, 3)


def test_parse_probe_text() -> None:
    stderr = (
        "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'a.mp4':\n  Duration: 00:01:02.50, start: 0.000000\n"
        "  Stream #0:0[0x1](und): Audio: aac, 44100 Hz, stereo\n"
        "  Stream #0:1[0x2](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709), "
        "1920x1080 [SAR 1:1 DAR 16:9], 4000 kb/s, 29.97 fps, 29.97 tbr, 30k tbn\n"
        "      Display Matrix: rotation of -90.00 degrees\n"
    )
    info = parse_probe(stderr)
    assert (info.width, info.height, info.fps, info.duration) == (1080, 1920, 29.97, 62.5)
    assert info.frames_estimate == round(62.5 * 29.97)
    cover_art = "Input #0, mp3\n  Stream #0:1: Video: mjpeg, yuvj420p, 500x500, 90k tbn (attached pic)\n"
    assert parse_probe(cover_art) is None
    assert output_size(1920, 1080, 1280) == (1280, 720)
    assert output_size(640, 480, None) == (640, 480)


def _one_line_input_error(path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match) as caught:
        list(iter_frames(path))
    assert "\n" not in str(caught.value)


def test_corrupt_empty_missing_and_non_video_files(red_blue: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    _one_line_input_error(junk, "not a readable video")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _one_line_input_error(empty, "empty")
    _one_line_input_error(tmp_path / "missing.mp4", "does not exist")
    wav = Path(__file__).resolve().parents[2] / "portrait" / "assets" / "sample_speech.wav"
    _one_line_input_error(wav, "not one of the allowed video formats")
    mp4 = tmp_path / "whole.mp4"
    run_ffmpeg(["-i", media_path(red_blue), "-c:v", "libx264", "-pix_fmt", "yuv420p", media_path(mp4)])
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # moov atom (at the end) cut off
    _one_line_input_error(truncated, "not a readable video")


def test_playlists_and_concat_lists_are_refused(tmp_path: Path, red_blue: Path) -> None:
    playlist = tmp_path / "remote.m3u8"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nhttp://127.0.0.1:9/seg.ts\n")
    _one_line_input_error(playlist, "not one of the allowed video formats")
    concat = tmp_path / "list.ffconcat"
    concat.write_text(f"ffconcat version 1.0\nfile '{red_blue}'\n")
    _one_line_input_error(concat, "not one of the allowed video formats")


def test_media_kind(red_blue: Path, tmp_path: Path) -> None:
    assert media_kind(SAMPLE) == "image"
    assert media_kind(red_blue) == "video"
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert media_kind(text) == "video"  # left to the video reader, which refuses it
    with pytest.raises(InputError, match="does not exist"):
        media_kind(tmp_path / "nothing.png")
