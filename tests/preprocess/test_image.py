"""Portrait preprocessing: decoding, face detection and choice, crop box, face mask, resize and tensors."""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from portrait.errors import HINT_FACE_BOX, ConfigError, InputError, NoFaceError, WeightsError
from portrait.files import sha256_file
from portrait.preprocess.detectors import (
    DlibDetector,
    Face,
    InsightFaceDetector,
    YoloFaceDetector,
    _resize_linear,
    decode_yolo_rows,
    detector_from_name,
    nms,
    yolo_grids,
    yolo_input_size,
)
from portrait.preprocess.face import (
    check_face_box,
    crop_image,
    parse_face_box,
    reference_crop_box,
    select_face,
)
from portrait.preprocess.image import (
    CLIP_MEAN,
    CLIP_STD,
    clip_pixel_values,
    face_mask_array,
    load_image,
    prepare_portrait,
    resize_to_reference,
)


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(skimage_data.astronaut())


def bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- resize rule


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((1451, 1451), (512, 512)),
        ((1920, 1080), (896, 512)),
        ((900, 700), (640, 512)),
        ((1080, 1920), (512, 896)),
        ((544, 512), (512, 512)),  # 544/64 = 8.5 -> 8 (half-to-even; half-up would give 576)
        ((608, 512), (640, 512)),  # 9.5 -> 10
        ((512, 512), (512, 512)),
    ],
)
def test_resize_to_reference(size, expected):
    assert resize_to_reference(size) == expected


def test_resize_to_reference_other_resolution_and_bad_size():
    assert resize_to_reference((96, 80), min_resolution=64) == (64, 64)  # 96·0.8/64 = 1.2 -> 1
    with pytest.raises(InputError):
        resize_to_reference((0, 10))


# ---------------------------------------------------------------------------------------------- face mask


def test_face_mask_floor_arithmetic_hand_worked():
    # x2 = 41.5, y2 = 61.5; ww = 31·1.1 = 34.1 -> //2 = 17; hh = 45.1 -> 22; cx = 52 // 2 = 26;
    # cy = 82 // 2 = 41 -> columns 9..42, rows 19..62.
    mask = face_mask_array((10.5, 20.5, 31.0, 41.0), (100, 80), area=1.1)
    assert mask.shape == (80, 100, 3) and mask.dtype == np.uint8
    rows, cols = np.nonzero(mask[:, :, 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (19, 62, 9, 42)
    assert set(np.unique(mask)) == {0, 255}
    assert (mask[:, :, 0] == mask[:, :, 1]).all() and (mask[:, :, 0] == mask[:, :, 2]).all()


def test_face_mask_clipped_at_border_and_empty():
    # Box (-5, -5, 20, 20): cx = 10 // 2 = 5, ww = 22 -> X1 = max(5 - 11, 0) = 0, X2 = 16.
    mask = face_mask_array((-5.0, -5.0, 20.0, 20.0), (30, 30))
    rows, cols = np.nonzero(mask[:, :, 0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (0, 15, 0, 15)
    # Right edge: X2 = min(cx + ww // 2, W).
    mask = face_mask_array((20.0, 0.0, 20.0, 10.0), (30, 30))
    assert np.nonzero(mask[:, :, 0])[1].max() == 29
    with pytest.raises(InputError, match="covers no pixel"):
        face_mask_array((100.0, 100.0, 10.0, 10.0), (30, 30))


# ---------------------------------------------------------------------------------------------- tensors


def test_prepare_portrait_resized_matches_reference_recipe():
    image = random_image(96, 80)
    box = (20.0, 15.0, 40.0, 44.0)
    out = prepare_portrait(image, box, min_resolution=64)
    assert out.size == (64, 64) and out.face_box == box
    assert out.ref_image.shape == (1, 3, 64, 64) and out.ref_image.dtype == torch.float32
    assert out.face_mask.shape == (1, 3, 64, 64) and out.clip_image.shape == (1, 3, 224, 224)

    resized = image.resize((64, 64), Image.LANCZOS)
    expected_ref = (torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255 - 0.5) / 0.5
    assert torch.equal(out.ref_image[0], expected_ref)
    assert out.ref_image.min() >= -1 and out.ref_image.max() <= 1

    mask = out.face_mask[0]
    assert mask.min() >= 0 and mask.max() <= 1
    assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])
    assert len(torch.unique(mask)) > 2, "LANCZOS makes the mask non-binary, as in the reference"
    expected_mask = Image.fromarray(face_mask_array(box, (96, 80))).resize((64, 64), Image.LANCZOS)
    expected_mask = torch.from_numpy(np.asarray(expected_mask).copy()).permute(2, 0, 1).float() / 255
    assert torch.equal(mask, expected_mask)


def test_prepare_portrait_same_size_is_not_resampled():
    image = random_image(128, 64, seed=1)
    out = prepare_portrait(image, (10.0, 10.0, 20.0, 20.0), min_resolution=64)
    assert out.size == (128, 64)
    assert set(torch.unique(out.face_mask).tolist()) == {0.0, 1.0}
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float()
    assert torch.equal(out.ref_image[0], (pixels / 255 - 0.5) / 0.5)  # the original pixels, untouched


def test_prepare_portrait_rejects_non_rgb():
    with pytest.raises(InputError, match="RGB"):
        prepare_portrait(Image.new("L", (64, 64)), (1.0, 1.0, 10.0, 10.0), min_resolution=64)


def test_clip_input_matches_clip_image_processor():
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessor()  # library defaults, as the reference
    image = random_image(224, 224, seed=2)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
    ours = clip_pixel_values(image)
    assert ours.dtype == torch.float32 and torch.equal(ours, expected)
    assert tuple(processor.image_mean) == CLIP_MEAN and tuple(processor.image_std) == CLIP_STD

    portrait = random_image(80, 64, seed=3)
    out = prepare_portrait(portrait, (10.0, 10.0, 30.0, 30.0), min_resolution=64)
    squashed = portrait.resize(out.size, Image.LANCZOS).resize((224, 224), Image.LANCZOS)
    assert torch.equal(out.clip_image[0], processor(images=squashed, return_tensors="pt")["pixel_values"][0])


def test_clip_input_rejects_wrong_size():
    with pytest.raises(InputError):
        clip_pixel_values(random_image(200, 224))


# ---------------------------------------------------------------------------------------------- decoding


def test_exif_orientation_applied_by_default(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(array).save(path, exif=exif, quality=95)

    upright = np.asarray(load_image(path))
    assert upright.shape == (40, 20, 3)
    assert upright[:15, :, 0].mean() > 200 and upright[25:, :, 0].mean() < 50  # left half went to the top
    as_reference = load_image(path, respect_exif=False)
    assert as_reference.size == (40, 20) and as_reference.mode == "RGB"


def test_alpha_composited_on_white_or_dropped_as_reference(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:2] = (255, 0, 0, 255)  # opaque red
    rgba[2] = (0, 0, 0, 0)  # transparent black
    rgba[3] = (255, 0, 0, 128)  # half-transparent red
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)

    out = np.asarray(load_image(path)).astype(int)
    assert (out[0] == (255, 0, 0)).all() and (out[2] == 255).all()
    assert (out[3, :, 0] == 255).all() and (np.abs(out[3, :, 1] - 127) <= 1).all()
    dropped = np.asarray(load_image(path, composite_alpha=False))
    assert (dropped[2] == 0).all() and (dropped[3] == (255, 0, 0)).all()

    la_path = tmp_path / "la.png"
    Image.fromarray(np.array([[[10, 0], [10, 255]]], dtype=np.uint8), "LA").save(la_path)
    assert np.asarray(load_image(la_path))[0].tolist() == [[255, 255, 255], [10, 10, 10]]


def test_unusable_files_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(InputError, match="notes.png"):
        load_image(text)

    full = tmp_path / "full.jpg"
    random_image(64, 64).save(full, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.jpg"):
        load_image(truncated)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims ``width``×``height`` but which holds no pixel data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_huge_images_rejected_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 30000, 30000)
    with pytest.raises(InputError, match="too large"):
        load_image(bomb)
    wide = tmp_path / "wide.png"
    _png_header_only(wide, 20000, 10)
    with pytest.raises(InputError, match="too large"):
        load_image(wide)
    small = tmp_path / "small.png"
    random_image(20, 20).save(small)
    with pytest.raises(InputError, match="too large"):
        load_image(small, max_pixels=100)
    assert load_image(small).size == (20, 20)


# ---------------------------------------------------------------------------------------------- detection


def test_dlib_finds_the_astronaut(astronaut):
    faces = DlibDetector().detect(bgr(astronaut))
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    assert 0 <= x and 0 <= y and x + w <= 512 and y + h <= 512
    assert 0.02 <= w * h / (512 * 512) <= 0.30


def two_face_canvas(astronaut: Image.Image) -> Image.Image:
    head = astronaut.crop((130, 20, 310, 230))
    canvas = Image.new("RGB", (480, 256), (128, 128, 128))
    canvas.paste(head, (10, 20))
    canvas.paste(head.resize((126, 147), Image.LANCZOS), (300, 60))
    return canvas


def test_two_faces_and_selection_modes(astronaut):
    faces = DlibDetector().detect(bgr(two_face_canvas(astronaut)))
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score
    big = max(faces, key=lambda f: f.area)
    small = min(faces, key=lambda f: f.area)
    assert big.box[0] < 240 < small.box[0]  # the big head was pasted on the left
    assert select_face(faces, "largest") is big
    assert select_face(faces, "reference") is (faces[1] if faces[1].area > faces[0].area else faces[0])
    assert select_face(faces, index=0) is big and select_face(faces, index=1) is small
    with pytest.raises(InputError, match="out of range"):
        select_face(faces, index=2)


def test_blank_image_has_no_face():
    faces = DlibDetector().detect(np.full((128, 128, 3), 200, dtype=np.uint8))
    assert faces == []
    with pytest.raises(NoFaceError, match="blank.png") as caught:
        select_face(faces, source="blank.png")
    assert caught.value.hint == HINT_FACE_BOX  # the CLI says --face-box, the web page Advanced → Face box


def _faces(areas: list[float]) -> list[Face]:
    return [Face((0.0, 0.0, a, 1.0), score=1.0 - i * 0.1) for i, a in enumerate(areas)]


def test_select_face_reference_quirk():
    faces = _faces([4, 9, 6])
    assert select_face(faces, "reference") is faces[2]  # last beating face 0, not the largest
    assert select_face(faces, "largest") is faces[1]
    faces = _faces([5, 3, 2])
    assert select_face(faces, "reference") is faces[0]
    assert select_face(faces, index=2) is faces[2]
    with pytest.raises(ConfigError):
        select_face(faces, "biggest")


def test_parse_and_check_face_box():
    assert parse_face_box("10, 20.5,30,40") == (10.0, 20.5, 30.0, 40.0)
    for bad in ["1,2,3", "a,b,c,d", "1,2,0,4", "1,2,3,-4", "1,2,nan,4", "1,2,3,4,5"]:
        with pytest.raises(InputError):
            parse_face_box(bad)
    check_face_box((-5.0, -5.0, 10.0, 10.0), (64, 64))
    for box in [(64.0, 0.0, 10.0, 10.0), (-10.0, 0.0, 10.0, 10.0), (0.0, 70.0, 5.0, 5.0)]:
        with pytest.raises(InputError, match="does not overlap"):
            check_face_box(box, (64, 64))


# ---------------------------------------------------------------------------------------------- crop box


def test_reference_crop_box_hand_computed():
    # E = [75, 70, 175, 190]: taller than wide, face centred -> square of side 100 centred on (125, 130).
    assert reference_crop_box((100, 100, 50, 60), 400, 400) == (75, 80, 175, 180)
    # At the border: E = [0, 0, 70, 60] (wider), face centre 30 vs 35 -> shifted left by 5.
    assert reference_crop_box((10, 5, 40, 40), 200, 60) == (0, 0, 60, 60)
    # Half-to-even: E = [74.5, 75, 174.5, 175] -> round(74.5) = 74, round(174.5) = 174.
    assert reference_crop_box((99.5, 100, 50, 50), 400, 400) == (74, 75, 174, 175)


def test_crop_image_clips_to_image():
    image = random_image(40, 30)
    crop = crop_image(image, (5, 5, 25, 25))
    assert crop.size == (20, 20)
    assert np.array_equal(np.asarray(crop), np.asarray(image)[5:25, 5:25])
    assert crop_image(image, (30, 20, 60, 60)).size == (10, 10)
    with pytest.raises(InputError):
        crop_image(image, (50, 50, 60, 60))


# ---------------------------------------------------------------------------------------------- YOLO path


def test_yolo_resize_rule_and_grids():
    assert yolo_input_size(100, 200) == (416, 832)
    assert yolo_input_size(1080, 1920) == (416, 768)  # 1920·416/1080 = 739.6; int(770.6) // 32 · 32
    grids = yolo_grids(416, 832)
    assert [tuple(g.shape) for g in grids] == [(1, 1, 52, 104, 2), (1, 1, 26, 52, 2), (1, 1, 13, 26, 2)]
    assert grids[0][0, 0, 3, 7].tolist() == [7.0, 3.0]  # (x, y)


def test_nms_greedy_by_score():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]]).float()
    scores = torch.tensor([0.6, 0.9, 0.7, 0.8])
    # 1 keeps; 0 overlaps 1 (IoU 0.68) -> dropped; 3 vs 1: IoU 36/(100+50-36) = 0.32 -> kept.
    assert nms(boxes, scores, 0.45).tolist() == [1, 3, 2]


#: Decoded rows (cx, cy, bw, bh, obj, 10 landmark coords, cls) in network pixels for a 416×832 input.
_ROWS = [
    [100, 100, 40, 60, 0.9] + [100, 90] * 5 + [0.9],  # conf 0.81 -> kept first
    [102, 101, 40, 60, 1.0] + [0, 0] * 5 + [0.7],  # conf 0.70, overlaps the first -> suppressed
    [400, 200, 80, 80, 0.8] + [410, 210] * 5 + [0.75],  # conf 0.60 -> kept second
    [600, 300, 50, 50, 0.4] + [0, 0] * 5 + [1.0],  # obj <= 0.5 -> dropped
    [700, 100, 50, 50, 0.9] + [0, 0] * 5 + [0.5],  # conf 0.45 -> dropped
]


class _FakeYolo(torch.nn.Module):
    """Checks the input it gets like the real head would see it, and returns fixed decoded rows."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rows", torch.tensor([_ROWS], dtype=torch.float32))

    def forward(self, img: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        assert img.shape == (1, 3, 416, 832)
        assert float(img[0, 2].min()) == 1.0 and float(img[0, 0].max()) == 0.0  # BGR blue -> RGB channel 2
        assert grids[0].shape == (1, 1, 52, 104, 2) and grids[2].shape == (1, 1, 13, 26, 2)
        return self.rows


@pytest.fixture
def fake_yolo(tmp_path) -> Path:
    path = tmp_path / "face_detector" / "yoloface_v5m.pt"
    path.parent.mkdir()
    with warnings.catch_warnings():  # TorchScript is deprecated in torch 2.13; the reference detector uses it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_FakeYolo()), str(path))
    return path


def test_yolo_detector_with_scripted_model(fake_yolo, caplog):
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, :, 0] = 255  # pure blue in BGR
    with caplog.at_level(logging.WARNING):
        detector = YoloFaceDetector(fake_yolo)
    assert "unverified" in caplog.text
    faces = detector.detect(image)
    assert len(faces) == 2
    sx, sy = 200 / 832, 100 / 416
    assert faces[0].score == pytest.approx(0.81) and faces[1].score == pytest.approx(0.6)
    assert faces[0].box == pytest.approx((80 * sx, 70 * sy, 120 * sx - 80 * sx, 130 * sy - 70 * sy))
    assert faces[1].box == pytest.approx((360 * sx, 160 * sy, 80 * sx, 80 * sy))
    assert faces[0].landmarks.shape == (5, 2)
    assert faces[0].landmarks[0] == pytest.approx((100 * sx, 90 * sy))

    digest = sha256_file(fake_yolo)
    assert len(YoloFaceDetector(fake_yolo, expected_sha256=digest).detect(image)) == 2
    with pytest.raises(WeightsError, match="sha256"):
        YoloFaceDetector(fake_yolo, expected_sha256="0" * 64)


def test_yolo_rejects_non_torchscript_file(tmp_path):
    path = tmp_path / "state_dict.pt"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match="TorchScript"):
        YoloFaceDetector(path, expected_sha256=sha256_file(path))
    with pytest.raises(WeightsError, match="not found"):
        YoloFaceDetector(tmp_path / "missing.pt")


def test_linear_resize_uses_half_pixel_centres():
    # cv2.INTER_LINEAR / align_corners=False: 2 -> 4 samples at x = -0.25 (clamped), 0.25, 0.75, 1.25.
    image = np.zeros((2, 2, 3), dtype=np.uint8)
    image[:, 1] = 200
    out = _resize_linear(image, 4, 4)
    assert out.dtype == np.uint8 and out[0, :, 0].tolist() == [0, 50, 150, 200]
    assert np.array_equal(_resize_linear(image, 2, 2), image)


def test_decode_yolo_rows_empty():
    rows = torch.tensor(_ROWS[3:], dtype=torch.float32)
    assert decode_yolo_rows(rows, (416, 832), (100, 200)) == []


# ---------------------------------------------------------------------------------------------- factory


def test_detector_from_name(tmp_path, fake_yolo):
    assert isinstance(detector_from_name("auto", tmp_path / "nowhere"), DlibDetector)
    assert isinstance(detector_from_name("auto", None), DlibDetector)
    # A YOLO file whose sha256 is not on the allow-list is never loaded by auto (TorchScript runs code):
    # auto falls back to the next detector; once its digest is allow-listed, auto loads it.
    assert isinstance(detector_from_name("auto", fake_yolo.parents[1]), DlibDetector)
    digest = sha256_file(fake_yolo)
    assert isinstance(detector_from_name("auto", fake_yolo.parents[1], yolo_sha256=digest), YoloFaceDetector)
    with pytest.raises(WeightsError, match=f"--yolo-sha256 {digest}"):
        detector_from_name("yolo", fake_yolo.parents[1])
    with pytest.raises(ConfigError, match="unknown face detector"):
        detector_from_name("haar", tmp_path)
    with pytest.raises(WeightsError, match="yoloface_v5m.pt"):
        detector_from_name("yolo", tmp_path / "nowhere")
    with pytest.raises(WeightsError, match="buffalo_l"):
        detector_from_name("insightface", tmp_path)


def test_insightface_missing_files(tmp_path):
    (tmp_path / "models" / "buffalo_l").mkdir(parents=True)
    with pytest.raises(WeightsError, match=r"\.onnx"):
        InsightFaceDetector(tmp_path)
