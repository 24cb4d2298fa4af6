"""FID Inception weights: convert pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``; load hash-checked.

The published file (pytorch-fid's GitHub release ``fid_weights``, the TensorFlow FID Inception ported to
PyTorch, Apache-2.0) is a state dict of torchvision's ``Inception3`` layout with the FID blocks.
:func:`convert_fid_inception` reads it with ``torch.load(weights_only=True)``, checks its sha256 prefix
(``6726825d``, the prefix in its file name, which ``torch.hub`` checks too), drops the unused 1008-class
``fc`` and checks every other tensor against :class:`~portrait.models.inception.FIDInceptionV3`;
:func:`load_fid_inception` loads the safetensors result.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from portrait.models.inception import FIDInceptionV3
from portrait.weights.state_dicts import (
    check_prefix,
    load_network,
    match_state,
    read_published,
    write_converted,
)

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_URL = (
    f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_INCEPTION_FILE}"
)
#: The sha256 prefix in the published file's name (torch.hub's convention).
FID_INCEPTION_SHA256_PREFIX = "6726825d"
_WHAT = "FID Inception weights"
_FIX = f"convert {FID_INCEPTION_FILE} with `portrait-gen download --eval` (or convert_fid_inception)"


def convert_fid_inception(src: Path, dst: Path, *, check_release_hash: bool = True) -> str:
    """Convert pytorch-fid's Inception weights to safetensors; returns the sha256 of the written file.

    Raises:
        WeightsError: missing file, another sha256 prefix (unless ``check_release_hash`` is False), not a
            plain state dict, or a tensor that does not fit.
    """
    src = Path(src)
    prefix = FID_INCEPTION_SHA256_PREFIX if check_release_hash else None
    digest = check_prefix(src, prefix, FID_INCEPTION_FILE) if src.is_file() else ""
    state = read_published(src, FID_INCEPTION_FILE, FID_INCEPTION_URL)
    reference = FIDInceptionV3().state_dict()
    return write_converted(dst, match_state(state, reference, _WHAT, ignore=("fc.",)), digest)


def _build(state: Mapping[str, torch.Tensor]) -> FIDInceptionV3:
    """The FID Inception that fits ``state`` (width 1.0 for the release)."""
    return FIDInceptionV3(width=float(state["Conv2d_1a_3x3.conv.weight"].shape[0]) / 32.0)


def load_fid_inception(path: Path, expected_sha256: str | None = None, device: str = "cpu") -> FIDInceptionV3:
    """Load a converted FID Inception, hash-checked when ``expected_sha256`` is given (else WeightsError)."""
    return load_network(path, expected_sha256, "FID Inception", _FIX, _build, device)
