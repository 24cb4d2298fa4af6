"""Full-frame paste-back (compat §10): FramePaster on synthetic images, and tiny-weight CLI runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from media import seam_shift
from PIL import Image

from portrait.boxes import clip_box
from portrait.errors import InputError
from portrait.render.paste import FramePaster, canvas_size, crop_is_smaller, wants_full_frame

ASSETS = Path(__file__).resolve().parents[2] / "portrait" / "assets"
PORTRAIT = ASSETS / "sample_portrait.jpg"
#: dlib's face box on the sample portrait (x, y, w, h).
SAMPLE_FACE = (175.0, 76.0, 91.0, 91.0)


def _uniform(height: int, width: int, rgb=(120, 90, 60)) -> np.ndarray:
    return np.full((height, width, 3), rgb, np.uint8)


def _textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _solid_frames(n: int, rgb, size: int = 64) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32)[None, :, None, None].expand(n, 3, size, size).clone()


# --------------------------------------------------------------------------------------- sizes and modes
@pytest.mark.parametrize(
    "size, cap, expected",
    [
        ((901, 601), None, (900, 600)),
        ((600, 900), None, (600, 900)),
        ((1920, 1080), 1280, (1280, 720)),
        ((1080, 1921), 1280, (718, 1280)),
        ((640, 480), 1280, (640, 480)),
    ],
)
def test_canvas_size_is_even_and_capped(size, cap, expected):
    assert canvas_size(size, cap) == expected


def test_full_frame_modes():
    assert wants_full_frame("auto", (10, 10, 50, 50), (100, 80)) is True
    assert wants_full_frame("auto", (0, 0, 100, 80), (100, 80)) is False
    assert wants_full_frame("auto", (-5, -5, 120, 90), (100, 80)) is False  # clipped: the whole photo
    assert wants_full_frame(False, (10, 10, 50, 50), (100, 80)) is False
    assert wants_full_frame(True, (0, 0, 100, 80), (100, 80)) is True
    assert crop_is_smaller((0, 0, 100, 79), (100, 80))
    assert clip_box((-3, 4, 120, 50), (100, 80)) == (0, 4, 100, 50)
    with pytest.raises(InputError):
        wants_full_frame("sometimes", (0, 0, 1, 1), (2, 2))


# ------------------------------------------------------------------------------------------ the paster
def test_colour_matching_removes_the_seam_and_outside_is_untouched():
    photo = _uniform(300, 401)
    box, face = (100, 50, 300, 250), (150, 100, 100, 100)
    frames = _solid_frames(3, (0.8, 0.5, 0.9))  # much brighter and bluer than the photo
    matched = FramePaster(photo, box, face)
    out = matched.paste(frames)
    assert out.shape == (3, 300, 400, 3) and out.dtype == np.uint8
    assert seam_shift(out[0], matched) < 1.0
    assert np.abs(out[0, 150, 200].astype(int) - photo[150, 200]).max() <= 1  # core: the photo's colour
    raw = FramePaster(photo, box, face, color_match=False)
    plain = raw.paste(frames)
    assert seam_shift(plain[0], raw) > 30  # the metric does see an unmatched paste
    assert tuple(plain[0, 150, 200]) == (204, 128, 230)
    outside = matched.alpha == 0
    assert outside[:, :100].all() and outside[:, 300:].all() and outside[:50].all() and outside[250:].all()
    assert np.array_equal(out[:, outside], np.broadcast_to(photo[:300, :400][outside], out[:, outside].shape))


def test_pixels_with_zero_weight_equal_the_photo_exactly_with_texture_and_noise():
    photo = _textured(240, 321)
    paster = FramePaster(photo, (60, 40, 220, 200), (100, 80, 80, 80))
    frames = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    out = paster.paste(frames)
    zero = paster.alpha == 0
    assert zero.sum() > 0.5 * zero.size
    for frame in out:
        assert np.array_equal(frame[zero], photo[:240, :320][zero])
    assert not np.array_equal(out[0][~zero], photo[:240, :320][~zero])  # the crop did change


def test_feather_is_monotone_rounded_and_covers_the_face():
    photo = _uniform(400, 400)
    face = (150.0, 150.0, 100.0, 100.0)
    paster = FramePaster(photo, (100, 100, 300, 300), face)  # the reference crop (expand 0.5) of `face`
    alpha = paster.alpha
    assert alpha[150:250, 150:250].min() == 1.0  # the whole face box gets the animated pixels
    centre = 200
    for ray in (
        alpha[centre, centre:],
        alpha[centre, centre::-1],
        alpha[centre:, centre],
        alpha[centre::-1, centre],
    ):
        assert np.all(np.diff(ray) <= 1e-6), "weights must not rise away from the face"
        assert ray[0] == 1.0 and ray[-1] == 0.0
    diagonal = alpha[np.arange(200, 300), np.arange(200, 300)]
    assert np.all(np.diff(diagonal) <= 1e-6)
    band = paster.seam
    assert band.any() and 0 < alpha[band].min() and alpha[band].max() < 1
    # not a hard rectangle: at the same inset, a corner is faded more than the middle of a side
    inset = 100 + round(paster.gap_px + paster.feather_px) + 2
    assert alpha[inset, inset] < alpha[centre, inset] == 1.0
    assert alpha[100:102, 100:300].max() == 0 and alpha[:, 298:300].max() == 0  # gap at the crop border
    assert paster.feather_px == pytest.approx(10.0)  # feather 0.1 × face box side


def test_face_at_the_border_is_not_faded_against_the_border():
    photo = _textured(360, 201, seed=1)  # portrait orientation, odd width
    face = (0.0, 120.0, 70.0, 70.0)
    crop = (0, 110, 105, 215)  # clipped by the left photo border
    paster = FramePaster(photo, crop, face)
    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = paster.paste(frames)
    assert out.shape == (2, 360, 200, 3)
    assert paster.alpha[130:180, 0].min() == 1.0  # the open side keeps full weight up to the border
    assert paster.alpha[150, 104] == 0.0  # the inner side fades out
    assert np.all(np.diff(paster.alpha[150, :105]) <= 1e-6)
    zero = paster.alpha == 0
    assert np.array_equal(out[1][zero], photo[:, :200][zero])


def test_crop_reaching_the_dropped_odd_column_and_past_the_photo():
    photo = _textured(101, 151, seed=2)
    paster = FramePaster(photo, (91, 41, 151, 101), (105.0, 55.0, 30.0, 30.0))
    out = paster.paste(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 100, 150, 3) and paster.alpha[70, 149] == 1.0  # open right side
    inner = FramePaster(photo, (90, 20, 150, 80), (105.0, 35.0, 30.0, 30.0))  # 1 px short of the border
    assert inner.alpha[50, 149] == 0.0 and inner.alpha[50, 120] == 1.0  # faded: no hard 1-px step
    padded = FramePaster(photo, (-20, -20, 60, 60), (0.0, 0.0, 40.0, 40.0))  # a crop padded past the photo
    out = padded.paste(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 100, 150, 3) and padded.alpha[0, 0] == 1.0


def test_max_size_downscales_photo_and_crop():
    photo = _textured(600, 900, seed=3)
    paster = FramePaster(photo, (300, 150, 500, 350), (350.0, 200.0, 100.0, 100.0), max_size=450)
    assert paster.size == (450, 300) and paster.box == (150, 75, 250, 175)
    expected = np.asarray(Image.fromarray(photo).resize((450, 300), Image.LANCZOS))
    out = paster.paste(torch.rand(1, 3, 64, 64))
    zero = paster.alpha == 0
    assert out.shape == (1, 300, 450, 3) and np.array_equal(out[0][zero], expected[zero])


def test_seam_stays_invisible_over_a_consistent_stream():
    """Frames like a trained model's: the photo's crop with a colour cast, plus motion in the face."""
    photo = _textured(200, 240, seed=4)
    photo = np.asarray(Image.fromarray(photo).resize((60, 50)).resize((240, 200), Image.BICUBIC))
    paster = FramePaster(photo, (60, 40, 180, 160), (90.0, 70.0, 60.0, 60.0))
    crop = torch.from_numpy(photo[40:160, 60:180].astype(np.float32) / 255).permute(2, 0, 1)
    shifts = []
    for i in range(6):
        frame = (crop * torch.tensor([0.8, 1.1, 0.9])[:, None, None] + 0.05).clamp(0, 1)
        frame[:, 40 + 3 * i : 70 + 3 * i, 50:80] = torch.rand(3, 30, 30)  # the "mouth" moves
        shifts.append(seam_shift(paster.paste(frame[None])[0], paster))
    raw = FramePaster(photo, (60, 40, 180, 160), (90.0, 70.0, 60.0, 60.0), color_match=False)
    assert max(shifts) < 1.0 and seam_shift(raw.paste(frame[None])[0], raw) > 5


def test_colour_statistics_are_fixed_by_the_first_frame():
    photo = _uniform(200, 200)
    paster = FramePaster(photo, (50, 50, 150, 150))
    first = paster.paste(_solid_frames(1, (0.3, 0.3, 0.3)))
    gain, offset = paster.gain.copy(), paster.offset.copy()
    later = paster.paste(_solid_frames(1, (0.6, 0.6, 0.6)))
    assert np.array_equal(gain, paster.gain) and np.array_equal(offset, paster.offset)
    assert later[0, 100, 100].mean() > first[0, 100, 100].mean() + 20  # brightening is kept, not re-matched


def test_bad_inputs_are_loud():
    with pytest.raises(InputError):
        FramePaster(np.zeros((10, 10), np.uint8), (0, 0, 5, 5))
    with pytest.raises(InputError):
        FramePaster(_uniform(10, 10), (20, 20, 30, 30))
    with pytest.raises(InputError):
        FramePaster(_uniform(10, 10), (0, 0, 5, 5)).paste(torch.rand(3, 8, 8))


# ------------------------------------------------------------------------------ end to end, tiny weights
@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from portrait.testing.trees import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("paste") / "w", layout="portrait", seed=1)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "tone.wav"
    t = np.arange(int(1.2 * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    return path


def _place(size: tuple[int, int], offset: tuple[int, int]) -> Image.Image:
    """The sample portrait on a colour-gradient background of ``size`` (W, H) at ``offset`` (may clip)."""
    width, height = size
    x = np.linspace(0, 1, width)[None, :, None]
    y = np.linspace(0, 1, height)[:, None, None]
    background = np.concatenate([40 + 180 * x + 0 * y, 200 - 120 * y + 0 * x, 90 + 60 * x * y], axis=2)
    canvas = Image.fromarray(background.astype(np.uint8))
    canvas.paste(Image.open(PORTRAIT).convert("RGB"), offset)
    return canvas


def _generate(
    weights: Path, speech: Path, image: Path, out: Path, *extra: str
) -> tuple[dict, list[np.ndarray]]:
    from portrait.cli.main import main

    frames_dir = out.with_suffix("")
    args = ["--weights", str(weights), "--image", str(image), "--audio", str(speech), "-o", str(out)]
    args += ["--size", "64", "--steps", "2", "--quiet", "--offline", "--no-interpolate"]
    assert main([*args, "--dump-frames", str(frames_dir), *extra]) == 0
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    frames = [np.asarray(Image.open(p)) for p in sorted(frames_dir.glob("*.png"))]
    assert len(frames) == sidecar["video_frames"] > 0
    return sidecar, frames


def _video_size(path: Path) -> tuple[int, int]:
    from media import probe_media

    video = next(s for s in probe_media(path)["streams"] if s["type"] == "video")
    return video["width"], video["height"]


def test_landscape_photo_keeps_size_and_outside_pixels(weights, speech, tmp_path):
    image = tmp_path / "landscape.png"
    _place((901, 601), (300, 40)).save(image)
    photo = np.asarray(Image.open(image))
    sidecar, frames = _generate(weights, speech, image, tmp_path / "land.mp4")
    assert sidecar["full_frame"] is True and sidecar["output_size"] == [900, 600]
    assert sidecar["size"] == [64, 64]  # the crop is animated at the working size
    x1, y1, x2, y2 = sidecar["crop_box"]
    assert 300 < x1 < x2 < 812 and 40 < y1 < y2 < 552  # around the face, inside the placed portrait
    paster = FramePaster(photo, (x1, y1, x2, y2), tuple(sidecar["face_box"]))
    outside = np.ones((600, 900), bool)
    outside[y1:y2, x1:x2] = False
    for frame in frames:
        assert frame.shape == (600, 900, 3)
        assert np.array_equal(frame[outside], photo[:600, :900][outside])
        assert np.array_equal(frame[paster.alpha == 0], photo[:600, :900][paster.alpha == 0])
    # the colour correction is fixed by the first frame; random tiny weights change every frame's global
    # colour (trained ones do not), so the seam is judged on the calibration frame
    assert seam_shift(frames[0], paster) < 1.5  # 8-bit levels
    assert not np.array_equal(frames[0][y1:y2, x1:x2], photo[y1:y2, x1:x2])
    assert _video_size(tmp_path / "land.mp4") == (900, 600)


def test_portrait_photo_with_face_at_the_border_and_max_size(weights, speech, tmp_path):
    image = tmp_path / "portrait.png"
    fx, fy = 5, 160
    _place((401, 720), (fx - int(SAMPLE_FACE[0]), fy - int(SAMPLE_FACE[1]))).save(image)
    box = f"{fx},{fy},{SAMPLE_FACE[2]:g},{SAMPLE_FACE[3]:g}"
    sidecar, frames = _generate(weights, speech, image, tmp_path / "edge.mp4", "--face-box", box)
    assert sidecar["full_frame"] is True and sidecar["crop_box"][0] == 0  # clipped by the border
    assert frames[0].shape == (720, 400, 3) and _video_size(tmp_path / "edge.mp4") == (400, 720)
    photo = np.asarray(Image.open(image))
    paster = FramePaster(photo, tuple(sidecar["crop_box"]), tuple(sidecar["face_box"]))
    x1, y1, x2, y2 = sidecar["crop_box"]
    assert np.array_equal(frames[-1][:, x2:], photo[:720, x2:400])
    assert seam_shift(frames[0], paster) < 1.5
    capped, small = _generate(
        weights, speech, image, tmp_path / "cap.mp4", "--face-box", box, "--max-size", "360"
    )
    assert capped["output_size"] == [200, 360] and small[0].shape == (360, 200, 3)


def test_no_full_frame_is_the_reference_output(weights, speech, tmp_path):
    image = tmp_path / "landscape.png"
    _place((900, 600), (300, 40)).save(image)
    sidecar, frames = _generate(weights, speech, image, tmp_path / "ref.mp4", "--no-full-frame")
    assert sidecar["full_frame"] is False and "crop_box" not in sidecar
    assert sidecar["output_size"] == sidecar["size"] == [128, 64]  # the whole photo, squashed
    assert frames[0].shape == (64, 128, 3) and _video_size(tmp_path / "ref.mp4") == (128, 64)
