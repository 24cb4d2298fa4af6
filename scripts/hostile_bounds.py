"""Reproduce the hostile uploads of issue 25 with small crafted files and print one JSON line per case.

Each case runs ``portrait-gen ...`` (or a short Python snippet) in a child process and reports its exit
status, wall time, the largest resident memory of any process it ran (ffmpeg included) and its error line.
The numbers are the bounds docs/security.md states. CPU only; about two minutes.

    python scripts/hostile_bounds.py [--work DIR] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "portrait" / "assets"
#: Runs a command and prints, as its last line, the peak RSS (KiB) of the largest process it waited for.
_MEASURE = (
    "import resource, subprocess, sys\n"
    "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
    "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(r.returncode)\n"
)
_CLI = "import sys; from portrait.cli.main import main; sys.exit(main(sys.argv[1:]))"
_TRACK = (
    "import sys\nfrom portrait.errors import PortraitError\nfrom portrait.motion.track_io import read_track\n"
    "try:\n    read_track(sys.argv[1])\nexcept PortraitError as err:\n    sys.exit(f'error: {err}')\n"
)


def ffmpeg(*args: str) -> None:
    from portrait.ffmpeg import run_ffmpeg

    run_ffmpeg(["-y", "-loglevel", "error", *args], timeout=600)


def make_inputs(work: Path) -> dict[str, Path]:
    """The crafted files: small on disk, huge in what they declare."""
    portrait = str(ASSETS / "sample_portrait.jpg")
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    files = {name: work / name for name in ("ten_min.mp4", "ten_hours.mp4", "fast.mp4", "bomb.mp4")}
    face = "scale=512:512,pad=1280:720:384:104"
    ffmpeg(
        "-loop",
        "1",
        "-framerate",
        "1",
        "-i",
        portrait,
        "-vf",
        face,
        "-t",
        "600",
        *x264,
        str(files["ten_min.mp4"]),
    )
    ffmpeg("-itsscale", "60", "-i", str(files["ten_min.mp4"]), "-c", "copy", str(files["ten_hours.mp4"]))
    ffmpeg("-loop", "1", "-framerate", "1000", "-i", portrait, "-vf", "scale=256:256", "-t", "20", *x264,
           str(files["fast.mp4"]))  # fmt: skip
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "color=c=gray:size=8192x8192:rate=1",
        "-frames:v",
        "1",
        *x264,
        str(files["bomb.mp4"]),
    )
    from PIL import Image

    files["huge.png"] = work / "huge.png"
    Image.open(portrait).resize((7000, 7000)).save(files["huge.png"], optimize=True)
    files["tiny_values.json"] = work / "tiny_values.json"
    files["tiny_values.json"].write_text('{"frames": [' + "[]," * 20_000_000 + "[]]}")  # 60 MB
    files["deep.json"] = work / "deep.json"
    files["deep.json"].write_text("[" * 1_000_000 + "]" * 1_000_000)
    return files


def measure(name: str, argv: list[str]) -> dict:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, timeout=3600
    )
    *out, rss = result.stdout.strip().splitlines() or ["0"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return {
        "case": name, "exit": result.returncode, "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mib": round(int(rss) / 1024, 1), "traceback": "Traceback" in result.stderr,
        "error": errors[0][:200] if errors else None, "output_lines": len(out),
    }  # fmt: skip


def cases(files: dict[str, Path], work: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-c", _CLI]
    track = str(work / "track.json")
    return {
        "reference_declares_10h": [*cli, "emotions", "classify", str(files["ten_hours.mp4"]), "--json"],
        "driving_video_1000fps_20s": [*cli, "motion", "extract", str(files["fast.mp4"]), "-o", track],
        "video_8192x8192": [*cli, "emotions", "classify", str(files["bomb.mp4"])],
        "reference_png_7000x7000": [*cli, "emotions", "classify", str(files["huge.png"])],
        "track_60MB_of_tiny_values": [sys.executable, "-c", _TRACK, str(files["tiny_values.json"])],
        "track_nested_1M_deep": [sys.executable, "-c", _TRACK, str(files["deep.json"])],
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work", type=Path, default=None, help="folder for the crafted files (default: temp)"
    )
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="portrait-hostile-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        files = make_inputs(work)
        sizes = {name: path.stat().st_size for name, path in files.items()}
        print(json.dumps({"inputs_bytes": sizes}), flush=True)
        for name, argv in cases(files, work).items():
            if args.only is None or name in args.only:
                print(json.dumps(measure(name, argv)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
