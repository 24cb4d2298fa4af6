"""Cancel in the web demo reaches a request that is still waiting for the previous render."""

from __future__ import annotations

import threading
from pathlib import Path

import soundfile as sf
from hostile_support import PORTRAIT, SPEECH

from portrait.app.handler import Cancelled, Studio
from portrait.app.request import AppRequest
from portrait.app.workspace import Workspace
from portrait.config import load_config

FAST = dict(size=64, steps=1, framing="photo", interpolate=False)


def test_cancel_while_waiting_for_the_render_lock(hostile_weights, tmp_path: Path, monkeypatch) -> None:
    import portrait.rendering as render_module

    samples, rate = sf.read(SPEECH)
    speech = tmp_path / "short.wav"
    sf.write(speech, samples[: int(rate * 0.5)], rate)
    (tmp_path / "app").mkdir()
    cfg = load_config(values={"runtime.weights": str(hostile_weights), "sampling.steps": 1})
    studio = Studio(cfg, detector="dlib", max_seconds=3.0, workspace=Workspace(tmp_path / "app"))
    studio.engine()
    renders: list[str] = []
    real = render_module.generate
    monkeypatch.setattr(
        render_module, "generate", lambda p, *a, **k: renders.append(p.job.output.name) or real(p, *a, **k)
    )
    outcome: dict[str, object] = {}

    def waiting() -> None:
        try:
            outcome["b"] = studio.run(AppRequest(PORTRAIT, speech, **FAST), session="b")
        except Cancelled as err:
            outcome["b"] = err

    studio._render_lock.acquire()  # "a"'s render holds the lock
    try:
        thread = threading.Thread(target=waiting)
        thread.start()
        for _ in range(6000):  # until "b" waits for the lock (its inputs are prepared by then)
            if "b" in studio._waiting:
                break
            thread.join(0.01)
        assert "b" in studio._waiting
        assert studio.cancel("b") is True
    finally:
        studio._render_lock.release()
    thread.join(120)
    assert isinstance(outcome.get("b"), Cancelled)
    assert renders == []  # the cancelled request never started rendering
    assert studio.cancel("b") is False  # nothing of "b" runs or waits any more
    result = studio.run(AppRequest(PORTRAIT, speech, **FAST), session="b")  # a new request of "b" renders
    assert result.video.is_file() and len(renders) == 1
    studio.workspace.cleanup()
