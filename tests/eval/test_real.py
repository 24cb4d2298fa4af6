"""Evaluation on real inputs: the sample portrait made into an H.264 video whose mouth follows the sample
speech three frames late, real dlib detector / landmarks / embedding and the fer classifier; the report."""

from __future__ import annotations

import html.parser
import importlib.resources
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from portrait.eval.emotion_accuracy import bank_name
from portrait.eval.evaluate import METRIC_NAMES, evaluate_video
from portrait.eval.report import write_report
from portrait.eval.sync import speech_envelope
from portrait.eval.toolkit import EvalTools
from portrait.ffmpeg import media_path, run_ffmpeg
from portrait.preprocess.detectors import DlibDetector

pytest.importorskip("dlib")
landmarks = pytest.importorskip("portrait.motion.landmarks")
identity = pytest.importorskip("portrait.eval.identity")

ASSETS = importlib.resources.files("portrait") / "assets"
PORTRAIT = Path(str(ASSETS / "sample_portrait.jpg"))
SPEECH = Path(str(ASSETS / "sample_speech.wav"))
LAG = 3  # frames the mouth lags the speech in the test video
CROP = (slice(0, 320), slice(60, 380))  # the face region of the 512² portrait, full resolution


def _other_face() -> Path:
    matplotlib = pytest.importorskip("matplotlib")
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not path.is_file():
        pytest.skip("matplotlib's sample photo grace_hopper.jpg is not installed")
    return path


def _classifier():
    try:
        from portrait.eval.toolkit import _classifier

        return _classifier()
    except Exception as error:  # noqa: BLE001 - any reason the optional classifier is missing
        pytest.skip(f"expression classifier unavailable: {error}")


def _mouth_frames(image: np.ndarray, openings: np.ndarray) -> list[np.ndarray]:
    """Open the portrait's mouth by ``openings`` pixels: shift the lower lip and chin down, dark gap."""
    box = DlibDetector().detect(np.ascontiguousarray(image[:, :, ::-1]))[0].box
    pts = landmarks.DlibLandmarker()(image, box)
    lip_y = int(round(pts[60:68, 1].mean()))
    x0, x1 = int(pts[48, 0]) - 6, int(pts[54, 0]) + 6
    inner0, inner1 = int(pts[60, 0]), int(pts[64, 0])
    bottom = int(pts[8, 1]) + 25
    frames = []
    for value in openings:
        frame, o = image.copy(), int(round(value))
        if o > 0:
            frame[lip_y + o : bottom, x0:x1] = image[lip_y : bottom - o, x0:x1]
            frame[lip_y : lip_y + o, inner0:inner1] = (50, 20, 25)
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def talking_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("eval_video")
    image = np.asarray(Image.open(PORTRAIT).convert("RGB"))[CROP].copy()
    samples, rate = sf.read(SPEECH, dtype="float32")
    count = int(len(samples) / rate * 25)
    envelope = speech_envelope(samples, count, rate)
    openings = np.zeros(count)
    openings[LAG:] = 10.0 * envelope[:-LAG] / envelope.max()
    for i, frame in enumerate(_mouth_frames(image, openings)):
        Image.fromarray(frame).save(folder / f"{i:04d}.png")
    video = folder / "talking.mp4"
    args = ["-y", "-framerate", "25", "-i", media_path(folder / "%04d.png"), "-c:v", "libx264", "-crf", "12"]
    run_ffmpeg([*args, "-pix_fmt", "yuv420p", media_path(video)], timeout=120)
    return video


@pytest.fixture(scope="module")
def tools() -> EvalTools:
    return EvalTools(
        detector=DlibDetector(),
        landmarker=landmarks.DlibLandmarker(),
        embedder=identity.DlibFaceEmbedder(),
        classifier=_classifier(),
        notes={"syncnet": "SyncNet weights not supplied"},
    )


@pytest.fixture(scope="module")
def result(talking_video: Path, tools: EvalTools) -> dict:
    return evaluate_video(
        talking_video, reference=PORTRAIT, audio=SPEECH, emotion_schedule="happy", tools=tools
    )


def test_csim_is_near_one_for_the_portrait_and_clearly_lower_for_another_face(result, talking_video, tools):
    csim = result["metrics"]["csim"]
    assert csim["available"] and csim["backend"].startswith("dlib")
    assert csim["value"] > 0.95 and csim["frames"] >= 15
    lean = EvalTools(detector=tools.detector, embedder=tools.embedder, notes=tools.notes)
    other = evaluate_video(talking_video, reference=_other_face(), audio=SPEECH, tools=lean)["metrics"][
        "csim"
    ]
    assert other["available"] and other["value"] < csim["value"] - 0.05  # dlib: different people ≈ 0.85–0.9


def test_lip_sync_proxy_recovers_the_known_lag(result):
    metrics = result["metrics"]
    assert metrics["face_coverage"]["value"] == 1.0
    assert metrics["sync_proxy_lag_frames"]["value"] == LAG
    assert metrics["sync_proxy_corr"]["value"] > 0.8
    assert metrics["sync_proxy_corr"]["corr_at_zero"] < metrics["sync_proxy_corr"]["value"] - 0.3
    assert metrics["sync_c"]["reason"] == "SyncNet weights not supplied"


def test_emotion_metric_names_the_classifiers_class(result, tools):
    from portrait.preprocess.face_expressions import crop_face

    image = np.asarray(Image.open(PORTRAIT).convert("RGB"))
    box = DlibDetector().detect(np.ascontiguousarray(image[:, :, ::-1]))[0].box
    probs = tools.classifier.predict(crop_face(image, box, tools.classifier.input_size)[None])[0]
    expected = bank_name(tools.classifier.classes[int(np.argmax(probs))])
    accuracy, confidence = result["metrics"]["emotion_accuracy"], result["metrics"]["emotion_confidence"]
    assert accuracy["predicted"] == expected
    assert accuracy["value"] == (1.0 if expected == "happy" else 0.0) or expected == "happy"
    assert 0.0 < confidence["value"] <= 1.0
    assert len(result["timelines"]["emotion"]["seconds"]) == 4


def test_other_metrics_are_present_and_plausible(result):
    metrics = result["metrics"]
    assert tuple(metrics) == METRIC_NAMES
    assert metrics["pose_jitter"]["available"] and metrics["pose_jitter"]["value"] < 1.0  # a still head
    assert metrics["flicker"]["value"] < 2.0  # a static background (codec noise only)
    assert metrics["blink_rate"]["available"]
    for name in ("lmd", "fd_clip", "fid", "fvd"):
        assert not metrics[name]["available"] and metrics[name]["reason"], name


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.cells.append(data.strip())


def test_report_writes_html_and_valid_pngs(result, tmp_path):
    page = write_report([result], tmp_path / "report")
    assert page.name == "report.html"
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    kinds = {name.rsplit("_", 1)[-1] for name in parser.images}
    assert kinds == {"emotion.png", "csim.png", "mouth.png", "pose.png", "frames.png"}
    for name in parser.images:
        with Image.open(page.parent / name) as png:
            png.verify()
            assert png.format == "PNG" and png.size[0] > 300
    for name in METRIC_NAMES:
        assert name in parser.cells
    if os.environ.get("PORTRAIT_KEEP_REPORT"):  # to look at it by hand
        write_report([result], Path(os.environ["PORTRAIT_KEEP_REPORT"]))
