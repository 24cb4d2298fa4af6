"""``manifest.json`` of a weights tree: every file's sha256, written last so only a complete tree has one.

:func:`portrait.weights.load.verify_manifest` checks a tree against it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from portrait.files import sha256_file
from portrait.layout import COMPONENTS, EMOTIONS_DIR, MANIFEST_FILE, OPTIONAL_COMPONENTS


def write_manifest(root: Path, sources: Mapping[str, Any] | None = None) -> Path:
    """Write ``root/manifest.json``: the sha256 of every file of the component folders and ``emotions/``.

    ``sources`` (the download's record of each hub file: revision, sha256, verified) is stored under
    ``"sources"``. Written to a temporary name and renamed, so a manifest only exists for a complete tree.
    """
    files: dict[str, str] = {}
    for top in [c.name for c in COMPONENTS + OPTIONAL_COMPONENTS] + [EMOTIONS_DIR, "face_detector"]:
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                files[path.relative_to(root).as_posix()] = sha256_file(path)
    manifest = {"format": "portrait-weights", "version": 1, "files": dict(sorted(files.items()))}
    if sources:
        manifest["sources"] = dict(sorted(sources.items()))
    tmp = root / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST_FILE)
    return root / MANIFEST_FILE
