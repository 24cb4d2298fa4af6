"""LSE-C / LSE-D protocols: syncnet_python's track rules and crop geometry, the int16 audio scale, the
per-track aggregation, and both protocols end to end on fake frames with a tiny SyncNet."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from portrait.eval import lse, sync
from portrait.eval.evaluate import evaluate_video
from portrait.eval.sync_tracks import TrackRules, crop_face, crop_window, face_tracks, link_detections
from portrait.eval.toolkit import EvalTools
from portrait.models.syncnet import SyncNet
from portrait.preprocess.detectors import Face

A = (10.0, 10.0, 110.0, 110.0)
A_TWIN = (12.0, 11.0, 111.0, 112.0)  # the same face found twice (IoU > 0.5 with A)


def test_linking_skips_the_detection_after_a_linked_one_as_the_reference_does():
    runs = link_detections([[A, A_TWIN], [A], [A]], TrackRules())
    # run_pipeline removes A from frame 0's list while iterating it, so A_TWIN is not looked at in that pass
    # (it would otherwise join the same track) and makes a track of its own in the next pass
    assert runs == [[(0, A), (1, A), (2, A)], [(0, A_TWIN)]]


def test_tracks_need_more_than_min_track_detections_and_a_big_enough_face():
    rules = TrackRules(min_track=5, min_face_size=50)
    six = [[A] for _ in range(6)]
    assert len(face_tracks(six, rules)) == 1
    assert face_tracks(six[:5], rules) == []  # exactly min_track detections: dropped
    small = (0.0, 0.0, 40.0, 40.0)
    assert face_tracks([[small] for _ in range(6)], rules) == []
    gap = [[A], [A], [], [], [(20.0, 10.0, 120.0, 110.0)], [A], [A], [A]]  # two frames missing: interpolated
    (track,) = face_tracks(gap, rules)
    assert track.frames.tolist() == list(range(8)) and track.detections == 6
    np.testing.assert_allclose(track.boxes[2:4, 0], [10 + 10 / 3, 10 + 20 / 3])
    far = [[A]] * 3 + [[]] * 26 + [[A]] * 3  # a gap longer than max_gap (25) ends the track
    assert [len(r) for r in link_detections(far, TrackRules())] == [3, 3]


def test_crop_is_14_times_the_box_with_its_centre_02_box_sides_lower():
    top, bottom, left, right = crop_window(x=100.0, y=100.0, s=50.0, crop_scale=0.4)
    assert (bottom - top, right - left) == (140, 140)  # 1.4 × the 100 px box
    assert ((top + bottom) / 2, (left + right) / 2) == (120.0, 100.0)  # 0.2 × 100 px below the centre
    frame = np.full((60, 80, 3), 7, np.uint8)
    crop = crop_face(frame, crop_window(10.0, 10.0, 20.0, 0.4), TrackRules())
    assert crop.shape == (224, 224, 3)
    assert crop[0, 0].tolist() == [110, 110, 110] and crop[-1, -1].tolist() == [7, 7, 7]


def test_pcm16_is_ffmpegs_float_to_s16():
    x = np.array([0.5, -1.0, 1.0, 0.5 / 32768, 1.5 / 32768, -2.0])
    assert sync.pcm16(x).tolist() == [16384.0, -32768.0, 32767.0, 0.0, 2.0, -32768.0]


def test_the_int16_scale_moves_only_the_energy_coefficient_by_2_ln_32768():
    rng = np.random.default_rng(0)
    samples = 0.2 * rng.standard_normal(16000)
    scaled, plain = sync.mfcc(sync.pcm16(samples)), sync.mfcc(samples)
    np.testing.assert_allclose(scaled[0] - plain[0], 2 * math.log(32768), atol=1e-3)  # ≈ 20.8
    np.testing.assert_allclose(scaled[1:], plain[1:], atol=1e-3)


def test_lse_metrics_average_the_scored_tracks_and_count_what_was_left_out():
    scores = [
        lse.StretchScore(0, 49, windows=45, offset=1, lse_c=6.0, lse_d=7.0),
        lse.StretchScore(60, 89, windows=25, offset=-2, lse_c=2.0, lse_d=9.0),
        lse.StretchScore(95, 97, reason="too short for SyncNet"),
    ]
    sync_c, sync_d = lse.lse_metrics(scores, 100, "syncnet", {"name": "lse/tracked"})
    assert sync_c["value"] == 4.0 and sync_d["value"] == 8.0
    assert sync_c["offset_frames"] == 1 and sync_c["windows"] == 70  # the offset of the longest track
    assert sync_c["protocol"] == {
        "name": "lse/tracked", "frames": 100, "frames_scored": 80, "frames_left_out": 20,
    }  # fmt: skip
    assert sync_c["tracks"][2] == {"first": 95, "last": 97, "reason": "too short for SyncNet"}
    none_c, _ = lse.lse_metrics([], 100, "syncnet", {"name": "lse/tracked"}, "no face track")
    assert not none_c["available"] and none_c["reason"] == "no face track"
    assert none_c["protocol"]["frames_left_out"] == 100


def _one_face(calls: list[int]) -> SimpleNamespace:
    """A detector that finds one face in every frame but the first two (and counts its calls)."""

    def detect(image_bgr: np.ndarray) -> list[Face]:
        calls.append(len(calls))
        return [Face((40.0, 30.0, 70.0, 80.0), 1.0)] if len(calls) > 2 else []

    return SimpleNamespace(name="fake-detector", detect=detect)


def _reader(count: int):
    def read(path, fps, max_frames, max_side):
        rng = np.random.default_rng(0)  # the same frames on every pass
        for i in range(min(count, max_frames or count)):
            yield i / fps, rng.integers(0, 255, (150, 160, 3), dtype=np.uint8)

    return read


@pytest.mark.parametrize("protocol", ["tracked", "whole-frame"])
def test_both_protocols_end_to_end_with_a_tiny_syncnet(protocol, monkeypatch):
    frames = 40
    samples = (0.1 * np.random.default_rng(1).standard_normal(frames * 640)).astype(np.float32)
    monkeypatch.setattr("portrait.eval.evaluate._audio", lambda video, audio: (samples, ""))
    torch.manual_seed(0)
    calls: list[int] = []
    tools = EvalTools(
        detector=_one_face(calls),  # type: ignore[arg-type]
        syncnet=SyncNet(embed_dim=16, width=0.0625).eval(),
        lse=lse.LSESettings(protocol, TrackRules(min_track=10, min_face_size=20)),
        read_frames=_reader(frames),
    )
    result = evaluate_video("fake.mp4", tools=tools)
    sync_c, sync_d = result["metrics"]["sync_c"], result["metrics"]["sync_d"]
    assert sync_c["available"] and sync_d["available"]
    protocol_record = sync_c["protocol"]
    assert protocol_record["name"] == f"lse/{protocol}" and protocol_record["frames"] == frames
    if protocol == "tracked":
        assert len(calls) == frames  # every frame is searched, as the reference does
        assert protocol_record["frames_left_out"] == 2 and protocol_record["detector"] == "fake-detector"
        assert sync_c["windows"] == frames - 2 - 5
    else:
        assert protocol_record["frames_left_out"] == 0 and protocol_record["detector"] is None
        assert sync_c["windows"] == frames - 5
    short = EvalTools(detector=_one_face([]), syncnet=tools.syncnet, read_frames=_reader(frames))  # type: ignore[arg-type]
    missing = evaluate_video("fake.mp4", tools=short)["metrics"]["sync_c"]
    assert not missing["available"] and "more than 100 detections" in missing["reason"]
