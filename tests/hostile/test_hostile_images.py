"""Hostile images: EPS content named .png, extreme aspect ratios, huge working and output sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait.errors import InputError
from portrait.preprocess.image import MAX_WORKING_SIDE, load_image, resize_to_reference
from portrait.render.paste import DEFAULT_MAX_SIDE, canvas_size

_EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 64 64
%%EndComments
newpath 0 0 moveto 64 64 lineto stroke
showpage
%%EOF
"""


def test_eps_named_png_is_refused_before_any_interpreter(tmp_path: Path) -> None:
    path = tmp_path / "face.png"
    path.write_bytes(_EPS)
    with Image.open(path) as opened:  # what Pillow would have done without a format list
        assert opened.format == "EPS"
    with pytest.raises(InputError, match="not a JPEG, PNG or WebP image"):
        load_image(path)


def test_other_formats_are_refused_too(tmp_path: Path) -> None:
    path = tmp_path / "face.jpg"
    Image.new("RGB", (32, 32), "gray").save(path, format="BMP")
    with pytest.raises(InputError, match="not a JPEG, PNG or WebP image"):
        load_image(path)


def test_extreme_aspect_ratio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    Image.new("RGB", (16384, 64), "white").save(path, optimize=True)
    assert path.stat().st_size < 20_000
    with pytest.raises(InputError, match=r"16384x64, more elongated than 8:1"):
        load_image(path)


def test_working_size_is_capped() -> None:
    assert resize_to_reference((512 * 8, 512)) == (4096, 512)
    with pytest.raises(InputError, match=f"working size; the limit is {MAX_WORKING_SIDE} px"):
        resize_to_reference((16384, 64))
    with pytest.raises(InputError, match="working size"):
        resize_to_reference((512, 512), min_resolution=8192)


def test_full_frame_output_is_capped_by_default() -> None:
    assert canvas_size((7071, 7071)) == (DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE)
    assert canvas_size((7071, 3535)) == (4096, 2046)
    assert canvas_size((1001, 600)) == (1000, 600)  # below the cap: unchanged (even-rounded)
    assert canvas_size((7071, 7071), max_size=1000) == (1000, 1000)


def test_ordinary_images_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    for fmt, name in (("PNG", "a.png"), ("WEBP", "b.webp"), ("JPEG", "c.jpg")):
        extra = {"lossless": True} if fmt == "WEBP" else {}
        Image.fromarray(array).save(tmp_path / name, format=fmt, **extra)
        assert load_image(tmp_path / name).size == (40, 48)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "a.png")), array)
