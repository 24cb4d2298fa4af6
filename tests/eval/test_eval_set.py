"""``portrait-gen eval a.mp4 b.mp4 --audio ... --syncnet W --gt r1.mp4 r2.mp4 --fid --fvd --json out.jsonl``
on real H.264 clips of the sample portrait with a random-weight evaluation tree (tiny SyncNet, FID Inception
and I3D converted into a weights tree): the lines, the pooled set metrics and every protocol."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from media import PORTRAIT, encode_frames, speech_clip
from PIL import Image

from portrait.cli.main import main
from portrait.eval.evaluate import METRIC_NAMES
from portrait.testing.eval_trees import write_eval_tree

pytest.importorskip("dlib")


def _clip(path: Path, shift: int, frames: int = 34) -> Path:
    """The portrait's face (a 109 px box: syncnet_python keeps faces over 100 px) in a 240² frame, drifting
    ``shift`` px per frame so that frames and clips differ."""
    face = np.asarray(Image.open(PORTRAIT).convert("RGB").crop((126, 26, 316, 216)).resize((240, 240)))
    return encode_frames(
        [Image.fromarray(np.roll(face, (i * shift) % 9, axis=1)) for i in range(frames)], path
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("eval_set")
    files = {
        name: _clip(folder / f"{name}.mp4", shift)
        for name, shift in (("a", 1), ("b", 2), ("r1", 0), ("r2", 3))
    }
    files["audio"] = speech_clip(folder / "speech.wav", 1.4)
    files["tree"] = folder / "weights"
    write_eval_tree(files["tree"], seed=5)
    return files


@pytest.fixture(scope="module")
def evaluated(inputs, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str]:
    out = tmp_path_factory.mktemp("eval_set_out") / "out.jsonl"
    argv = [
        "eval",
        str(inputs["a"]),
        str(inputs["b"]),
        "--audio",
        str(inputs["audio"]),
        "--reference",
        str(PORTRAIT),
    ]
    argv += [
        "--syncnet",
        str(inputs["tree"] / "syncnet" / "syncnet.safetensors"),
        "--weights",
        str(inputs["tree"]),
    ]
    argv += ["--gt", str(inputs["r1"]), str(inputs["r2"]), "--fid", "--fvd", "--lse-min-track", "10"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*argv, "--json", str(out)]) == 0
    return [json.loads(line) for line in out.read_text().splitlines()], printed.getvalue()


def test_one_line_per_video_then_the_set_with_pooled_fid_and_fvd(evaluated, inputs):
    lines, _ = evaluated
    assert [line["kind"] for line in lines] == ["video", "video", "set"]
    summary = lines[-1]
    assert summary["videos"] == [str(inputs["a"]), str(inputs["b"])]
    assert summary["gt"] == [str(inputs["r1"]), str(inputs["r2"])]
    assert set(summary["metrics"]) == set(METRIC_NAMES)
    fid, fvd = summary["metrics"]["fid"], summary["metrics"]["fvd"]
    assert fid["available"] and fid["value"] > 0 and fid["samples"] == [68, 68]  # every frame of each set
    assert fvd["available"] and fvd["samples"] == [4, 4]  # two 16-frame clips per 34-frame video
    for line in lines[:2]:
        assert not line["metrics"]["fid"]["available"] and '"kind": "set"' in line["metrics"]["fid"]["reason"]
    manifest = json.loads((inputs["tree"] / "eval_manifest.json").read_text())["files"]
    assert fid["protocol"]["weights"]["sha256"] == manifest["fid_inception/fid_inception.safetensors"]
    assert (
        fid["protocol"]["weights"]["verified"] is True and fid["protocol"]["frame_sampling"] == "every frame"
    )
    assert fvd["protocol"]["name"] == "fvd/clips16" and fvd["protocol"]["fps"] == 25.0


def test_lse_runs_the_tracked_protocol_and_records_it(evaluated, inputs):
    lines, _ = evaluated
    for line in lines[:2]:
        sync_c, sync_d = line["metrics"]["sync_c"], line["metrics"]["sync_d"]
        assert sync_c["available"] and sync_d["available"] and sync_c["tracks"]
        protocol = sync_c["protocol"]
        assert protocol["name"] == "lse/tracked" and protocol["track_rules"]["min_track"] == 10
        assert protocol["frames"] == 34 and protocol["frames_scored"] + protocol["frames_left_out"] == 34
        assert protocol["detector"].startswith("dlib") and protocol["resolution"] == "240x240"
        assert (
            protocol["weights"]["file"] == "syncnet.safetensors" and protocol["weights"]["verified"] is False
        )
    mean = lines[-1]["metrics"]["sync_c"]
    values = [line["metrics"]["sync_c"]["value"] for line in lines[:2]]
    assert mean["value"] == pytest.approx(np.mean(values)) and mean["videos"] == 2


def test_csim_says_dlib_is_not_comparable_with_papers_and_the_table_prints_protocols(evaluated):
    lines, printed = evaluated
    csim = lines[0]["metrics"]["csim"]
    assert csim["available"] and csim["protocol"]["comparable_with_papers"] is False
    assert "ArcFace" in csim["protocol"]["note"]
    assert "set (2)" in printed and "protocols:" in printed
    assert "fid: fid/frames; weights" in printed and "NOT comparable with papers' CSIM" in printed
    assert "a.mp4: LSE scored" in printed


def test_missing_weights_and_missing_ground_truth_are_one_error_line(inputs, tmp_path, capsys):
    empty = tmp_path / "empty"
    argv = ["eval", str(inputs["a"]), "--gt", str(inputs["r1"]), "--fid", "--weights", str(empty)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fid_inception/fid_inception.safetensors is missing" in err[0]
    assert "portrait-gen download --eval" in err[0] and "pt_inception-2015-12-05-6726825d.pth" in err[0]
    assert main(["eval", str(inputs["a"]), "--fvd"]) == 1
    assert "--gt" in capsys.readouterr().err
    assert main(["eval", str(inputs["a"]), "--device", "bogus"]) == 1
    assert capsys.readouterr().err.startswith("error: --device 'bogus' is not a device")
