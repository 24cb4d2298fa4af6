"""A weights tree nobody can corrupt (issue 25, findings 7-10 and 13): ``train install`` re-blesses nothing
and copies no link, a bad custom prior breaks nothing, concurrent and failing ``emotions add`` leave a
consistent tree, names cannot squat, and ``doctor`` never shows a traceback."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest
import torch

from portrait.cli.doctor import doctor_checks
from portrait.cli.main import main
from portrait.errors import InputError, WeightsError
from portrait.layout import MANIFEST_FILE
from portrait.weights.emotion_bank import add_emotion, check_emotion_name
from portrait.weights.load import load_emotion_bank, verify_manifest


@pytest.fixture
def tree(hostile_weights: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(hostile_weights, tmp_path / "weights"))


def _prior(tree: Path, value: float = 1.0) -> torch.Tensor:
    return torch.full((1, load_emotion_bank(tree)["neutral"].shape[-1]), value)


def _manifest(tree: Path) -> dict:
    return json.loads((tree / MANIFEST_FILE).read_text())


def _run_folder(tmp_path: Path) -> Path:
    from portrait.testing.trees import write_tiny_emotion_embedder

    run = tmp_path / "run"
    write_tiny_emotion_embedder(run, seed=3)
    return run


# ------------------------------------------------------------------------------------------- train install
def test_install_never_reblesses_a_corrupted_file(tree: Path, tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    victim = tree / "vae" / "diffusion_pytorch_model.safetensors"
    with victim.open("ab") as stream:
        stream.write(b"tampered")
    manifest = (tree / MANIFEST_FILE).read_bytes()
    assert main(["train", "install", str(run), "--weights", str(tree)]) == 1
    assert (tree / MANIFEST_FILE).read_bytes() == manifest and not (tree / "emotion_embedder").exists()
    assert verify_manifest(tree) == ["vae/diffusion_pytorch_model.safetensors"]  # still detected


def test_install_keeps_every_other_record_and_copies_no_link(tree: Path, tmp_path: Path) -> None:
    from portrait.training.install import install_component

    manifest = _manifest(tree)
    manifest["sources"] = {
        "EEEELY/DICE-Talk/unet.pth": {"revision": "main", "sha256": "ab", "verified": False}
    }
    (tree / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    add_emotion(tree, "calm", _prior(tree))
    run = _run_folder(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2-install-secret")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.pem").write_text("hunter2-key")
    (run / "emotion_embedder" / "notes.txt").symlink_to(secret)
    (run / "emotion_embedder" / "data").symlink_to(tmp_path / "private", target_is_directory=True)
    assert install_component(run, tree) == ["emotion_embedder"]
    installed = sorted(p.name for p in (tree / "emotion_embedder").iterdir())
    assert installed == ["config.json", "model.safetensors"]
    after = _manifest(tree)
    assert after["sources"] == manifest["sources"] and after["custom_emotions"] == ["calm"]
    assert {k: v for k, v in after["files"].items() if not k.startswith("emotion_embedder/")} == {
        **manifest["files"],
        "emotions/calm.safetensors": after["files"]["emotions/calm.safetensors"],
    }
    assert verify_manifest(tree) == []
    everything = b"".join(p.read_bytes() for p in tree.rglob("*") if p.is_file())
    assert b"hunter2" not in everything
    (run / "emotion_embedder" / "model.safetensors").unlink()  # the weights file itself a link: refused
    (run / "emotion_embedder" / "model.safetensors").symlink_to(
        tree / "emotion_embedder" / "model.safetensors"
    )
    with pytest.raises(InputError, match="not a regular file"):
        install_component(run, tree)


# ------------------------------------------------------------------------------------------- custom priors
def test_a_truncated_custom_prior_is_left_out_not_fatal(tree: Path, capsys) -> None:
    path = add_emotion(tree, "calm", _prior(tree))
    path.write_bytes(path.read_bytes()[:40])  # a crash mid-write, or a damaged disk
    bank = load_emotion_bank(tree)
    assert "calm" not in bank and "happy" in bank
    assert main(["emotions", "list", "--weights", str(tree)]) == 0
    assert "happy" in capsys.readouterr().out
    checks = {c.name: c for c in doctor_checks(tree)}
    assert checks["emotion priors"].ok is False and "calm" in checks["emotion priors"].detail
    assert checks["weights hashes"].ok is False and "calm" in checks["weights hashes"].detail
    (tree / "emotions" / "happy.safetensors").write_bytes(b"\x00" * 10)  # a release prior stays an error
    with pytest.raises(WeightsError, match="happy.safetensors is not a readable safetensors file"):
        load_emotion_bank(tree)
    (tree / MANIFEST_FILE).write_text("{not json")
    checks = doctor_checks(tree)  # no traceback: every broken part is a failed line
    assert not {c.name: c for c in checks}["weights hashes"].ok


def _add(root: str, name: str, width: int, barrier, results) -> None:
    barrier.wait()
    try:
        add_emotion(Path(root), name, torch.full((1, width), float(len(name))))
        results.put((name, "ok"))
    except InputError as err:
        results.put((name, str(err)))


def test_concurrent_adds_are_all_recorded_and_one_name_wins_once(tree: Path) -> None:
    width = load_emotion_bank(tree)["neutral"].shape[-1]
    names = [f"mood{i}" for i in range(6)] + ["same"] * 4
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(len(names)), context.Queue()
    workers = [context.Process(target=_add, args=(str(tree), n, width, barrier, results)) for n in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    outcomes = [results.get(timeout=5) for _ in names]
    assert sorted(n for n, o in outcomes if o == "ok") == sorted([f"mood{i}" for i in range(6)] + ["same"])
    assert all("already exists" in o for n, o in outcomes if o != "ok")
    manifest = _manifest(tree)
    assert manifest["custom_emotions"] == sorted([f"mood{i}" for i in range(6)] + ["same"])
    assert verify_manifest(tree) == []
    assert not [p.name for p in (tree / "emotions").iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_full_disk_while_recording_leaves_the_tree_unchanged(tree: Path, monkeypatch) -> None:
    real = os.replace

    def full_disk(source, target):
        if Path(target).name == MANIFEST_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, target)

    manifest = (tree / MANIFEST_FILE).read_bytes()
    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        add_emotion(tree, "calm", _prior(tree))
    monkeypatch.undo()
    assert (tree / MANIFEST_FILE).read_bytes() == manifest
    assert "calm" not in load_emotion_bank(tree) and not (tree / "emotions" / "calm.safetensors").exists()
    assert verify_manifest(tree) == []


def test_names_that_would_squat_are_refused(tree: Path) -> None:
    for bad in ("calm\n", "CON", "nul", "Com1", "lpt9"):
        with pytest.raises(InputError, match="invalid emotion name"):
            check_emotion_name(bad)
    for squat in ("Happy", "HAPPY", "sAd"):
        with pytest.raises(InputError, match="release emotion"):
            add_emotion(tree, squat, _prior(tree))
    add_emotion(tree, "calm", _prior(tree))
    with pytest.raises(InputError, match="only in case"):
        add_emotion(tree, "Calm", _prior(tree), overwrite=True)
    assert sorted(p.stem for p in (tree / "emotions").glob("*.safetensors")).count("calm") == 1


def test_exclusive_writes_never_replace_a_file_even_without_hard_links(tmp_path: Path, monkeypatch) -> None:
    from portrait.files import write_bytes_durable

    target = tmp_path / "prior.safetensors"
    write_bytes_durable(target, b"first", exclusive=True)
    with pytest.raises(FileExistsError):
        write_bytes_durable(target, b"second", exclusive=True)
    monkeypatch.setattr(
        os, "link", lambda *a: (_ for _ in ()).throw(PermissionError(errno.EPERM, "no links"))
    )
    other = tmp_path / "other.safetensors"
    write_bytes_durable(other, b"third", exclusive=True)  # FAT, some network shares: no hard links
    with pytest.raises(FileExistsError):
        write_bytes_durable(other, b"fourth", exclusive=True)
    assert (target.read_bytes(), other.read_bytes()) == (b"first", b"third")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.safetensors", "prior.safetensors"]
