"""SyncNet weights: convert the released ``syncnet_v2.model`` once, load the safetensors hash-checked.

The release (VGG, ``robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model``, research use) is a
PyTorch state dict. :func:`convert_syncnet_v2` reads it with ``torch.load(weights_only=True)`` (no
arbitrary unpickling), checks every tensor against :class:`~portrait.models.syncnet.SyncNet` and writes
``syncnet.safetensors``; :func:`load_syncnet` then loads that file strictly, after checking its sha256
when one is given. The weights are never downloaded here (``portrait.weights.hub`` is the networked code).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from portrait.errors import WeightsError
from portrait.files import sha256_file
from portrait.models.syncnet import SyncNet

logger = logging.getLogger(__name__)

#: Leading hex digits of the sha256 of the released ``syncnet_v2.model`` (only this prefix was recorded, so
#: the converter checks it unless told otherwise).
SYNCNET_V2_SHA256_PREFIX = "961e8696"
_PREFIXES = ("__S__.", "module.")


def _clean_state(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = key
        for prefix in _PREFIXES:
            name = name.removeprefix(prefix)
        if name not in reference:
            raise WeightsError(f"SyncNet weights: unexpected tensor {key!r}")
        if tensor.ndim == 3 and tensor.shape[-1] == 1 and reference[name].ndim == 2:
            tensor = tensor[..., 0]  # a 1×1 Conv1d head stored instead of Linear
        if tuple(tensor.shape) != tuple(reference[name].shape):
            expected = tuple(reference[name].shape)
            raise WeightsError(
                f"SyncNet weights: {key!r} has shape {tuple(tensor.shape)}, expected {expected}"
            )
        out[name] = tensor.to(reference[name].dtype).contiguous()
    for name, tensor in reference.items():
        if name not in out:
            if name.endswith("num_batches_tracked"):
                out[name] = torch.zeros_like(tensor)  # older files predate this buffer
            else:
                raise WeightsError(f"SyncNet weights: missing tensor {name!r}")
    return out


def convert_syncnet_v2(src: Path, dst: Path, *, check_release_hash: bool = True) -> str:
    """Convert ``syncnet_v2.model`` to safetensors; returns the sha256 of the written file.

    Raises:
        WeightsError: missing file, a sha256 that does not start with :data:`SYNCNET_V2_SHA256_PREFIX`
            (unless ``check_release_hash`` is False), not a plain state dict, or a wrong tensor.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise WeightsError(f"SyncNet weights {src} not found (syncnet_v2.model from the VGG lip-sync page)")
    digest = sha256_file(src)
    if check_release_hash and not digest.startswith(SYNCNET_V2_SHA256_PREFIX):
        raise WeightsError(f"{src} has sha256 {digest}; the released syncnet_v2.model starts with 961e8696")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unpickling refusal is the same user problem
        raise WeightsError(f"{src} is not a plain PyTorch state dict: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{src} is not a state dict of tensors")
    reference = SyncNet().state_dict()
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(_clean_state(state, reference), str(dst), metadata={"source_sha256": digest})
    return sha256_file(dst)


def load_syncnet(
    path: Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
) -> SyncNet:
    """Load a converted SyncNet safetensors file (any embed size / width, inferred from the tensors).

    With ``expected_sha256`` the file must match it; without, it loads with a warning that it is unverified.

    Raises:
        WeightsError: missing file, hash mismatch, or tensors that do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"SyncNet weights {path} not found; convert syncnet_v2.model with convert_syncnet_v2"
        )
    digest = sha256_file(path)
    if expected_sha256 is None:
        logger.warning("loading unverified SyncNet weights %s (sha256 %s)", path, digest)
    elif digest != expected_sha256.lower():
        raise WeightsError(f"SyncNet weights {path} have sha256 {digest}, expected {expected_sha256}")
    state = load_file(str(path))
    try:
        embed_dim = int(state["netfcaud.3.weight"].shape[0])
        width = float(state["netcnnaud.0.weight"].shape[0]) / 64.0
    except KeyError as error:
        raise WeightsError(f"{path} is not a SyncNet file: missing {error}") from error
    net = SyncNet(embed_dim=embed_dim, width=width)
    net.load_state_dict(_clean_state(state, net.state_dict()), strict=True)
    return net.eval().to(device)
