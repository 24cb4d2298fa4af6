"""I3D (Inflated Inception-v1, Kinetics-400) as the FVD code of VideoGPT defines it: the 400 logits of a clip.

FVD compares the statistics of these logits over two sets of clips. The architecture is Carreira & Zisserman's
"Quo Vadis, Action Recognition?" I3D in the module layout of pytorch-i3d's ``InceptionI3d``, with the
batch-norm settings of VideoGPT's copy (``eps=1e-5``; pytorch-i3d itself uses 1e-3), which is what VideoGPT
and common_metrics_on_video_quality run with ``i3d_pretrained_400.pt``. The tensor names equal that file's (a
plain state dict), so it converts key for key (:mod:`portrait.weights.i3d`). Written for this project from
that architecture; no code was copied.

Every convolution and max pool pads "same" the TensorFlow way (more padding after than before, computed from
the input size; max pools pad with zeros). Input: ``(B, 3, T, 224, 224)`` in [-1, 1] (T ≥ 9; FVD uses 16-frame
clips). Output: ``(B, num_classes)`` logits averaged over the remaining time steps. The module does no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Input side and the number of frames of an FVD clip.
INPUT_SIZE = 224
CLIP_FRAMES = 16

Triple = tuple[int, int, int]


def same_padding(size: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """``F.pad`` widths (last dim first) for TensorFlow "same" padding of a ``(T, H, W)`` input."""
    pads: list[int] = []
    for s, k, st in zip(reversed(tuple(size)), reversed(tuple(kernel)), reversed(tuple(stride)), strict=True):
        total = max(k - st, 0) if s % st == 0 else max(k - s % st, 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)


class MaxPool3dSame(nn.MaxPool3d):
    """3-D max pool after zero "same" padding."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__(kernel, stride, padding=0)
        self.kernel, self.step = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, same_padding(x.shape[2:], self.kernel, self.step)))


class Unit3D(nn.Module):
    """ "Same"-padded 3-D convolution, optional batch norm (eps 1e-5) and ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
        *,
        norm: bool = True,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm3d(cout, eps=1e-5, momentum=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(F.pad(x, same_padding(x.shape[2:], self.kernel, self.stride)))
        if hasattr(self, "bn"):
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches: 1×1×1; 1×1×1 → 3×3×3; 1×1×1 → 3×3×3; 3×3×3 max pool → 1×1×1."""

    def __init__(self, cin: int, widths: Sequence[int]) -> None:
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = widths
        self.b0 = Unit3D(cin, c0)
        self.b1a = Unit3D(cin, c1a)
        self.b1b = Unit3D(c1a, c1b, (3, 3, 3))
        self.b2a = Unit3D(cin, c2a)
        self.b2b = Unit3D(c2a, c2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, c3b)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


#: The mixed blocks: name and the six branch widths (b0, b1a, b1b, b2a, b2b, b3b) of the release.
MIXED: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
#: Max pools inserted before a mixed block (name, kernel, stride).
POOLS_BEFORE = {
    "Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
}


class InceptionI3d(nn.Module):
    """The I3D of FVD.

    Args:
        num_classes: logits (400 for Kinetics-400).
        width: multiplier of every hidden channel count (1.0 = the release; tests use small values).
    """

    def __init__(self, num_classes: int = 400, width: float = 1.0) -> None:
        super().__init__()

        def w(n: int) -> int:
            return max(1, round(n * width))

        self.num_classes = num_classes
        self.order: list[str] = []
        self._add("Conv3d_1a_7x7", Unit3D(3, w(64), (7, 7, 7), (2, 2, 2)))
        self._add("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2)))
        self._add("Conv3d_2b_1x1", Unit3D(w(64), w(64)))
        self._add("Conv3d_2c_3x3", Unit3D(w(64), w(192), (3, 3, 3)))
        self._add("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2)))
        channels = w(192)
        for name, widths in MIXED:
            if name in POOLS_BEFORE:
                pool, kernel, stride = POOLS_BEFORE[name]
                self._add(pool, MaxPool3dSame(kernel, stride))
            block = InceptionModule(channels, [w(n) for n in widths])
            self._add(name, block)
            channels = block.out_channels
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        self.logits = Unit3D(channels, num_classes, norm=False, relu=False)

    def _add(self, name: str, module: nn.Module) -> None:
        self.add_module(name, module)
        self.order.append(name)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, 224, 224)`` in [-1, 1] → ``(B, num_classes)`` logits (mean over time)."""
        if clips.ndim != 5 or clips.shape[1] != 3:
            raise ValueError(f"I3D input must be (B, 3, T, H, W), got {tuple(clips.shape)}")
        x = clips
        for name in self.order:
            x = getattr(self, name)(x)
        x = self.logits(self.avg_pool(x))
        return x.squeeze(3).squeeze(3).mean(dim=2)
