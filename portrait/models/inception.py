"""Inception-v3 as FID defines it: the pool features of pytorch-fid's ``InceptionV3`` (2048-d).

FID compares the statistics of these features over two image sets. The network is TensorFlow's 2015
Inception (``inception-2015-12-05``, the graph of the original TTUR FID code) in the module layout of
torchvision's ``Inception3`` with the FID-specific blocks of ``pytorch-fid`` (``FIDInceptionA/C/E_1/E_2``):
average pools that do not count padded zeros, and a max pool in the last block's pool branch. The tensor names
equal those of pytorch-fid's weights file ``pt_inception-2015-12-05-6726825d.pth``, so it converts key for key
(:mod:`portrait.weights.inception`). Written for this project from that architecture; no code was copied.

Input: ``(B, 3, H, W)`` RGB in [0, 1] of any size; :meth:`FIDInceptionV3.forward` resizes it bilinearly to
299² (``align_corners=False``, no antialiasing) and scales it to [-1, 1], as pytorch-fid's ``resize_input``
and ``normalize_input`` do. Output: ``(B, 2048)`` after the global average pool (``pool3``). The classifier
(``fc``, 1008 classes) is not part of this module: FID never uses it. The module does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Side the input is resized to and the size of the pool features of the full network.
INPUT_SIZE = 299
POOL_DIM = 2048

Width = Callable[[int], int]


class BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001, TensorFlow's), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], **conv: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **conv)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3×3 average, stride 1, padding 1, padded zeros not counted (TensorFlow's pooling)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _row(cin: int, cout: int) -> BasicConv2d:
    return BasicConv2d(cin, cout, (1, 7), padding=(0, 3))


def _column(cin: int, cout: int) -> BasicConv2d:
    return BasicConv2d(cin, cout, (7, 1), padding=(3, 0))


class InceptionA(nn.Module):
    """Mixed_5b/c/d: 1×1, 5×5, double 3×3 and pool branches."""

    def __init__(self, cin: int, pool_features: int, w: Width) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, w(64), 1)
        self.branch5x5_1 = BasicConv2d(cin, w(48), 1)
        self.branch5x5_2 = BasicConv2d(w(48), w(64), 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), 3, padding=1)
        self.branch_pool = BasicConv2d(cin, w(pool_features), 1)
        self.out_channels = 2 * w(64) + w(96) + w(pool_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 → 17."""

    def __init__(self, cin: int, w: Width) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, w(384), 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, w(64), 1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), 3, stride=2)
        self.out_channels = w(384) + w(96) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b/c/d/e: factorised 7×7 branches."""

    def __init__(self, cin: int, channels_7x7: int, w: Width) -> None:
        super().__init__()
        c7 = w(channels_7x7)
        self.branch1x1 = BasicConv2d(cin, w(192), 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = _row(c7, c7)
        self.branch7x7_3 = _column(c7, w(192))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = _column(c7, c7)
        self.branch7x7dbl_3 = _row(c7, c7)
        self.branch7x7dbl_4 = _column(c7, c7)
        self.branch7x7dbl_5 = _row(c7, w(192))
        self.branch_pool = BasicConv2d(cin, w(192), 1)
        self.out_channels = 4 * w(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = layer(d)
        d = self.branch7x7dbl_5(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 → 8."""

    def __init__(self, cin: int, w: Width) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, w(192), 1)
        self.branch3x3_2 = BasicConv2d(w(192), w(320), 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, w(192), 1)
        self.branch7x7x3_2 = _row(w(192), w(192))
        self.branch7x7x3_3 = _column(w(192), w(192))
        self.branch7x7x3_4 = BasicConv2d(w(192), w(192), 3, stride=2)
        self.out_channels = w(320) + w(192) + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b (``max_pool=False``: average pool branch) and Mixed_7c (``max_pool=True``, FID's variant)."""

    def __init__(self, cin: int, w: Width, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, w(320), 1)
        self.branch3x3_1 = BasicConv2d(cin, w(384), 1)
        self.branch3x3_2a = BasicConv2d(w(384), w(384), (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(w(384), w(384), (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, w(448), 1)
        self.branch3x3dbl_2 = BasicConv2d(w(448), w(384), 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(w(384), w(384), (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(w(384), w(384), (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, w(192), 1)
        self.out_channels = w(320) + 4 * w(384) + w(192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


def _stem(w: Width) -> Sequence[tuple[str, BasicConv2d]]:
    return (
        ("Conv2d_1a_3x3", BasicConv2d(3, w(32), 3, stride=2)),
        ("Conv2d_2a_3x3", BasicConv2d(w(32), w(32), 3)),
        ("Conv2d_2b_3x3", BasicConv2d(w(32), w(64), 3, padding=1)),
        ("Conv2d_3b_1x1", BasicConv2d(w(64), w(80), 1)),
        ("Conv2d_4a_3x3", BasicConv2d(w(80), w(192), 3)),
    )


class FIDInceptionV3(nn.Module):
    """The FID Inception up to its 2048-d average pool.

    Args:
        width: multiplier of every channel count (1.0 = the released network; tests use small values, the
            feature size is then ``out_dim``).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()

        def w(n: int) -> int:
            return max(1, round(n * width))

        for name, layer in _stem(w):
            self.add_module(name, layer)
        self.Mixed_5b = InceptionA(w(192), 32, w)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, w)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, w)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, w)
        self.Mixed_6b = InceptionC(self.Mixed_6a.out_channels, 128, w)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, w)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, w)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, w)
        self.Mixed_7a = InceptionD(self.Mixed_6e.out_channels, w)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, w, max_pool=False)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, w, max_pool=True)
        self.out_dim = self.Mixed_7c.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` RGB in [0, 1] → ``(B, out_dim)`` pool features (2048 for the release)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Inception input must be (B, 3, H, W), got {tuple(images.shape)}")
        x = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in (
            self.Mixed_5b,
            self.Mixed_5c,
            self.Mixed_5d,
            self.Mixed_6a,
            self.Mixed_6b,
            self.Mixed_6c,
        ):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
