"""portrait.weights.hub against a fake local hub: download, conversion, hashes, offline, resume (offline)."""

from __future__ import annotations

import fnmatch
import http.server
import json
import shutil
import socket
import threading
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError

from portrait.errors import WeightsError
from portrait.files import sha256_file
from portrait.layout import MANIFEST_FILE, RELEASE_EMOTIONS
from portrait.models.interpolation import IFNet
from portrait.pipeline import PortraitPipeline
from portrait.preprocess.detectors import YOLO_WEIGHTS
from portrait.testing.trees import emotion_priors, write_tiny_weights
from portrait.weights import hub
from portrait.weights.hub import download_weights, ensure_weights, fetch_url, staging_dir
from portrait.weights.load import (
    load_component,
    load_emotion_bank,
    load_pipeline,
    verify_manifest,
)
from portrait.weights.sources import (
    DICE_TALK_REPO,
    FLOWNET_FILE,
    HUB_REPOS,
    PRIOR_SHA256,
    PRIORS_DIR,
    SVD_REPO,
    WHISPER_REPO,
    YOLO_FILE,
    prior_url,
)

YOLO_BYTES = b"stand-in for the TorchScript YOLOv5-face detector"


class FakeHub:
    """Local folders served like the Hub (``snapshot``) and GitHub raw files (``fetch``)."""

    def __init__(self, repos: Path, urls: dict[str, Path]) -> None:
        self.repos, self.urls = repos, urls
        self.snapshots: list[dict] = []
        self.copied: list[str] = []
        self.fetch_offsets: dict[str, int] = {}
        self.fail_after: dict[str, int] = {}  # url -> bytes written before a simulated connection drop

    def snapshot(self, repo_id: str, *, local_dir: str, allow_patterns: list[str] | None = None, **kw) -> str:
        self.snapshots.append({"repo_id": repo_id, "local_dir": local_dir, "allow_patterns": allow_patterns})
        source = self.repos / repo_id
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            rel = path.relative_to(source).as_posix()
            if allow_patterns is None or any(fnmatch.fnmatch(rel, pat) for pat in allow_patterns):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, Path(local_dir) / rel)
                self.copied.append(f"{repo_id}/{rel}")
        return local_dir

    def fetch(self, url: str, dest: Path, *, progress: bool = True) -> None:
        data = self.urls[url].read_bytes()
        start = dest.stat().st_size if dest.is_file() else 0
        self.fetch_offsets[url] = start
        stop = self.fail_after.pop(url, len(data))
        with dest.open("ab") as out:
            out.write(data[start:stop])
        if stop < len(data):
            raise ConnectionResetError("connection reset by peer (simulated)")


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """The fake hub's repositories (with unrequested extra files) and prior URLs → files."""
    base = tmp_path_factory.mktemp("hub")
    release = write_tiny_weights(base / "release", layout="dice-talk", seed=0)
    repos = base / "repos"
    dice = repos / DICE_TALK_REPO.repo_id
    shutil.copytree(release / "DICE-Talk", dice / "DICE-Talk")
    shutil.copytree(release / "RIFE", dice / "RIFE")
    (dice / YOLO_FILE).write_bytes(YOLO_BYTES)
    (dice / "README.md").write_text("not requested")
    shutil.copytree(release / SVD_REPO.subdir, repos / SVD_REPO.repo_id)
    (repos / SVD_REPO.repo_id / "svd_xt.safetensors").write_bytes(b"not requested")
    shutil.copytree(release / WHISPER_REPO.subdir, repos / WHISPER_REPO.repo_id)  # + generation_config.json
    urls = {prior_url(name): release / PRIORS_DIR / f"{name}.npy" for name in RELEASE_EMOTIONS}
    return repos, urls


@pytest.fixture
def fake(hub_files: tuple[Path, dict[str, Path]]) -> FakeHub:
    return FakeHub(*hub_files)


@pytest.fixture
def sha_table(hub_files: tuple[Path, dict[str, Path]]) -> dict[str, str]:
    """The tiny priors' sha256 (the real table of PRIOR_SHA256 does not match random priors)."""
    return {name: sha256_file(hub_files[1][prior_url(name)]) for name in RELEASE_EMOTIONS}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was touched")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _download(root: Path, fake: FakeHub, table: dict[str, str], **kw) -> Path:
    return download_weights(
        root,
        snapshot=fake.snapshot,
        fetch=fake.fetch,
        prior_sha256=table,
        progress=False,
        offline=False,
        **kw,
    )


def test_download_builds_a_loadable_tree(tmp_path: Path, fake: FakeHub, sha_table: dict[str, str]) -> None:
    root = tmp_path / "weights"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    assert _download(root, fake, sha_table) == root

    assert isinstance(load_pipeline(root), PortraitPipeline)
    assert isinstance(load_component("interpolation", root), IFNet)
    assert (root / YOLO_WEIGHTS).read_bytes() == YOLO_BYTES
    bank = load_emotion_bank(root)
    assert sorted(bank) == sorted(RELEASE_EMOTIONS)
    torch.testing.assert_close(bank["happy"], torch.from_numpy(emotion_priors(0)["happy"]))
    files = json.loads((root / MANIFEST_FILE).read_text())["files"]
    assert files[YOLO_WEIGHTS.as_posix()] == sha256_file(root / YOLO_WEIGHTS)
    assert "interpolation/config.json" in files and "unet/config.json" in files
    assert verify_manifest(root) == []
    assert (root / "notes.txt").read_text() == "mine"  # only the components are replaced
    assert not staging_dir(root).exists()  # the staging folder is removed after the conversion

    requested = {s["repo_id"]: s["allow_patterns"] for s in fake.snapshots}
    assert requested == {repo.repo_id: list(repo.files) for repo in HUB_REPOS}
    assert not [
        f for f in fake.copied if f.endswith(("README.md", "svd_xt.safetensors", "generation_config.json"))
    ]


def test_download_honours_cache_dir(tmp_path: Path, fake: FakeHub, sha_table: dict[str, str]) -> None:
    root, cache = tmp_path / "w" / "weights", tmp_path / "cache"
    _download(root, fake, sha_table, cache_dir=cache)
    assert Path(fake.snapshots[0]["local_dir"]) == cache / ".weights.download"
    assert cache.is_dir() and not (cache / ".weights.download").exists()
    assert staging_dir(Path("/data/weights")) == Path("/data/.weights.download")
    assert staging_dir(Path("/data/weights"), Path("/scratch")) == Path("/scratch/.weights.download")


def test_prior_hash_mismatch_deletes_the_file(
    tmp_path: Path, fake: FakeHub, sha_table: dict[str, str]
) -> None:
    root = tmp_path / "weights"
    bad = {**sha_table, "sad": "0" * 64}
    with pytest.raises(
        WeightsError, match=r"sad\.npy: sha256 [0-9a-f]{64} does not match the expected 0{64}"
    ):
        _download(root, fake, bad)
    priors = staging_dir(root) / PRIORS_DIR
    assert not (priors / "sad.npy").exists() and not (priors / "sad.npy.part").exists()
    assert (priors / "happy.npy").is_file()  # verified files stay in the staging folder for the next run
    assert not (root / MANIFEST_FILE).exists()

    fake.fetch_offsets.clear()
    _download(root, fake, sha_table)  # a rerun fetches only what is missing
    assert set(fake.fetch_offsets) == {prior_url("sad"), prior_url("surprised")}  # surprised: after sad
    assert verify_manifest(root) == []


def test_the_real_hash_table_rejects_other_files(tmp_path: Path, fake: FakeHub) -> None:
    with pytest.raises(WeightsError, match="does not match the expected ba5a185d63a3"):  # angry comes first
        download_weights(
            tmp_path / "w", snapshot=fake.snapshot, fetch=fake.fetch, progress=False, offline=False
        )
    assert set(PRIOR_SHA256) == set(RELEASE_EMOTIONS)


def _assert_manual_instructions(message: str, root: Path) -> None:
    for repo in HUB_REPOS:
        assert repo.repo_id in message
    for needed in (
        "DICE-Talk/unet.pth",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "model.safetensors",
    ):
        assert needed in message
    assert prior_url("<name>") in message and "HF_TOKEN" in message
    assert f"portrait-gen convert --from-dice-talk {staging_dir(root)} --weights {root}" in message


@pytest.mark.usefixtures("no_network")
def test_offline_fails_at_once_with_manual_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "weights"

    def boom(*args, **kwargs):
        raise AssertionError("must not be called offline")

    with pytest.raises(WeightsError, match=r"^cannot download weights \(offline / no network\)") as info:
        download_weights(root, offline=True, snapshot=boom, fetch=boom)
    _assert_manual_instructions(str(info.value), root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="offline"):
        download_weights(root)  # the default huggingface_hub snapshot and urllib fetcher are not reached
    assert not staging_dir(root).exists()


@pytest.mark.usefixtures("no_network")
def test_is_offline_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("1", True), ("true", True), ("ON", True), ("0", False), ("", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub.is_offline() is expected
    assert hub.is_offline(True) is True and hub.is_offline(False) is False


def test_no_network_is_one_readable_error(tmp_path: Path, fake: FakeHub, sha_table: dict[str, str]) -> None:
    def unreachable(repo_id: str, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub.")

    root = tmp_path / "weights"
    with pytest.raises(WeightsError, match="no network: An error happened") as info:
        download_weights(root, snapshot=unreachable, fetch=fake.fetch, progress=False, offline=False)
    _assert_manual_instructions(str(info.value), root)


def test_the_default_fetcher_without_network(
    tmp_path: Path, fake: FakeHub, sha_table: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args, **kwargs):
        raise ConnectionRefusedError(111, "refused by the test")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    root = tmp_path / "weights"
    with pytest.raises(
        WeightsError, match=r"offline / no network: <urlopen error \[Errno 111\] refused by the test>"
    ) as info:
        download_weights(root, snapshot=fake.snapshot, prior_sha256=sha_table, progress=False, offline=False)
    _assert_manual_instructions(str(info.value), root)


def _hub_error(cls: type[Exception], message: str) -> Exception:
    """A huggingface_hub HTTP error without an HTTP response object (its constructor requires one)."""
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    return error


def test_gated_repository_says_how_to_get_access(tmp_path: Path, fake: FakeHub) -> None:
    def gated(repo_id: str, **kwargs):
        if repo_id == SVD_REPO.repo_id:
            raise _hub_error(GatedRepoError, "Access to model stabilityai/... is restricted.")
        return fake.snapshot(repo_id, **kwargs)

    with pytest.raises(WeightsError) as info:
        download_weights(tmp_path / "w", snapshot=gated, fetch=fake.fetch, progress=False, offline=False)
    message = str(info.value)
    for needed in (
        "is gated",
        "licence",
        f"https://huggingface.co/{SVD_REPO.repo_id}",
        "hf auth login",
        "HF_TOKEN",
    ):
        assert needed in message


def test_missing_required_file_in_a_repository(tmp_path: Path, fake: FakeHub) -> None:
    def without_whisper_weights(repo_id: str, *, local_dir: str, allow_patterns: list[str], **kw):
        patterns = [p for p in allow_patterns if p != "model.safetensors"]
        return fake.snapshot(repo_id, local_dir=local_dir, allow_patterns=patterns)

    with pytest.raises(WeightsError, match="openai/whisper-tiny did not provide model.safetensors"):
        download_weights(
            tmp_path / "w", snapshot=without_whisper_weights, fetch=fake.fetch, progress=False, offline=False
        )


def test_optional_parts_may_be_missing(tmp_path: Path, fake: FakeHub, sha_table: dict[str, str]) -> None:
    def release_only(repo_id: str, *, local_dir: str, allow_patterns: list[str], **kw):
        patterns = [p for p in allow_patterns if p not in (FLOWNET_FILE, YOLO_FILE)]
        return fake.snapshot(repo_id, local_dir=local_dir, allow_patterns=patterns)

    root = tmp_path / "weights"
    download_weights(
        root, snapshot=release_only, fetch=fake.fetch, prior_sha256=sha_table, progress=False, offline=False
    )
    assert not (root / "interpolation").exists() and not (root / "face_detector").exists()
    assert verify_manifest(root) == []


def test_interrupted_fetch_resumes_from_the_part_file(
    tmp_path: Path, fake: FakeHub, sha_table: dict[str, str]
) -> None:
    root, url = tmp_path / "weights", prior_url("happy")
    fake.fail_after[url] = 100
    with pytest.raises(WeightsError, match="no network: connection reset"):
        _download(root, fake, sha_table)
    part = staging_dir(root) / PRIORS_DIR / "happy.npy.part"
    assert part.stat().st_size == 100
    assert (staging_dir(root) / SVD_REPO.subdir / SVD_REPO.files[1]).is_file()  # the Hub files are kept

    fake.fetch_offsets.clear()
    _download(root, fake, sha_table)
    assert fake.fetch_offsets[url] == 100  # resumed, not restarted
    assert verify_manifest(root) == [] and not part.exists()


def test_failed_conversion_keeps_the_staging_folder(
    tmp_path: Path, fake: FakeHub, sha_table: dict[str, str], hub_files: tuple[Path, dict[str, Path]]
) -> None:
    repos = tmp_path / "repos"
    shutil.copytree(hub_files[0], repos)
    good = (repos / DICE_TALK_REPO.repo_id / "DICE-Talk" / "pose_guider.pth").read_bytes()
    (repos / DICE_TALK_REPO.repo_id / "DICE-Talk" / "pose_guider.pth").write_bytes(b"garbage")
    broken = FakeHub(repos, hub_files[1])
    root = tmp_path / "weights"
    with pytest.raises(WeightsError, match="pose_guider.pth"):
        _download(root, broken, sha_table)
    assert (staging_dir(root) / PRIORS_DIR / "neutral.npy").is_file()
    assert not (root / MANIFEST_FILE).exists()

    (repos / DICE_TALK_REPO.repo_id / "DICE-Talk" / "pose_guider.pth").write_bytes(good)
    broken.fetch_offsets.clear()
    _download(root, broken, sha_table)
    assert broken.fetch_offsets == {}  # the priors came from the staging folder
    assert verify_manifest(root) == [] and not staging_dir(root).exists()


def test_ensure_weights(tmp_path: Path, tiny_weights: Path, fake: FakeHub, sha_table: dict[str, str]) -> None:
    def boom(*args, **kwargs):
        raise AssertionError("a complete tree needs no download")

    assert ensure_weights(tiny_weights, offline=True, snapshot=boom, fetch=boom) == tiny_weights
    with pytest.raises(WeightsError, match="offline"):
        ensure_weights(tmp_path / "empty", offline=True)
    root = ensure_weights(
        tmp_path / "new", offline=False, progress=False, snapshot=fake.snapshot, fetch=fake.fetch,
        prior_sha256=sha_table,
    )  # fmt: skip
    assert verify_manifest(root) == [] and len(fake.snapshots) == len(HUB_REPOS)


# --------------------------------------------------------------------- the default fetcher, on a local server


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = bytes(range(256)) * 40
    honour_range = True
    ranges: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        if self.path != "/happy.npy":
            self.send_response(404)
            self.end_headers()
            return
        wanted = self.headers.get("Range")
        type(self).ranges.append(wanted)
        body, status, extra = self.payload, 200, {}
        if wanted and self.honour_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= len(self.payload):
                self.send_response(416)
                self.end_headers()
                return
            body, status = self.payload[start:], 206
            extra["Content-Range"] = f"bytes {start}-{len(self.payload) - 1}/{len(self.payload)}"
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **extra}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _RangeHandler.ranges, _RangeHandler.honour_range = [], True
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/happy.npy"
    httpd.shutdown()
    httpd.server_close()


def test_fetch_url_resumes_with_a_range_request(tmp_path: Path, server: str) -> None:
    part = tmp_path / "happy.npy.part"
    part.write_bytes(_RangeHandler.payload[:1000])
    fetch_url(server, part, progress=False)
    assert _RangeHandler.ranges == ["bytes=1000-"]
    assert part.read_bytes() == _RangeHandler.payload


def test_fetch_url_restarts_when_the_server_ignores_ranges(tmp_path: Path, server: str) -> None:
    _RangeHandler.honour_range = False
    part = tmp_path / "happy.npy.part"
    part.write_bytes(b"stale bytes from another file")
    fetch_url(server, part, progress=False)
    assert part.read_bytes() == _RangeHandler.payload


def test_fetch_url_restarts_after_416(tmp_path: Path, server: str) -> None:
    part = tmp_path / "happy.npy.part"
    part.write_bytes(_RangeHandler.payload + b"too long")
    fetch_url(server, part, progress=False)
    assert _RangeHandler.ranges == [f"bytes={len(_RangeHandler.payload) + 8}-", None]
    assert part.read_bytes() == _RangeHandler.payload


def test_http_errors(tmp_path: Path, server: str, fake: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = server.replace("happy.npy", "missing.npy")
    with pytest.raises(urllib.error.HTTPError, match="404"):
        fetch_url(missing, tmp_path / "f", progress=False)
    monkeypatch.setattr(hub, "prior_url", lambda name: missing)
    with pytest.raises(WeightsError, match="downloading the emotion priors failed: HTTP 404"):
        download_weights(tmp_path / "w", snapshot=fake.snapshot, progress=False, offline=False)
