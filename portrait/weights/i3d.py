"""FVD I3D weights: convert VideoGPT's ``i3d_pretrained_400.pt`` once, load the safetensors hash-checked.

The published file (VideoGPT's Kinetics-400 I3D, converted by its authors from the TensorFlow Hub module that
the original FVD uses; also what common_metrics_on_video_quality downloads) is a plain state dict of
pytorch-i3d's ``InceptionI3d``. :func:`convert_i3d` reads it with ``torch.load(weights_only=True)`` and checks
every tensor against :class:`~portrait.models.i3d.InceptionI3d`; :func:`load_i3d` loads the safetensors
result. Its sha256 was not recorded anywhere this project could check offline, so none is pinned.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from portrait.files import sha256_file
from portrait.models.i3d import InceptionI3d
from portrait.weights.state_dicts import load_network, match_state, read_published, write_converted

I3D_FILE = "i3d_pretrained_400.pt"
#: VideoGPT's Google Drive file (``videogpt/download.py``); common_metrics_on_video_quality has a copy too.
I3D_URL = "https://drive.usercontent.google.com/download?id=1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT&export=download&confirm=t"
_WHAT = "I3D weights"
_FIX = f"convert {I3D_FILE} with `portrait-gen download --eval` (or convert_i3d)"


def convert_i3d(src: Path, dst: Path) -> str:
    """Convert ``i3d_pretrained_400.pt`` to safetensors; returns the sha256 of the written file.

    Raises:
        WeightsError: missing file, not a plain state dict (e.g. an HTML page saved instead), a wrong tensor.
    """
    src = Path(src)
    digest = sha256_file(src) if src.is_file() else ""
    state = read_published(src, I3D_FILE, I3D_URL)
    return write_converted(dst, match_state(state, InceptionI3d().state_dict(), _WHAT), digest)


def _build(state: Mapping[str, torch.Tensor]) -> InceptionI3d:
    """The I3D that fits ``state`` (classes and width read from its tensors)."""
    width = float(state["Conv3d_1a_7x7.conv3d.weight"].shape[0]) / 64.0
    return InceptionI3d(num_classes=int(state["logits.conv3d.weight"].shape[0]), width=width)


def load_i3d(
    path: Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
) -> InceptionI3d:
    """Load a converted I3D, hash-checked when ``expected_sha256`` is given (WeightsError otherwise)."""
    return load_network(path, expected_sha256, "I3D", _FIX, _build, device)
