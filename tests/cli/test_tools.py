"""The `download`, `doctor` and `emotions` subcommands (portrait.cli.download, .doctor, .emotions)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
from tiny_inputs import modules_imported_by

from portrait.cli import doctor, download, emotions
from portrait.errors import WeightsError
from portrait.layout import RELEASE_EMOTIONS
from portrait.preprocess.detectors import YOLO_WEIGHTS

CORRUPTED = "pose_guider/diffusion_pytorch_model.safetensors"


def _parse(add_arguments, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def tree(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of the complete tiny tree, with a YOLO file so that face detection never depends on
    whether dlib is installed."""
    root = Path(shutil.copytree(tiny_weights, tmp_path / "weights"))
    (root / YOLO_WEIGHTS).parent.mkdir()
    (root / YOLO_WEIGHTS).write_bytes(b"detector")
    return root


def test_parsing_imports_nothing_heavy() -> None:
    code = (
        "import sys, argparse\nfrom portrait.cli import doctor, download, emotions\n"
        "for add in (download.add_download_arguments, doctor.add_doctor_arguments, "
        "emotions.add_emotions_arguments):\n    add(argparse.ArgumentParser())"
    )
    assert modules_imported_by(code, ("torch", "diffusers", "transformers", "huggingface_hub")) == []


def test_download_resolves_the_weights_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    import portrait.weights.hub

    calls = []
    monkeypatch.setattr(
        portrait.weights.hub, "download_weights", lambda root, **kw: calls.append((root, kw)) or root
    )
    monkeypatch.setenv("PORTRAIT_WEIGHTS", str(tmp_path / "env"))
    args = _parse(download.add_download_arguments, ["--cache-dir", str(tmp_path / "cache")])
    assert download.run_download(args) == 0
    assert calls == [(tmp_path / "env", {"cache_dir": tmp_path / "cache", "offline": None, "progress": True})]
    assert f"weights ready in {tmp_path / 'env'}" in capsys.readouterr().out

    args = _parse(download.add_download_arguments, ["--weights", str(tmp_path / "w")])
    args.quiet = True
    download.run_download(args)
    assert calls[-1] == (tmp_path / "w", {"cache_dir": None, "offline": None, "progress": False})


def test_download_offline_error_propagates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="portrait-gen convert --from-dice-talk"):
        download.run_download(_parse(download.add_download_arguments, ["--weights", str(tmp_path / "w")]))


def test_doctor_passes_on_a_complete_tree(tree: Path, capsys) -> None:
    assert doctor.run_doctor(_parse(doctor.add_doctor_arguments, ["--weights", str(tree)])) == 0
    out = capsys.readouterr().out
    for needed in ("[  ok] ffmpeg:", f"[  ok] weights tree: {tree} complete", "[  ok] weights hashes:",
                   "[  ok] emotion priors: 8", "] interpolation:", "[  ok] face_detector: present",
                   "[  ok] torch:", "[  ok] diffusers:", "[  ok] transformers:", "device:",
                   "all required checks passed"):  # fmt: skip
        assert needed in out, needed
    assert "FAIL" not in out


def test_doctor_names_a_corrupted_file(tree: Path, capsys) -> None:
    path = tree / CORRUPTED
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert doctor.run_doctor(_parse(doctor.add_doctor_arguments, ["--weights", str(tree)])) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] weights hashes: 1 file(s) missing or differing from manifest.json: {CORRUPTED}" in out
    assert "1 required check(s) failed:" in out and "Traceback" not in out


def test_doctor_on_a_missing_tree(tmp_path: Path, capsys) -> None:
    assert doctor.run_doctor(_parse(doctor.add_doctor_arguments, ["--weights", str(tmp_path / "no")])) == 1
    out = capsys.readouterr().out
    assert f"[FAIL] weights tree: {tmp_path / 'no'} does not exist" in out
    assert "weights hashes" not in out


def test_doctor_reports_a_missing_manifest_and_ffmpeg(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from portrait import ffmpeg
    from portrait.errors import FFmpegError

    def no_ffmpeg():
        raise FFmpegError("ffmpeg is not on PATH and imageio-ffmpeg is not installed")

    monkeypatch.setattr(ffmpeg, "ffmpeg_binary", no_ffmpeg)
    (tree / "manifest.json").unlink()
    shutil.rmtree(tree / "interpolation", ignore_errors=True)
    checks = {c.name: c for c in doctor.doctor_checks(tree)}
    assert not checks["interpolation"].ok and not checks["interpolation"].required
    assert "[warn] interpolation: absent (optional)" == checks["interpolation"].line()
    assert not checks["ffmpeg"].ok and "imageio-ffmpeg" in checks["ffmpeg"].detail
    assert not checks["weights hashes"].ok and "manifest.json is missing" in checks["weights hashes"].detail
    assert checks["weights tree"].ok


def test_emotions_lists_the_bank(tiny_weights: Path, capsys) -> None:
    assert (
        emotions.run_emotions(_parse(emotions.add_emotions_arguments, ["--weights", str(tiny_weights)])) == 0
    )
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and "-d prior" in line]
    assert listed == sorted(RELEASE_EMOTIONS)
    for example in ("sad:0.6", "happy:0.6+surprised:0.4", '"0:neutral, 2.5:happy"'):
        assert example in out


def test_emotions_without_priors(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="no emotion priors"):
        emotions.run_emotions(_parse(emotions.add_emotions_arguments, ["--weights", str(tmp_path)]))
