"""``train install OUT --weights W``: add a trained component to a weights tree and record it in its manifest.

Only what the component is made of moves: its ``config.json`` and weights file (:func:`component_files`),
each a regular file of the run folder (a symlink is refused, so nothing outside the run is copied into
the tree). The rest of the tree is verified against ``manifest.json`` first (a file changed since the
download is never re-blessed) and only the component's own records change; ``sources``,
``custom_emotions`` and every other record stay as they were. The tree's writers' lock is held throughout.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
from pathlib import Path

from portrait.errors import InputError, WeightsError
from portrait.files import exclusive_lock, sha256_file, write_json_atomic
from portrait.layout import MANIFEST_FILE, component

logger = logging.getLogger(__name__)

#: Components the trainers write.
TRAINED_COMPONENTS = ("landmark_guider", "emotion_embedder")


def component_files(out: Path, name: str) -> list[Path]:
    """The files of component ``name`` in the run folder ``out``: its config and weights file.

    Raises:
        InputError: one is missing, or is not a regular file (a symlink, a folder, a device).
    """
    comp = component(name)
    files = []
    for file_name in (comp.config_file, comp.weights_file):
        path = out / name / str(file_name)
        try:
            mode = path.lstat().st_mode
        except OSError:
            raise InputError(f"{path} is missing; the trained component is incomplete") from None
        if not stat.S_ISREG(mode) or (out / name).is_symlink():
            raise InputError(
                f"{path} is not a regular file (a symlink?): only the run's own files are installed"
            )
        files.append(path)
    return files


def _verified_manifest(root: Path, names: list[str]) -> dict:
    """The tree's manifest once every file it records outside the ``names`` components matches its digest."""
    from portrait.weights.load import verify_manifest

    path = root / MANIFEST_FILE
    if not path.is_file():
        raise WeightsError(
            f"{path} is missing: install into a tree made by `portrait-gen download` or `convert`"
        )
    bad = [rel for rel in verify_manifest(root) if rel.split("/")[0] not in names]
    if bad:
        raise WeightsError(
            f"{len(bad)} file(s) of {root} differ from {MANIFEST_FILE} ({', '.join(bad[:5])}); nothing was "
            "installed: repair the tree (`portrait-gen doctor`, re-download) first"
        )
    return json.loads(path.read_text())


def _copy_component(files: list[Path], root: Path, name: str) -> None:
    """Copy ``files`` into ``root/name`` through a temporary folder renamed over the old component."""
    tmp, old = root / f".{name}.tmp", root / f".{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for source in files:
        shutil.copyfile(source, tmp / source.name, follow_symlinks=False)
    if (root / name).exists():
        os.replace(root / name, old)
    os.replace(tmp, root / name)
    shutil.rmtree(old, ignore_errors=True)


def install_component(out: Path, weights_root: Path) -> list[str]:
    """Copy every trained component of ``out`` into ``weights_root`` (checked strictly first).

    Each component's files are checked (:func:`component_files`, then a strict load), the rest of the
    tree is verified against its manifest, the component is copied to a temporary folder renamed over the
    old one, and the manifest's records of that component alone are replaced.

    Returns:
        The names installed.

    Raises:
        InputError: ``out`` holds no trained component, or one with a missing or non-regular file.
        WeightsError: ``weights_root`` is no complete tree, has no manifest, or differs from it.
    """
    from portrait.weights.emotion_bank import TREE_LOCK
    from portrait.weights.load import check_tree, has_component, load_component

    out, root = Path(out), Path(weights_root)
    check_tree(root)
    names = [n for n in TRAINED_COMPONENTS if has_component(out, n)]
    if not names:
        raise InputError(f"{out} holds no trained component ({', '.join(TRAINED_COMPONENTS)}/config.json)")
    files = {name: component_files(out, name) for name in names}
    for name in names:
        load_component(name, out)  # strict: every tensor present with its shape
    with exclusive_lock(root / TREE_LOCK):
        manifest = _verified_manifest(root, names)
        records = {k: v for k, v in manifest["files"].items() if k.split("/")[0] not in names}
        for name in names:
            _copy_component(files[name], root, name)
            for path in sorted((root / name).iterdir()):
                records[f"{name}/{path.name}"] = sha256_file(path)
            logger.info("installed %s into %s", name, root)
        manifest["files"] = dict(sorted(records.items()))
        write_json_atomic(root / MANIFEST_FILE, manifest)
    return names
