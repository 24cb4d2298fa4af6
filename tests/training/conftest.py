"""Fixtures of the training tests: a four-clip MEAD-style dataset and its cache at 64 px."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_data import VIDEOS, mead_path, prepare, video


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mead")
    for i, (speaker, emotion, level) in enumerate(VIDEOS):
        video(mead_path(root, speaker, emotion, level), phase=i)
    return root


@pytest.fixture(scope="module")
def cache(dataset, tiny_weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    assert prepare(dataset, out, tiny_weights) == 0
    return out
