"""RIFE HDv3 frame interpolation (compat §7.1): ``IFNet`` and :func:`midframes`.

The network estimates, coarse to fine, a bidirectional flow ``(B, 4, H, W)`` (channels 0–1 warp frame 0
to the middle, 2–3 warp frame 1) and a blend mask logit ``(B, 1, H, W)``; the middle frame is the
sigmoid-weighted blend of the two warped frames. Every level runs its block twice, once with the frames
swapped (and the flow halves swapped, the mask negated), and averages the two answers, which makes the
network exactly symmetric in its two inputs.

Parameter names follow the release checkpoint ``flownet.pkl`` (after stripping ``module.``) so it loads
strictly: 160 tensors, 3 038 015 parameters at ``channels=90`` including the unused teacher block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn
from torch.nn import functional as F

#: Image (3) + image (3) + mask (1) + flow (4) channels fed to a student block.
STUDENT_IN_CHANNELS = 11
#: The teacher block additionally sees the ground-truth middle frame (3 more channels).
TEACHER_IN_CHANNELS = 14
#: Downscale factors of the three levels at full-resolution inference (RIFE ``scale=1.0``).
DEFAULT_SCALES = (4.0, 2.0, 1.0)


def _conv_prelu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv (padding 1) followed by a per-channel PReLU; keys ``0.weight, 0.bias, 1.weight``."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1), nn.PReLU(c_out))


def _up_head(channels: int, c_out: int) -> nn.Sequential:
    """Two stride-2 4×4 transposed convs (×4 in size) with a PReLU between them."""
    half = channels // 2
    return nn.Sequential(
        nn.ConvTranspose2d(channels, half, kernel_size=4, stride=2, padding=1),
        nn.PReLU(half),
        nn.ConvTranspose2d(half, c_out, kernel_size=4, stride=2, padding=1),
    )


def swap_flow(flow: Tensor) -> Tensor:
    """Exchange the two 2-channel halves of a bidirectional flow ``(B, 4, H, W)``."""
    return torch.cat((flow[:, 2:4], flow[:, 0:2]), dim=1)


def warp(image: Tensor, flow: Tensor) -> Tensor:
    """Backward-warp ``image`` by ``flow``: ``out[y, x] = image[y + flow_y, x + flow_x]`` (bilinear).

    Samples outside the image take the nearest border value. The sampling grid is built on every call
    from the input size (no cache).

    Args:
        image: ``(B, C, H, W)``, any range.
        flow: ``(B, 2, H, W)`` in pixels; channel 0 is the x (width) offset, channel 1 the y offset.

    Returns:
        ``(B, C, H, W)``, same dtype as ``image``.
    """
    if flow.ndim != 4 or flow.shape[1] != 2 or flow.shape[2:] != image.shape[2:]:
        raise ValueError(
            f"warp: flow must be (B, 2, H, W) matching image {tuple(image.shape)}, got {tuple(flow.shape)}"
        )
    height, width = image.shape[2], image.shape[3]
    xs = torch.linspace(-1.0, 1.0, width, device=flow.device, dtype=flow.dtype).view(1, 1, 1, width)
    ys = torch.linspace(-1.0, 1.0, height, device=flow.device, dtype=flow.dtype).view(1, 1, height, 1)
    base = torch.cat((xs.expand(1, 1, height, width), ys.expand(1, 1, height, width)), dim=1)
    normalised = torch.cat(
        (flow[:, 0:1] / ((width - 1.0) / 2.0), flow[:, 1:2] / ((height - 1.0) / 2.0)), dim=1
    )
    grid = (base + normalised).permute(0, 2, 3, 1)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _resize(x: Tensor, factor: float) -> Tensor:
    """Bilinear resize by ``factor`` (align_corners False); identity for ``factor == 1``."""
    if factor == 1.0:
        return x
    return F.interpolate(
        x, scale_factor=factor, mode="bilinear", align_corners=False, recompute_scale_factor=False
    )


def check_size(height: int, width: int, scales: Sequence[float] = DEFAULT_SCALES) -> None:
    """Raise ``ValueError`` unless every level maps ``(height, width)`` back onto itself exactly.

    A level resizes by ``1/scale``, halves twice (stride-2 convs), doubles twice and resizes by ``scale``;
    for the default scales (4, 2, 1) this means both sizes must be multiples of 16.
    """
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"interpolation scales must be positive, got {tuple(scales)}")
        for size in (height, width):
            inner = math.floor(size * (1.0 / scale))  # as F.interpolate computes the size
            if inner < 4 or inner % 4 or math.floor(inner * scale) != size:
                raise ValueError(
                    f"frame interpolation needs H and W that survive a 1/{scale:g} resize and two "
                    f"halvings exactly (multiples of {int(4 * max(scales))} for scales {tuple(scales)}); "
                    f"got {height}x{width}"
                )


class IFBlock(nn.Module):
    """One coarse-to-fine level: (images, mask, current flow) → flow and mask-logit updates.

    ``conv0`` downsamples ×4 into ``channels`` features, four residual ``convblock``s refine them,
    ``conv1`` / ``conv2`` upsample ×4 into a 4-channel flow and a 1-channel mask logit.

    Args:
        in_channels: channels of ``cat(x, flow)`` (11 for the students, 14 for the teacher).
        channels: feature width ``c`` (even; the release uses 90).
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv0 = nn.Sequential(_conv_prelu(in_channels, half, 2), _conv_prelu(half, channels, 2))
        self.convblock0 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.convblock1 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.convblock2 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.convblock3 = nn.Sequential(_conv_prelu(channels, channels), _conv_prelu(channels, channels))
        self.conv1 = _up_head(channels, 4)
        self.conv2 = _up_head(channels, 1)

    def forward(self, x: Tensor, flow: Tensor, scale: float) -> tuple[Tensor, Tensor]:
        """Predict a flow and mask update at ``1/scale`` resolution, returned at full resolution.

        Args:
            x: ``(B, in_channels − 4, H, W)`` (two images and the mask logit).
            flow: ``(B, 4, H, W)`` current bidirectional flow in full-resolution pixels.
            scale: downscale factor of this level (4, 2 or 1).

        Returns:
            ``(flow (B, 4, H, W) in full-resolution pixels, mask logit (B, 1, H, W))``.
        """
        x = _resize(x, 1.0 / scale)
        flow = _resize(flow, 1.0 / scale) * (1.0 / scale)
        feat = self.conv0(torch.cat((x, flow), dim=1))
        for block in (self.convblock0, self.convblock1, self.convblock2, self.convblock3):
            feat = block(feat) + feat
        new_flow = _resize(self.conv1(feat), scale) * scale
        new_mask = _resize(self.conv2(feat), scale)
        return new_flow, new_mask


class IFNet(ModelMixin, ConfigMixin):
    """RIFE HDv3 intermediate-flow network: two frames → their temporal midpoint.

    Args:
        channels: feature width of every block (90 in the release).
        teacher: build the distillation teacher ``block_tea`` (never run at inference; kept so the
            release state dict loads strictly).
    """

    @register_to_config
    def __init__(self, channels: int = 90, teacher: bool = True) -> None:
        super().__init__()
        if channels < 2 or channels % 2:
            raise ValueError(f"IFNet channels must be a positive even number, got {channels}")
        self.block0 = IFBlock(STUDENT_IN_CHANNELS, channels)
        self.block1 = IFBlock(STUDENT_IN_CHANNELS, channels)
        self.block2 = IFBlock(STUDENT_IN_CHANNELS, channels)
        if teacher:
            self.block_tea = IFBlock(TEACHER_IN_CHANNELS, channels)

    def forward(self, img0: Tensor, img1: Tensor, scale_list: Sequence[float] = DEFAULT_SCALES) -> Tensor:
        """Interpolate the frame halfway between ``img0`` and ``img1``.

        Args:
            img0, img1: ``(B, 3, H, W)`` in [0, 1]; H and W multiples of 16 for the default scales.
            scale_list: downscale factor of each of the three levels, coarse to fine.

        Returns:
            ``(B, 3, H, W)``: a convex blend of the two warped frames (not clamped; within [0, 1] when the
            inputs are).
        """
        if img0.ndim != 4 or img0.shape[1] != 3 or img0.shape != img1.shape:
            raise ValueError(
                "IFNet expects two (B, 3, H, W) frames of equal shape, "
                f"got {tuple(img0.shape)} and {tuple(img1.shape)}"
            )
        if len(scale_list) != 3:
            raise ValueError(f"IFNet needs one scale per student block (3), got {tuple(scale_list)}")
        check_size(img0.shape[2], img0.shape[3], scale_list)
        batch, _, height, width = img0.shape
        flow = img0.new_zeros(batch, 4, height, width)
        mask = img0.new_zeros(batch, 1, height, width)
        warped0, warped1 = img0, img1
        for block, scale in zip((self.block0, self.block1, self.block2), scale_list, strict=True):
            flow_a, mask_a = block(torch.cat((warped0, warped1, mask), dim=1), flow, scale)
            flow_b, mask_b = block(torch.cat((warped1, warped0, -mask), dim=1), swap_flow(flow), scale)
            flow = flow + (flow_a + swap_flow(flow_b)) / 2
            mask = mask + (mask_a + (-mask_b)) / 2
            warped0 = warp(img0, flow[:, 0:2])
            warped1 = warp(img1, flow[:, 2:4])
        weight = torch.sigmoid(mask)
        return warped0 * weight + warped1 * (1 - weight)


@torch.no_grad()
def midframes(model: IFNet, a: Tensor, b: Tensor, batch: int = 8) -> Tensor:
    """Middle frames of the pairs ``(a[i], b[i])``, clamped to [0, 1] (compat §7.1 "Use").

    Inputs are moved to the model's device and dtype; the result comes back on ``a``'s device and dtype.

    Args:
        model: an :class:`IFNet`.
        a, b: ``(n, 3, H, W)`` in [0, 1], H and W multiples of 16.
        batch: pairs per network call (1 reproduces the reference's call shapes exactly).

    Returns:
        ``(n, 3, H, W)`` in [0, 1].
    """
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(
            f"midframes: a and b must be (n, 3, H, W) of equal shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if batch < 1:
        raise ValueError(f"midframes: batch must be >= 1, got {batch}")
    outputs = []
    for start in range(0, a.shape[0], batch):
        pair0 = a[start : start + batch].to(device=model.device, dtype=model.dtype)
        pair1 = b[start : start + batch].to(device=model.device, dtype=model.dtype)
        outputs.append(model(pair0, pair1).clamp(0, 1).to(device=a.device, dtype=a.dtype))
    if not outputs:
        return a.new_empty(a.shape)
    return torch.cat(outputs, dim=0)
