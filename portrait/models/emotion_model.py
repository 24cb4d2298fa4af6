"""Emotion conditioning: a 256-d emotion prior → emotion context tokens (compat §3).

:class:`EmotionModel` (reference ``EmotionModel`` from ``emo.py``) turns the prior into query tokens and
lets them attend over key/value tokens made from a learned emotion codebook (:class:`EmotionBank`).
The reference's training-only ``classifier`` is left out; the converter drops its keys.
"""

from __future__ import annotations

import logging
import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

from .audio import AudioProjector

logger = logging.getLogger(__name__)


class EmotionBank(nn.Module):
    """Vector-quantisation codebook of emotion embeddings (reference ``emotion_bank``).

    Args:
        prior_dim: width of the emotion prior fed to ``fc``.
        dim: width of a code vector.
        codebook_size: number of code vectors.
    """

    def __init__(self, prior_dim: int = 256, dim: int = 1024, codebook_size: int = 64) -> None:
        super().__init__()
        self.fc = nn.Linear(prior_dim, dim)
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code vector of each row of ``z`` (squared L2 ``‖z‖² + ‖e‖² − 2 z·e``).

        Args:
            z: ``(B, dim)`` embeddings.

        Returns:
            ``q_st``: ``(B, dim)`` straight-through quantised vectors ``z + (q − z).detach()`` (numerically
            ≈ the code vector, not bit-equal; gradients pass to ``z`` unchanged);
            ``index``: ``(B,)`` int64 code indices.
        """
        codes = self.codebook.weight
        distances = (
            torch.sum(z**2, dim=1, keepdim=True) + torch.sum(codes**2, dim=1) - 2 * torch.matmul(z, codes.t())
        )
        index = torch.argmin(distances, dim=1)
        q = codes[index]
        return z + (q - z).detach(), index


class QKVAttention(nn.Module):
    """Multi-head attention with ``fc_q``/``fc_k``/``fc_v`` projections and no output projection.

    Args:
        dim: token width (in and out).
        num_heads: heads; ``dim`` must be divisible by it.
    """

    def __init__(self, dim: int = 1024, num_heads: int = 8) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"QKVAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.fc_q = nn.Linear(dim, dim)
        self.fc_k = nn.Linear(dim, dim)
        self.fc_v = nn.Linear(dim, dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        """``(B, T, dim)`` → ``(B, heads, T, head_dim)``."""
        b, t, d = x.shape
        return x.view(b, t, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, q_in: Tensor, kv_in: Tensor) -> Tensor:
        """Attend from ``q_in`` over ``kv_in``.

        Args:
            q_in: ``(B, Tq, dim)`` query tokens.
            kv_in: ``(B', Tk, dim)`` key/value tokens with ``B' == B`` or ``B' == 1`` (broadcast over B).

        Returns:
            ``(B, Tq, dim)``: ``softmax(Q Kᵀ / √head_dim) V`` per head, heads merged head-major.
        """
        if kv_in.shape[0] not in (1, q_in.shape[0]):
            raise ValueError(
                f"QKVAttention: key/value batch {kv_in.shape[0]} must be 1 or the query batch {q_in.shape[0]}"
            )
        b, tq, d = q_in.shape
        q = self._split_heads(self.fc_q(q_in))
        k = self._split_heads(self.fc_k(kv_in))
        v = self._split_heads(self.fc_v(kv_in))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d // self.num_heads)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, heads, Tq, head_dim)
        return out.transpose(1, 2).reshape(b, tq, d)


def _token_projector(in_dim: int, intermediate_dim: int, dim: int, context_tokens: int) -> AudioProjector:
    """The reference's ``AudioProjModel`` of one vector: ``(B, 1, 1, in_dim)`` → ``(B, tokens, dim)``."""
    return AudioProjector(
        seq_len=1,
        blocks=1,
        channels=in_dim,
        intermediate_dim=intermediate_dim,
        output_dim=dim,
        context_tokens=context_tokens,
    )


class EmotionModel(ModelMixin, ConfigMixin):
    """Emotion prior → emotion context tokens (reference ``EmotionModel``, inference part only).

    Query tokens ``emo_linear(prior)`` attend (``num_heads`` heads) over key/value tokens:

    * ``retrieval=False`` (the reference's configured default): every codebook entry through
      ``kv_tokens_linear``, ``codebook_size·context_tokens`` tokens shared by the whole batch;
      ``codebook.fc`` is unused.
    * ``retrieval=True``: ``kv_tokens_linear`` of the code vector nearest to ``codebook.fc(prior)``.

    The unconditional emotion tokens are ``model(zeros)``, a constant set by the weights, **not** zero.

    Args:
        prior_dim: width of the emotion prior (256).
        dim: token width (the UNet's cross-attention dim, 1024).
        intermediate_dim: hidden width of the two projector MLPs.
        context_tokens: output tokens (and key/value tokens per codebook entry).
        codebook_size: entries in the emotion codebook.
        num_heads: attention heads.
        retrieval: default branch of :meth:`forward`.
    """

    @register_to_config
    def __init__(
        self,
        prior_dim: int = 256,
        dim: int = 1024,
        intermediate_dim: int = 1024,
        context_tokens: int = 32,
        codebook_size: int = 64,
        num_heads: int = 8,
        retrieval: bool = False,
    ) -> None:
        super().__init__()
        self.emo_linear = _token_projector(prior_dim, intermediate_dim, dim, context_tokens)
        self.kv_tokens_linear = _token_projector(dim, intermediate_dim, dim, context_tokens)
        self.codebook = EmotionBank(prior_dim=prior_dim, dim=dim, codebook_size=codebook_size)
        self.attention = QKVAttention(dim=dim, num_heads=num_heads)

    def kv_tokens(self) -> Tensor:
        """Key/value tokens of the non-retrieval branch (independent of the input; cacheable).

        Returns:
            ``(1, codebook_size·context_tokens, dim)``, entry-major (entry ``e``'s tokens are rows
            ``e·context_tokens … (e+1)·context_tokens − 1``).
        """
        codes = self.codebook.codebook.weight  # (codebook_size, dim)
        tokens = self.kv_tokens_linear(codes[:, None, None, :])  # (codebook_size, context_tokens, dim)
        return tokens.reshape(1, -1, self.config.dim)

    def forward(self, prior: Tensor, retrieval: bool | None = None, kv: Tensor | None = None) -> Tensor:
        """Emotion tokens for a batch of priors.

        Args:
            prior: ``(B, prior_dim)`` emotion priors (reference files: zero-mean, roughly [-4, 2.2]);
                zeros give the unconditional tokens.
            retrieval: branch to use; ``None`` takes ``config.retrieval``.
            kv: optional precomputed :meth:`kv_tokens` (``(1, codebook_size·context_tokens, dim)``) for the
                non-retrieval branch; passing it with ``retrieval=True`` is an error.

        Returns:
            ``(B, context_tokens, dim)`` emotion tokens.
        """
        cfg = self.config
        if prior.ndim != 2 or prior.shape[1] != cfg.prior_dim:
            raise ValueError(
                f"EmotionModel expects a prior of shape (B, {cfg.prior_dim}), got {tuple(prior.shape)}"
            )
        retrieval = cfg.retrieval if retrieval is None else retrieval
        if retrieval:
            if kv is not None:
                raise ValueError("EmotionModel: precomputed kv tokens only apply to retrieval=False")
            q_st, _ = self.codebook.quantize(self.codebook.fc(prior))
            kv = self.kv_tokens_linear(q_st[:, None, None, :])  # (B, context_tokens, dim)
        elif kv is None:
            kv = self.kv_tokens()
        queries = self.emo_linear(prior[:, None, None, :])  # (B, context_tokens, dim)
        return self.attention(queries, kv)
