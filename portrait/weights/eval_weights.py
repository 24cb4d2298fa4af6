"""The evaluation networks' weights in a weights tree: what is published where, conversion, the eval manifest.

``portrait-gen download --eval`` (:func:`portrait.weights.hub.download_eval_weights`) fetches the published
files of :data:`~portrait.weights.sources.EVAL_WEIGHTS` into a folder and :func:`install_eval_weights`
converts them into the tree; the same function installs files a user fetched by hand
(``portrait-gen download --eval --from-files DIR``). No network here. Layout, next to the generation
components::

    syncnet/syncnet.safetensors                 SyncNet (LSE-C / LSE-D)
    fid_inception/fid_inception.safetensors      FID Inception (pytorch-fid)
    i3d/i3d_kinetics400.safetensors              FVD I3D (VideoGPT)
    insightface/models/buffalo_l/*.onnx          ArcFace (CSIM) and its face detector
    eval_manifest.json                           sha256 of each installed file, and where it came from

The converted files' sha256 in ``eval_manifest.json`` are checked before they load. The published files'
full sha256 could not be learned offline: only the digest prefixes recorded by their publishers (SyncNet's
``961e8696``, the FID Inception's ``6726825d`` in its file name) are checked; the rest are recorded as
``"verified": false``.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from portrait.errors import WeightsError
from portrait.files import sha256_file, write_json_atomic
from portrait.weights.i3d import convert_i3d
from portrait.weights.inception import convert_fid_inception
from portrait.weights.sources import ARCFACE_FILE, EVAL_NAMES, EVAL_WEIGHTS, EvalWeight
from portrait.weights.syncnet import convert_syncnet_v2

logger = logging.getLogger(__name__)

EVAL_MANIFEST = "eval_manifest.json"
#: Largest ONNX file taken from the ArcFace archive, and the whole archive's uncompressed limit.
MAX_ONNX_BYTES = 400 << 20
MAX_ARCHIVE_BYTES = 1 << 30


def eval_weight(name: str) -> EvalWeight:
    """The :class:`EvalWeight` called ``name`` (WeightsError naming the known ones otherwise)."""
    for weight in EVAL_WEIGHTS:
        if weight.name == name:
            return weight
    raise WeightsError(f"unknown evaluation weights {name!r}; known: {', '.join(EVAL_NAMES)}")


def how_to_install(weight: EvalWeight, root: Path) -> str:
    """What to do about a missing file: the command, or the file to fetch by hand and how to install it."""
    return (
        f"run `portrait-gen download --eval --weights {root}`, or download {weight.url} (saved as "
        f"{weight.published}) into a folder DIR and run `portrait-gen download --eval --from-files DIR "
        f"--weights {root}`"
    )


def missing_weights(weight: EvalWeight, root: Path, why: str) -> WeightsError:
    """The error of a needed evaluation file that is absent: names the file and how to put it there."""
    return WeightsError(f"{why}: {Path(root) / weight.target} is missing; {how_to_install(weight, root)}")


def read_manifest(root: Path) -> dict[str, Any]:
    """``root/eval_manifest.json`` (empty when absent)."""
    path = Path(root) / EVAL_MANIFEST
    if not path.is_file():
        return {"files": {}, "sources": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path} is not readable JSON: {error}") from error
    return {"files": dict(data.get("files", {})), "sources": dict(data.get("sources", {}))}


def expected_sha256(root: Path, target: str) -> str | None:
    """The sha256 the eval manifest records for ``target`` (None when the tree has none for it)."""
    return read_manifest(root)["files"].get(target)


def write_eval_manifest(root: Path, files: dict[str, str], sources: dict[str, Any]) -> None:
    """Add ``files`` (path in the tree → sha256) and ``sources`` to ``root/eval_manifest.json`` (atomic)."""
    manifest = read_manifest(root)
    manifest["files"].update(files)
    manifest["sources"].update(sources)
    write_json_atomic(Path(root) / EVAL_MANIFEST, manifest, indent=2, sort_keys=True)


def extract_arcface(archive: Path, dest: Path) -> dict[str, str]:
    """Copy the ``*.onnx`` members of insightface's ``buffalo_l.zip`` into ``dest`` (flat, nothing else).

    Member paths are never used as paths (only their base names, checked), sizes are bounded, and each file is
    written under a temporary name and renamed. Returns ``{file name: sha256}``.

    Raises:
        WeightsError: not a zip, no ``.onnx`` member, a member or the whole archive too large.
    """
    try:
        bundle = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as error:
        raise WeightsError(f"{archive} is not a zip archive ({ARCFACE_FILE}): {error}") from error
    with bundle:
        members = [m for m in bundle.infolist() if not m.is_dir() and m.filename.lower().endswith(".onnx")]
        if not members:
            raise WeightsError(f"{archive} holds no .onnx model ({ARCFACE_FILE} of insightface)")
        if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
            raise WeightsError(f"{archive}: the models unpack to more than {MAX_ARCHIVE_BYTES >> 20} MB")
        dest.mkdir(parents=True, exist_ok=True)
        return {
            m.filename.replace("\\", "/").rsplit("/", 1)[-1]: _extract_one(bundle, m, dest) for m in members
        }


def _extract_one(bundle: zipfile.ZipFile, member: zipfile.ZipInfo, dest: Path) -> str:
    name = member.filename.replace("\\", "/").rsplit("/", 1)[-1]
    if not name or name.startswith(".") or member.file_size > MAX_ONNX_BYTES:
        raise WeightsError(f"refusing archive member {member.filename!r} ({member.file_size} bytes)")
    target, partial = dest / name, dest / f".{name}.partial"
    written = 0
    try:
        with bundle.open(member) as source, partial.open("wb") as out:
            while chunk := source.read(1 << 20):
                written += len(chunk)
                if written > MAX_ONNX_BYTES:
                    raise WeightsError(f"archive member {name} unpacks beyond {MAX_ONNX_BYTES >> 20} MB")
                out.write(chunk)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return sha256_file(target)


def _convert(name: str, src: Path, dst: Path, check_release_hash: bool) -> str:
    if name == "syncnet":
        return convert_syncnet_v2(src, dst, check_release_hash=check_release_hash)
    if name == "fid_inception":
        return convert_fid_inception(src, dst, check_release_hash=check_release_hash)
    return convert_i3d(src, dst)


def install_eval_weights(
    src: Path,
    root: Path,
    names: Iterable[str] | None = None,
    sources: dict[str, Any] | None = None,
    *,
    check_release_hash: bool = True,
) -> dict[str, str]:
    """Convert the published files in ``src`` into the weights tree ``root``; returns ``{target: sha256}``.

    Args:
        src: folder holding the published files under their published names (:data:`EVAL_WEIGHTS`).
        names: which to install (default: every one whose file is in ``src``; at least one must be).
        sources: what the download recorded per published file (url, sha256, verified), kept in the manifest.
        check_release_hash: refuse files whose sha256 does not start with the publisher's recorded prefix.

    Raises:
        WeightsError: a named file is absent from ``src``, none is there, or a conversion fails.
    """
    src, root = Path(src), Path(root)
    wanted = [eval_weight(n) for n in names] if names is not None else list(EVAL_WEIGHTS)
    present = [w for w in wanted if (src / w.published).is_file()]
    absent = [w.published for w in wanted if w not in present]
    if (names is not None and absent) or not present:
        listing = ", ".join(f"{w.published} ({w.url})" for w in wanted if w not in present)
        raise WeightsError(f"{src} lacks {listing}: download those files into that folder first")
    if absent:
        logger.warning("%s has no %s: skipped", src, ", ".join(absent))
    files: dict[str, str] = {}
    recorded = dict(sources or {})
    for weight in present:
        logger.info("installing %s from %s", weight.target, src / weight.published)
        if weight.name == "arcface":
            for file, digest in extract_arcface(src / weight.published, root / weight.target).items():
                files[f"{weight.target}/{file}"] = digest
        else:
            files[weight.target] = _convert(
                weight.name, src / weight.published, root / weight.target, check_release_hash
            )
        recorded.setdefault(
            weight.published,
            {
                "url": weight.url,
                "sha256": sha256_file(src / weight.published),
                "verified": False,
                "licence": weight.licence,
            },
        )
    write_eval_manifest(root, files, recorded)
    return files


def check_published(path: Path, weight: EvalWeight) -> dict[str, Any]:
    """Check a downloaded published file against its pinned sha256 or recorded prefix; returns its record.

    Raises:
        WeightsError: a digest that does not match (the file is deleted).
    """
    digest = sha256_file(path)
    wrong = (weight.sha256 is not None and digest != weight.sha256) or (
        weight.sha256_prefix is not None and not digest.startswith(weight.sha256_prefix)
    )
    if wrong:
        path.unlink()
        expected = weight.sha256 or f"{weight.sha256_prefix}..."
        raise WeightsError(
            f"{weight.url}: sha256 {digest} does not match the published {expected}; the file was deleted. "
            "Run the download again; if it persists, the file changed upstream"
        )
    if weight.sha256 is None:
        logger.warning("%s has no pinned sha256: recorded unverified (%s)", weight.published, digest)
    return {
        "url": weight.url,
        "sha256": digest,
        "verified": weight.sha256 is not None,
        "prefix_checked": weight.sha256_prefix,
        "licence": weight.licence,
    }


def manual_eval_instructions(root: Path, src: Path, weights: Iterable[EvalWeight] = EVAL_WEIGHTS) -> str:
    """What to download by hand (URL → file name) and the command that installs it into ``root``."""
    files = "; ".join(f"{w.url} saved as {w.published}" for w in weights)
    command = f"portrait-gen download --eval --from-files {src} --weights {root}"
    return f"download by hand into {src}: {files}; then run `{command}`"
