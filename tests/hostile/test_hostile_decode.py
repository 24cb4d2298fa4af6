"""Bounded work on every upload (issue 25, findings 1-3 and 14): small files that declare long or fast videos,
huge frames or pictures, and image-sequence names never turn into unbounded decoding or analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_support import CountingFace, ffmpeg_clip, stretched
from PIL import Image

from portrait.errors import InputError
from portrait.motion.driving import DRIVING_MARGIN_S, motion_for_job
from portrait.motion.track import extract_track
from portrait.preprocess.emotion_from_reference import reference_prior
from portrait.preprocess.face_expressions import MAX_FRAME_SIDE, MAX_REFERENCE_SECONDS, classify_media
from portrait.preprocess.video import MAX_DECODE_FPS, iter_frames, probe_video


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """A 2 KB clip of ten 64² frames that declares 54 minutes (its timestamps stretched 9000 times)."""
    folder = tmp_path_factory.mktemp("long")
    short = ffmpeg_clip(folder / "short.mp4", frames=10)
    return stretched(folder / "long.mp4", short, 9000)


def test_a_reference_clip_declaring_an_hour_is_read_for_a_minute(long_clip: Path) -> None:
    info = probe_video(long_clip)
    assert info.duration > 3000 and long_clip.stat().st_size < 10_000  # what the upload claims
    fake = CountingFace()
    summary = classify_media(long_clip, fake, fake, fps=2.0)
    assert summary["top"] == "happy"
    # 2 frames per second for at most MAX_REFERENCE_SECONDS: 121 detections, not ~6500.
    assert len(fake.detections) <= 2 * MAX_REFERENCE_SECONDS + 1
    assert fake.classified == len(fake.detections)
    bank = {"neutral": torch.zeros(1, 4), "happy": torch.ones(1, 4)}
    prior, _ = reference_prior([long_clip], fake, fake, bank)  # `emotions add` and Save as emotion
    assert torch.equal(prior, bank["happy"])
    assert len(fake.detections) <= 2 * (2 * MAX_REFERENCE_SECONDS + 1)


def test_a_reference_picture_is_shrunk_before_detection(tmp_path: Path) -> None:
    picture = tmp_path / "huge.png"
    Image.new("RGB", (6000, 5000), (128, 120, 110)).save(picture)  # a few KB, 30 MP
    fake = CountingFace(box=(100.0, 100.0, 300.0, 300.0))
    summary = classify_media(picture, fake, fake)
    assert summary["top"] == "happy"
    assert fake.detections == [(MAX_FRAME_SIDE, round(5000 * MAX_FRAME_SIDE / 6000))]
    # A face box given in the file's pixels is scaled with it (and checked after the shrink).
    fake = CountingFace()
    classify_media(picture, fake, face_box=(1200.0, 1200.0, 2400.0, 2400.0))
    assert fake.classified == 1 and fake.detections == []


def test_a_driving_video_declaring_1000_fps_is_tracked_at_30(tmp_path: Path) -> None:
    clip = ffmpeg_clip(tmp_path / "fast.mp4", "testsrc=size=64x64:rate=1000", seconds=3)
    assert probe_video(clip).fps == 1000.0
    fake = CountingFace(box=(16.0, 16.0, 32.0, 32.0))
    track = extract_track(clip, fake, fake, max_seconds=None, analysis_side=None)
    assert track.fps == MAX_DECODE_FPS and len(track.times) <= 3 * MAX_DECODE_FPS + 1  # not 3000
    assert fake.landmarked == len(track.times)
    frames = list(iter_frames(clip))  # the reader itself never delivers more than MAX_DECODE_FPS
    assert len(frames) == 90 and frames[1][0] == pytest.approx(1 / MAX_DECODE_FPS)


def test_a_driving_video_is_tracked_for_the_audio_length_plus_a_margin(tmp_path: Path) -> None:
    clip = ffmpeg_clip(tmp_path / "drive.mp4", "testsrc=size=64x64:rate=5", seconds=60)
    fake = CountingFace(box=(16.0, 16.0, 32.0, 32.0))
    portrait = np.full((64, 64, 3), 100, np.uint8)
    job = motion_for_job(clip, portrait, (16.0, 16.0, 32.0, 32.0), (64, 64), 25, 12.5,
                         landmarker=fake, detector=fake)  # fmt: skip
    used = 25 / 12.5 + DRIVING_MARGIN_S  # 2 s of frames for the job, plus the margin
    assert job.maps.shape[0] == 25
    assert job.summary["track"]["frames"] <= used * 5 + 1 < 300  # not the whole minute


def test_frames_over_the_image_caps_are_refused_before_decoding(tmp_path: Path) -> None:
    clip = ffmpeg_clip(tmp_path / "bomb.mp4", "color=c=gray:size=8192x8192:rate=1", frames=1)
    assert clip.stat().st_size < 400_000  # a small file of 67 MP frames
    with pytest.raises(InputError, match="too large .*8192x8192"):
        probe_video(clip)
    with pytest.raises(InputError, match="too large"):
        next(iter_frames(clip, max_side=64))
    with pytest.raises(InputError, match="too large"):
        classify_media(clip, CountingFace(), CountingFace())


def test_an_image_sequence_name_is_never_expanded(tmp_path: Path) -> None:
    for i, colour in enumerate(((255, 0, 0), (0, 255, 0), (0, 0, 255)), start=1):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"img{i:03d}.png")
    pattern = tmp_path / "img%03d.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(pattern)  # a real file with that literal name
    with pytest.raises(InputError, match="not a readable video"):
        probe_video(pattern)
    with pytest.raises(InputError):
        list(iter_frames(pattern))
    single = list(iter_frames(tmp_path / "img002.png"))  # one picture still reads (a pipe demuxer)
    assert len(single) == 1 and tuple(single[0][1][0, 0]) == (0, 255, 0)
