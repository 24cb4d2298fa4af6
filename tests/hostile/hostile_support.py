"""Helpers of the hostile-input suite: asset paths and a CLI run in a child with its peak RSS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[2] / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
FAST = ["--size", "64", "--steps", "2", "--quiet", "--offline"]

#: Runs a command, then prints the largest peak RSS (KiB) of any process it waited for, as the last line.
_RSS_WRAPPER = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)\n"
    "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)
_CLI = "import sys; from portrait.cli.main import main; sys.exit(main(sys.argv[1:]))"


def run_cli_measured(*args: str) -> tuple[int, str, str, int]:
    """``portrait-gen ARGS`` in a child process: ``(exit status, stdout, stderr, peak RSS in bytes)``."""
    result = subprocess.run(
        [sys.executable, "-c", _RSS_WRAPPER, sys.executable, "-c", _CLI, *args],
        capture_output=True,
        text=True,
        timeout=320,
    )
    *out, rss = result.stdout.strip().splitlines() or ["0"]
    return result.returncode, "\n".join(out), result.stderr, int(rss) * 1024
