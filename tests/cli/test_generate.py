"""`portrait-gen --image ... --audio ...` end to end on tiny weights, and every bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from media import probe_media
from PIL import Image

from portrait.cli.main import main

ASSETS = Path(__file__).resolve().parents[2] / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
FAST = ["--size", "64", "--steps", "2", "--quiet", "--offline"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from portrait.testing.trees import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("cli") / "w", layout="portrait", seed=1)


def run(weights: Path, *extra: str, image=PORTRAIT, audio=SPEECH) -> int:
    return main(["--weights", str(weights), "--image", str(image), "--audio", str(audio), *FAST, *extra])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "partial" in p.name or p.name.startswith(".portrait-"))


def test_generates_an_mp4_with_h264_and_aac_matching_the_audio(weights, tmp_path, capsys):
    out = tmp_path / "talk.mp4"
    assert run(weights, "--emotion", "sad", "-o", str(out)) == 0
    info = probe_media(out, measure=True)
    kinds = sorted(s["type"] for s in info["streams"])
    assert kinds == ["audio", "video"]
    video = next(s for s in info["streams"] if s["type"] == "video")
    audio = next(s for s in info["streams"] if s["type"] == "audio")
    assert video["codec"] == "h264" and audio["codec"] == "aac"
    sidecar = json.loads(out.with_name("talk.mp4.json").read_text())
    fps = sidecar["fps"]
    assert fps == (25.0 if sidecar["interpolated"] else 12.5)
    assert abs(video["fps"] - fps) < 1e-6
    assert video["frames"] == sidecar["video_frames"]
    assert abs(video["measured_duration"] - sidecar["audio_seconds"]) <= 1 / 12.5
    assert abs(audio["measured_duration"] - video["measured_duration"]) <= 1 / fps
    assert sidecar["seed"] == 72589 and sidecar["emotion"] == "sad"
    assert sidecar["config"]["sampling"]["steps"] == 2
    assert set(sidecar["timings"]) >= {"image", "audio", "sampling", "total"}
    assert _leftovers(tmp_path) == []


def test_same_seed_same_frames_and_dump_frames(weights, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        assert (
            run(
                weights,
                "--seed",
                "3",
                "--no-interpolate",
                "-o",
                str(tmp_path / f"{folder.name}.mp4"),
                "--dump-frames",
                str(folder),
            )
            == 0
        )
    frames_a, frames_b = sorted(a.glob("*.png")), sorted(b.glob("*.png"))
    assert len(frames_a) == 48  # 3.91 s of audio → 97 units → 48 frames at 12.5 fps
    assert all(
        np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y)))
        for x, y in zip(frames_a, frames_b, strict=False)
    )


def test_help_is_instant_and_does_not_import_torch():
    code = (
        "import sys; from portrait.cli.main import main; rc = main(['--help']); "
        "print('torch' in sys.modules, rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "--image" in out and out.strip().endswith("False 0")


def test_usage_errors_exit_2(capsys):
    assert main(["--image", "x.png"]) == 2  # --audio missing
    assert main(["--image", "x.png", "--audio", "a.wav", "--steps", "many"]) == 2


def _write_tone(path: Path, seconds: float, amplitude: float = 0.3, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)
    return path


@pytest.fixture
def bad_inputs(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (256, 256), "white").save(blank)
    zero = tmp_path / "zero.png"
    zero.write_bytes(b"")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(PORTRAIT.read_bytes()[:300])
    text_audio = tmp_path / "notes.wav"
    text_audio.write_text("not audio at all")
    return {
        "blank": blank,
        "zero": zero,
        "corrupt": corrupt,
        "text_audio": text_audio,
        "silent": _write_tone(tmp_path / "silent.wav", 2.0, amplitude=0.0),
        "short": _write_tone(tmp_path / "short.wav", 0.05),
    }


@pytest.mark.parametrize(
    "case, fragment",
    [
        (dict(image="blank"), "no face"),
        (dict(image="zero"), "empty"),
        (dict(image="corrupt"), "corrupt|truncated|cannot"),
        (dict(audio="text_audio"), "audio"),
        (dict(audio="silent"), "silent"),
        (dict(audio="short"), "short"),
        (dict(extra=["--emotion", "furious"]), "unknown emotion"),
        (dict(extra=["--emotion", "sad:-1"]), "intensity"),
        (dict(extra=["--face-box", "1,2,three,4"]), "face box|face-box"),
        (dict(extra=["--set", "sampling.stepz=3"]), "stepz"),
        (dict(extra=["--size", "100"]), "multiple of 64"),
        (dict(image="missing"), "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_leaves_nothing(
    weights, tmp_path, bad_inputs, capsys, case, fragment
):
    image = bad_inputs.get(
        case.get("image"), tmp_path / "nope.png" if case.get("image") == "missing" else PORTRAIT
    )
    audio = bad_inputs.get(case.get("audio"), SPEECH)
    out = tmp_path / "out" / "x.mp4"
    out.parent.mkdir()
    assert run(weights, "-o", str(out), *case.get("extra", []), image=image, audio=audio) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    import re

    assert re.search(fragment, err[0], re.IGNORECASE), err[0]
    assert list(out.parent.iterdir()) == []


def test_output_equal_to_input_and_unwritable_folder(weights, tmp_path, capsys):
    audio = tmp_path / "a.mp4"
    shutil.copy(SPEECH, tmp_path / "a.wav")
    assert (
        main(
            [
                "--weights",
                str(weights),
                "--image",
                str(PORTRAIT),
                "--audio",
                str(audio),
                *FAST,
                "-o",
                str(audio),
            ]
        )
        == 1
    )
    assert run(weights, "-o", str(tmp_path / "missing-dir" / "x.mp4")) == 1
    assert "does not exist" in capsys.readouterr().err


def test_missing_weights_offline_names_what_to_do(tmp_path, capsys):
    assert run(tmp_path / "no-weights", "-o", str(tmp_path / "x.mp4")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "convert" in last


def test_corrupt_weight_file_is_named(weights, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    (broken / "pose_guider" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    assert run(broken, "-o", str(tmp_path / "x.mp4")) == 1
    assert "pose_guider" in capsys.readouterr().err


def test_emotion_timeline_run_records_its_schedule(weights, tmp_path):
    out = tmp_path / "timeline.mp4"
    assert (
        run(weights, "--no-interpolate", "--emotion", "0:neutral, 1.5:happy:0.8, 3:sad", "-o", str(out)) == 0
    )
    schedule = json.loads(out.with_name("timeline.mp4.json").read_text())["emotion_schedule"]
    assert [row["time"] for row in schedule] == [0.0, 1.0, 2.0, 3.0]
    assert schedule[0]["emotion"] == {"neutral": 1.0} and schedule[1]["emotion"] == {"neutral": 1.0}
    assert schedule[2]["emotion"] == {"happy": 0.8}
    assert schedule[3]["emotion"] == {"happy": 0.8}  # the 0.5-s ramp to sad starts at t = 3


def test_single_emotion_at_intensity_one_is_bit_identical(weights, tmp_path):
    frames = {}
    for spec in ("sad", "sad:1"):
        folder = tmp_path / spec.replace(":", "_").replace("+", "_")
        assert (
            run(
                weights,
                "--no-interpolate",
                "--emotion",
                spec,
                "-o",
                str(folder) + ".mp4",
                "--dump-frames",
                str(folder),
            )
            == 0
        )
        frames[spec] = [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]
    assert all(np.array_equal(a, b) for a, b in zip(frames["sad"], frames["sad:1"], strict=False))
    assert len(frames["sad"]) == len(frames["sad:1"]) == 48


def test_timeline_beyond_the_audio_is_rejected_before_any_work(weights, tmp_path, capsys):
    assert run(weights, "--emotion", "0:neutral, 9:happy", "-o", str(tmp_path / "x.mp4")) == 1
    assert "beyond the audio" in capsys.readouterr().err
