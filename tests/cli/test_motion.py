"""``portrait-gen motion extract`` and ``portrait-gen --motion`` end to end on tiny weights (dlib)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from media import PORTRAIT, SPEECH, encode_frames, noise_frames, skip_without_landmarks
from PIL import Image
from tiny_inputs import guided_weights_tree

from portrait.cli.main import main

skip_without_landmarks()
FAST = ["--size", "64", "--steps", "1", "--no-interpolate", "--detector", "dlib", "--quiet", "--offline"]
FRAMES = 20


@pytest.fixture(scope="module")
def driving(tmp_path_factory) -> Path:
    """The sample portrait rotated and moved over 20 frames, cropped to 256² around the face."""
    source = Image.open(PORTRAIT).convert("RGB")
    frames = []
    for i in range(FRAMES):
        phase = 2 * np.pi * i / FRAMES
        moved = source.rotate(
            10 * np.sin(phase), resample=Image.BICUBIC, center=(220, 122), translate=(15 * np.sin(phase), 0)
        )
        frames.append(moved.crop((92, 0, 348, 256)))
    return encode_frames(frames, tmp_path_factory.mktemp("drive") / "drive.mp4")


@pytest.fixture(scope="module")
def track(driving, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("track") / "track.json"
    assert main(["--quiet", "motion", "extract", str(driving), "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def guided_weights(tmp_path_factory) -> Path:
    return guided_weights_tree(tmp_path_factory.mktemp("guided") / "w")


def _render(weights: Path, out: Path, *extra: str) -> tuple[np.ndarray, dict]:
    frames = out.with_suffix("")
    argv = ["--weights", str(weights), "--image", str(PORTRAIT), "--audio", str(SPEECH), *FAST]
    assert main([*argv, "-o", str(out), "--dump-frames", str(frames), *extra]) == 0
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(frames.glob("*.png"))])
    return pixels.astype(np.int16), json.loads(out.with_name(out.name + ".json").read_text())


# ------------------------------------------------------------------------------------- motion extract
def test_extract_writes_json_and_plot(driving, tmp_path, capsys):
    out, plot = tmp_path / "t.json", tmp_path / "t.png"
    assert main(["motion", "extract", str(driving), "-o", str(out), "--plot", str(plot)]) == 0
    data = json.loads(out.read_text())
    assert data["fps"] == 25 and data["size"] == [256, 256] and len(data["frames"]) == FRAMES
    assert len(data["frames"][0]["landmarks"]) == 68
    rolls = np.array([f["pose"]["roll"] for f in data["frames"]])
    truth = 10 * np.sin(2 * np.pi * np.arange(FRAMES) / FRAMES)
    assert np.corrcoef(rolls, truth)[0, 1] ** 2 > 0.8  # the rotation is recovered (sign convention aside)
    assert Image.open(plot).size[0] > 100
    assert "wrote" in capsys.readouterr().out


def test_extract_no_face_is_one_line_and_leaves_nothing(tmp_path, capsys):
    video = encode_frames(noise_frames(5, 128), tmp_path / "noface.mp4")
    out = tmp_path / "out"
    out.mkdir()
    capsys.readouterr()
    code = main(["motion", "extract", str(video), "-o", str(out / "t.json"), "--plot", str(out / "t.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error:") and "face" in err[0]
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["missing.mp4", "-o", "t.json"], "does not exist"),
        (["VIDEO", "-o", "t.txt"], "must end in .json"),
        (["VIDEO", "-o", "t.json", "--max-seconds", "0"], "--max-seconds"),
    ],
)
def test_extract_bad_arguments(driving, tmp_path, capsys, argv, message):
    argv = [str(driving) if a == "VIDEO" else str(tmp_path / a) if a.startswith("t.") else a for a in argv]
    assert main(["motion", "extract", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ --motion
@pytest.fixture(scope="module")
def plain(guided_weights, tmp_path_factory) -> tuple[np.ndarray, dict]:
    """The render without --motion (the landmark guider present but unused)."""
    return _render(guided_weights, tmp_path_factory.mktemp("plain") / "plain.mp4")


def test_motion_renders_and_differs_with_a_landmark_guider(guided_weights, track, plain, tmp_path):
    plain, plain_info = plain
    moved, info = _render(guided_weights, tmp_path / "moved.mp4", "--motion", str(track))
    assert moved.shape == plain.shape and np.abs(moved - plain).max() > 3
    record = info["motion"]
    assert record["applied"] == "landmark_guider" and record["mode"] == "relative"
    assert record["gains"] == {"pose": 1.0, "expression": 1.0} and record["source"] == str(track)
    assert record["frames"] == info["generated_frames"] and len(record["per_second"]) >= 1
    assert "motion" not in plain_info


def test_motion_from_a_video_with_release_weights_only(driving, plain, tmp_path, caplog):
    """No landmark guider: one warning; the motion energy sets the motion bucket per window (experimental,
    tests/motion/test_bucket.py), so the render differs from the one without --motion."""
    from portrait.testing.trees import write_tiny_weights

    weights = write_tiny_weights(tmp_path / "w", layout="portrait", seed=0)
    with caplog.at_level(logging.WARNING):
        moved, info = _render(weights, tmp_path / "moved.mp4", "--motion", str(driving))
    assert moved.shape == plain[0].shape and not np.array_equal(moved, plain[0])
    warnings = [r for r in caplog.records if "no landmark_guider" in r.getMessage()]
    assert len(warnings) == 1 and "experimental" in warnings[0].getMessage()
    assert info["motion"]["applied"] == "motion_bucket" and info["motion"]["source_kind"] == "video"


def test_fixed_without_guider_lowers_the_motion_bucket(track):
    from types import SimpleNamespace

    from portrait.conditioning import FIXED_MOTION_BUCKET, motion_arguments
    from portrait.config import RenderConfig, with_values
    from portrait.inputs import Job

    engine = SimpleNamespace(pipe=SimpleNamespace(landmark_guider=None))
    maps = np.zeros((4, 3, 64, 64), np.float32)
    job = Job(PORTRAIT, SPEECH, Path("o.mp4"), motion=track)
    for mode, expected in (("fixed", {"motion_bucket_id": FIXED_MOTION_BUCKET}), ("relative", {})):
        cfg = with_values(RenderConfig(), {"motion.retarget": mode})
        prepared = SimpleNamespace(job=job, motion_maps=maps, motion_info={"mode": mode})
        args, info = motion_arguments(prepared, engine, cfg)
        assert args == expected
        assert info["applied"] == ("motion_bucket" if mode == "fixed" else "none")
    guided = SimpleNamespace(pipe=SimpleNamespace(landmark_guider=object()))
    args, info = motion_arguments(prepared, guided, RenderConfig())
    assert args["motion_maps"].shape == (4, 3, 64, 64) and info["applied"] == "landmark_guider"
    prepared.motion_maps = None
    assert motion_arguments(prepared, guided, RenderConfig()) == ({}, {})


def test_motion_bad_inputs_exit_1_and_leave_nothing(guided_weights, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"fps": 25, "size": [256, 256], "frames": [')
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"fps": 25, "size": [256, 256], "frames": [{"t": 0, "landmarks": [[1, 2]]}]}))
    argv = ["--weights", str(guided_weights), "--image", str(PORTRAIT), "--audio", str(SPEECH), *FAST]
    for source, message in ((bad, "not valid JSON"), (wrong, "track"), (tmp_path / "nope.mp4", "exist")):
        out = tmp_path / "o.mp4"
        capsys.readouterr()
        assert main([*argv, "-o", str(out), "--motion", str(source)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "wrong.json"]
    assert main([*argv, "--motion", str(bad), "--motion-gain", "a,b"]) == 2  # usage error
