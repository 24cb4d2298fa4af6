"""portrait.boxes: the face box and crop box conversions every layer shares."""

from __future__ import annotations

import pytest

from portrait.boxes import clip_box, corners, iou


def test_corners_of_a_face_box_are_floats():
    assert corners((10, 20, 30, 40)) == (10.0, 20.0, 40.0, 60.0)
    assert all(type(v) is float for v in corners((1, 2, 3, 4)))


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((0, 0, 10, 10), (0, 0, 10, 10), 1.0),
        ((0, 0, 10, 10), (5, 0, 10, 10), 50 / 150),
        ((0, 0, 10, 10), (20, 20, 5, 5), 0.0),  # apart
        ((0, 0, 10, 10), (10, 0, 10, 10), 0.0),  # touching edges
        ((0, 0, 0, 0), (0, 0, 0, 0), 0.0),  # empty: no division by zero
    ],
)
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_clip_box_keeps_what_a_crop_of_the_image_keeps():
    assert clip_box((-3, 4, 120, 50), (100, 80)) == (0, 4, 100, 50)
    assert clip_box((1.9, 2.2, 9.7, 8.1), (100, 80)) == (1, 2, 9, 8)  # int() truncates, as the slice
    x1, y1, x2, y2 = clip_box((90, 70, 120, 90), (80, 60))
    assert x2 <= x1 and y2 <= y1  # wholly outside: empty
