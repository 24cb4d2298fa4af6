"""ffmpeg faults: a call that never ends is killed; outputs are replaced durably."""

from __future__ import annotations

from pathlib import Path

import pytest

from portrait.errors import FFmpegError
from portrait.ffmpeg import FFMPEG_TIMEOUT_S, durable_replace, locked_input, run_ffmpeg


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
