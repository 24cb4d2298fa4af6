"""The web demo's motion controls: a driving video / track upload, the retarget mode and the lips' source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from media import PORTRAIT, skip_without_landmarks, speech_clip, write_driving_track
from tiny_inputs import guided_weights_tree, studio_on

from portrait.app.handler import Studio
from portrait.app.request import AppRequest, motion_source, motion_values
from portrait.errors import InputError

skip_without_landmarks()
FAST = dict(size=64, steps=2, framing="photo", interpolate=False, seed=4)


def test_motion_values_and_source_are_checked(tmp_path):
    assert motion_values(AppRequest(None, None)) == {}
    assert motion_values(AppRequest(None, None, retarget="fixed", mouth="video")) == {
        "motion.retarget": "fixed",
        "motion.mouth": "video",
    }
    assert motion_values(AppRequest(None, None, retarget="", mouth=None)) == {}
    with pytest.raises(InputError, match="retarget 'mirror' must be one of relative, offset"):
        motion_values(AppRequest(None, None, retarget="mirror"))
    with pytest.raises(InputError, match="mouth 'both' must be one of audio, video"):
        motion_values(AppRequest(None, None, mouth="both"))
    assert (
        motion_source(AppRequest(None, None)) is None
        and motion_source(AppRequest(None, None, motion="")) is None
    )
    with pytest.raises(InputError, match="use a video"):
        motion_source(AppRequest(None, None, motion=PORTRAIT))
    with pytest.raises(InputError, match="upload it again"):
        motion_source(AppRequest(None, None, motion=tmp_path / "gone.mp4"))
    track = tmp_path / "t.json"
    track.write_text("{}")
    assert motion_source(AppRequest(None, None, motion=str(track))) == track


@pytest.fixture(scope="module")
def studio(tmp_path_factory) -> Studio:
    """A studio on tiny weights with a non-zero landmark guider."""
    root = guided_weights_tree(tmp_path_factory.mktemp("guided") / "w")
    yield from studio_on(root, tmp_path_factory.mktemp("app"), steps=2)


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    return speech_clip(tmp_path_factory.mktemp("speech") / "short.wav", 1.2)


def test_handler_renders_with_a_track_upload(studio, short_speech, tmp_path):
    (tmp_path / "upload").mkdir()
    track = write_driving_track(tmp_path / "upload" / "drive.json")
    request = AppRequest(PORTRAIT, short_speech, motion=str(track), retarget="fixed", mouth="video", **FAST)
    job, cfg = studio.job(request, tmp_path / "o.mp4")
    assert job.motion == track and (cfg.motion.retarget, cfg.motion.mouth) == ("fixed", "video")
    result = studio.run(request)
    panel = result.info["motion"]
    assert panel["source"] == "drive.json" and panel["source_kind"] == "track"  # the name, not the path
    assert panel["mode"] == "fixed" and panel["mouth"] == "video" and panel["applied"] == "landmark_guider"
    assert panel["gains"] == {"pose": 1.0, "expression": 1.0}
    public = json.loads(result.sidecar.read_text())
    assert panel["frames"] == public["generated_frames"]
    assert public["motion"]["source"] == "drive.json" and public["config"]["motion"]["retarget"] == "fixed"
    assert len(public["motion"]["per_second"]) >= 1
    plain = studio.run(AppRequest(PORTRAIT, short_speech, **FAST))
    assert "motion" not in plain.info and "motion" not in json.loads(plain.sidecar.read_text())
    assert plain.video.read_bytes() != result.video.read_bytes()


def test_bad_track_upload_is_one_readable_line(studio, short_speech, tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"fps": 25, "size": [256, 256], "frames": [')
    request = AppRequest(PORTRAIT, short_speech, motion=str(broken), **FAST)
    with pytest.raises(InputError) as caught:
        studio.run(request)
    message = studio.message(caught.value, request)
    assert "broken.json" in message and "not valid JSON" in message and str(tmp_path) not in message
    with pytest.raises(InputError, match="retarget"):
        studio.run(AppRequest(PORTRAIT, short_speech, motion=str(broken), retarget="sideways", **FAST))
