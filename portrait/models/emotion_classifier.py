"""The release's latent emotion classifier, kept from ``emo_model.pth`` as ``emotion_classifier/``.

DICE-Talk's ``EmotionModel`` carries ``classifier = Classifier(1280, 22)``: global average pooling of a
``(B, 1280, h, w)`` UNet feature map, then 1280 → 512 → 256 → 22 linear layers. 1280 is the width of SVD's
deepest UNet blocks, so it classifies emotion from the UNet's latent features (the paper's "latent-space
classification"); the release never calls it at inference. What is **not** known: which UNet layer it was
trained on, the activation between the layers (ReLU is assumed here), and the meaning and order of the 22
classes (plausibly MEAD's 7 emotions × 3 levels + neutral). See docs/emotion.md. Nothing here reads files.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


class EmotionClassifier(ModelMixin, ConfigMixin):
    """Pool → ``fc1`` → ReLU → ``fc2`` → ReLU → ``fc3`` (logits); key names as in the release.

    Args:
        in_channels: feature-map channels (1280 in the release).
        hidden_dims: widths of ``fc1`` and ``fc2`` ((512, 256) in the release).
        num_classes: output logits (22 in the release).
    """

    @register_to_config
    def __init__(
        self, in_channels: int = 1280, hidden_dims: tuple[int, int] = (512, 256), num_classes: int = 22
    ) -> None:
        super().__init__()
        first, second = hidden_dims
        self.fc1 = nn.Linear(in_channels, first)
        self.fc2 = nn.Linear(first, second)
        self.fc3 = nn.Linear(second, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        """Logits of a feature map or of pooled features.

        Args:
            features: (B, in_channels, h, w) UNet features, or (B, in_channels) already pooled.

        Returns:
            (B, num_classes) logits (apply softmax for probabilities).
        """
        if features.ndim == 4:
            features = features.mean((2, 3))
        if features.ndim != 2 or features.shape[1] != self.config.in_channels:
            raise ValueError(
                f"features must be (B, {self.config.in_channels}[, h, w]), got {tuple(features.shape)}"
            )
        hidden = torch.relu(self.fc2(torch.relu(self.fc1(features))))
        return self.fc3(hidden)
