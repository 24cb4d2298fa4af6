"""Hostile training data (issue 25, findings 2, 10-12): datasets stay inside themselves, ids are unique and
checked, CSVs of common encodings read or refused by line, one bad video never aborts ``train prepare``,
a full disk says so, and frames are cropped as they are decoded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hostile_support import ffmpeg_clip

from portrait.errors import InputError
from portrait.training.data import INDEX_FILE, Cache, Source, find_sources
from portrait.training.prepare import PrepareSettings, prepare_cache, write_shard


def _csv(folder: Path, text: str | bytes, name: str = "labels.csv") -> Path:
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_dataset_paths_stay_inside_the_dataset(tmp_path: Path) -> None:
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir(), outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"not yours")
    (data / "01-01-05-02-01-01-12.mp4").write_bytes(b"inside")
    (data / "01-01-03-02-01-01-12.mp4").symlink_to(outside / "secret.mp4")
    assert [s.path.name for s in find_sources(data)] == ["01-01-05-02-01-01-12.mp4"]  # the link is skipped
    csv = _csv(data, "path,emotion,intensity,speaker\n../outside/secret.mp4,happy,2,s1\n")
    with pytest.raises(InputError, match=r"labels.csv:2: .*outside the dataset folder"):
        find_sources(csv)
    (data / "link.mp4").symlink_to(outside / "secret.mp4")
    with pytest.raises(InputError, match=r"labels.csv:2: .*outside the dataset folder"):
        find_sources(_csv(data, "path,emotion,intensity,speaker\nlink.mp4,happy,2,s1\n"))


def test_two_paths_of_one_cache_id_are_refused(tmp_path: Path) -> None:
    for name in ("a b.mp4", "a_b.mp4"):
        (tmp_path / name).write_bytes(b"x")
    text = "path,emotion,intensity,speaker\na b.mp4,happy,1,s1\na_b.mp4,sad,3,s2\n"
    with pytest.raises(InputError, match="2 and 3 map to the same cache id 'a_b'"):
        find_sources(_csv(tmp_path, text))
    with pytest.raises(InputError, match="same cache id"):  # one file twice, spelt two ways
        find_sources(
            _csv(tmp_path, "path,emotion,intensity,speaker\na_b.mp4,happy,1,s1\n./a_b.mp4,sad,1,s2\n")
        )


def test_cache_ids_are_checked_before_use_as_file_names(tmp_path: Path) -> None:
    entry = {
        "id": "../../escape",
        "speaker": "s",
        "emotion": "happy",
        "level": 2,
        "frames": 3,
        "split": "train",
    }
    (tmp_path / INDEX_FILE).write_text(json.dumps({"format": "portrait-train-cache", "entries": [entry]}))
    with pytest.raises(InputError, match="invalid cache id"):
        Cache(tmp_path)
    (tmp_path / INDEX_FILE).write_text("[1, 2")
    with pytest.raises(InputError, match="not a readable"):
        Cache(tmp_path)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("path,emotion,intensity,speaker\ncafé.mp4,happy,2,ana\n".encode("latin-1"), "café.mp4"),  # latin-1
        ("\ufeffpath,emotion,intensity,speaker\nclip.mp4,happy,2,ana\n".encode(), "clip.mp4"),  # Excel's BOM
        ("path,emotion,intensity,speaker\nclip.mp4,happy,2,ana\n".encode("utf-16"), "clip.mp4"),
    ],
)
def test_csvs_of_common_encodings_are_read(tmp_path: Path, text: bytes, expected: str) -> None:
    (sources,) = find_sources(_csv(tmp_path, text))
    assert sources.path.name == expected and sources.speaker == "ana" and sources.level == 2


@pytest.mark.parametrize(
    "row, message",
    [
        ("clip.mp4,happy,²,ana", r":2: intensity must be 1, 2 or 3"),
        (",happy,2,ana", r":2: path, emotion and speaker must not be empty"),
        ("clip.mp4,happy", r":2: has 2 cells; the header has 4"),
        ("clip.mp4,happy,7,ana", r":2: intensity must be"),
    ],
)
def test_bad_csv_rows_are_refused_by_line(tmp_path: Path, row: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        find_sources(_csv(tmp_path, f"path,emotion,intensity,speaker\n{row}\n"))


def test_one_unreadable_video_never_aborts_prepare(tiny_weights: Path, tmp_path: Path) -> None:
    long_name = tmp_path / ("v" * 300 + ".mp4")  # the file system refuses the name (ENAMETOOLONG)
    sources = [Source(long_name, "long", "s1", "happy", 2)]
    with pytest.raises(InputError, match="no usable video among 1: .*File name too long"):
        prepare_cache(
            sources, sources, tmp_path / "cache", tiny_weights, None, PrepareSettings(), progress=False
        )
    bad = json.loads((tmp_path / "cache" / "bad" / "long.json").read_text())
    assert bad["reason"] == "unusable" and "too long" in bad["error"]


def test_a_full_disk_while_writing_a_shard_says_so(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a shard")
        # safetensors' own words for a full disk (the format of a real I/O error of its writer)
        raise SafetensorError(
            f"Error while serializing: I/O error: No space left on device (os error 28) at path {filename!r}"
        )

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    shard = tmp_path / "clip.safetensors"
    with pytest.raises(
        InputError, match="No space left on device; no partial shard was kept .out of disk space"
    ):
        write_shard(shard, {"x": torch.zeros(1024)}, {"entry": "{}"})
    assert list(tmp_path.iterdir()) == []


_FRAME_STAGE = """
import resource, sys
from pathlib import Path
from portrait.preprocess.detectors import Face
from portrait.training.data import Source
from portrait.training.prepare import Extractors, PrepareSettings, extract_video

class Detector:
    def detect(self, image):
        return [Face((800.0, 800.0, 400.0, 400.0), 1.0)]

source = Source(Path(sys.argv[1]), "clip", "s1", "happy", 2)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:  # the clip has no audio: extract_video stops right after its frame stage
    settings = PrepareSettings(size=64, max_frames=40)
    extract_video(source, Extractors(None, None, Detector(), None, None), settings)
except Exception as err:
    print(type(err).__name__, str(err).splitlines()[0])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_prepare_crops_frames_as_they_are_decoded(tmp_path: Path) -> None:
    clip = ffmpeg_clip(tmp_path / "big.mp4", "color=c=gray:size=2048x2048:rate=12.5", frames=40)
    result = subprocess.run([sys.executable, "-c", _FRAME_STAGE, str(clip)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    message, grown = result.stdout.strip().splitlines()[-2:]
    assert "audio" in message, result.stdout + result.stderr[-2000:]
    # 40 full frames of 2048x2048 RGB are 503 MB; the crops at the working size are a few MB.
    assert int(grown) < 150 * 2**20, grown
