"""PoseGuider: motion map (face mask) → residual added after the UNet's ``conv_in`` (compat §5)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)


class PoseGuider(ModelMixin, ConfigMixin):
    """Small conv encoder from a conditioning image to latent-resolution UNet features.

    ``conv_in`` (3×3), then per level ``i`` a 3×3 conv (``boc[i] → boc[i]``) and a stride-2 3×3 conv
    (``boc[i] → boc[i+1]``), SiLU after each of these, then a zero-initialised 3×3 ``conv_out`` with no
    activation (so an untrained guider adds nothing).

    Args:
        conditioning_embedding_channels: output channels (the UNet's first block width, 320).
        conditioning_channels: input channels (3: the face mask repeated).
        block_out_channels: widths per level; ``len − 1`` stride-2 convs downsample by ``2^(len−1)``.
    """

    @register_to_config
    def __init__(
        self,
        conditioning_embedding_channels: int = 320,
        conditioning_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        if len(block_out_channels) < 1:
            raise ValueError("PoseGuider needs at least one entry in block_out_channels")
        boc = list(block_out_channels)
        self.conv_in = nn.Conv2d(conditioning_channels, boc[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(boc[:-1], boc[1:], strict=True):
            self.blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(boc[-1], conditioning_embedding_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, cond: Tensor) -> Tensor:
        """Encode conditioning images (frames folded into the batch by the caller).

        Args:
            cond: ``(B, conditioning_channels, H, W)`` in [0, 1].

        Returns:
            ``(B, conditioning_embedding_channels, H / 2^(len−1), W / 2^(len−1))`` (each stride-2 conv rounds
            odd sizes up; H and W are multiples of 64 in the pipeline).
        """
        expected = self.config.conditioning_channels
        if cond.ndim != 4 or cond.shape[1] != expected:
            raise ValueError(
                f"PoseGuider expects input of shape (B, {expected}, H, W), got {tuple(cond.shape)}"
            )
        h = F.silu(self.conv_in(cond))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)
