"""The synthetic talking-head task: the face is found where it was drawn; the clips are what prepare reads."""

from __future__ import annotations

import numpy as np
import pytest

from portrait.testing.synthetic.dataset import (
    AMPLITUDE,
    ClipSpec,
    dataset_specs,
    make_clip,
    speech_like,
    write_dataset,
    zigzag_path,
)
from portrait.testing.synthetic.face import (
    SyntheticFaceDetector,
    SyntheticLandmarker,
    face_centroid,
    face_landmarks,
    face_trajectory,
)


def test_face_trajectory_recovers_the_drawn_path():
    clip = make_clip(ClipSpec(speaker=2, emotion="angry", seed=3), frames=20, size=128)
    drawn = (0.5 + clip["path"]) * 128
    measured = face_trajectory(clip["frames"])
    assert np.abs(measured - drawn).max() < 1.0  # pixels, at 128 px
    assert np.ptp(drawn, axis=0).min() > 10  # the face really moves
    assert np.isnan(face_centroid(np.full((32, 32, 3), 90, np.uint8))).all()  # no face: no centre


def test_detector_and_landmarker_find_the_drawn_face():
    clip = make_clip(ClipSpec(speaker=0, emotion="happy", seed=1), frames=12, size=64)
    for frame, truth in zip(clip["frames"], clip["landmarks"], strict=True):
        (face,) = SyntheticFaceDetector().detect(frame[:, :, ::-1].copy())
        x, y, w, h = face.box
        assert x <= truth[:, 0].min() + 1 and truth[:, 0].max() - 1 <= x + w
        points = SyntheticLandmarker()(frame, face.box)
        assert points.shape == (68, 2)
        assert np.abs(points[:48] - truth[:48]).mean() < 1.0  # jaw, brows, nose, eyes (smile not measured)
    assert SyntheticFaceDetector().detect(np.full((64, 64, 3), 90, np.uint8)) == []


def test_mouth_follows_the_audio_energy():
    rng = np.random.default_rng(0)
    samples, mouth = speech_like(rng, frames=50, pitch=150.0)
    assert samples.shape == (50 * 1280,) and samples.dtype == np.float32
    energy = np.sqrt((samples.reshape(50, -1).astype(np.float64) ** 2).mean(1))
    assert np.corrcoef(energy, mouth)[0, 1] > 0.95
    closed, opened = face_landmarks((32, 32), 16, 0.0), face_landmarks((32, 32), 16, 1.0)
    assert opened[66, 1] - opened[62, 1] > closed[66, 1] - closed[62, 1] + 3  # inner lips part


def test_paths_start_at_the_centre_and_stay_in_bounds():
    for seed in range(5):
        path = zigzag_path(np.random.default_rng(seed), 40)
        assert np.allclose(path[0], 0) and np.abs(path).max() <= AMPLITUDE + 1e-9
        assert path.shape == (40, 2)
    clip = make_clip(ClipSpec(1, "sad", 0), frames=30, size=64)
    assert np.allclose(clip["path"][0], 0) and np.abs(clip["path"]).max() <= AMPLITUDE + 1e-9


def test_clips_are_a_pure_function_of_their_spec():
    a = make_clip(ClipSpec(3, "neutral", 7, zigzag=True), frames=8, size=64)
    b = make_clip(ClipSpec(3, "neutral", 7, zigzag=True), frames=8, size=64)
    c = make_clip(ClipSpec(3, "neutral", 8, zigzag=True), frames=8, size=64)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["path"], c["path"])


def test_emotions_look_and_sound_different():
    frames = {e: make_clip(ClipSpec(0, e, 0), frames=2, size=64)["frames"][0] for e in ("happy", "sad")}
    assert np.abs(frames["happy"].astype(int) - frames["sad"]).max() > 100  # cheeks, mouth, brows
    specs = dataset_specs(2, 1, ("happy", "sad"))
    assert [(s.speaker, s.emotion) for s in specs] == [(0, "happy"), (0, "sad"), (1, "happy"), (1, "sad")]
    with pytest.raises(ValueError, match="speakers"):
        dataset_specs(0, 1)


def test_dataset_is_what_train_prepare_reads(tmp_path):
    from portrait.preprocess.video import iter_frames
    from portrait.training.data import check_labels, find_sources

    labels = write_dataset(tmp_path / "data", speakers=2, clips_per_emotion=1, frames=6, size=64,
                           emotions=("happy", "sad"))  # fmt: skip
    sources = find_sources(labels)
    assert [(s.speaker, s.emotion, s.level) for s in sources] == [
        ("s0", "happy", 3), ("s0", "sad", 3), ("s1", "happy", 3), ("s1", "sad", 3)
    ]  # fmt: skip
    check_labels(sources, ["neutral", "happy", "sad"])
    decoded = np.stack([f for _, f in iter_frames(sources[0].path, fps=12.5)])
    drawn = make_clip(ClipSpec(0, "happy", 0), frames=6, size=64)["frames"]
    assert decoded.shape == drawn.shape
    assert np.abs(face_trajectory(decoded) - face_trajectory(drawn)).max() < 1.0  # H.264 keeps the face
