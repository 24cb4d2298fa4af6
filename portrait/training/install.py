"""``train install OUT --weights W``: add a trained component to a weights tree and refresh its manifest."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from portrait.errors import InputError

logger = logging.getLogger(__name__)

#: Components the trainers write.
TRAINED_COMPONENTS = ("landmark_guider", "emotion_embedder")


def install_component(out: Path, weights_root: Path) -> list[str]:
    """Copy every trained component of ``out`` into ``weights_root`` (checked strictly first).

    The copy goes to a temporary folder that is renamed over the old component; ``manifest.json`` is
    rewritten (``portrait.weights.manifest.write_manifest``), so ``portrait-gen doctor`` and a render see it.

    Returns:
        The names installed. Raises InputError when ``out`` holds none or ``weights_root`` is no tree.
    """
    from portrait.weights.load import check_tree, has_component, load_component
    from portrait.weights.manifest import write_manifest

    out, weights_root = Path(out), Path(weights_root)
    check_tree(weights_root)
    names = [n for n in TRAINED_COMPONENTS if has_component(out, n)]
    if not names:
        raise InputError(f"{out} holds no trained component ({', '.join(TRAINED_COMPONENTS)}/config.json)")
    for name in names:
        load_component(name, out)  # strict: every tensor present with its shape
        tmp, old = weights_root / f".{name}.tmp", weights_root / f".{name}.old"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(out / name, tmp)
        if (weights_root / name).exists():
            os.replace(weights_root / name, old)
        os.replace(tmp, weights_root / name)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("installed %s into %s", name, weights_root)
    write_manifest(weights_root)
    return names
