"""Seeded random evaluation networks for tests: the published files' layouts, or a converted tree.

* :func:`write_published_files` writes ``syncnet_v2.model``, ``pt_inception-2015-12-05-6726825d.pth`` and
  ``i3d_pretrained_400.pt`` at their true sizes as plain state dicts in the publishers' layouts (what
  ``portrait-gen download --eval --from-files`` converts), with the values of :mod:`.random_state`.
* :func:`write_eval_tree` writes converted safetensors at tiny widths into a weights tree (``syncnet/``,
  ``fid_inception/``, ``i3d/`` and ``eval_manifest.json``), ready for ``portrait-gen eval --weights``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from portrait.models.i3d import InceptionI3d
from portrait.models.inception import FIDInceptionV3
from portrait.models.syncnet import SyncNet
from portrait.testing.random_state import random_state
from portrait.weights.eval_weights import eval_weight, write_eval_manifest
from portrait.weights.state_dicts import write_converted

#: Extra factors keeping SyncNet's embeddings O(1) for 0–255 pixels and int16-scale MFCCs.
SYNCNET_SCALES = {
    "netcnnlip.0.weight": 1 / 128,
    "netcnnaud.0.weight": 1 / 10,
    "netfclip.3.weight": 0.1,
    "netfcaud.3.weight": 0.1,
}
#: pytorch-fid's file also holds the 1008-class classifier FID never uses.
FID_CLASSIFIER = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


def _shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in module.state_dict().items()}


def _tensors(
    shapes: Mapping[str, tuple[int, ...]], seed: int, scales: Mapping[str, float] | None = None
) -> dict:
    return {k: torch.from_numpy(v) for k, v in random_state(shapes, seed, scales).items()}


def networks(width: float = 1.0) -> dict[str, torch.nn.Module]:
    """The three networks on the meta device (shapes only) at ``width``."""
    with torch.device("meta"):
        return {
            "syncnet": SyncNet(embed_dim=1024 if width == 1.0 else 32, width=width),
            "fid_inception": FIDInceptionV3(width=width),
            "i3d": InceptionI3d(width=width),
        }


def write_published_files(folder: Path, seed: int = 0) -> dict[str, Path]:
    """The three published files (true sizes, random values) in ``folder``; returns ``{name: path}``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    nets = networks()
    shapes = {name: _shapes(net) for name, net in nets.items()}
    shapes["fid_inception"].update(FID_CLASSIFIER)
    files = {
        "syncnet": (folder / "syncnet_v2.model", _tensors(shapes["syncnet"], seed, SYNCNET_SCALES)),
        "fid_inception": (
            folder / "pt_inception-2015-12-05-6726825d.pth",
            _tensors(shapes["fid_inception"], seed),
        ),
        "i3d": (folder / "i3d_pretrained_400.pt", _tensors(shapes["i3d"], seed)),
    }
    for path, state in files.values():
        torch.save(state, path)
    return {name: path for name, (path, _) in files.items()}


def write_eval_tree(root: Path, seed: int = 0, width: float = 1 / 16) -> dict[str, str]:
    """Converted tiny-width SyncNet, FID Inception and I3D in the weights tree ``root``, with their
    ``eval_manifest.json``; returns ``{path in the tree: sha256}``."""
    root = Path(root)
    files = {}
    for name, net in networks(width).items():
        scales = SYNCNET_SCALES if name == "syncnet" else None
        target = eval_weight(name).target
        files[target] = write_converted(
            root / target, _tensors(_shapes(net), seed, scales), "random:" + str(seed)
        )
    write_eval_manifest(root, files, {})
    return files
