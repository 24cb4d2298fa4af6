"""SyncNet: the audio-visual synchronisation network behind the Sync-C / Sync-D metrics.

The architecture of Chung & Zisserman, "Out of time: automated lip sync in the wild" (ACCV workshops
2016), in the layout of the publicly distributed ``syncnet_v2.model`` state dict (module names
``netcnnaud``, ``netfcaud``, ``netcnnlip``, ``netfclip`` with the same Sequential indices), so that file
converts into this module key for key. Written for this project; no code was copied.

Two towers map to one embedding space (``embed_dim``, 1024 in the release):

* audio: MFCC ``(B, 1, 13, 20)`` (13 coefficients × 20 frames at 100 Hz = 0.2 s) → 2-D convs → 512 →
  two linear layers → ``(B, embed_dim)``;
* video: five consecutive face crops ``(B, 3, 5, 224, 224)`` (0.2 s at 25 fps, BGR, raw 0–255 values as
  the release was trained) → 3-D convs → 512 → two linear layers → ``(B, embed_dim)``.

Distances between the two embeddings are small when the lips match the sound. The module does no I/O;
loading and hash checks live in :mod:`portrait.weights.syncnet`.
"""

from __future__ import annotations

import torch
from torch import nn

#: Input sizes of the released network.
MFCC_COEFFS = 13
MFCC_FRAMES = 20
VIDEO_FRAMES = 5
CROP_SIZE = 224


def _conv2d_block(cin: int, cout: int, kernel: tuple[int, int], padding: tuple[int, int]) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout), nn.ReLU()]


def _conv3d_block(
    cin: int,
    cout: int,
    kernel: tuple[int, int, int],
    stride: tuple[int, int, int] = (1, 1, 1),
    padding: tuple[int, int, int] = (0, 0, 0),
) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout), nn.ReLU()]


def _head(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))


class SyncNet(nn.Module):
    """Audio and lip towers of SyncNet.

    Args:
        embed_dim: size of the shared embedding (1024 in ``syncnet_v2``).
        width: multiplier of the hidden convolution widths (1.0 = the release; tests use small values).
            The 512-d output of each tower is kept so the heads keep their shape.
    """

    def __init__(self, embed_dim: int = 1024, width: float = 1.0) -> None:
        super().__init__()

        def w(n: int) -> int:
            return max(1, round(n * width))

        self.embed_dim = embed_dim
        self.netcnnaud = nn.Sequential(
            *_conv2d_block(1, w(64), (3, 3), (1, 1)),
            nn.MaxPool2d((1, 1), (1, 1)),
            *_conv2d_block(w(64), w(192), (3, 3), (1, 1)),
            nn.MaxPool2d((3, 3), (1, 2)),
            *_conv2d_block(w(192), w(384), (3, 3), (1, 1)),
            *_conv2d_block(w(384), w(256), (3, 3), (1, 1)),
            *_conv2d_block(w(256), w(256), (3, 3), (1, 1)),
            nn.MaxPool2d((3, 3), (2, 2)),
            *_conv2d_block(w(256), 512, (5, 4), (0, 0)),
        )
        self.netfcaud = _head(embed_dim)
        self.netcnnlip = nn.Sequential(
            *_conv3d_block(3, w(96), (5, 7, 7), (1, 2, 2)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv3d_block(w(96), w(256), (1, 5, 5), (1, 2, 2), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_conv3d_block(w(256), w(256), (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_block(w(256), w(256), (1, 3, 3), padding=(0, 1, 1)),
            *_conv3d_block(w(256), w(256), (1, 3, 3), padding=(0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv3d_block(w(256), 512, (1, 6, 6)),
        )
        self.netfclip = _head(embed_dim)

    def forward_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 13, 20)`` MFCC windows → ``(B, embed_dim)`` audio embeddings."""
        if mfcc.ndim != 4 or tuple(mfcc.shape[1:]) != (1, MFCC_COEFFS, MFCC_FRAMES):
            raise ValueError(f"SyncNet audio input must be (B, 1, 13, 20), got {tuple(mfcc.shape)}")
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_video(self, crops: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 5, 224, 224)`` face-crop windows → ``(B, embed_dim)`` lip embeddings."""
        expected = (3, VIDEO_FRAMES, CROP_SIZE, CROP_SIZE)
        if crops.ndim != 5 or tuple(crops.shape[1:]) != expected:
            raise ValueError(f"SyncNet video input must be (B, 3, 5, 224, 224), got {tuple(crops.shape)}")
        return self.netfclip(self.netcnnlip(crops).flatten(1))

    def forward(self, mfcc: torch.Tensor, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings: ``(audio (B, D), video (B, D))``."""
        return self.forward_audio(mfcc), self.forward_video(crops)
