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


def ffmpeg_clip(
    path: Path,
    source: str = "color=c=gray:size=64x64:rate=25",
    *,
    seconds: float | None = None,
    frames: int | None = None,
    inputs: list[str] | None = None,
) -> Path:
    """Encode a small H.264 mp4 from an ffmpeg lavfi ``source`` (or explicit ``inputs`` arguments)."""
    from portrait.ffmpeg import media_path, run_ffmpeg

    args = ["-y", "-loglevel", "error", *(inputs or ["-f", "lavfi", "-i", source])]
    args += ["-t", str(seconds)] if seconds is not None else []
    args += ["-frames:v", str(frames)] if frames is not None else []
    run_ffmpeg([*args, "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", media_path(path)])
    return path


def stretched(path: Path, source: Path, factor: float) -> Path:
    """``source`` remuxed with its timestamps multiplied by ``factor`` (same frames, declared longer)."""
    from portrait.ffmpeg import media_path, run_ffmpeg

    run_ffmpeg(["-y", "-loglevel", "error", "-itsscale", str(factor), "-i", media_path(source), "-c", "copy",
                media_path(path)])  # fmt: skip
    return path


def face_points(box: tuple[float, float, float, float] = (16.0, 16.0, 32.0, 32.0)):
    """(68, 2) float32 landmarks of the generic 3D face seen from the front (a perspective view from 1 m),
    scaled uniformly into ``box`` (x, y, w, h)."""
    import numpy as np

    from portrait.motion.pose import generic_face_3d

    model = generic_face_3d() + np.array([0.0, 0.0, 1000.0])
    view = model[:, :2] / model[:, 2:]
    view -= view.min(0)
    x, y, w, h = box
    scale = min(w / view[:, 0].max(), h / view[:, 1].max()) if w > 0 and h > 0 else 0.0
    return (view * scale + np.array([x, y])).astype(np.float32)


class CountingFace:
    """A fake face detector, landmarker and expression classifier in one: every call finds the same face
    (``box``) and is counted, with the size of each frame it saw; ``delay`` seconds per call."""

    name = "counting"
    classes = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    input_size = 64

    def __init__(self, box: tuple[float, float, float, float] = (8.0, 8.0, 48.0, 48.0), delay: float = 0.0):
        self.box, self.delay = box, delay
        self.detections: list[tuple[int, int]] = []
        self.landmarked = 0
        self.classified = 0

    def _wait(self) -> None:
        if self.delay:
            import time

            time.sleep(self.delay)

    def detect(self, image_bgr):
        from portrait.preprocess.detectors import Face

        self._wait()
        self.detections.append((image_bgr.shape[1], image_bgr.shape[0]))
        return [Face(self.box, 1.0)]

    def __call__(self, image, box):
        self.landmarked += 1
        return face_points(tuple(float(v) for v in box))

    def predict(self, faces):
        import numpy as np

        self._wait()
        self.classified += len(faces)
        probs = np.zeros((len(faces), len(self.classes)))
        probs[:, 3] = 1.0
        return probs
