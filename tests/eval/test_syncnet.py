"""SyncNet: architecture shapes, a tiny random network end to end, and the hash-checked weight files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from portrait.errors import WeightsError
from portrait.eval import sync
from portrait.files import sha256_file
from portrait.models.syncnet import SyncNet
from portrait.weights.syncnet import convert_syncnet_v2, load_syncnet


def _tiny(seed: int = 0) -> SyncNet:
    torch.manual_seed(seed)
    return SyncNet(embed_dim=32, width=0.0625).eval()


def test_full_size_architecture_matches_the_release_layout():
    with torch.device("meta"):
        net = SyncNet()
    state = net.state_dict()
    # regression pin of this implementation's size (13.6 M parameters, ~52 MB in fp32)
    assert sum(p.numel() for p in net.parameters()) == 13_631_616
    assert tuple(state["netcnnaud.0.weight"].shape) == (64, 1, 3, 3)
    assert tuple(state["netcnnlip.0.weight"].shape) == (96, 3, 5, 7, 7)
    assert tuple(state["netcnnlip.18.weight"].shape) == (512, 256, 1, 6, 6)
    assert tuple(state["netfclip.3.weight"].shape) == (1024, 512)
    assert tuple(state["netcnnaud.18.weight"].shape) == (512, 256, 5, 4)


def test_tiny_syncnet_forward_shapes_and_input_checks():
    net = _tiny()
    with torch.no_grad():
        audio, video = net(torch.randn(3, 1, 13, 20), torch.randn(3, 3, 5, 224, 224))
    assert audio.shape == (3, 32) and video.shape == (3, 32)
    with pytest.raises(ValueError, match="13, 20"):
        net.forward_audio(torch.randn(1, 1, 13, 19))
    with pytest.raises(ValueError, match="224"):
        net.forward_video(torch.randn(1, 3, 5, 112, 112))


def test_tiny_random_syncnet_gives_sync_c_and_d():
    frames, rate = 30, 16000
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, size=(frames, 224, 224, 3), dtype=np.uint8)
    samples = rng.normal(scale=0.1, size=frames * 640).astype(np.float32)
    coeffs = sync.mfcc(samples, rate)
    video, audio = sync.syncnet_embeddings(_tiny(), crops, coeffs, batch=8)
    assert video.shape == audio.shape == (frames - 5, 32)  # MFCC columns limit it: (119 - 20) // 4 + 1
    video, _ = sync.syncnet_embeddings(_tiny(), crops, coeffs, num_samples=len(samples))
    assert video.shape[0] == min(frames, len(samples) // 640) - 5  # syncnet_python's window count
    sync_c, sync_d, scores = sync.syncnet_metrics(_tiny(), crops, samples, "tiny")
    assert sync_c["available"] and sync_d["available"]
    assert len(scores["mean_distances"]) == 2 * sync.VSHIFT + 1
    assert sync_d["value"] == pytest.approx(min(scores["mean_distances"]))
    assert sync_c["value"] == pytest.approx(np.median(scores["mean_distances"]) - sync_d["value"])
    assert -sync.VSHIFT <= sync_c["offset_frames"] <= sync.VSHIFT and sync_c["windows"] == frames - 5
    short_c, _, _ = sync.syncnet_metrics(_tiny(), crops[:3], samples, "tiny")
    assert not short_c["available"] and "too short" in short_c["reason"]
    none_c, none_d, _ = sync.syncnet_metrics(None, crops, samples, "syncnet", "no weights given")
    assert none_c["reason"] == none_d["reason"] == "no weights given"


def test_load_syncnet_checks_the_hash_and_the_tensors(tmp_path):
    net = _tiny(1)
    path = tmp_path / "syncnet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    digest = sha256_file(path)
    loaded = load_syncnet(path, expected_sha256=digest)
    probe = torch.randn(2, 1, 13, 20)
    with torch.no_grad():
        assert torch.equal(loaded.forward_audio(probe), net.forward_audio(probe))
    with pytest.raises(WeightsError, match="sha256"):
        load_syncnet(path, expected_sha256="0" * 64)
    with pytest.raises(WeightsError, match="not found"):
        load_syncnet(tmp_path / "missing.safetensors")
    state = net.state_dict()
    state["netfcaud.0.weight"] = torch.zeros(3, 3)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="netfcaud.0.weight"):
        load_syncnet(tmp_path / "bad.safetensors")


def test_convert_release_style_state_dict(tmp_path):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in SyncNet().state_dict().items()}
    torch.manual_seed(0)
    state = {
        f"__S__.{k}": torch.randn(s) if s else torch.tensor(0)
        for k, s in shapes.items()
        if not k.endswith("num_batches_tracked")  # old files lack these buffers
    }
    state["__S__.netfcaud.0.weight"] = state["__S__.netfcaud.0.weight"][..., None]  # a 1x1 Conv1d head
    src = tmp_path / "syncnet_v2.model"
    torch.save(state, src)
    with pytest.raises(WeightsError, match="961e8696"):
        convert_syncnet_v2(src, tmp_path / "out.safetensors")
    digest = convert_syncnet_v2(src, tmp_path / "out.safetensors", check_release_hash=False)
    net = load_syncnet(tmp_path / "out.safetensors", expected_sha256=digest)
    assert torch.equal(net.netfcaud[0].weight, state["__S__.netfcaud.0.weight"][..., 0])
    assert torch.equal(net.netcnnlip[0].weight, state["__S__.netcnnlip.0.weight"])
    torch.save({"__S__.unknown": torch.zeros(1)}, src)
    with pytest.raises(WeightsError, match="unexpected"):
        convert_syncnet_v2(src, tmp_path / "x.safetensors", check_release_hash=False)
