"""Rendering: ffmpeg lookup and runner, streaming H.264 writer (spec 7.2), audio muxing and probing (7.3)."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from media import channel_count, probe_media

from portrait import ffmpeg as ffmpeg_module
from portrait.errors import FFmpegError, InputError
from portrait.ffmpeg import ffmpeg_binary, run_ffmpeg
from portrait.files import partial_path
from portrait.render.mux import mux_audio
from portrait.render.video import VideoWriter, to_uint8_frames

SPEECH = Path(str(importlib.resources.files("portrait") / "assets" / "sample_speech.wav"))
FPS = 12.5


def _frames(n: int, size: int = 64) -> np.ndarray:
    """Smooth, distinct grey frames (n, size, size, 3) uint8 (grey: 4:2:0 chroma loses nothing)."""
    y, x = np.mgrid[0:size, 0:size] / size
    grey = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (x + y) + 0.6 * i) for i in range(n)])
    return np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _write_video(path: Path, n: int = 10, size: int = 64) -> Path:
    with VideoWriter(path, fps=FPS) as writer:
        writer.write(_frames(n, size))
    return path


def _decode_frames(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return np.stack([np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader])


# --------------------------------------------------------------------------------------------------------
# ffmpeg binary and runner
# --------------------------------------------------------------------------------------------------------


def test_binary_prefers_path_then_imageio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ffmpeg_module.shutil, "which", lambda name: "/opt/bin/ffmpeg")
    assert ffmpeg_binary() == "/opt/bin/ffmpeg"
    monkeypatch.setattr(ffmpeg_module.shutil, "which", lambda name: None)
    assert ffmpeg_binary() == imageio_ffmpeg.get_ffmpeg_exe()

    def missing() -> str:
        raise RuntimeError("no ffmpeg exe could be found")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    with pytest.raises(FFmpegError, match="pip install imageio-ffmpeg"):
        ffmpeg_binary()


def test_run_ffmpeg_failure_carries_stderr(tmp_path: Path) -> None:
    missing = tmp_path / "missing.wav"
    with pytest.raises(FFmpegError, match="exited with status") as excinfo:
        run_ffmpeg(["-i", str(missing), "-f", "null", "-"])
    message = str(excinfo.value)
    assert "No such file or directory" in message and str(missing) in message
    result = run_ffmpeg(["-i", str(missing), "-f", "null", "-"], check=False)
    assert result.returncode != 0 and b"No such file" in result.stderr


def test_partial_path() -> None:
    assert partial_path(Path("/x/out.mp4")) == Path("/x/out.partial.mp4")
    assert partial_path(Path("/x/clip")) == Path("/x/clip.partial.mp4")


# --------------------------------------------------------------------------------------------------------
# Frame conversion and the streaming writer
# --------------------------------------------------------------------------------------------------------


def test_float_frames_are_truncated_not_rounded() -> None:
    values = torch.tensor([0.999, 1.0, 0.5, 0.0, -0.2, 1.3], dtype=torch.float32)
    frames = values.reshape(1, 1, 2, 3).expand(1, 3, 2, 3)
    got = to_uint8_frames(frames)
    assert got.shape == (1, 2, 3, 3) and got.dtype == np.uint8
    assert got[0, :, :, 0].ravel().tolist() == [254, 255, 127, 0, 0, 255]
    single = to_uint8_frames(torch.rand(3, 4, 6))
    assert single.shape == (1, 4, 6, 3)
    with pytest.raises(InputError, match="uint8"):
        to_uint8_frames(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match=r"\(n, 3, H, W\)"):
        to_uint8_frames(torch.zeros(2, 4, 4, 3))


def test_writer_streams_chunks_to_h264_at_12_5_fps(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    frames = _frames(10)
    updates: list[int] = []

    class Bar:
        def update(self, n: int = 1) -> None:
            updates.append(n)

    with VideoWriter(path, fps=FPS, progress=Bar()) as writer:
        as_tensor = torch.from_numpy(frames[:6]).permute(0, 3, 1, 2).float() / 255 + 1e-4
        writer.write(as_tensor)  # float (n, 3, H, W) in [0, 1]
        writer.write(frames[6:9])  # uint8 (n, H, W, 3)
        writer.write(frames[9])  # one uint8 (H, W, 3)
        assert not path.exists()  # ffmpeg writes <stem>.partial.mp4 until the writer closes
    assert writer.frames_written == 10 and updates == [6, 3, 1]
    assert path.is_file() and not partial_path(path).exists()
    assert imageio_ffmpeg.count_frames_and_secs(str(path)) == (10, 0.8)
    info = probe_media(path)
    assert [s["type"] for s in info["streams"]] == ["video"]
    video = info["streams"][0]
    assert (video["codec"], video["width"], video["height"], video["fps"]) == ("h264", 64, 64, 12.5)
    decoded = _decode_frames(path)
    assert decoded.shape == (10, 64, 64, 3)
    error = np.abs(decoded.astype(int) - frames.astype(int)).mean(axis=(1, 2, 3))
    assert error.max() < 2.0, error  # every frame in its place, crf 17 of smooth grey frames
    assert np.abs(decoded[1:].astype(int) - frames[:-1].astype(int)).mean() > 10  # and frames do differ


def test_exception_inside_the_writer_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, fps=FPS) as writer:
            writer.write(_frames(3))
            process = writer._process
            raise RuntimeError("boom")
    assert process is not None and process.poll() is not None
    assert not path.exists() and not partial_path(path).exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_sizes_and_empty_videos(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="even width and height, got 63x64"):
        with VideoWriter(tmp_path / "odd.mp4", fps=FPS) as writer:
            writer.write(np.zeros((2, 64, 63, 3), np.uint8))
    with pytest.raises(InputError, match="differs from the video size 64x64"):
        with VideoWriter(tmp_path / "mixed.mp4", fps=FPS) as writer:
            writer.write(np.zeros((64, 64, 3), np.uint8))
            writer.write(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(InputError, match="even"):
        VideoWriter(tmp_path / "sized.mp4", fps=FPS, size=(64, 33))
    with pytest.raises(InputError, match="no frames were written"):
        with VideoWriter(tmp_path / "empty.mp4", fps=FPS):
            pass
    with pytest.raises(InputError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "dir.mp4", fps=FPS)
    assert list(tmp_path.iterdir()) == []


def test_ffmpeg_dying_is_an_ffmpeg_error(tmp_path: Path) -> None:
    for when in ("write", "close"):
        path = tmp_path / f"died_in_{when}.mp4"
        with pytest.raises(FFmpegError, match="ffmpeg was killed: .*libx264"):
            with VideoWriter(path, fps=FPS) as writer:
                writer.write(_frames(2))
                writer._process.kill()
                writer._process.wait()
                if when == "write":
                    writer.write(_frames(2))
                writer.close()
        assert not path.exists() and not partial_path(path).exists()


# --------------------------------------------------------------------------------------------------------
# Muxing and probing
# --------------------------------------------------------------------------------------------------------


def test_mux_gives_one_h264_and_one_aac_stream_of_matching_duration(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "silent.mp4")
    output = mux_audio(video, SPEECH, tmp_path / "talking.mp4")
    assert output == tmp_path / "talking.mp4" and not partial_path(output).exists()
    info = probe_media(output, measure=True)
    kinds = [(s["type"], s["codec"]) for s in info["streams"]]
    assert kinds == [("video", "h264"), ("audio", "aac")]
    video_stream, audio_stream = info["streams"]
    assert video_stream["frames"] == 10 and video_stream["fps"] == 12.5
    assert audio_stream["sample_rate"] == 16000 and audio_stream["channels"] == 1
    # -shortest: the 3.9-s speech is cut to the 0.8-s video, within one video frame.
    assert abs(audio_stream["measured_duration"] - 0.8) <= 1 / FPS
    assert abs(video_stream["measured_duration"] - 0.8) < 1e-6


def test_mux_scales_and_can_copy_the_video_stream(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "silent.mp4")
    scaled = mux_audio(video, SPEECH, tmp_path / "scaled.mp4", size=(32, 48))
    scaled_video = probe_media(scaled)["streams"][0]
    assert (scaled_video["width"], scaled_video["height"]) == (32, 48)
    copied = mux_audio(video, SPEECH, tmp_path / "copied.mp4", copy_video=True)
    np.testing.assert_array_equal(_decode_frames(copied), _decode_frames(video))  # no second encode
    assert [s["codec"] for s in probe_media(copied)["streams"]] == ["h264", "aac"]
    with pytest.raises(InputError, match="copy_video"):
        mux_audio(video, SPEECH, tmp_path / "x.mp4", size=(32, 32), copy_video=True)
    with pytest.raises(InputError, match="even"):
        mux_audio(video, SPEECH, tmp_path / "x.mp4", size=(33, 32))


def test_mux_failure_leaves_no_partial_and_keeps_the_old_output(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "silent.mp4")
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio at all\n" * 10)
    output = tmp_path / "out.mp4"
    output.write_bytes(b"previous result")
    with pytest.raises(FFmpegError, match="notes.wav"):
        mux_audio(video, not_audio, output)
    assert output.read_bytes() == b"previous result"
    assert not partial_path(output).exists()


def test_mux_refuses_to_overwrite_an_input(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.partial.mp4")
    with pytest.raises(InputError, match="would overwrite the input"):
        mux_audio(video, SPEECH, video)
    with pytest.raises(InputError, match="would overwrite the input"):
        mux_audio(video, SPEECH, tmp_path / "clip.mp4")  # its partial file is the video
    with pytest.raises(InputError, match="not found"):
        mux_audio(tmp_path / "missing.mp4", SPEECH, tmp_path / "o.mp4")
    assert video.is_file()


def test_shell_metacharacters_in_names_are_literal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    audio = tmp_path / "a $(touch pwned).wav"
    audio.write_bytes(SPEECH.read_bytes())
    video = _write_video(tmp_path / "v `touch pwned2`.mp4")
    output = tmp_path / 'o"; touch pwned3; ".mp4'
    mux_audio(video, audio, output)
    assert output.is_file()
    assert [s["codec"] for s in probe_media(output)["streams"]] == ["h264", "aac"]
    assert not list(tmp_path.glob("pwned*"))


def test_probe_media_errors_and_layouts(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        probe_media(tmp_path / "none.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(InputError, match="cannot read"):
        probe_media(junk)
    info = probe_media(SPEECH)
    assert info["format"] == "wav" and info["duration"] == pytest.approx(3.91, abs=0.01)
    assert info["streams"] == [
        {"index": 0, "type": "audio", "codec": "pcm_s16le", "sample_rate": 16000, "channel_layout": "mono",
         "channels": 1}
    ]  # fmt: skip
    layouts = ["mono", "stereo", "5.1(side)", "7.1.4", "3 channels", "quad", "22.2", "weird"]
    assert [channel_count(name) for name in layouts] == [1, 2, 6, 12, 3, 4, 24, None]
