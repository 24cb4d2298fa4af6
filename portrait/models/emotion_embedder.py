"""The learned audio-visual emotion embedder (DICE-Talk-V's idea): clips → a prior over the emotion bank.

Audio branch: Whisper hidden states ``(B, T_a, blocks, channels)`` (what ``whisper_hidden_states`` gives,
one token per 20 ms) → mean over blocks → linear → ``dim`` tokens. Visual branch: per-frame features
``(B, T_v, visual_dim)`` (expression-classifier probabilities/features, CLIP embeddings, landmark
displacements: plain tensors) → linear → ``dim`` tokens. A missing modality is one learned "absent" token.
Each branch attends over the other (cross-modal attention), both are pooled, and heads give:

* ``weights`` (B, K): softmax mixture over the K bank entries;
* ``intensity`` (B,): ``max_intensity·sigmoid``, in (0, max_intensity);
* ``residual`` (B, D): ``r_max·tanh``, small and bounded;
* ``log_var`` (B, D): the identity-agnostic Gaussian's log-variance.

:meth:`EmotionEmbedder.prior` combines them as ``n + intensity·Σ wᵢ(pᵢ − n) + residual``; a row that is
one-hot at intensity 1 with zero residual returns the bank entry itself (bit-exact, as ``mix_prior``).
Training (modality dropout in ``train()`` mode) lives with the training code.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


class EmotionEmbedder(ModelMixin, ConfigMixin):
    """Audio-visual emotion embedder; see the module docstring.

    Args:
        audio_blocks / audio_channels: Whisper hidden states per token and width (5, 384 for whisper-tiny).
        visual_dim: per-frame visual feature size.
        dim: model width. heads: attention heads. bank_size: K emotions. prior_dim: D.
        max_intensity: upper bound of the intensity. max_residual: bound of each residual value.
        modality_dropout: probability, in training, of replacing one modality by its absent token.
    """

    @register_to_config
    def __init__(
        self,
        audio_blocks: int = 5,
        audio_channels: int = 384,
        visual_dim: int = 7,
        dim: int = 256,
        heads: int = 4,
        bank_size: int = 8,
        prior_dim: int = 256,
        max_intensity: float = 2.0,
        max_residual: float = 0.5,
        modality_dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.audio_in = nn.Sequential(nn.LayerNorm(audio_channels), nn.Linear(audio_channels, dim))
        self.visual_in = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, dim))
        self.absent = nn.Parameter(torch.zeros(2, dim))  # 0: audio absent, 1: video absent
        self.audio_from_visual = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.visual_from_audio = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(2 * dim)
        self.trunk = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())
        self.weights_head = nn.Linear(dim, bank_size)
        self.intensity_head = nn.Linear(dim, 1)
        self.residual_head = nn.Linear(dim, prior_dim)
        self.log_var_head = nn.Linear(dim, prior_dim)

    def _tokens(self, audio: Tensor | None, visual: Tensor | None, batch: int) -> tuple[Tensor, Tensor]:
        absent = self.absent.unsqueeze(1)
        a = self.audio_in(audio.mean(2)) if audio is not None else absent[0].expand(batch, 1, -1)
        v = self.visual_in(visual) if visual is not None else absent[1].expand(batch, 1, -1)
        if self.training and self.config.modality_dropout > 0 and audio is not None and visual is not None:
            drop = torch.rand(batch, device=a.device) < self.config.modality_dropout
            which = torch.rand(batch, device=a.device) < 0.5  # True: drop audio, False: drop video
            a_drop, v_drop = (drop & which)[:, None, None], (drop & ~which)[:, None, None]
            a = torch.where(a_drop, absent[0].expand(batch, a.shape[1], -1), a)
            v = torch.where(v_drop, absent[1].expand(batch, v.shape[1], -1), v)
        return a, v

    def forward(self, audio: Tensor | None = None, visual: Tensor | None = None) -> dict[str, Tensor]:
        """Heads of the embedder.

        Args:
            audio: (B, T_a, audio_blocks, audio_channels) Whisper hidden states, or None.
            visual: (B, T_v, visual_dim) per-frame visual features, or None.

        Returns:
            ``{"weights": (B, K), "intensity": (B,), "residual": (B, D), "log_var": (B, D)}``.
        """
        if audio is None and visual is None:
            raise ValueError("the emotion embedder needs audio, video or both")
        cfg = self.config
        if audio is not None and (
            audio.ndim != 4 or audio.shape[2:] != (cfg.audio_blocks, cfg.audio_channels)
        ):
            raise ValueError(
                f"audio must be (B, T, {cfg.audio_blocks}, {cfg.audio_channels}), got {audio.shape}"
            )
        if visual is not None and (visual.ndim != 3 or visual.shape[2] != cfg.visual_dim):
            raise ValueError(f"visual must be (B, T, {cfg.visual_dim}), got {tuple(visual.shape)}")
        batch = (audio if audio is not None else visual).shape[0]
        a, v = self._tokens(audio, visual, batch)
        a = a + self.audio_from_visual(a, v, v, need_weights=False)[0]
        v = v + self.visual_from_audio(v, a, a, need_weights=False)[0]
        h = self.trunk(self.norm(torch.cat([a.mean(1), v.mean(1)], -1)))
        return {
            "weights": self.weights_head(h).softmax(-1),
            "intensity": cfg.max_intensity * torch.sigmoid(self.intensity_head(h)).squeeze(-1),
            "residual": cfg.max_residual * torch.tanh(self.residual_head(h)),
            "log_var": self.log_var_head(h),
        }

    @staticmethod
    def prior(
        weights: Tensor, intensity: Tensor, residual: Tensor, bank: Tensor, neutral_index: int
    ) -> Tensor:
        """``n + intensity·Σ wᵢ(pᵢ − n) + residual`` per row.

        Args:
            weights: (B, K) mixture weights. intensity: (B,). residual: (B, D).
            bank: (K, D) priors in the order of ``weights``. neutral_index: row of the neutral prior.

        Returns:
            (B, D); a one-hot row at intensity 1 with a zero residual is ``bank[k]`` exactly.
        """
        neutral = bank[neutral_index]
        out = neutral + intensity[:, None] * (weights @ (bank - neutral)) + residual
        top = weights.argmax(-1)
        exact = (weights.max(-1).values == 1) & (intensity == 1) & (residual == 0).all(-1)
        return torch.where(exact[:, None], bank[top], out)
