"""The example workflows, a Cancel and bad inputs against a real ComfyUI 0.8 with the pack installed.

One server runs every workflow of this module (tiny random weights in ``models/portrait/tiny``, 64-pixel
renders of a 1.2-second clip). ComfyUI and its runner come from ``../shared`` (see comfy_server.py); the
module is skipped, with the reason, only when they are absent.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import comfy_server
import numpy as np
import pytest
from comfy_server import REPO, ComfyServer
from media import PORTRAIT, probe_media, speech_clip
from PIL import Image

pytestmark = pytest.mark.skipif(comfy_server.missing() is not None, reason=str(comfy_server.missing()))

WORKFLOWS = REPO / "workflows" / "comfyui"
NODES = {
    "PortraitLoader",
    "PortraitRender",
    "PortraitMotionTrack",
    "PortraitEmotionFromReference",
    "PortraitEvaluate",
}
#: What makes the examples fast here: the tiny tree, a 64-pixel render, two steps, one QA retry.
FAST = {"size": 64, "steps": 2, "qa_retries": 1}


def moving_face_clip(path: Path, frames: int = 16, fps: int = 25) -> Path:
    """The sample portrait sliding left and right: a driving video and an emotion reference."""
    from media import encode_frames

    photo = Image.open(PORTRAIT).convert("RGB")
    shifted = []
    for i in range(frames):
        dx = int(round(6 * np.sin(2 * np.pi * i / frames)))
        canvas = Image.new("RGB", photo.size, (128, 128, 128))
        canvas.paste(photo, (dx, 0))
        shifted.append(canvas)
    return encode_frames(shifted, path, fps=fps)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory: pytest.TempPathFactory):
    from portrait.testing.trees import write_tiny_weights

    base = tmp_path_factory.mktemp("comfyui")
    server = ComfyServer(base / "base", comfy_server.comfy_python())
    write_tiny_weights(server.base / "models" / "portrait" / "tiny", layout="portrait", seed=0)
    inputs = server.base / "input"
    Image.open(PORTRAIT).convert("RGB").save(inputs / "portrait.png")  # PNG: decoded alike everywhere
    speech_clip(inputs / "speech.wav", 1.2)
    clip = moving_face_clip(base / "clip.mp4")
    for name in ("driving.mp4", "reference.mp4"):
        (inputs / name).write_bytes(clip.read_bytes())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(100, 140, (128, 128, 3), dtype=np.uint8)).save(inputs / "noface.png")
    import soundfile as sf

    sf.write(inputs / "silent.wav", np.zeros(16000, np.float32), 16000)
    server.object_info = server.start()
    yield server
    server.stop()


def example(name: str, **render: object) -> dict:
    """An example workflow on the tiny weights (Render's widgets: ``FAST``, then ``render``)."""
    workflow = json.loads((WORKFLOWS / f"{name}.api.json").read_text())
    for node in workflow.values():
        if node["class_type"] == "PortraitLoader":
            node["inputs"]["weights"] = "tiny"
        if node["class_type"] == "PortraitRender":
            node["inputs"].update(FAST | render)
    return workflow


def saved_video(run: comfy_server.Run, node: str = "6") -> Path:
    assert run.status == "success", run.error
    (video,) = run.outputs[node]
    return video


def check_video(video: Path, seconds: float = 1.2) -> dict:
    """The mp4 has H.264 video and AAC audio, both about ``seconds`` long."""
    info = probe_media(video, measure=True)
    kinds = {s["type"]: s for s in info["streams"]}
    assert set(kinds) == {"video", "audio"}, info
    assert kinds["video"]["frames"] >= 2
    assert abs(kinds["video"]["measured_duration"] - seconds) <= 0.2, info
    assert abs(kinds["audio"]["measured_duration"] - kinds["video"]["measured_duration"]) <= 0.1, info
    return kinds


def test_comfyui_lists_the_nodes_with_their_inputs(comfy):
    info = comfy.object_info
    assert NODES <= set(info)
    for node in NODES:
        assert info[node]["category"] == "portrait"
        assert info[node]["python_module"] == f"custom_nodes.{comfy_server.PACK}"
    render = info["PortraitRender"]
    assert render["output"] == ["IMAGE", "AUDIO", "FLOAT", "STRING"]
    assert render["input"]["required"]["steps"][1]["default"] == 25  # the CLI's default
    assert "tiny" in render_weights(info)
    assert "IMPORT FAILED" not in comfy.log_text().split("Import times for custom nodes")[-1]


@pytest.mark.parametrize("name", ["talking_portrait", "driving_video", "emotion_reference_qa"])
def test_ui_workflows_are_the_api_workflows(comfy, name):
    """Each example's editor file (UI format) queues exactly its API-format file (and is up to date with
    ``scripts/comfy_workflows.py``); every node and widget it names exists in this ComfyUI."""
    from portrait.comfy.workflow_format import api_from_ui, ui_from_api

    api = json.loads((WORKFLOWS / f"{name}.api.json").read_text())
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    assert api_from_ui(ui, comfy.object_info) == api
    assert ui == ui_from_api(api, comfy.object_info)


def render_weights(info: dict) -> list[str]:
    return info["PortraitLoader"]["input"]["required"]["weights"][1]["options"]


def test_photo_speech_emotion_to_mp4_with_sound(comfy):
    run = comfy.run(example("talking_portrait", emotion="sad"))
    video = check_video(saved_video(run))["video"]
    assert (video["width"], video["height"]) == Image.open(comfy.base / "input" / "portrait.png").size


def test_render_frames_equal_the_clis_bit_for_bit(comfy, tmp_path):
    """Portrait Render's frames (saved as PNG by SaveImage) == ``portrait-gen --dump-frames`` on the same
    files, seed and settings, the CLI run with ComfyUI's Python (the same libraries)."""
    workflow = example("talking_portrait", emotion="happy:0.7", seed=1234, framing="crop", interpolate=False)
    save = {"images": ["4", 0], "filename_prefix": "parity/f"}
    workflow["20"] = {"class_type": "SaveImage", "inputs": save}
    run = comfy.run(workflow)
    assert run.status == "success", run.error
    node_frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(run.outputs["20"])]
    inputs, dump = comfy.base / "input", tmp_path / "frames"
    command = [
        str(comfy.python), "-m", "portrait", "--weights", str(comfy.base / "models" / "portrait" / "tiny"),
        "--image", str(inputs / "portrait.png"), "--audio", str(inputs / "speech.wav"),
        "--emotion", "happy:0.7",
        "--seed", "1234", "--crop", "--no-full-frame", "--no-interpolate", "--size", "64", "--steps", "2",
        "-o", str(tmp_path / "cli.mp4"), "--dump-frames", str(dump), "--quiet", "--offline",
    ]  # fmt: skip
    env = {**comfy_server.os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    cli_frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(dump.glob("frame_*.png"))]
    assert len(node_frames) == len(cli_frames) > 1
    for ours, theirs in zip(node_frames, cli_frames, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_driving_video_workflow(comfy):
    run = comfy.run(example("driving_video"))
    check_video(saved_video(run))


def test_emotion_reference_with_qa_and_evaluate(comfy):
    run = comfy.run(example("emotion_reference_qa"))
    check_video(saved_video(run))
    table = run.text("13")
    assert "emotion QA:" in table and "face_coverage" in table


def test_cancel_stops_the_render_between_steps(comfy):
    workflow = example("talking_portrait", steps=400, seed=7)
    mark = len(comfy.log_text())
    prompt = comfy.queue(workflow)
    deadline = time.monotonic() + 300
    while "portrait: sampling" not in comfy.log_text()[mark:]:
        assert time.monotonic() < deadline, comfy.log_text()[mark:]
        time.sleep(0.2)
    comfy.interrupt()
    run = comfy.wait(prompt)
    assert "execution_interrupted" in run.events(), run.messages
    assert run.outputs == {}
    log = comfy.log_text()[mark:]
    assert "wrote" not in log  # stopped while sampling: nothing was encoded
    assert not list((comfy.base / "temp").glob("portrait-render-*"))  # its work folder is gone
    rerun = comfy.run(example("talking_portrait", emotion="angry"))  # the server goes on rendering
    check_video(saved_video(rerun))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"2": {"image": "noface.png"}}, ["no face", "face_box"]),
        ({"3": {"audio": "silent.wav"}}, ["audio is silent"]),
        ({"4": {"emotion": "furious"}}, ["furious"]),
    ],
)
def test_bad_inputs_end_as_one_clear_comfyui_error(comfy, change, words):
    workflow = example("talking_portrait")
    for node, values in change.items():
        workflow[node]["inputs"].update(values)
    run = comfy.run(workflow)
    assert run.status == "error" and run.error is not None
    assert run.error["node_type"] == "PortraitRender"
    assert run.error["exception_type"].endswith("PortraitNodeError")
    message = run.error["exception_message"]
    assert message.startswith("Portrait Render: ") and all(word in message for word in words), message
    assert "Traceback" not in message and "/portrait-render-" not in message
    assert not any("portrait/" in line and "comfy" not in line for line in run.error["traceback"])
