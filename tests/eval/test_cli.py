"""``portrait-gen eval`` on a short real video made from the sample portrait, with the real offline tools."""

from __future__ import annotations

import html.parser
import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from portrait.cli.main import main
from portrait.eval.evaluate import METRIC_NAMES
from portrait.ffmpeg import media_path, run_ffmpeg

pytest.importorskip("dlib")
pytest.importorskip("portrait.motion.landmarks")
pytest.importorskip("matplotlib")

ASSETS = importlib.resources.files("portrait") / "assets"
PORTRAIT = Path(str(ASSETS / "sample_portrait.jpg"))
SPEECH = Path(str(ASSETS / "sample_speech.wav"))


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1.2 s of the portrait's face (small drift so frames differ), H.264 with the sample speech muxed."""
    folder = tmp_path_factory.mktemp("eval_cli")
    image = np.asarray(Image.open(PORTRAIT).convert("RGB"))[0:320, 60:380]
    for i in range(30):
        Image.fromarray(np.roll(image, i % 3, axis=1)).save(folder / f"{i:04d}.png")
    path = folder / "clip.mp4"
    run_ffmpeg(
        ["-y", "-framerate", "25", "-i", media_path(folder / "%04d.png"), "-i", media_path(SPEECH)]
        + ["-t", "1.2", "-c:v", "libx264", "-crf", "14", "-pix_fmt", "yuv420p", "-c:a", "aac"]
        + [media_path(path)],
        timeout=120,
    )
    return path


@pytest.fixture(scope="module")
def evaluated(video: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, Path]:
    out = tmp_path_factory.mktemp("eval_cli_out")
    jsonl, report = out / "scores.jsonl", out / "report"
    argv = ["--quiet", "eval", str(video), "--reference", str(PORTRAIT), "--emotion", "neutral"]
    code = main([*argv, "--json", str(jsonl), "--report", str(report)])
    return code, jsonl, report


def test_json_line_has_every_metric_with_values_from_the_real_tools(evaluated, video):
    code, jsonl, _ = evaluated
    assert code == 0
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 2  # the video's line, then the set's
    assert not list(jsonl.parent.glob("*.partial"))
    result, summary = (json.loads(line) for line in lines)
    assert result["kind"] == "video" and summary["kind"] == "set" and summary["videos"] == [str(video)]
    assert summary["metrics"]["csim"]["value"] == result["metrics"]["csim"]["value"]  # a mean over one video
    assert result["video"] == str(video)
    assert set(result["metrics"]) == set(METRIC_NAMES)
    for metric in result["metrics"].values():
        assert {"value", "available", "backend"} <= set(metric)
        assert metric["available"] or metric.get("reason")  # a missing model always says why
    metrics = result["metrics"]
    assert metrics["face_coverage"]["value"] == 1.0
    assert metrics["csim"]["available"] and metrics["csim"]["value"] > 0.95  # the same face as --reference
    assert metrics["sync_c"]["available"] is False and "SyncNet" in metrics["sync_c"]["reason"]
    assert metrics["lmd"]["available"] is False  # no --gt
    assert result["frames"] == 30


def test_report_writes_html_that_links_its_pngs(evaluated):
    _, _, report = evaluated
    page = report / "report.html"
    assert page.is_file()
    sources: list[str] = []

    class Images(html.parser.HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                sources.append(dict(attrs)["src"])

    Images().feed(page.read_text())
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert pngs and sorted(sources) == pngs
    for name in pngs:
        with Image.open(report / name) as plot:
            assert plot.format == "PNG" and min(plot.size) > 50


def test_stdout_gets_one_json_line_per_video(video, capsys):
    assert main(["--quiet", "eval", str(video), str(video)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3  # two videos, then the set
    first = json.loads(lines[0])
    assert json.loads(lines[2])["kind"] == "set"
    assert (
        first["metrics"]["csim"]["available"] is False and "--reference" in first["metrics"]["csim"]["reason"]
    )


def test_missing_and_corrupt_videos_exit_1_with_one_error_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.mp4")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "nope.mp4" in err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00not a video" * 50)
    assert main(["eval", str(broken)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "broken.mp4" in err[0]
