"""SyncNet weights: convert the released ``syncnet_v2.model`` once, load the safetensors hash-checked.

The release (VGG, ``robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model``, research use) is a
PyTorch state dict. :func:`convert_syncnet_v2` reads it with ``torch.load(weights_only=True)`` (no
arbitrary unpickling), checks every tensor against :class:`~portrait.models.syncnet.SyncNet` and writes
``syncnet.safetensors``; :func:`load_syncnet` then loads that file strictly, after checking its sha256
when one is given. The weights are never downloaded here (``portrait.weights.hub`` is the networked code).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from portrait.models.syncnet import SyncNet
from portrait.weights.state_dicts import (
    check_prefix,
    load_network,
    match_state,
    read_published,
    write_converted,
)

#: Leading hex digits of the sha256 of the released ``syncnet_v2.model`` (only this prefix was recorded, so
#: the converter checks it unless told otherwise).
SYNCNET_V2_SHA256_PREFIX = "961e8696"
SYNCNET_V2_URL = "http://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model"
_WHAT = "SyncNet weights"
_FIX = "convert syncnet_v2.model with `portrait-gen download --eval` (or convert_syncnet_v2)"


def _linear_head(name: str, tensor: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    if tensor.ndim == 3 and tensor.shape[-1] == 1 and expected.ndim == 2:
        return tensor[..., 0]  # a 1×1 Conv1d head stored instead of Linear
    return tensor


def convert_syncnet_v2(src: Path, dst: Path, *, check_release_hash: bool = True) -> str:
    """Convert ``syncnet_v2.model`` to safetensors; returns the sha256 of the written file.

    Raises:
        WeightsError: missing file, a sha256 that does not start with :data:`SYNCNET_V2_SHA256_PREFIX`
            (unless ``check_release_hash`` is False), not a plain state dict, or a wrong tensor.
    """
    src = Path(src)
    prefix = SYNCNET_V2_SHA256_PREFIX if check_release_hash else None
    digest = check_prefix(src, prefix, "syncnet_v2.model") if src.is_file() else ""
    state = read_published(src, "syncnet_v2.model", SYNCNET_V2_URL, prefixes=("__S__.", "module."))
    reference = SyncNet().state_dict()
    return write_converted(dst, match_state(state, reference, _WHAT, adapt=_linear_head), digest)


def load_syncnet(
    path: Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
) -> SyncNet:
    """Load a converted SyncNet safetensors file (any embed size / width, inferred from the tensors).

    With ``expected_sha256`` the file must match it; without, it loads with a warning that it is unverified.

    Raises:
        WeightsError: missing file, hash mismatch, or tensors that do not fit the architecture.
    """

    def build(state: Mapping[str, torch.Tensor]) -> SyncNet:
        width = float(state["netcnnaud.0.weight"].shape[0]) / 64.0
        return SyncNet(embed_dim=int(state["netfcaud.3.weight"].shape[0]), width=width)

    return load_network(path, expected_sha256, "SyncNet", _FIX, build, device)
