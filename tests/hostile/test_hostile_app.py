"""The launched web demo via gradio_client: hostile uploads and numbers come back as readable AppErrors."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hostile_support import PORTRAIT
from media import speech_clip

from portrait.app.handler import Studio
from portrait.app.launch import LaunchOptions
from portrait.app.workspace import Workspace
from portrait.config import load_config

FAST = dict(size=64, steps=2, framing="photo", interpolate=False)


class _HugeArray:
    def __reduce__(self):
        return (np.ndarray, ((40000, 40000), "f4"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _absolute_strings(value) -> list[str]:
    if isinstance(value, str):
        return [value] if os.path.isabs(value) else []
    if isinstance(value, dict):
        return [s for item in value.values() for s in _absolute_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _absolute_strings(item)]
    return []


@pytest.fixture(scope="module")
def app_client(tiny_weights, tmp_path_factory):
    pytest.importorskip("gradio")
    client_module = pytest.importorskip("gradio_client")
    tmp = tmp_path_factory.mktemp("hostile_app")
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp / "gradio")
    from portrait.app import ui as app

    cfg = load_config(values={"runtime.weights": str(tiny_weights), "sampling.steps": 2})
    (tmp / "ws").mkdir()
    studio = Studio(cfg, detector="dlib", max_seconds=3.0, workspace=Workspace(tmp / "ws"))
    studio.engine()
    demo = app.serve(studio, LaunchOptions(port=_free_port()), block=False)
    try:
        client = client_module.Client(demo.local_url, verbose=False, download_files=tmp / "dl")
        yield client, client_module, tmp, studio
    finally:
        demo.close()
        studio.workspace.cleanup()
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    return speech_clip(tmp_path_factory.mktemp("speech") / "short.wav", 2.5)


def test_gradio_telemetry_is_off(app_client) -> None:
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


def test_playlist_upload_is_a_readable_app_error(app_client) -> None:
    client, module, tmp, _ = app_client
    secret = tmp / "secret.wav"
    sf.write(secret, (0.5 * np.sin(np.arange(16000) / 3.0)).astype(np.float32), 16000)
    playlist = tmp / "upload.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{secret}\n#EXT-X-ENDLIST\n")
    with pytest.raises(module.exceptions.AppError, match="not an allowed audio format"):
        client.predict(
            image=module.handle_file(str(PORTRAIT)), audio=module.handle_file(str(playlist)), **FAST,
            api_name="/generate",
        )  # fmt: skip


def test_bomb_prior_is_a_readable_app_error(app_client, short_speech) -> None:
    client, module, tmp, _ = app_client
    holder = np.empty((), dtype=object)
    holder[()] = {"mu": _HugeArray()}
    bomb = tmp / "bomb.npy"
    np.save(bomb, holder, allow_pickle=True)
    with pytest.raises(module.exceptions.AppError, match="refusing to allocate"):
        client.predict(
            image=module.handle_file(str(PORTRAIT)), audio=module.handle_file(str(short_speech)),
            emotion_file=module.handle_file(str(bomb)), **FAST, api_name="/generate",
        )  # fmt: skip


@pytest.mark.parametrize(
    "numbers, fragment",
    [
        (dict(ref_scale=float("nan")), "ref scale must be a finite number"),
        (dict(emo_scale=float("inf")), "emo scale must be a finite number"),
        (dict(steps=float("nan")), "steps must be a finite number"),
        (dict(size=float("-inf")), "size must be a finite number"),
        (dict(max_size=float("nan")), "max size must be a finite number"),
    ],
)
def test_nan_and_inf_numbers_are_readable_errors(app_client, short_speech, tmp_path, numbers, fragment):
    # gradio_client refuses to send NaN/inf itself, so the handler behind /generate is called directly.
    from portrait.app.present import ui_message
    from portrait.app.request import AppRequest
    from portrait.errors import PortraitError

    studio = app_client[3]
    request = AppRequest(image=str(PORTRAIT), audio=str(short_speech), **numbers)
    with pytest.raises(PortraitError) as excinfo:
        studio.job(request, tmp_path / "x.mp4")
    assert fragment in ui_message(excinfo.value)


def test_infinite_scales_are_refused_by_config_validation() -> None:
    from portrait.errors import ConfigError

    with pytest.raises(ConfigError, match="must be >= 0 and finite"):
        load_config(values={"sampling.ref_scale_min": float("inf")})


def test_offered_sidecar_has_no_absolute_server_path(app_client, short_speech) -> None:
    client, module, tmp, _ = app_client
    _, _, info, sidecar = client.predict(
        image=module.handle_file(str(PORTRAIT)), audio=module.handle_file(str(short_speech)), **FAST,
        api_name="/generate",
    )  # fmt: skip
    data = json.loads(Path(sidecar).read_text())
    assert data["seed"] == info["seed"] and data["output"] == "portrait.mp4"
    assert _absolute_strings(data) == []
    assert str(tmp) not in Path(sidecar).read_text()
