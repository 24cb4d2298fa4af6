"""Motion maths without videos: pose conventions, filters, retargeting, resampling, maps, track JSON, job."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from portrait.errors import ConfigError, InputError

cv2 = pytest.importorskip("cv2")

from portrait.motion import pose as geometry  # noqa: E402
from portrait.motion.driving import motion_for_job  # noqa: E402
from portrait.motion.landmarks import MOUTH, NOSE_TIP, RIGID, mouth_opening  # noqa: E402
from portrait.motion.maps import render_frame, render_motion_maps  # noqa: E402
from portrait.motion.retarget import neutral_frame, resample, retarget, retarget_track, source_times  # noqa: E402
from portrait.motion.smooth import one_euro_zero_lag, savgol  # noqa: E402
from portrait.motion.track import Track  # noqa: E402
from portrait.motion.track_io import read_track, track_to_dict, write_track  # noqa: E402

SIZE = (256, 256)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix of the documented conventions (degrees): R = Rz(−roll) Ry(−yaw) Rx(−pitch)."""
    a, b, g = np.radians([-pitch, -yaw, -roll])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _project(yaw=0.0, pitch=0.0, roll=0.0, shift=(0.0, 0.0), distance=500.0) -> np.ndarray:
    """(68, 2) pixels of the generic face seen by the camera :func:`head_pose` assumes (focal 256)."""
    rvec, _ = cv2.Rodrigues(_rotation(yaw, pitch, roll))
    tvec = np.array([shift[0], shift[1], distance], dtype=np.float64)
    camera = np.array([[256.0, 0, 128], [0, 256, 128], [0, 0, 1]])
    points, _ = cv2.projectPoints(geometry.generic_face_3d(), rvec, tvec, camera, None)
    return points[:, 0].astype(np.float32)


def _track(landmarks: np.ndarray, fps: float = 25.0, confidence: np.ndarray | None = None) -> Track:
    poses = np.stack([geometry.head_pose(p, SIZE).as_array() for p in landmarks])
    conf = np.ones(len(landmarks), np.float32) if confidence is None else confidence
    return Track(fps, SIZE, np.arange(len(landmarks)) / fps, landmarks.astype(np.float32), poses, conf)


def _similarity(points: np.ndarray, degrees: float, scale: float, shift) -> np.ndarray:
    centre = points[RIGID].mean(0)
    a = np.radians(degrees)
    matrix = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return ((points - centre) @ matrix.T + centre + np.asarray(shift)).astype(np.float32)


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return _project()


# ------------------------------------------------------------------ pose and filters


@pytest.mark.parametrize("yaw, pitch, roll", [(20, 0, 0), (0, 15, 0), (0, 0, 10), (-15, -10, 5)])
def test_head_pose_recovers_projected_angles(yaw, pitch, roll):
    fit = geometry.head_pose(_project(yaw, pitch, roll, shift=(10, -5)), SIZE)
    np.testing.assert_allclose([fit.yaw, fit.pitch, fit.roll], [yaw, pitch, roll], atol=0.05)
    assert fit.error < 1e-3 and abs(fit.scale - 256 / 500) < 1e-3
    assert abs(fit.tx - (128 + 256 * 10 / 500)) < 0.05 and abs(fit.ty - (128 - 256 * 5 / 500)) < 0.05


def test_pose_sign_conventions():
    nose_right = _project(yaw=20)[NOSE_TIP, 0] - _project()[NOSE_TIP, 0]
    looking_up = _project(pitch=15)[NOSE_TIP, 1] - _project()[NOSE_TIP, 1]
    assert nose_right > 3 and looking_up < -3


def test_umeyama_is_exact_on_similar_points(face):
    moved = _similarity(face, 17.0, 1.3, (5, -8))
    matrix, offset = geometry.umeyama(face, moved)
    np.testing.assert_allclose(geometry.apply(matrix, offset, face), moved, atol=1e-3)
    log_s, theta, _, _ = geometry.to_params(matrix, offset)
    assert abs(np.exp(log_s) - 1.3) < 1e-5 and abs(np.degrees(theta) - 17) < 1e-4


def test_filters_keep_constants_and_lines_and_remove_noise():
    np.testing.assert_allclose(one_euro_zero_lag(np.full((30, 3), 4.2), 25.0), 4.2)
    line = np.arange(40, dtype=np.float64)[:, None] * np.array([1.0, -2.0])
    np.testing.assert_allclose(savgol(line, 5, 2)[2:-2], line[2:-2], atol=1e-9)
    t = np.arange(200) / 25.0
    clean = np.sin(2 * np.pi * 0.5 * t)
    noisy = clean + np.random.default_rng(0).normal(0, 0.1, t.shape)
    smooth = one_euro_zero_lag(noisy, 25.0, min_cutoff=2.0, beta=1.0)
    assert np.std(smooth - clean) < 0.6 * np.std(noisy - clean)
    lags = range(-5, 6)
    best = max(lags, key=lambda k: np.dot(np.roll(smooth, k)[10:-10], clean[10:-10]))
    assert best == 0  # zero lag


# ------------------------------------------------------------------ retargeting


def test_fixed_reproduces_the_portrait(face):
    driving = np.stack([_project(yaw=5 * i, roll=i) for i in range(6)])
    out = retarget(driving, face, "fixed", pose_gain=2.0)
    assert out.shape == (6, 68, 2) and (out == face).all()


def test_relative_transfers_rigid_motion_onto_a_differently_placed_driver(face):
    portrait = _similarity(face, 0, 1.0, (0, 0))
    driver = _similarity(face, 8.0, 1.7, (30, 20))  # another framing of the same face
    angles = [0, 5, -10, 3]
    driving = np.stack(
        [_similarity(driver, a, 1.0 + 0.05 * i, (4 * i, -2 * i)) for i, a in enumerate(angles)]
    )
    out = retarget(driving, portrait, "relative", neutral=driving[0], mouth="video")
    np.testing.assert_allclose(out[0], portrait, atol=1e-3)  # the neutral frame gives the portrait itself
    for i, a in enumerate(angles):
        matrix, _ = geometry.umeyama(portrait[RIGID], out[i][RIGID])
        log_s, theta, _, _ = geometry.to_params(matrix, np.zeros(2))
        assert abs(np.degrees(theta) - a) < 1e-3 and abs(np.exp(log_s) - (1 + 0.05 * i)) < 1e-4
        # the motion keeps the face's shape: no expression was added
        np.testing.assert_allclose(
            geometry.apply(*geometry.umeyama(out[i], portrait), out[i]), portrait, atol=1e-3
        )
    still = retarget(driving, portrait, "relative", neutral=driving[0], pose_gain=0.0)
    np.testing.assert_allclose(still, np.repeat(portrait[None], 4, 0), atol=1e-3)
    half = retarget(driving, portrait, "relative", neutral=driving[0], pose_gain=0.5)
    matrix, _ = geometry.umeyama(portrait[RIGID], half[2][RIGID])
    assert abs(np.degrees(geometry.to_params(matrix, np.zeros(2))[1]) + 5) < 1e-3


def test_relative_expression_gain_and_mouth_modes(face):
    opened = face.copy()
    opened[[56, 57, 58, 65, 66, 67], 1] += 6.0  # lower lip down
    opened[[19, 24], 1] -= 3.0  # brows up
    driving = np.stack([face, opened])
    video = retarget(driving, face, "relative", neutral=face, mouth="video")
    np.testing.assert_allclose(video[1][MOUTH], opened[MOUTH], atol=0.2)  # k_p ≈ 1 for the same face
    double = retarget(driving, face, "relative", neutral=face, mouth="video", expression_gain=2.0)
    np.testing.assert_allclose(double[1, 66] - face[66], 2 * (video[1, 66] - face[66]), atol=1e-3)
    audio = retarget(driving, face, "relative", neutral=face, mouth="audio")
    np.testing.assert_allclose(audio[1][MOUTH], face[MOUTH], atol=1e-3)  # lips left to the audio
    assert audio[1, 19, 1] < face[19, 1] - 2.5  # brows still follow the driver


def test_offset_and_naive(face):
    driving = np.stack([_similarity(face, 0, 2.0, (0, 0)), _similarity(face, 0, 2.0, (10, 4))])
    offset = retarget(driving, face, "offset")
    np.testing.assert_allclose(offset[1] - face, np.broadcast_to([5.0, 2.0], (68, 2)), atol=1e-3)  # κ = 1/2
    naive = retarget(driving, face, "naive")
    np.testing.assert_allclose(naive[0], face, atol=1e-3)
    np.testing.assert_allclose(naive[1] - naive[0], np.broadcast_to([5.0, 2.0], (68, 2)), atol=1e-3)


def test_bad_retarget_arguments(face):
    with pytest.raises(ConfigError, match="retarget mode"):
        retarget(face[None], face, "mirror")
    with pytest.raises(ConfigError, match="mouth mode"):
        retarget(face[None], face, mouth="both")
    with pytest.raises(ConfigError, match="gain"):
        retarget(face[None], face, pose_gain=float("nan"))
    with pytest.raises(InputError, match=r"\(N, 68, 2\)"):
        retarget(face[None, :60], face)


def test_source_times_pingpong_and_hold():
    np.testing.assert_allclose(source_times(1.0, 7, 4.0, "pingpong"), [0, 0.25, 0.5, 0.75, 1.0, 0.75, 0.5])
    np.testing.assert_allclose(source_times(1.0, 7, 4.0, "hold"), [0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(source_times(0.0, 3, 12.5), 0.0)
    with pytest.raises(ConfigError):
        source_times(1.0, 3, 12.5, "loop")
    values = np.arange(5, dtype=np.float64)[:, None] * 2
    np.testing.assert_allclose(
        resample(values, np.arange(5) / 25, np.array([0.0, 0.02, 0.16]))[:, 0], [0, 1, 8]
    )


def test_neutral_frame_and_retarget_track(face):
    frames = []
    for i in range(10):
        points = face.copy()
        points[[65, 66, 67, 56, 57, 58], 1] += abs(i - 6) * 1.0  # closed at frame 6
        frames.append(_similarity(points, 0, 1.0, (i, 0)))
    track = _track(np.stack(frames))
    assert neutral_frame(track) == 6
    assert mouth_opening(track.landmarks[6]) < mouth_opening(track.landmarks[0])
    result = retarget_track(
        track, face, num_frames=20, fps=12.5, mode="relative", mouth="video", extend="pingpong"
    )
    assert result.landmarks.shape == (20, 68, 2) and result.neutral_index == 6
    np.testing.assert_allclose(result.times[:3], [0, 0.08, 0.16], atol=1e-9)
    expected = [0, 0.08, 0.16, 0.24, 0.32, 0.32, 0.24, 0.16, 0.08, 0.0, 0.08]  # folded back at 0.36 s
    np.testing.assert_allclose(result.times[:11], expected, atol=1e-9)
    np.testing.assert_allclose(result.landmarks[np.argmin(abs(result.times - 0.24))], face, atol=1e-2)


# ------------------------------------------------------------------ motion maps


def test_render_channels_range_and_antialiasing(face):
    maps = render_motion_maps(np.stack([face, face + 10]), (256, 256), draw_mouth=True)
    assert maps.shape == (2, 3, 256, 256) and maps.dtype == np.float32
    assert maps.min() == 0.0 and 0.9 < maps.max() <= 1.0
    assert ((maps > 0) & (maps < 1)).any()  # anti-aliased edges
    for channel, point in ((0, 8), (1, 37), (2, 51)):  # chin, an eyelid, the upper lip
        x, y = np.round(face[point]).astype(int)
        assert maps[0, channel, y - 1 : y + 2, x - 1 : x + 2].max() > 0.3
        other = [c for c in range(3) if c != channel]
        assert maps[0, other, y - 1 : y + 2, x - 1 : x + 2].max() < 0.3 or channel == 0
    assert maps[0, :, :20, :].max() == 0.0  # nothing drawn far from the face
    no_mouth = render_frame(face, (256, 256), draw_mouth=False)
    assert no_mouth[2].max() == 0.0 and np.array_equal(no_mouth[:2], maps[0, :2])
    big = render_motion_maps(face[None], (512, 512), source_size=(256, 256))[0]
    x, y = np.round(face[8] * 2).astype(int)
    assert big[0, y - 2 : y + 3, x - 2 : x + 3].max() > 0.3
    with pytest.raises(InputError):
        render_frame(face[:60], (64, 64))


# ------------------------------------------------------------------ track JSON


@pytest.fixture()
def track_file(tmp_path, face):
    track = _track(np.stack([_similarity(face, i, 1.0, (i, 0)) for i in range(5)]))
    return track, write_track(track, tmp_path / "t.json")


def test_track_json_round_trip_and_computed_pose(track_file, tmp_path):
    track, path = track_file
    again = read_track(path)
    np.testing.assert_allclose(again.landmarks, track.landmarks, atol=0.006)
    np.testing.assert_allclose(again.poses, track.poses, atol=1e-3)
    data = json.loads(path.read_text())
    assert set(data["frames"][0]) == {"t", "landmarks", "pose", "confidence"}
    for frame in data["frames"]:
        del frame["pose"], frame["confidence"]
    (tmp_path / "bare.json").write_text(json.dumps(data))
    bare = read_track(tmp_path / "bare.json")
    np.testing.assert_allclose(bare.poses[:, :3], track.poses[:, :3], atol=0.05)
    assert (bare.confidence == 1).all()


def _broken(data: dict, how: str) -> str:
    frames = data["frames"]
    if how == "nan":
        return json.dumps(data).replace(str(frames[1]["landmarks"][3][0]), "NaN", 1)
    if how == "shape":
        frames[2]["landmarks"] = frames[2]["landmarks"][:67]
    elif how == "size":
        data["size"] = [64, 64]
    elif how == "times":
        frames[3]["t"] = -1.0
    elif how == "unknown":
        data["colour"] = "red"
    elif how == "missing":
        del data["fps"]
    elif how == "pose":
        frames[0]["pose"] = {"yaw": 1}
    elif how == "confidence":
        frames[0]["confidence"] = 2
    elif how == "empty":
        data["frames"] = []
    elif how == "strings":
        frames[0]["landmarks"][0] = ["a", "b"]
    return json.dumps(data)


@pytest.mark.parametrize(
    "how, message",
    [
        ("nan", "finite"),
        ("shape", r"shape \(68, 2\)"),
        ("size", "does not match its landmarks"),
        ("times", "times decrease"),
        ("unknown", "unknown keys"),
        ("missing", "missing keys"),
        ("pose", "pose must be"),
        ("confidence", "confidence"),
        ("empty", "non-empty"),
        ("strings", "landmarks"),
    ],
)
def test_bad_track_json_is_an_input_error(track_file, tmp_path, how, message):
    _, path = track_file
    bad = tmp_path / f"{how}.json"
    bad.write_text(_broken(json.loads(path.read_text()), how))
    with pytest.raises(InputError, match=message):
        read_track(bad)


def test_malformed_json_and_non_object(tmp_path):
    (tmp_path / "a.json").write_text('{"fps": 25, "size": [')
    (tmp_path / "b.json").write_text("[1, 2, 3]")
    with pytest.raises(InputError, match="not valid JSON"):
        read_track(tmp_path / "a.json")
    with pytest.raises(InputError, match="JSON object"):
        read_track(tmp_path / "b.json")
    with pytest.raises(InputError, match="does not exist"):
        read_track(tmp_path / "c.json")


# ------------------------------------------------------------------ the generate path's one call


class _Projected:
    """A landmarker that always answers the projected generic face (scaled to the image)."""

    name = "projected"

    def __call__(self, image, box):
        return _project() * np.array([image.shape[1] / 256, image.shape[0] / 256], dtype=np.float32)


def test_motion_for_job(tmp_path):
    frames = np.stack([_project(yaw=2 * np.sin(i / 3), roll=4 * np.sin(i / 4)) for i in range(20)])
    track_path = write_track(_track(frames), tmp_path / "drive.json")
    image = np.asarray(
        Image.open(resources.files("portrait") / "assets" / "sample_portrait.jpg").convert("RGB").resize(SIZE)
    )
    common = dict(working_size=(128, 128), num_frames=30, landmarker=_Projected())
    result = motion_for_job(track_path, image, (80, 40, 90, 90), mode="fixed", **common)
    fixed, summary = result.maps, result.summary
    assert result.landmarks.shape == (30, 68, 2) and result.energy.shape == (30,)
    assert fixed.shape == (30, 3, 128, 128) and fixed.dtype == np.float32
    assert all(np.array_equal(fixed[0], m) for m in fixed) and fixed[:, 2].max() == 0.0  # mouth: audio
    own = render_frame(_project() / 2, (128, 128), draw_mouth=False)
    np.testing.assert_array_equal(fixed[0], own)  # the portrait's own landmarks on every frame
    assert summary["mode"] == "fixed" and summary["source_kind"] == "track" and summary["frames"] == 30
    assert summary["track"]["frames"] == 20 and summary["track"]["extended"] is True
    assert len(summary["per_second"]) == 3 and all(abs(r["roll"]) < 0.1 for r in summary["per_second"])
    json.dumps(summary)  # JSON-ready for the sidecar
    result = motion_for_job(
        track_path, image, (80, 40, 90, 90), mode="relative", mouth="video", gains=(1.0, 1.0), **common
    )
    moving, summary = result.maps, result.summary
    assert not np.array_equal(moving[0], moving[5]) and moving[:, 2].max() > 0.5
    assert max(abs(r["roll"]) for r in summary["per_second"]) > 0.5
    with pytest.raises(ConfigError):
        motion_for_job(track_path, image, (80, 40, 90, 90), mode="wild", **common)
    assert track_to_dict(read_track(track_path))["fps"] == 25.0
