"""The web demo, round two (issue 25, findings 1, 4 and 5): no write into the weights tree with default flags,
a capped and authenticated "Save as emotion" when enabled, Cancel reaching a reference clip's analysis, and
one readable line for an unexpected error."""

from __future__ import annotations

import argparse
import hashlib
import threading
import time
from pathlib import Path

import pytest
from hostile_support import PORTRAIT, CountingFace, ffmpeg_clip, stretched
from media import speech_clip

from portrait.app.emotion_reference import save_emotion
from portrait.app.handler import Cancelled, Studio
from portrait.app.request import AppRequest
from portrait.app.workspace import Workspace
from portrait.config import load_config
from portrait.errors import ConfigError, InputError

FAST = dict(size=64, steps=1, framing="photo", interpolate=False, seed=1)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def _studio(weights: Path, folder: Path, **options) -> Studio:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(values={"runtime.weights": str(weights), "sampling.steps": 1})
    return Studio(cfg, detector="dlib", max_seconds=3.0, workspace=Workspace(folder), **options)


@pytest.fixture
def weights(hostile_weights: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(hostile_weights, tmp_path / "weights"))


def test_default_app_offers_no_way_to_write_into_the_weights_tree(weights: Path, tmp_path: Path) -> None:
    gr = pytest.importorskip("gradio")
    from portrait.app.ui import build_demo

    before = _tree_digest(weights)
    studio = _studio(weights, tmp_path / "ws")
    demo = build_demo(studio)
    names = {getattr(fn.fn, "__name__", "") for fn in demo.fns.values()}
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert "save_as_emotion" not in names and "New emotion name" not in labels  # no event, not even hidden
    assert "Reference picture or video" in labels  # the reference itself still sets a render's emotion
    with pytest.raises(InputError, match="saving emotions is off"):
        save_emotion(studio, "smirk", str(PORTRAIT))
    assert _tree_digest(weights) == before
    del gr


def test_save_as_emotion_needs_auth_and_is_capped(weights: Path, tmp_path: Path) -> None:
    from portrait.app.launch import add_app_arguments, run_app

    parser = argparse.ArgumentParser()
    add_app_arguments(parser)
    args = parser.parse_args(["--allow-save-emotion", "--weights", str(weights), "--offline"])
    served = []
    with pytest.raises(ConfigError, match="needs --auth"):
        run_app(args, lambda studio, options: served.append(studio))
    assert served == []
    studio = _studio(weights, tmp_path / "ws", save_emotions=True, max_custom_emotions=1)
    before = _tree_digest(weights)
    for name, message in (("HAPPY", "release emotion"), ("Con", "reserved device name"), ("a.b", "invalid")):
        with pytest.raises(InputError, match=message):
            save_emotion(studio, name, str(PORTRAIT))
    assert _tree_digest(weights) == before  # refused: nothing written
    assert "smile" in save_emotion(studio, "smile", str(PORTRAIT))
    with pytest.raises(InputError, match="differs from the existing 'smile' only in case"):
        save_emotion(studio, "Smile", str(PORTRAIT))
    with pytest.raises(InputError, match="already holds 1 custom emotions"):
        save_emotion(studio, "grin", str(PORTRAIT))
    assert sorted(p.stem for p in (weights / "emotions").glob("*.safetensors")).count("smile") == 1
    assert not (weights / "emotions" / "grin.safetensors").exists()


def test_cancel_reaches_the_analysis_of_a_reference_clip(hostile_weights: Path, tmp_path: Path) -> None:
    short = ffmpeg_clip(tmp_path / "short.mp4", frames=10)
    clip = stretched(tmp_path / "long.mp4", short, 9000)  # declares 54 minutes
    speech = speech_clip(tmp_path / "hello.wav", 0.6)
    studio = _studio(hostile_weights, tmp_path / "ws")
    engine = studio.engine()
    fake = CountingFace(delay=0.05)  # a slow detector and classifier (no dlib work)
    engine.detector, studio._expression = fake, fake
    outcome: dict[str, object] = {}

    def request() -> None:
        try:
            outcome["s"] = studio.run(
                AppRequest(PORTRAIT, speech, emotion_from=str(clip), **FAST), session="s"
            )
        except Cancelled as err:
            outcome["s"] = err

    thread = threading.Thread(target=request, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while len(fake.detections) < 4 and time.monotonic() < deadline:  # the portrait, then clip frames
        time.sleep(0.01)
    assert studio.cancel("s") is True  # the request is analysing its reference clip
    thread.join(30)
    assert isinstance(outcome.get("s"), Cancelled)
    assert len(fake.detections) < 20  # stopped at the next frame, not after the clip's minute
    assert studio.cancel("s") is False


def test_an_unexpected_error_is_one_readable_line(tmp_path: Path, hostile_weights: Path, monkeypatch) -> None:
    gr = pytest.importorskip("gradio")
    from portrait.app.ui import INTERNAL_ERROR, build_demo

    studio = _studio(hostile_weights, tmp_path / "ws")
    demo = build_demo(studio)
    generate = next(fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "generate")

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug deep inside")

    monkeypatch.setattr(studio, "run", broken)
    with pytest.raises(gr.Error) as info:
        generate(str(PORTRAIT), None, "neutral", 1, None, 2, 4, 1, 1, False, "photo", False, 64)
    assert info.value.message == INTERNAL_ERROR and "bug" not in info.value.message
