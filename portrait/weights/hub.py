"""Download the public weights into a portrait weights tree: the only networked module of portrait.

What is fetched, at which revision and with which sha256, is :mod:`portrait.weights.sources` (compat §8):
the DICE-Talk checkpoints with RIFE and the YOLOv5-face detector, the gated SVD-xt parts (accept its licence
on the Hub page and log in with ``hf auth login`` / ``HF_TOKEN``), Whisper tiny, and the eight emotion
priors of the DICE-Talk GitHub repository.

:func:`download_weights` fetches them into a staging folder laid out as the release (``SRC`` of
:func:`portrait.weights.convert.convert_dice_talk`), converts it into the weights tree (RIFE included),
copies the detector into ``face_detector/``, rewrites ``manifest.json`` and deletes the staging folder.
An interrupted run leaves the staging folder behind and the next run resumes from it (huggingface_hub resumes
its own files; the priors resume from ``<name>.npy.part`` with an HTTP Range request). Offline (argument or
``HF_HUB_OFFLINE=1``) or without network it fails at once with the list of files to fetch by hand.
:func:`download_eval_weights` does the same for the evaluation networks (``download --eval``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from portrait.errors import WeightsError
from portrait.files import sha256_file, sweep_dead_owners
from portrait.layout import RELEASE_EMOTIONS
from portrait.weights.convert import PARTIAL_PREFIX, convert_dice_talk
from portrait.weights.eval_weights import (
    check_published,
    eval_weight,
    install_eval_weights,
    manual_eval_instructions,
)
from portrait.weights.load import missing_files
from portrait.weights.manifest import write_manifest
from portrait.weights.sources import (
    EVAL_WEIGHTS,
    FACE_DETECTOR_DIR,
    HUB_REPOS,
    HUB_REVISIONS,
    HUB_SHA256,
    PRIOR_SHA256,
    PRIORS_DIR,
    YOLO_FILE,
    HubRepo,
    manual_instructions,
    prior_url,
)

logger = logging.getLogger(__name__)

#: Values of ``HF_HUB_OFFLINE`` that mean offline; bytes read per chunk of a prior download.
_TRUE = {"1", "ON", "YES", "TRUE"}
_CHUNK = 1 << 16
#: ``snapshot(repo_id, *, local_dir, allow_patterns)``: huggingface_hub.snapshot_download or a fake.
SnapshotFn = Callable[..., Any]
#: ``fetch(url, part_path, *, progress)``: append the rest of ``url`` to ``part_path`` (:func:`fetch_url`).
FetchFn = Callable[..., None]


def staging_dir(root: Path, cache_dir: Path | None = None) -> Path:
    """The resumable download folder of ``root``: ``<cache_dir or root's parent>/.<root name>.download``."""
    root = Path(root).expanduser().absolute()
    parent = Path(cache_dir).expanduser().absolute() if cache_dir is not None else root.parent
    return parent / f".{root.name}.download"


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``HF_HUB_OFFLINE`` is set to 1 / true / yes / on."""
    if offline is not None:
        return offline
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _TRUE


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of the HTTP client huggingface_hub uses (httpx2 or httpx), when loaded."""
    found: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        error = getattr(sys.modules.get(module), "TransportError", None)
        if isinstance(error, type) and issubclass(error, BaseException):
            found.append(error)
    return tuple(found)


@contextmanager
def _download_errors(
    root: Path, src: Path, what: str, manual: Callable[[], str] | None = None
) -> Iterator[None]:
    """Turn hub / HTTP / socket errors raised while downloading ``what`` into one readable WeightsError
    (``manual``: the by-hand instructions; default: those of the generation weights)."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    def first_line(err: BaseException) -> str:
        return (str(err).strip().splitlines() or [type(err).__name__])[0]

    no_network = (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        ConnectionError,
        TimeoutError,
        socket.gaierror,
    )
    try:
        yield
    except GatedRepoError as err:
        raise WeightsError(
            f"{what} is gated: accept its licence on https://huggingface.co/{what} (logged in), then log "
            "in here with `hf auth login` (`huggingface-cli login`) or set HF_TOKEN, and run again "
            f"({first_line(err)})"
        ) from err
    except RepositoryNotFoundError as err:
        raise WeightsError(
            f"{what} was not found on the Hub or needs a token (`hf auth login` or HF_TOKEN): "
            f"{first_line(err)}"
        ) from err
    except HfHubHTTPError as err:
        raise WeightsError(f"downloading {what} failed: {first_line(err)}; run again later") from err
    except urllib.error.HTTPError as err:
        raise WeightsError(
            f"downloading {what} failed: HTTP {err.code} {err.reason}; run again later"
        ) from err
    except (*no_network, urllib.error.URLError, *_transport_errors()) as err:
        raise WeightsError(
            f"cannot download weights (offline / no network: {first_line(err)}): "
            + (manual() if manual is not None else manual_instructions(root, src))
        ) from err
    except OSError as err:
        raise WeightsError(f"downloading {what} into {src} failed: {err}") from err


def fetch_url(url: str, dest: Path, *, progress: bool = True, timeout: float = 30.0) -> None:
    """Stream ``url`` into ``dest``, resuming a partial ``dest`` with an HTTP Range request.

    A server that ignores the range (HTTP 200) rewrites ``dest`` from the start; one that answers 416
    (nothing left to send, or a stale partial file) gets a fresh request without a range.

    Raises:
        urllib.error.URLError, OSError: network / HTTP errors, unchanged (the caller words them).
    """
    start = dest.stat().st_size if dest.is_file() else 0
    headers = {"Range": f"bytes={start}-"} if start else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not start:
            raise
        dest.unlink()
        return fetch_url(url, dest, progress=progress, timeout=timeout)
    with response:
        resumed = bool(start) and response.status == 206
        if resumed and not response.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
            raise WeightsError(
                f"{url}: the server resumed at the wrong offset ({response.headers['Content-Range']})"
            )
        if start and not resumed:
            logger.info("%s: the server does not resume downloads; starting over", url)
        offset = start if resumed else 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        bar = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=not progress
        )
        with bar, dest.open("ab" if resumed else "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def fetch_priors(
    dest: Path,
    *,
    fetch: FetchFn = fetch_url,
    prior_sha256: Mapping[str, str] = PRIOR_SHA256,
    progress: bool = True,
) -> None:
    """Download the eight release priors into ``dest/<name>.npy``, each checked against ``prior_sha256``.

    A verified file already there is kept; otherwise ``<name>.npy.part`` is fetched (resumed), verified and
    renamed.

    Raises:
        WeightsError: a sha256 mismatch (the downloaded file is deleted).
    """
    dest.mkdir(parents=True, exist_ok=True)
    for name in RELEASE_EMOTIONS:
        final, expected = dest / f"{name}.npy", prior_sha256[name].lower()
        if final.is_file():
            if sha256_file(final) == expected:
                continue
            final.unlink()
        part = dest / f"{name}.npy.part"
        url = prior_url(name)
        logger.info("downloading %s", url)
        fetch(url, part, progress=progress)
        digest = sha256_file(part)
        if digest != expected:
            part.unlink()
            raise WeightsError(
                f"{url}: sha256 {digest} does not match the expected {expected}; the file was deleted. "
                "Run the download again; if it persists, the file changed upstream"
            )
        os.replace(part, final)


@contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub's progress bars off for the duration when ``enabled`` is False (restored after)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _fetch_repo(
    repo: HubRepo,
    src: Path,
    snapshot: SnapshotFn,
    revision: str,
    digests: Mapping[str, str | None],
) -> dict[str, dict[str, Any]]:
    """Snapshot ``repo``'s files at ``revision`` into the staging folder and check them.

    Returns:
        ``{"<repo_id>/<file>": {"revision", "sha256", "verified"}}`` for every file that arrived.

    Raises:
        WeightsError: a required file did not arrive, or a file's sha256 differs from ``digests`` (the
            file is deleted).
    """
    local = src / repo.subdir if repo.subdir else src
    local.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s@%s (%d files) into %s", repo.repo_id, revision, len(repo.files), local)
    snapshot(repo.repo_id, local_dir=str(local), allow_patterns=list(repo.files), revision=revision)
    absent = [f for f in repo.files if not (local / f).is_file()]
    missing = [f for f in absent if f not in repo.optional]
    if missing:
        raise WeightsError(
            f"{repo.repo_id} did not provide {', '.join(missing)}; the repository layout changed?"
        )
    for name in absent:
        logger.warning("%s has no %s; that optional part is skipped", repo.repo_id, name)
    records: dict[str, dict[str, Any]] = {}
    for name in (f for f in repo.files if f not in absent):
        digest, expected = sha256_file(local / name), digests.get(name)
        if expected is not None and digest != expected.lower():
            (local / name).unlink()
            raise WeightsError(
                f"{repo.repo_id}/{name} (revision {revision}) has sha256 {digest}, not the pinned "
                f"{expected}; the file was deleted. Run the download again; if it persists, the file "
                "changed upstream"
            )
        if expected is None:
            logger.warning("%s/%s has no pinned sha256: recorded unverified (%s)", repo.repo_id, name, digest)
        verified = expected is not None
        records[f"{repo.repo_id}/{name}"] = {"revision": revision, "sha256": digest, "verified": verified}
    return records


def _install(src: Path, root: Path, sources: Mapping[str, Any]) -> None:
    """Convert the staging folder into ``root`` (release parts and RIFE), add the face detector, manifest
    (recording ``sources``: what was downloaded, at which revision, verified or not)."""
    convert_dice_talk(src, root, overwrite=True, emotions_dir=src / PRIORS_DIR)
    if (src / YOLO_FILE).is_file():
        target = root / FACE_DETECTOR_DIR / YOLO_FILE
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(src / YOLO_FILE, target.with_name(f".{YOLO_FILE}.partial"))
        os.replace(target.with_name(f".{YOLO_FILE}.partial"), target)
    write_manifest(root, sources=sources)  # covers face_detector/ too


def download_weights(
    root: Path,
    *,
    cache_dir: Path | None = None,
    offline: bool | None = None,
    snapshot: SnapshotFn | None = None,
    fetch: FetchFn = fetch_url,
    progress: bool = True,
    prior_sha256: Mapping[str, str] = PRIOR_SHA256,
    revisions: Mapping[str, str] | None = None,
    hub_sha256: Mapping[str, Mapping[str, str | None]] = HUB_SHA256,
) -> Path:
    """Download the public weights and convert them into the weights tree ``root``.

    Args:
        root: weights tree to (re)write; only its components are replaced, other files are kept.
        cache_dir: folder holding the resumable staging folder ``.<root name>.download`` (default: the
            parent of ``root``); the staging folder is deleted once the tree is converted.
        offline: refuse to touch the network (default: ``HF_HUB_OFFLINE``).
        snapshot: ``snapshot(repo_id, *, local_dir, allow_patterns)`` (default
            ``huggingface_hub.snapshot_download``).
        fetch: ``fetch(url, part_path, *, progress)`` for the priors (default :func:`fetch_url`).
        progress: show progress bars.
        prior_sha256: expected sha256 of each prior (default :data:`PRIOR_SHA256`).
        revisions: ``{repo_id: commit}`` overriding :data:`HUB_REVISIONS`.
        hub_sha256: ``{repo_id: {file: sha256 or None}}`` checked before a file is used (default
            :data:`HUB_SHA256`; None: unknown, recorded ``"verified": false`` in the manifest).

    Returns:
        ``root``.

    Raises:
        WeightsError: offline / no network (with the manual instructions), gated or missing repository,
            a hash mismatch, or a conversion error (the staging folder is kept for the next run).
    """
    root = Path(root).expanduser()
    src = staging_dir(root, cache_dir)
    if is_offline(offline):
        raise WeightsError(
            "cannot download weights (offline / no network): " + manual_instructions(root, src)
        )
    if snapshot is None:
        from huggingface_hub import snapshot_download as snapshot
    if root.is_dir():  # staging folders of converters that were killed
        sweep_dead_owners(root, (PARTIAL_PREFIX,))
    pins = {**HUB_REVISIONS, **(revisions or {})}
    src.mkdir(parents=True, exist_ok=True)
    sources: dict[str, dict[str, Any]] = {}
    with _hub_progress(progress):
        for repo in HUB_REPOS:
            with _download_errors(root, src, repo.repo_id):
                digests = hub_sha256.get(repo.repo_id, {})
                sources |= _fetch_repo(repo, src, snapshot, pins[repo.repo_id], digests)
    with _download_errors(root, src, "the emotion priors"):
        fetch_priors(src / PRIORS_DIR, fetch=fetch, prior_sha256=prior_sha256, progress=progress)
    logger.info("converting %s into %s", src, root)
    _install(src, root, sources)
    shutil.rmtree(src)
    logger.info("weights ready in %s", root)
    return root


def download_eval_weights(
    root: Path,
    names: Iterable[str] | None = None,
    *,
    cache_dir: Path | None = None,
    offline: bool | None = None,
    fetch: FetchFn = fetch_url,
    progress: bool = True,
) -> dict[str, str]:
    """Fetch the evaluation networks' files (resumable, into ``<staging>-eval``), check and install them
    (:mod:`~portrait.weights.eval_weights`); ``{path in tree: sha256}``. WeightsError: offline, bad digest."""
    root = Path(root).expanduser()
    src = staging_dir(root, cache_dir).with_name(staging_dir(root, cache_dir).name + "-eval")
    wanted = [eval_weight(name) for name in names] if names is not None else list(EVAL_WEIGHTS)
    manual = lambda: manual_eval_instructions(root, src, wanted)  # noqa: E731
    if is_offline(offline):
        raise WeightsError("cannot download the evaluation weights (offline / no network): " + manual())
    src.mkdir(parents=True, exist_ok=True)
    sources: dict[str, Any] = {}
    for weight in wanted:
        final, part = src / weight.published, src / f"{weight.published}.part"
        with _download_errors(root, src, weight.url, manual):
            if not final.is_file():
                fetch(weight.url, part, progress=progress)
                os.replace(part, final)
        sources[weight.published] = check_published(final, weight)
    files = install_eval_weights(src, root, [w.name for w in wanted], sources)
    shutil.rmtree(src)
    return files


def ensure_weights(
    root: Path, *, offline: bool | None = None, progress: bool = True, **download_options: Any
) -> Path:
    """``root`` if its tree is complete, else :func:`download_weights` into it (generate's first use).

    ``download_options`` go to :func:`download_weights` (``cache_dir``, ``snapshot``, ``fetch``, ...).
    """
    root = Path(root).expanduser()
    missing = missing_files(root)
    if not missing:
        return root
    logger.warning(
        "weights tree %s is incomplete (%d files missing, e.g. %s); downloading the public weights",
        root, len(missing), missing[0],
    )  # fmt: skip
    return download_weights(root, offline=offline, progress=progress, **download_options)
