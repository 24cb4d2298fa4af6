"""Hostile weights: a TorchScript face detector is loaded only when its sha256 is allow-listed; hub files
are fetched at a named revision and checked before they are recorded; dead converters' folders are swept."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from portrait.errors import WeightsError
from portrait.files import owned_prefix, owner_state, sha256_file, sweep_dead_owners
from portrait.preprocess import detectors
from portrait.preprocess.detectors import (
    YOLO_WEIGHTS,
    DlibDetector,
    YoloFaceDetector,
    detector_from_name,
    yolo_allow_list,
)


class _Script(torch.nn.Module):
    def forward(self, x: torch.Tensor, grids: list[torch.Tensor]) -> torch.Tensor:
        return torch.zeros(1, 0, 16)


@pytest.fixture
def yolo_root(tmp_path: Path) -> Path:
    """A weights root holding a scripted stand-in for yoloface_v5m.pt (on no allow-list)."""
    path = tmp_path / YOLO_WEIGHTS
    path.parent.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(_Script()), str(path))
    return tmp_path


@pytest.fixture
def jit_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every ``torch.jit.load`` call is recorded, then performed."""
    calls: list[str] = []
    real = torch.jit.load

    def spy(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", spy)
    return calls


def test_auto_never_loads_an_unlisted_detector(yolo_root: Path, jit_calls: list[str], caplog) -> None:
    digest = sha256_file(yolo_root / YOLO_WEIGHTS)
    detectors._UNLISTED_WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="portrait.preprocess.detectors"):
        first = detector_from_name("auto", yolo_root)
        second = detector_from_name("auto", yolo_root)
    assert isinstance(first, DlibDetector) and isinstance(second, DlibDetector)
    assert jit_calls == []  # the file was never handed to TorchScript
    warned = [r for r in caplog.records if "not loading the face detector" in r.getMessage()]
    assert len(warned) == 1 and f"--yolo-sha256 {digest}" in warned[0].getMessage()


def test_auto_loads_an_allow_listed_detector(yolo_root: Path, jit_calls: list[str]) -> None:
    digest = sha256_file(yolo_root / YOLO_WEIGHTS)
    found = detector_from_name("auto", yolo_root, yolo_sha256=f"{'0' * 64}, {digest.upper()}")
    assert isinstance(found, YoloFaceDetector)
    assert jit_calls == [str(yolo_root / YOLO_WEIGHTS)]


def test_explicit_yolo_with_an_unlisted_file_names_the_digest(yolo_root: Path, jit_calls: list[str]) -> None:
    digest = sha256_file(yolo_root / YOLO_WEIGHTS)
    with pytest.raises(WeightsError, match=f"--yolo-sha256 {digest}") as caught:
        detector_from_name("yolo", yolo_root)
    assert caught.value.hint == "dlib_detector"
    with pytest.raises(WeightsError, match="not an allowed one"):
        detector_from_name("yolo", yolo_root, yolo_sha256="ab" * 32)
    assert jit_calls == []


def test_allow_list_parsing() -> None:
    a, b = "AB" * 32, "cd" * 32
    assert yolo_allow_list(None) == frozenset()  # nothing pinned: the release digest is not verified yet
    assert yolo_allow_list(f"{a},{b}") == {a.lower(), b}
    assert yolo_allow_list([a]) == {a.lower()}


def test_cli_flag_reaches_the_config() -> None:
    import argparse

    from portrait.cli.common import add_runtime_arguments, runtime_values
    from portrait.config import load_config

    parser = argparse.ArgumentParser()
    add_runtime_arguments(parser)
    values = runtime_values(parser.parse_args(["--yolo-sha256", "ab" * 32]))
    assert load_config(values=values).preprocess.yolo_sha256 == "ab" * 32


# ------------------------------------------------------------------------------------------- download


def test_hub_files_are_fetched_at_a_revision_and_checked(tmp_path: Path) -> None:
    from portrait.weights import hub, sources

    asked: list[dict] = []
    payload = {"a.bin": b"good", "b.bin": b"evil"}

    def snapshot(repo_id: str, *, local_dir: str, allow_patterns: list[str], revision: str) -> None:
        asked.append({"repo": repo_id, "revision": revision})
        for name in allow_patterns:
            (Path(local_dir) / name).write_bytes(payload[name])

    repo = sources.HubRepo("owner/repo", "r", ("a.bin", "b.bin"), revision="main")
    import hashlib

    good = hashlib.sha256(b"good").hexdigest()
    records = hub._fetch_repo(repo, tmp_path, snapshot, "c0ffee", {"a.bin": good, "b.bin": None})
    assert asked == [{"repo": "owner/repo", "revision": "c0ffee"}]
    assert records["owner/repo/a.bin"] == {"revision": "c0ffee", "sha256": good, "verified": True}
    assert records["owner/repo/b.bin"]["verified"] is False
    with pytest.raises(WeightsError, match="not the pinned"):
        hub._fetch_repo(repo, tmp_path, snapshot, "c0ffee", {"a.bin": good, "b.bin": good})
    assert not (tmp_path / "r" / "b.bin").exists()  # a mismatching file is deleted, never recorded


def test_every_hub_repo_has_a_revision_and_a_digest_table() -> None:
    from portrait.weights import sources

    for repo in sources.HUB_REPOS:
        assert sources.HUB_REVISIONS[repo.repo_id] == repo.revision and repo.revision
        assert set(sources.HUB_SHA256[repo.repo_id]) == set(repo.files)


def test_manifest_records_sources(tmp_path: Path) -> None:
    from portrait.weights.manifest import write_manifest

    (tmp_path / "face_detector").mkdir()
    (tmp_path / "face_detector" / "yoloface_v5m.pt").write_bytes(b"x")
    sources = {"o/r/yoloface_v5m.pt": {"revision": "main", "sha256": "s", "verified": False}}
    manifest = json.loads(write_manifest(tmp_path, sources=sources).read_text())
    assert manifest["sources"] == sources and "face_detector/yoloface_v5m.pt" in manifest["files"]


# ----------------------------------------------------------------------------------- work folders


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, timeout=60
    )
    return int(done.stdout)


def test_owned_names_and_dead_owner_sweep(tmp_path: Path) -> None:
    mine = owned_prefix(".partial-")
    assert owner_state(mine + "abc") == "alive"
    dead = tmp_path / f"{mine.rsplit('-', 2)[0]}-{_dead_pid()}-abc"
    live = tmp_path / f"{mine}x"
    foreign = tmp_path / ".partial-otherhost-1-x"
    unowned = tmp_path / ".partial-1234abcd"
    for folder in (dead, live, foreign, unowned):
        folder.mkdir()
    assert owner_state(dead.name) == "dead" and owner_state(foreign.name) is None
    assert sweep_dead_owners(tmp_path, (".partial-",)) == [dead]
    assert live.is_dir() and foreign.is_dir() and unowned.is_dir() and not dead.exists()


def test_convert_sweeps_a_killed_converters_folder(tmp_path: Path) -> None:
    from portrait.testing.trees import write_tiny_weights
    from portrait.weights.convert import convert_dice_talk

    release = write_tiny_weights(tmp_path / "release", layout="dice-talk", seed=0)
    dst = tmp_path / "weights"
    dst.mkdir()
    left = dst / f"{owned_prefix('.partial-').rsplit('-', 2)[0]}-{_dead_pid()}-dead"
    (left / "unet").mkdir(parents=True)
    convert_dice_talk(release, dst)  # not --overwrite: the dead converter's folder alone does not block it
    assert not left.exists()
    assert not [p for p in dst.iterdir() if p.name.startswith(".partial-")]
    assert (dst / "manifest.json").is_file()
