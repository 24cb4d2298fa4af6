"""LandmarkGuider: per-frame motion maps (landmark drawings) → residual after the UNet's ``conv_in``.

The architecture is exactly :class:`~portrait.models.pose_guider.PoseGuider`'s (the subclass adds no layer):
the two guiders' outputs are summed per frame by the pipeline. ``conv_out`` starts at zero, so a fresh
guider adds exactly nothing; its input and middle layers may start from the release pose guider
(:meth:`LandmarkGuider.from_pose_guider`), which is how fine-tuning starts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import Tensor

from portrait.models.pose_guider import PoseGuider

logger = logging.getLogger(__name__)

#: Channels of a motion map (outline/brows/nose, eyes, lips; see ``portrait.motion.maps``).
MOTION_CHANNELS = 3


class LandmarkGuider(PoseGuider):
    """The pose guider's architecture fed ``(B, 3, H, W)`` motion maps in [0, 1].

    Constructor arguments and defaults are the pose guider's (``conditioning_channels`` = 3 =
    :data:`MOTION_CHANNELS`); the config class name in ``config.json`` is ``LandmarkGuider``.
    """

    @classmethod
    def from_pose_guider(cls, pose_state: Mapping[str, Tensor], **config) -> LandmarkGuider:
        """A guider whose input and middle layers are copied from a pose guider's state dict.

        ``conv_out`` stays zero (the new guider adds nothing until it is trained). ``config``: the
        constructor arguments (they must match the pose guider's shapes).

        Raises:
            ValueError: a tensor of ``pose_state`` is missing or has another shape.
        """
        guider = cls(**config)
        own = guider.state_dict()
        copied = {k: v for k, v in own.items() if not k.startswith("conv_out.")}
        problems = [
            k
            for k, v in copied.items()
            if k not in pose_state or tuple(pose_state[k].shape) != tuple(v.shape)
        ]
        problems += [k for k in pose_state if k not in own]  # a deeper pose guider does not fit either
        if problems:
            raise ValueError("pose guider state does not fit the landmark guider: " + ", ".join(problems[:8]))
        with torch.no_grad():
            for key, value in copied.items():
                value.copy_(pose_state[key].to(value.dtype))
        return guider

    @property
    def is_zero(self) -> bool:
        """True while ``conv_out`` is all zeros (the guider's output is exactly 0)."""
        return not bool(self.conv_out.weight.any() or self.conv_out.bias.any())
