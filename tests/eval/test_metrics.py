"""Unit tests of the evaluation metrics on synthetic inputs (formulas, edge cases, the JSON shape)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from portrait.eval import emotion_accuracy, frechet, motion, sync
from portrait.eval.evaluate import METRIC_NAMES, evaluate_video
from portrait.eval.faces import FaceTracker, interpolate_gaps
from portrait.eval.metric import available, unavailable
from portrait.eval.toolkit import EvalTools
from portrait.motion.pose import generic_face_3d
from portrait.preprocess.detectors import Face
from portrait.preprocess.emotion_spec import parse_emotion

BANK = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")


# ------------------------------------------------------------------------------------------------------
# metric dicts
# ------------------------------------------------------------------------------------------------------


def test_metric_shapes_and_non_finite_values():
    assert available(0.5, "b", n=2) == {"value": 0.5, "available": True, "backend": "b", "n": 2}
    nan = available(float("nan"), "b")
    assert nan["available"] is False and nan["value"] is None and "non-finite" in nan["reason"]
    assert unavailable("b", "missing x")["reason"] == "missing x"
    with pytest.raises(ValueError):
        unavailable("b", "")


# ------------------------------------------------------------------------------------------------------
# Fréchet distance
# ------------------------------------------------------------------------------------------------------


def test_frechet_identical_sets_is_zero_and_1d_closed_form():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    assert frechet.frechet_distance(*frechet.gaussian_stats(x), *frechet.gaussian_stats(x)) == pytest.approx(
        0.0, abs=1e-9
    )
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
    value = frechet.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]]))
    assert value == pytest.approx(9.0 + 1.0)


def test_frechet_matches_scipy_sqrtm_on_full_rank_and_stays_real_when_rank_deficient():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 6)), rng.normal(loc=0.5, scale=1.5, size=(300, 6)) @ rng.normal(size=(6, 6))
    mu1, s1 = frechet.gaussian_stats(a)
    mu2, s2 = frechet.gaussian_stats(b)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * covmean))
    assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    few = frechet.fd_metric(rng.normal(size=(5, 64)), rng.normal(size=(7, 64)) + 3.0, "gauss")
    assert few["available"] and math.isfinite(few["value"]) and few["value"] > 64 * 9 * 0.5
    assert not frechet.fd_metric(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)), "g")["available"]


def test_clip_encoder_with_a_tiny_random_clip():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    encoder = frechet.ClipImageEncoder(transformers.CLIPVisionModelWithProjection(config))
    images = np.random.default_rng(0).integers(0, 255, size=(3, 100, 80, 3), dtype=np.uint8)
    features = encoder(images)
    assert features.shape == (3, 16) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])


# ------------------------------------------------------------------------------------------------------
# Sync-C / Sync-D formulas and MFCC
# ------------------------------------------------------------------------------------------------------


def test_sync_scores_formulas_on_synthetic_distances():
    vshift = 3
    mean = np.array([5.0, 4.0, 6.0, 2.0, 7.0, 5.5, 4.5])  # min 2 at index 3, median 5
    rows = np.stack([mean + 0.1, mean - 0.1])  # the mean over windows is `mean`
    scores = sync.sync_scores(rows, vshift)
    assert scores["sync_d"] == pytest.approx(2.0)
    assert scores["sync_c"] == pytest.approx(5.0 - 2.0)
    assert scores["offset"] == 0
    shifted = sync.sync_scores(np.roll(rows, 2, axis=1), vshift)
    assert shifted["offset"] == -2 and shifted["sync_d"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        sync.sync_scores(rows[:, :5], vshift)


@pytest.mark.parametrize("delta", [-4, 0, 3])
def test_offset_distances_recover_a_known_shift(delta):
    torch.manual_seed(0)
    n, vshift = 40, 6
    audio = torch.randn(n + 20, 8)
    video = audio[10 + delta : 10 + delta + n]  # video window i carries audio window i + delta
    distances = sync.offset_distances(video, audio[10 : 10 + n], vshift)
    assert distances.shape == (n, 2 * vshift + 1)
    scores = sync.sync_scores(distances, vshift)
    assert scores["offset"] == -delta
    assert scores["sync_c"] > 1.0


def test_mfcc_shape_and_energy_coefficient():
    rate = 16000
    t = np.arange(rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    coeffs = sync.mfcc(tone, rate)
    assert coeffs.shape == (13, 1 + math.ceil((rate - 400) / 160))
    emphasised = np.append(tone[0], tone[1:] - 0.97 * tone[:-1])
    frame = emphasised[160 * 10 : 160 * 10 + 400]
    energy = np.sum(np.abs(np.fft.rfft(frame, 512)) ** 2) / 512
    assert coeffs[0, 10] == pytest.approx(np.log(energy), rel=1e-9)
    bank = sync.mel_filterbank()
    assert bank.shape == (26, 257) and (bank.max(axis=1) > 0.5).all()


# ------------------------------------------------------------------------------------------------------
# Lip-sync proxy
# ------------------------------------------------------------------------------------------------------


def test_speech_envelope_and_lagged_correlation_find_the_lag():
    rng = np.random.default_rng(0)
    rate, frames = 16000, 100
    loudness = np.convolve(rng.random(frames + 10), np.ones(3) / 3, mode="same")[:frames]
    samples = np.concatenate([rng.normal(size=640) * a for a in loudness])
    envelope = sync.speech_envelope(samples, frames, rate)
    assert envelope.shape == (frames,)
    assert np.corrcoef(envelope, loudness)[0, 1] > 0.95
    mouth = np.full(frames, np.nan)
    mouth[4:] = 0.1 + 0.2 * envelope[:-4]  # the mouth follows the sound by 4 frames
    corr, lag = sync.proxy_metrics(mouth, envelope, max_lag=8)
    assert lag["value"] == 4.0 and corr["value"] > 0.99
    flat_corr, _ = sync.proxy_metrics(np.ones(frames), envelope)
    assert not flat_corr["available"] and "did not vary" in flat_corr["reason"]
    missing, _ = sync.proxy_metrics(None, envelope, reason="no landmarker")
    assert missing["reason"] == "no landmarker"


# ------------------------------------------------------------------------------------------------------
# Emotion
# ------------------------------------------------------------------------------------------------------


CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _one_hot(label: str, p: float = 0.8) -> np.ndarray:
    row = np.full(len(CLASSES), (1 - p) / (len(CLASSES) - 1))
    row[CLASSES.index(label)] = p
    return row


def test_emotion_accuracy_against_a_timeline():
    times = np.arange(100) / 25.0  # 4 seconds
    labels = ["happy"] * 25 + ["sad"] * 50 + ["surprise"] * 25  # second 1 shows sad, not happy
    series = emotion_accuracy.per_second(times, np.stack([_one_hot(label) for label in labels]), CLASSES)
    assert series.classes[1] == "disgusted" and series.classes[5] == "surprised"
    assert series.seconds.tolist() == [0, 1, 2, 3] and series.probs.shape == (4, 7)
    schedule = parse_emotion("0:happy, 2:sad, 3:surprised", BANK)
    assert emotion_accuracy.requested_per_second(schedule, series.seconds) == [
        "happy",
        "happy",
        "sad",
        "surprised",
    ]
    accuracy, confidence = emotion_accuracy.emotion_metrics(series, schedule, "fake")
    assert accuracy["value"] == pytest.approx(3 / 4) and accuracy["predicted"] == "sad"
    assert confidence["value"] == pytest.approx((0.8 + 0.8 + 0.2 / 6 + 0.8) / 4)
    # contempt has no class: those seconds are left out and counted
    accuracy, _ = emotion_accuracy.emotion_metrics(series, parse_emotion("0:happy, 2:contempt", BANK), "fake")
    assert accuracy["value"] == 0.5 and accuracy["seconds_without_class"] == 2
    only, _ = emotion_accuracy.emotion_metrics(series, parse_emotion("contempt", BANK), "fake")
    assert not only["available"] and "contempt" in only["reason"]
    none_acc, none_conf = emotion_accuracy.emotion_metrics(series, None, "fake")
    assert not none_acc["available"] and none_conf["of"] == "predicted" and none_conf["predicted"] == "sad"


# ------------------------------------------------------------------------------------------------------
# Motion
# ------------------------------------------------------------------------------------------------------


def test_pose_jitter_blinks_flicker():
    steady = np.tile([[1.0, 2.0, 3.0]], (20, 1))
    assert motion.pose_jitter(steady)["value"] == pytest.approx(0.0)
    shaking = steady.copy()
    shaking[::2] += 1.0  # +1, 0, +1, ...: |second difference| = 2 on every axis
    assert motion.pose_jitter(shaking)["value"] == pytest.approx(2.0)
    ear = np.full(250, 0.3)
    ear[[20, 21, 100, 200, 201, 202]] = 0.1  # three blinks in 10 s
    blinks = motion.blink_rate(ear, fps=25.0)
    assert blinks["blinks"] == 3 and blinks["value"] == pytest.approx(18.0)
    a = np.zeros((50, 60, 3), np.uint8)
    b = a.copy()
    b[10:30, 20:40] = 200  # change only inside the face box
    assert motion.background_difference(a, b, (22.0, 12.0, 16.0, 16.0)) == 0.0
    assert motion.background_difference(a, b, None) == pytest.approx(200 * 400 / 3000, rel=1e-3)
    assert motion.flicker(np.array([1.0, 3.0]))["value"] == 2.0


def test_lmd_is_invariant_to_position_and_scale():
    base = generic_face_3d()[:, :2]
    pred = np.stack([base * 2 + 100, base * 2.5 + 50])
    gt = np.stack([base * 3 + 10, base * 3 + 10])
    lmd, lmd_mouth = motion.lmd_metrics(pred, gt)
    assert lmd["value"] == pytest.approx(0.0, abs=1e-9) and lmd_mouth["value"] == pytest.approx(0.0, abs=1e-9)
    moved = pred.copy()
    moved[:, 48:68, 1] += 5.0
    lmd, lmd_mouth = motion.lmd_metrics(moved, gt)
    assert lmd_mouth["value"] > lmd["value"] > 0
    assert not motion.lmd_metrics(pred, None)[0]["available"]


def test_face_helpers():
    assert interpolate_gaps(np.array([np.nan, 1.0, np.nan, 3.0])).tolist() == [1.0, 1.0, 2.0, 3.0]


# ------------------------------------------------------------------------------------------------------
# evaluate_video end to end with fakes (no dlib, no video file)
# ------------------------------------------------------------------------------------------------------

SIZE = 160


class FakeDetector:
    name = "fake-detector"

    def __init__(self) -> None:
        self.calls = 0

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        self.calls += 1
        return [Face((50.0, 40.0, 60.0, 70.0), 1.0)]


class FakeLandmarker:
    """The generic face seen from 300 mm (focal 160 px); the lower lip drops with the red of pixel (0, 0)."""

    def __call__(self, image: np.ndarray, box):
        model = generic_face_3d()
        points = 160.0 * model[:, :2] / (model[:, 2:] + 300.0) + [80.0, 70.0]
        points[[65, 66, 67], 1] += image[0, 0, 0] / 40.0
        return points


class FakeClassifier:
    name = "fake-fer"
    classes = CLASSES
    input_size = 64

    def predict(self, faces: np.ndarray) -> np.ndarray:
        assert faces.shape[1:] == (64, 64, 3) and faces.dtype == np.uint8
        return np.stack([_one_hot("happy")] * len(faces))


def _fake_reader(opening: np.ndarray):
    def read(path, fps, max_frames, max_side):
        for i, value in enumerate(opening):
            frame = np.full((SIZE, SIZE, 3), 90, np.uint8)
            frame[0, 0, 0] = int(value)
            yield i / fps, frame

    return read


def test_evaluate_video_with_fakes_reports_every_metric(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    frames = 75
    loudness = np.convolve(rng.random(frames), np.ones(3) / 3, mode="same")
    samples = np.concatenate([rng.normal(size=640) * a for a in loudness]).astype(np.float32)
    envelope = sync.speech_envelope(samples, frames)
    opening = np.zeros(frames)
    opening[2:] = 250 * envelope[:-2] / envelope.max()  # mouth 2 frames behind the sound
    monkeypatch.setattr("portrait.eval.evaluate._audio", lambda video, audio: (samples, ""))
    detector = FakeDetector()
    tools = EvalTools(
        detector=detector,
        landmarker=FakeLandmarker(),
        classifier=FakeClassifier(),
        read_frames=_fake_reader(opening),
    )
    tools.notes["syncnet"] = "SyncNet weights not supplied"
    result = evaluate_video(tmp_path / "fake.mp4", emotion_schedule="0:happy, 1.5:sad", tools=tools)
    metrics = result["metrics"]
    assert tuple(metrics) == METRIC_NAMES
    for name, metric in metrics.items():
        assert set(metric) >= {"value", "available", "backend"}, name
        assert metric["available"] or metric["reason"], name
    assert detector.calls == math.ceil(frames / tools.detect_every)
    assert metrics["face_coverage"]["value"] == 1.0
    assert metrics["sync_proxy_lag_frames"]["value"] == 2.0 and metrics["sync_proxy_corr"]["value"] > 0.95
    assert metrics["sync_c"]["reason"] == "SyncNet weights not supplied"
    assert metrics["emotion_accuracy"]["value"] == pytest.approx(2 / 3)  # seconds 0, 1 happy; 2 asks sad
    assert metrics["csim"]["reason"].startswith("needs a reference")
    assert metrics["pose_jitter"]["available"] and metrics["pose_jitter"]["value"] < 0.5
    assert metrics["flicker"]["value"] < 0.01
    assert not metrics["lmd"]["available"] and "--gt" in metrics["lmd"]["reason"]
    assert result["frames"] == frames and len(result["timelines"]["mouth"]["opening"]) == frames
    json.dumps(result, allow_nan=False)  # strict JSON: no NaN anywhere


def test_tracker_holds_the_box_between_detections():
    detector = FakeDetector()
    tracker = FaceTracker(detector, None, detect_every=3)
    for _ in range(7):
        tracker.update(np.zeros((20, 20, 3), np.uint8))
    track = tracker.track()
    assert detector.calls == 3 and track.found.all() and track.landmarks is None and track.size == (20, 20)


def test_evaluate_video_with_ground_truth_gives_lmd_and_set_distances(tmp_path, monkeypatch):
    frames = 50
    monkeypatch.setattr("portrait.eval.evaluate._audio", lambda video, audio: (None, "no audio in this test"))
    opening = np.linspace(0, 200, frames)
    gt_opening = np.zeros(frames)
    base_reader = _fake_reader(opening)

    def reader(path, fps, max_frames, max_side):
        source = _fake_reader(gt_opening) if path.name == "gt.mp4" else base_reader
        return source(path, fps, max_frames, max_side)

    def features(images: np.ndarray) -> np.ndarray:  # a stand-in encoder: mean colour + fixed noise
        rng = np.random.default_rng(len(images))
        return images.reshape(len(images), -1, 3).mean(1) / 255 + rng.normal(scale=0.1, size=(len(images), 3))

    tools = EvalTools(detector=FakeDetector(), landmarker=FakeLandmarker(), read_frames=reader)
    tools.clip, tools.clip_name, tools.feature_every = features, "fake-clip", 2
    result = evaluate_video(tmp_path / "pred.mp4", gt=tmp_path / "gt.mp4", tools=tools)
    metrics = result["metrics"]
    assert metrics["lmd_mouth"]["value"] > metrics["lmd"]["value"] > 0  # only the lower lip differs
    assert metrics["lmd"]["frames"] == frames
    assert metrics["fd_clip"]["available"] and metrics["fd_clip"]["backend"] == "fake-clip"
    assert metrics["fd_clip"]["samples"] == [25, 25]
    assert metrics["sync_proxy_corr"]["reason"] == "no audio in this test"
    assert not metrics["fvd"]["available"] and not metrics["emotion_accuracy"]["available"]
