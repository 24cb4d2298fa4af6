"""The evaluation networks' weights: converters from the published files, the safe ArcFace unpacking,
``download --eval`` (with a fake fetch) and ``--from-files``, and the errors that name a missing file."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from portrait.cli.main import main
from portrait.errors import WeightsError
from portrait.eval.toolkit import default_tools
from portrait.files import sha256_file
from portrait.testing.eval_trees import write_published_files
from portrait.weights import eval_weights
from portrait.weights.eval_weights import EVAL_MANIFEST, extract_arcface, install_eval_weights
from portrait.weights.hub import download_eval_weights
from portrait.weights.i3d import convert_i3d
from portrait.weights.inception import convert_fid_inception


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The three published files at their true sizes (random values) and a small fake buffalo_l.zip."""
    folder = tmp_path_factory.mktemp("published")
    write_published_files(folder, seed=3)
    with zipfile.ZipFile(folder / "buffalo_l.zip", "w") as bundle:
        bundle.writestr("det_10g.onnx", b"detector bytes")
        bundle.writestr("w600k_r50.onnx", b"recogniser bytes")
    return folder


def test_install_from_files_converts_everything_and_the_tools_load_it_verified(published, tmp_path):
    root = tmp_path / "weights"
    files = install_eval_weights(published, root, check_release_hash=False)
    assert set(files) == {
        "syncnet/syncnet.safetensors",
        "fid_inception/fid_inception.safetensors",
        "i3d/i3d_kinetics400.safetensors",
        "insightface/models/buffalo_l/det_10g.onnx",
        "insightface/models/buffalo_l/w600k_r50.onnx",
    }
    manifest = json.loads((root / EVAL_MANIFEST).read_text())
    assert manifest["files"] == files and all(sha256_file(root / k) == v for k, v in files.items())
    source = manifest["sources"]["i3d_pretrained_400.pt"]
    assert (
        source["sha256"] == sha256_file(published / "i3d_pretrained_400.pt") and source["verified"] is False
    )
    tools = default_tools(root, require=("syncnet", "fid_inception", "i3d"))
    assert tools.syncnet is not None and tools.inception is not None and tools.i3d is not None
    for name in ("syncnet", "fid_inception", "i3d"):
        record = tools.weights[name]
        assert record["verified"] is True and record["sha256"] == files[eval_weights.eval_weight(name).target]
    assert tools.weights["i3d"]["source_sha256"] == source["sha256"]
    (root / "i3d" / "i3d_kinetics400.safetensors").write_bytes(b"changed")
    with pytest.raises(WeightsError, match="sha256"):
        default_tools(root, require=("i3d",))


def test_converters_check_the_published_prefix_and_refuse_foreign_files(published, tmp_path):
    with pytest.raises(WeightsError, match="6726825d"):
        convert_fid_inception(published / "pt_inception-2015-12-05-6726825d.pth", tmp_path / "x.safetensors")
    page = tmp_path / "i3d_pretrained_400.pt"
    page.write_text("<html>Google Drive can't scan this file for viruses</html>")
    with pytest.raises(WeightsError, match="not a plain PyTorch state dict"):
        convert_i3d(page, tmp_path / "i3d.safetensors")
    state = torch.load(published / "i3d_pretrained_400.pt", weights_only=True)
    for change, message in (
        (lambda s: s.__setitem__("Mixed_3b.b0.conv3d.weight", torch.zeros(1)), "Mixed_3b.b0.conv3d.weight"),
        (lambda s: s.pop("logits.conv3d.bias"), "missing tensor 'logits.conv3d.bias'"),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "unexpected tensor 'extra.weight'"),
    ):
        broken = dict(state)
        change(broken)
        torch.save(broken, page)
        with pytest.raises(WeightsError, match=message):
            convert_i3d(page, tmp_path / "i3d.safetensors")
    assert not (tmp_path / "i3d.safetensors").exists()  # nothing half-written
    with pytest.raises(WeightsError, match="not found"):
        convert_i3d(tmp_path / "absent.pt", tmp_path / "i3d.safetensors")


def test_arcface_archive_members_never_choose_their_path(tmp_path, monkeypatch):
    archive = tmp_path / "buffalo_l.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("../../evil.onnx", b"x")
        bundle.writestr("buffalo_l/det_10g.onnx", b"y")
        bundle.writestr("readme.txt", b"z")
    dest = tmp_path / "out" / "buffalo_l"
    assert sorted(extract_arcface(archive, dest)) == ["det_10g.onnx", "evil.onnx"]
    assert sorted(p.name for p in dest.iterdir()) == ["det_10g.onnx", "evil.onnx"]
    assert not (tmp_path / "evil.onnx").exists() and not (tmp_path / "out" / "readme.txt").exists()
    monkeypatch.setattr(eval_weights, "MAX_ONNX_BYTES", 0)
    with pytest.raises(WeightsError, match="refusing archive member"):
        extract_arcface(archive, tmp_path / "again")
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(WeightsError, match="not a zip"):
        extract_arcface(tmp_path / "broken.zip", dest)


def test_download_eval_fetches_checks_digests_and_installs(published, tmp_path):
    fetched: list[str] = []

    def fetch(url: str, part: Path, *, progress: bool) -> None:
        name = next(w.published for w in eval_weights.EVAL_WEIGHTS if w.url == url)
        fetched.append(name)
        shutil.copyfile(published / name, part)

    root = tmp_path / "weights"
    files = download_eval_weights(root, ["i3d", "arcface"], cache_dir=tmp_path, offline=False, fetch=fetch)
    assert (
        fetched == ["i3d_pretrained_400.pt", "buffalo_l.zip"] and "i3d/i3d_kinetics400.safetensors" in files
    )
    assert not list(tmp_path.glob(".*-eval"))  # the staging folder is gone
    with pytest.raises(WeightsError, match="961e8696") as caught:  # random bytes are not syncnet_v2.model
        download_eval_weights(root, ["syncnet"], cache_dir=tmp_path, offline=False, fetch=fetch)
    assert "deleted" in str(caught.value) and not list(tmp_path.glob(".*-eval/syncnet_v2.model"))
    with pytest.raises(WeightsError, match="--from-files") as offline:
        download_eval_weights(root, offline=True)
    assert "pt_inception-2015-12-05-6726825d.pth" in str(offline.value)


def test_cli_download_eval_from_files_and_a_missing_file_named(published, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(published / "i3d_pretrained_400.pt", src / "i3d_pretrained_400.pt")
    root = tmp_path / "weights"
    assert main(["download", "--eval", "--from-files", str(src), "--weights", str(root)]) == 0
    assert "i3d/i3d_kinetics400.safetensors  sha256" in capsys.readouterr().out
    assert main(["download", "--from-files", str(src), "--weights", str(root)]) == 1
    assert "add --eval" in capsys.readouterr().err
    with pytest.raises(WeightsError, match="fid_inception/fid_inception.safetensors is missing") as caught:
        default_tools(root, require=("fid_inception",))
    assert "portrait-gen download --eval" in str(caught.value)
    tools = default_tools(root)  # not required: a note instead
    assert tools.inception is None and "fid_inception.safetensors is missing" in tools.notes["fid_inception"]
