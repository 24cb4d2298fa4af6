"""Hostile emotion priors: tiny ``.npy`` files that describe huge arrays must be refused before allocating."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hostile_support import FAST, PORTRAIT, SPEECH, run_cli_measured

from portrait.errors import WeightsError
from portrait.weights.emotion_priors import load_emotion_prior

GIB = 1 << 30


class _HugeArray:
    """Pickles as ``numpy.ndarray((40000, 40000), "f4")``: 6.4 GB from a few hundred bytes."""

    def __reduce__(self):
        return (np.ndarray, ((40000, 40000), "f4"))


class _HugeReconstruct:
    """Pickles as numpy's ``_reconstruct(ndarray, (40000, 40000), b"b")``."""

    def __reduce__(self):
        return (np.empty(0).__reduce__()[0], (np.ndarray, (40000, 40000), b"b"))


def _pickled_prior(path: Path, payload: object) -> Path:
    holder = np.empty((), dtype=object)
    holder[()] = {"mu": payload}
    np.save(path, holder, allow_pickle=True)
    return path


def _plain_header_bomb(path: Path) -> Path:
    """A float32 ``.npy`` whose header claims (100000, 100000) with 16 bytes of data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)}
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 16)
    return path


def test_pickled_huge_ndarray_is_refused_before_allocation(tmp_path: Path) -> None:
    bomb = _pickled_prior(tmp_path / "bomb.npy", _HugeArray())
    assert bomb.stat().st_size < 1000
    with pytest.raises(WeightsError, match=r"shape \(40000, 40000\).*refusing to allocate"):
        load_emotion_prior(bomb)


def test_pickled_huge_reconstruct_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="refusing to allocate"):
        load_emotion_prior(_pickled_prior(tmp_path / "bomb.npy", _HugeReconstruct()))


def test_plain_npy_with_a_huge_header_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"shape \(100000, 100000\)"):
        load_emotion_prior(_plain_header_bomb(tmp_path / "plain.npy"))


def test_oversized_prior_file_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    with path.open("wb") as f:
        f.truncate(17 * 1024 * 1024)  # sparse
    with pytest.raises(WeightsError, match="too big for an emotion prior"):
        load_emotion_prior(path)


def test_real_priors_still_load(tmp_path: Path) -> None:
    mu = np.linspace(-1, 1, 256, dtype=np.float32).reshape(1, 256)
    got = load_emotion_prior(_pickled_prior(tmp_path / "ok.npy", mu))
    np.testing.assert_array_equal(got, mu)
    np.save(tmp_path / "plain.npy", mu)
    np.testing.assert_array_equal(load_emotion_prior(tmp_path / "plain.npy"), mu)


def test_cli_on_a_prior_bomb_exits_1_under_1_gib(hostile_weights: Path, tmp_path: Path) -> None:
    bomb = _pickled_prior(tmp_path / "bomb.npy", _HugeArray())
    out = tmp_path / "o" / "x.mp4"
    out.parent.mkdir()
    rc, _, stderr, rss = run_cli_measured(
        "--weights", str(hostile_weights), "--image", str(PORTRAIT), "--audio", str(SPEECH),
        "--emotion", str(bomb), "-o", str(out), *FAST,
    )  # fmt: skip
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert rc == 1 and len(errors) == 1 and "refusing to allocate" in errors[0], stderr
    print(f"peak RSS of the CLI on the prior bomb: {rss / 2**20:.0f} MiB")
    assert rss < GIB
    assert list(out.parent.iterdir()) == []
