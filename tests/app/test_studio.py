"""The web demo: handler logic, the handler on tiny weights, the launched app via gradio_client."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pytest
from media import PORTRAIT, SPEECH, speech_clip
from PIL import Image
from tiny_inputs import modules_imported_by, studio_on

from portrait.app.handler import Cancelled
from portrait.app.launch import LaunchOptions, add_app_arguments, exposure_warnings, parse_auth
from portrait.app.present import draw_face_box, ui_message
from portrait.app.request import (
    AppRequest,
    default_framing,
    emotion_spec,
    framing_values,
    resolve_seed,
    timeline_rows,
)
from portrait.app.workspace import Workspace
from portrait.config import load_config
from portrait.errors import ConfigError, InputError, NoFaceError

#: Fast tiny renders: 64-px working image, 2 steps, the resized photo only, no interpolation.
FAST = dict(size=64, steps=2, framing="photo", interpolate=False)


# ------------------------------------------------------------------------------------------ pure logic
def test_emotion_spec_from_dropdown_intensity_timeline_and_text():
    assert emotion_spec("happy") == "happy"
    assert emotion_spec("happy", 0.5) == "happy:0.5"
    rows = [[0, "neutral", ""], [2.5, "happy", 0.8], ["", None, ""], [6, "sad", None]]
    assert emotion_spec("angry", 1.7, rows) == "0:neutral, 2.5:happy:0.8, 6:sad"  # the table wins
    table = {"headers": ["time (s)", "emotion", "intensity"], "data": [[0, "sad", 2]]}  # the API's form
    assert emotion_spec("happy", 1, table) == "0:sad:2"
    assert emotion_spec("happy", 1, rows, text=" happy:0.6+surprised:0.4 ") == "happy:0.6+surprised:0.4"


def test_timeline_rows_reject_half_rows_and_bad_numbers():
    assert timeline_rows(None) == [] and timeline_rows([["", "", ""]]) == []
    assert timeline_rows([["1.5", " sad ", float("nan")]]) == [(1.5, "sad", 1.0)]
    with pytest.raises(InputError, match="row 1 needs a time and an emotion"):
        timeline_rows([[2, "", 1]])
    with pytest.raises(InputError, match="row 2 time must be a number"):
        timeline_rows([[0, "sad", 1], ["soon", "happy", 1]])


def test_seed_random_when_asked_else_exact():
    assert resolve_seed(7) == 7 and resolve_seed(7.0) == 7
    assert all(0 <= resolve_seed(s, r) < 2**31 for s, r in ((None, False), (-1, False), (7, True)))
    assert len({resolve_seed(-1) for _ in range(5)}) > 1
    with pytest.raises(InputError, match="whole number"):
        resolve_seed(1.5)


def test_framing_maps_to_config_and_back():
    base = load_config()
    for name in ("auto", "full", "photo", "crop"):
        from portrait.config import with_values

        assert default_framing(with_values(base, framing_values(name))) == name
    assert framing_values(None) == {}
    with pytest.raises(InputError, match="framing"):
        framing_values("zoom")


def test_auth_and_exposure_warnings():
    assert parse_auth(None) is None and parse_auth("ann:s3:cret") == ("ann", "s3:cret")
    with pytest.raises(ConfigError):
        parse_auth("ann")
    assert exposure_warnings(LaunchOptions()) == []
    assert len(exposure_warnings(LaunchOptions(host="0.0.0.0", share=True))) == 2
    assert exposure_warnings(LaunchOptions(host="0.0.0.0", share=True, auth=("a", "b"))) == []


def test_launcher_binds_localhost_by_default():
    parser = argparse.ArgumentParser()
    add_app_arguments(parser)
    args = parser.parse_args([])
    assert (args.host, args.port, args.share, args.auth, args.max_seconds) == (
        "127.0.0.1",
        7860,
        False,
        None,
        60,
    )


def test_ui_message_hides_paths_and_cli_hints():
    from portrait.cli.common import CLI_HINTS
    from portrait.errors import HINT_FACE_BOX, describe

    err = NoFaceError("no face found in /srv/up/abc/me.jpg", hint=HINT_FACE_BOX)
    text = ui_message(err, {"/srv/up/abc/me.jpg": "me.jpg"})
    assert text == "no face found in me.jpg; enter the face position in Advanced → Face box"
    cli = describe(err, CLI_HINTS)  # the same hint in the command line's words
    assert cli == "no face found in /srv/up/abc/me.jpg; pass --face-box X,Y,W,H to give the face position"


def test_draw_face_box_marks_the_box_and_downscales():
    image = Image.new("RGB", (1000, 500), (0, 0, 255))
    out = draw_face_box(image, (100, 100, 200, 100), (50, 50, 400, 300), max_side=500)
    assert out.size == (500, 250)
    pixels = np.asarray(out)
    assert tuple(pixels[50, 100]) != (0, 0, 255)  # the face box's top-left corner (100, 100) / 2
    assert pixels[50, 100, 1] > 150 and pixels[50, 100, 2] < 100  # green
    assert pixels[25, 100, 0] > 150  # the crop box's top edge (y = 50 / 2): orange
    assert tuple(pixels[100, 300]) == (0, 0, 255)  # elsewhere untouched
    assert image.getpixel((100, 100)) == (0, 0, 255)  # input untouched


def test_workspace_is_private_pruned_and_removed(tmp_path):
    ws = Workspace(tmp_path, keep=3, max_age=100)
    assert stat.S_IMODE(ws.root.stat().st_mode) == 0o700
    runs = [ws.new_run() for _ in range(3)]
    for age, run in zip((30, 20, 10), runs, strict=True):
        os.utime(run, (time.time() - age, time.time() - age))
    runs.append(ws.new_run())
    kept = sorted(ws.runs.iterdir())
    assert len(kept) == 3 and runs[0] not in kept  # the oldest went when the 4th was made
    os.utime(runs[1], (time.time() - 500, time.time() - 500))
    assert runs[1] in ws.prune()  # too old
    ws.cleanup()
    assert not ws.root.exists()


def test_importing_app_loads_neither_torch_nor_gradio():
    assert modules_imported_by("import app", ("torch", "gradio", "diffusers")) == []


def test_api_parameters_are_request_fields():
    from portrait.app import ui as app

    fields = [f.name for f in dataclasses.fields(AppRequest)]
    assert sorted(app.INPUT_NAMES) == sorted(fields)


# ---------------------------------------------------------------------------------- handler, tiny weights
@pytest.fixture(scope="module")
def studio(tiny_weights, tmp_path_factory):
    yield from studio_on(tiny_weights, tmp_path_factory.mktemp("app"), steps=2)


@pytest.fixture(scope="module")
def blank_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("noface") / "blank.png"
    Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    return speech_clip(tmp_path_factory.mktemp("speech") / "short.wav", 2.5)


def test_handler_renders_an_mp4_with_box_and_info(studio, short_speech):
    from media import probe_media

    timeline = [[0, "neutral", ""], [1, "sad", 1.5]]
    request = AppRequest(PORTRAIT, short_speech, "happy", 0.5, timeline, seed=-1, **FAST)
    result = studio.run(request)
    assert result.video.parent.parent == studio.workspace.runs
    kinds = sorted(s["type"] for s in probe_media(result.video)["streams"])
    assert kinds == ["audio", "video"]
    info = result.info
    assert info["emotion"] == "0:neutral, 1:sad:1.5" and 0 <= info["seed"] < 2**31
    assert info["frames"] == 31 and info["fps"] == 12.5 and info["interpolated"] is False  # 2.5 s
    assert info["duration_s"] == pytest.approx(2.5, abs=0.01) and info["seconds_taken"] > 0
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["seed"] == info["seed"] and sidecar["config"]["sampling"]["steps"] == 2
    assert result.preview.size == (512, 512)  # the 512-px sample portrait, not downscaled
    x, y, w, h = info["face_box"]
    assert result.preview.getpixel((round(x + w / 2), round(y))) == (0, 230, 64)  # green top edge


def test_handler_errors_are_readable(studio, blank_png, short_speech):
    with pytest.raises(NoFaceError) as caught:
        studio.run(AppRequest(blank_png, short_speech, **FAST))
    message = studio.message(caught.value, AppRequest(blank_png, short_speech))
    assert message.startswith("no face found in blank.png;") and "--face-box" not in message
    with pytest.raises(InputError, match="unknown emotion"):  # a typed spec is never read as a file
        studio.run(AppRequest(PORTRAIT, short_speech, emotion_text="/etc/passwd.json", **FAST))
    with pytest.raises(InputError, match="limit is 3 s") as caught:  # max_seconds=3
        studio.run(AppRequest(PORTRAIT, SPEECH, **FAST))
    assert "trim it" in studio.message(caught.value, AppRequest(PORTRAIT, SPEECH))
    with pytest.raises(InputError, match="no audio given"):
        studio.run(AppRequest(PORTRAIT, None))


def test_handler_takes_an_emotion_timeline_file(studio, short_speech, tmp_path):
    path = tmp_path / "timeline.json"
    path.write_text(
        json.dumps([{"time": 0, "emotion": "sad"}, {"time": 1, "emotion": "happy", "intensity": 0.5}])
    )
    result = studio.run(AppRequest(PORTRAIT, short_speech, "angry", emotion_file=path, **FAST))
    assert result.info["emotion"] == "file timeline.json"  # not the server path
    schedule = json.loads(result.sidecar.read_text())["emotion_schedule"]
    assert schedule[0]["emotion"] == {"sad": 1.0} and schedule[2]["emotion"] == {"happy": 0.5}
    with pytest.raises(InputError, match="use one of .safetensors"):
        studio.run(AppRequest(PORTRAIT, short_speech, emotion_file=PORTRAIT, **FAST))


def test_cancel_only_stops_the_callers_own_render(studio):
    assert studio.cancel("someone") is False  # nothing running
    studio._running = "mine"
    try:
        assert studio.cancel("other") is False
        studio._step_callback(0, 2, None)  # not cancelled: no error
        assert studio.cancel("mine") is True
        with pytest.raises(Cancelled):
            studio._step_callback(1, 2, None)
    finally:
        studio._running = None
        studio._cancelled.clear()


# ------------------------------------------------------------------------------------- the launched app
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_launched_app_through_gradio_client(studio, blank_png, short_speech, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    client_module = pytest.importorskip("gradio_client")
    from media import probe_media

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    from portrait.app import ui as app

    demo = app.serve(studio, LaunchOptions(port=_free_port()), block=False)
    try:
        assert demo.local_url.startswith("http://127.0.0.1:")
        client = client_module.Client(demo.local_url, verbose=False, download_files=tmp_path / "dl")
        api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
        assert [p["parameter_name"] for p in api["parameters"]] == list(app.INPUT_NAMES)
        file = client_module.handle_file
        video, preview, info, sidecar = client.predict(
            image=file(str(PORTRAIT)),
            audio=file(str(short_speech)),
            emotion="sad",
            **FAST,
            api_name="/generate",
        )
        streams = probe_media(Path(video), measure=True)["streams"]
        assert {s["type"]: s["codec"] for s in streams} == {"video": "h264", "audio": "aac"}
        assert next(s for s in streams if s["type"] == "video")["frames"] == info["frames"] == 31
        assert info["emotion"] == "sad" and json.loads(Path(sidecar).read_text())["seed"] == info["seed"]
        assert Image.open(preview).size == (512, 512)
        with pytest.raises(client_module.exceptions.AppError, match="no face found in blank.png"):
            client.predict(
                image=file(str(blank_png)), audio=file(str(short_speech)), **FAST, api_name="/generate"
            )
    finally:
        demo.close()
