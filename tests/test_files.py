"""portrait.files: digests, the names next to an output, atomic JSON writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from portrait.files import partial_path, sha256_file, sidecar_path, write_json_atomic


def test_sha256_of_a_file_read_in_blocks(tmp_path: Path) -> None:
    data = bytes(range(256)) * (5 * 4096 + 7)  # more than 1 MiB, not a whole number of blocks
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(str(empty)) == hashlib.sha256(b"").hexdigest()


def test_names_next_to_an_output() -> None:
    assert sidecar_path(Path("/x/out.mp4")) == Path("/x/out.mp4.json")
    assert sidecar_path("/x/.clip.qa1.mp4") == Path("/x/.clip.qa1.mp4.json")
    assert partial_path("/x/out.mp4") == Path("/x/out.partial.mp4")


def test_json_is_written_whole_and_replaces_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4.json"
    path.write_text("old")
    write_json_atomic(path, {"b": 1, "a": Path("/p")}, default=str)
    assert path.read_text() == '{\n  "b": 1,\n  "a": "/p"\n}\n'
    write_json_atomic(path, {"b": 1, "a": [2]}, indent=1, sort_keys=True)
    assert path.read_text() == '{\n "a": [\n  2\n ],\n "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4.json"]


def test_a_failed_json_write_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a folder where the file should go: the rename fails
    with pytest.raises(OSError):
        write_json_atomic(target, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(TypeError):  # not JSON: nothing is written at all
        write_json_atomic(tmp_path / "x.json", {"a": object()})
    assert not (tmp_path / "x.json").exists()
