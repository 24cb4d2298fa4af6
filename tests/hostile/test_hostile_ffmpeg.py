"""ffmpeg faults: a call that never ends or stalls is killed, its stderr kept bounded; durable renames."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from portrait.errors import FFmpegError
from portrait.ffmpeg import FFMPEG_TIMEOUT_S, FFmpegProcess, ffmpeg_binary, locked_input, run_ffmpeg
from portrait.files import durable_replace


def test_a_never_ending_ffmpeg_is_killed() -> None:
    endless = ["-f", "lavfi", "-i", "anullsrc=r=8000", "-f", "null", "-"]
    with pytest.raises(FFmpegError, match="did not finish within 1.5 s"):
        run_ffmpeg(endless, timeout=1.5)
    assert FFMPEG_TIMEOUT_S is not None and FFMPEG_TIMEOUT_S > 0


def test_locked_input_whitelists_protocol_and_formats(tmp_path: Path) -> None:
    args = locked_input(tmp_path / "a.wav", ("wav", "flac"))
    assert args == [
        "-protocol_whitelist",
        "file",
        "-format_whitelist",
        "wav,flac",
        "-i",
        str(tmp_path / "a.wav"),
    ]


def test_durable_replace_moves_the_whole_file(tmp_path: Path) -> None:
    source, target = tmp_path / "x.partial.mp4", tmp_path / "x.mp4"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    durable_replace(source, target)
    assert target.read_bytes() == b"new" and not source.exists()


# --------------------------------------------------------------------------------------------------------
# The streaming process: deadlines, a bounded stderr tail, failures that carry it
# --------------------------------------------------------------------------------------------------------

_ENDLESS_SILENCE = ["-re", "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono"]


def test_a_streaming_ffmpeg_past_its_deadline_is_killed() -> None:
    command = [ffmpeg_binary(), "-hide_banner", "-nostdin", *_ENDLESS_SILENCE, "-f", "s16le", "pipe:1"]
    started = time.monotonic()
    with FFmpegProcess(command, stdout=True, timeout=1.0) as ffmpeg:
        received = 0
        while chunk := ffmpeg.read1(1 << 16):
            received += len(chunk)
    assert ffmpeg.timed_out and received > 0
    assert ffmpeg.returncode is not None and ffmpeg.returncode < 0
    assert 0.9 < time.monotonic() - started < 30


def test_a_read_that_stalls_is_stopped() -> None:
    silent = [ffmpeg_binary(), "-hide_banner", "-nostdin", *_ENDLESS_SILENCE, "-f", "null", "-"]
    with FFmpegProcess(silent, stdout=True, stall_timeout=0.5) as ffmpeg:
        assert ffmpeg.read(16) == b""  # nothing ever comes: killed after 0.5 s of waiting
    assert ffmpeg.timed_out and ffmpeg.returncode is not None and ffmpeg.returncode < 0


def test_stderr_is_kept_as_a_bounded_tail_and_failures_carry_it(tmp_path: Path) -> None:
    chatty = [ffmpeg_binary(), "-hide_banner", "-nostdin", "-v", "debug", "-f", "lavfi"]
    chatty += ["-i", "anullsrc=r=8000:cl=mono", "-t", "0.5", "-f", "null", "-"]
    with FFmpegProcess(chatty, keep_bytes=512) as ffmpeg:
        assert ffmpeg.finish() == 0
    assert not ffmpeg.timed_out and 0 < len(ffmpeg.stderr_text().encode()) <= 512
    assert len(ffmpeg.stderr_text(lines=2).splitlines()) == 2

    missing = tmp_path / "missing.wav"
    with FFmpegProcess([ffmpeg_binary(), "-nostdin", "-i", str(missing), "-f", "null", "-"]) as ffmpeg:
        with pytest.raises(FFmpegError, match="exited with status") as caught:
            ffmpeg.finish(check=True)
    assert "No such file or directory" in str(caught.value) and str(missing) in str(caught.value)


def test_a_streaming_ffmpeg_that_cannot_start_is_an_ffmpeg_error(tmp_path: Path) -> None:
    with pytest.raises(FFmpegError, match="could not start ffmpeg"):
        FFmpegProcess([str(tmp_path / "no-such-ffmpeg"), "-version"])
