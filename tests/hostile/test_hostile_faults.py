"""Faults during a render: the sidecar checks the mp4, a full disk leaves nothing partial, and a render
killed with SIGKILL mid-encode leaves a work folder that the next render sweeps."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hostile_support import PORTRAIT, SPEECH

from portrait.batch.worker import is_done

FAST = ["--size", "64", "--steps", "1", "--no-interpolate", "--quiet", "--offline", "--detector", "dlib"]


def _cli(weights: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--image",
        str(PORTRAIT),
        "--audio",
        str(SPEECH),
        "--output",
        str(out),
        "--weights",
        str(weights),
        *FAST,
        *extra,
    ]


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_sidecar_records_the_mp4_and_a_full_disk_leaves_nothing(
    hostile_weights, tmp_path, monkeypatch, capsys
):
    import tempfile

    from portrait import generate as generate_module
    from portrait.cli.main import main

    prefixes: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def spy(*args, **kwargs):
        prefixes.append(kwargs.get("prefix", ""))
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    out = tmp_path / "ok.mp4"
    assert main(_cli(hostile_weights, out)) == 0
    sidecar = json.loads(out.with_name("ok.mp4.json").read_text())
    assert sidecar["output_bytes"] == out.stat().st_size
    import hashlib

    assert sidecar["output_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert is_done(out)
    assert any(p.startswith(".portrait-") and f"-{os.getpid()}-" in p for p in prefixes)
    assert _leftovers(tmp_path, {"ok.mp4", "ok.mp4.json"}) == []
    with out.open("r+b") as handle:  # one flipped byte: the sidecar no longer describes the mp4
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 1]))
    assert not is_done(out)

    real_encode = generate_module.encode_video

    def full_disk(frames, path, **kwargs):
        Path(path).write_bytes(b"half a video")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(generate_module, "encode_video", full_disk)
    capsys.readouterr()
    full = tmp_path / "full" / "x.mp4"
    full.parent.mkdir()
    assert main(_cli(hostile_weights, full)) == 1
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        next(line for line in err.splitlines() if "No space left on device" in line)
    ]
    assert list(full.parent.iterdir()) == []  # no work folder, no partial mp4, no sidecar
    monkeypatch.setattr(generate_module, "encode_video", real_encode)


_SLOW_ENCODE = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "import portrait.generate as g\n"
    "def slow(frames, path, **kw):\n"
    "    Path(path).write_bytes(b'partial frames')\n"
    "    time.sleep(120)\n"
    "g.encode_video = slow\n"
    "from portrait.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_kill_during_encode_then_rerun(hostile_weights, tmp_path):
    out = tmp_path / "killed.mp4"
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_ENCODE, *_cli(hostile_weights, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        work: list[Path] = []
        while time.monotonic() < deadline and child.poll() is None:
            work = [p for p in tmp_path.glob(".portrait-*") if (p / "silent.mp4").is_file()]
            if work:
                break
            time.sleep(0.05)
        assert work and f"-{child.pid}-" in work[0].name, "the render never reached its encode step"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
    assert work[0].is_dir() and not out.exists()  # SIGKILL: nothing cleaned up after itself

    rerun = subprocess.run(
        [sys.executable, "-m", "portrait.cli.main", *_cli(hostile_weights, out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert is_done(out)
    assert _leftovers(tmp_path, {"killed.mp4", "killed.mp4.json"}) == []  # the dead render's folder is gone
