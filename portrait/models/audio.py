"""Audio conditioning: Whisper hidden states → per-frame windows → audio context tokens.

Three pieces, in the order the pipeline uses them (compat §2.1–2.3):

1. :func:`whisper_hidden_states` runs a Whisper encoder over 30-s mel slices and keeps every hidden
   state (embeddings + one per layer, the last one after the final LayerNorm), one token per 20 ms.
2. :func:`frame_audio_windows` cuts those tokens into one fixed-length window per video frame.
3. :class:`AudioProjector` (the reference's ``AudioProjModel``) maps one window to ``context_tokens``
   cross-attention tokens.

Nothing here picks a device or reads a file.
"""

from __future__ import annotations

import logging

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn

logger = logging.getLogger(__name__)

TOKENS_PER_UNIT = 2
"""Whisper encoder tokens (20 ms each) per audio unit (40 ms, ``num_samples // 640`` at 16 kHz)."""


class AudioProjector(ModelMixin, ConfigMixin):
    """MLP from a window of Whisper hidden states to audio context tokens (reference ``AudioProjModel``).

    ``proj1`` (seq_len·blocks·channels → intermediate_dim), ReLU, ``proj2`` (intermediate → intermediate),
    ReLU, ``proj3`` (intermediate → context_tokens·output_dim), reshape, ``norm`` LayerNorm(output_dim).

    The unconditional audio tokens are ``projector(zeros)``: a constant set by the biases and the
    LayerNorm, not zero.

    Args:
        seq_len: tokens per window (10 = 200 ms).
        blocks: Whisper hidden states per token (encoder layers + 1; 5 for whisper-tiny).
        channels: Whisper width (384 for whisper-tiny).
        intermediate_dim: hidden width of the MLP.
        output_dim: width of each output token (the UNet's cross-attention dim).
        context_tokens: output tokens per window.
    """

    @register_to_config
    def __init__(
        self,
        seq_len: int = 10,
        blocks: int = 5,
        channels: int = 384,
        intermediate_dim: int = 1024,
        output_dim: int = 1024,
        context_tokens: int = 32,
    ) -> None:
        super().__init__()
        input_dim = seq_len * blocks * channels
        self.proj1 = nn.Linear(input_dim, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, x: Tensor) -> Tensor:
        """Project windows of hidden states to context tokens.

        Args:
            x: ``(..., seq_len, blocks, channels)``, any number of leading axes (may be none). The last three
                axes are flattened row-major: flat index ``t·blocks·channels + k·channels + c``.

        Returns:
            ``(..., context_tokens, output_dim)`` LayerNorm-ed tokens.

        Raises:
            ValueError: the trailing axes are not ``(seq_len, blocks, channels)``.
        """
        cfg = self.config
        expected = (cfg.seq_len, cfg.blocks, cfg.channels)
        if x.ndim < 3 or tuple(x.shape[-3:]) != expected:
            raise ValueError(
                f"AudioProjector expects input of shape (..., seq_len, blocks, channels) = (..., "
                f"{expected[0]}, {expected[1]}, {expected[2]}), got {tuple(x.shape)}"
            )
        lead = x.shape[:-3]
        h = x.reshape(*lead, -1)
        h = torch.relu(self.proj1(h))
        h = torch.relu(self.proj2(h))
        h = self.proj3(h).reshape(*lead, cfg.context_tokens, cfg.output_dim)
        return self.norm(h)


def _whisper_slice_frames(encoder: nn.Module) -> int:
    """Mel frames one encoder call takes: ``max_source_positions`` × the conv stem's total stride (3000)."""
    return encoder.config.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]


@torch.no_grad()
def whisper_hidden_states(encoder: nn.Module, mel: Tensor) -> Tensor:
    """All hidden states of a Whisper encoder over consecutive 30-s mel slices (compat §2.1).

    Each slice of ``S = 2·max_source_positions`` mel frames (3000) goes through
    ``encoder(slice, output_hidden_states=True)``. In transformers 5 that returns ``layers + 1`` hidden
    states: index 0 is the conv-stem output plus positional embedding, index ``j`` the output of layer
    ``j − 1``, and the last one is replaced by ``last_hidden_state`` (after the final LayerNorm), exactly
    what the reference stacks. The states are stacked on a new axis per token and the slices concatenated
    along time.

    Args:
        encoder: a transformers ``WhisperEncoder`` (``WhisperModel.encoder``), in the mode and on the device
            and dtype the caller chose; ``mel`` is moved to the encoder's device and dtype.
        mel: ``(1, n_mels, S·K)`` log-mel features as Whisper's feature extractor makes them
            (roughly [-1.5, 1.5]).

    Returns:
        ``(S/2·K, layers + 1, d_model)`` hidden states, one row per 20-ms token (1500 per slice).

    Raises:
        ValueError: wrong rank, batch, mel bins, or a length that is not a positive multiple of ``S``.
    """
    slice_frames = _whisper_slice_frames(encoder)
    n_mels = encoder.config.num_mel_bins
    if mel.ndim != 3 or mel.shape[0] != 1 or mel.shape[1] != n_mels:
        raise ValueError(
            f"whisper_hidden_states expects mel of shape (1, {n_mels}, frames), got {tuple(mel.shape)}"
        )
    frames = mel.shape[-1]
    if frames == 0 or frames % slice_frames:
        raise ValueError(
            f"whisper_hidden_states expects a mel length that is a positive multiple of {slice_frames} "
            f"frames, got {frames}; pad each 30-s piece with the Whisper feature extractor "
            "(padding='max_length')"
        )
    param = next(encoder.parameters())
    mel = mel.to(device=param.device, dtype=param.dtype)
    pieces = []
    for start in range(0, frames, slice_frames):
        out = encoder(mel[..., start : start + slice_frames], output_hidden_states=True)
        pieces.append(torch.stack(out.hidden_states, dim=2)[0])  # (S/2, layers + 1, d_model)
    logger.debug("whisper hidden states: %d slice(s), %d states per token", len(pieces), pieces[0].shape[1])
    return torch.cat(pieces, dim=0)


def frame_audio_windows(
    hidden: Tensor,
    audio_len: int,
    num_frames: int,
    units_per_frame: int = 2,
    pad_before: int = 4,
    pad_after: int = 6,
    window: int = 10,
) -> Tensor:
    """One window of hidden-state tokens per video frame (compat §2.2).

    Keeps the first ``2·audio_len`` tokens (two 20-ms tokens per 40-ms unit), puts ``pad_before`` zero
    tokens in front and ``pad_after`` after, and gives frame ``i`` the padded tokens
    ``[2·units_per_frame·i, 2·units_per_frame·i + window)``. With the defaults, frame ``i`` sees unpadded
    tokens ``[4i − 4, 4i + 6)``: 80 ms before its own 80 ms and 40 ms after.

    Args:
        hidden: ``(T, blocks, channels)`` from :func:`whisper_hidden_states`.
        audio_len: number of whole 40-ms units of audio (``num_samples // 640`` at 16 kHz), ≥ 0.
        num_frames: video frames N ≥ 1 (the reference uses ``audio_len // units_per_frame``).
        units_per_frame: 40-ms units per video frame (2 → 12.5 fps).
        pad_before: zero tokens prepended.
        pad_after: zero tokens appended.
        window: tokens per frame window.

    Returns:
        ``(num_frames, window, blocks, channels)``, a strided view into one padded copy of the tokens.

    Raises:
        ValueError: ``num_frames < 1``, too few hidden-state tokens for ``audio_len``, or the last window
            would run past the padded sequence.
    """
    tokens = TOKENS_PER_UNIT * audio_len
    stride = TOKENS_PER_UNIT * units_per_frame
    padded_len = pad_before + tokens + pad_after
    _check_window_arguments(hidden, audio_len, num_frames, stride, window, padded_len)
    blocks, channels = hidden.shape[1:]
    padded = hidden.new_zeros(padded_len, blocks, channels)
    padded[pad_before : pad_before + tokens] = hidden[:tokens]
    # unfold: (n_windows, blocks, channels, window) → (num_frames, window, blocks, channels)
    return padded.unfold(0, window, stride)[:num_frames].permute(0, 3, 1, 2)


def _check_window_arguments(
    hidden: Tensor, audio_len: int, num_frames: int, stride: int, window: int, padded_len: int
) -> None:
    """The errors of :func:`frame_audio_windows`, before anything is allocated."""
    if num_frames < 1:
        raise ValueError(
            f"frame_audio_windows needs num_frames >= 1, got {num_frames} (audio shorter than a frame?)"
        )
    if hidden.ndim != 3:
        raise ValueError(
            f"frame_audio_windows expects hidden of shape (T, blocks, channels), got {tuple(hidden.shape)}"
        )
    if audio_len < 0:
        raise ValueError(f"frame_audio_windows needs audio_len >= 0, got {audio_len}")
    tokens = TOKENS_PER_UNIT * audio_len
    if hidden.shape[0] < tokens:
        raise ValueError(
            f"frame_audio_windows: audio_len {audio_len} needs {tokens} hidden-state tokens, "
            f"got {hidden.shape[0]}"
        )
    needed = stride * (num_frames - 1) + window
    if needed > padded_len:
        max_frames = max((padded_len - window) // stride + 1, 0)
        raise ValueError(
            f"frame_audio_windows: {num_frames} frames need {needed} padded tokens, only {padded_len} "
            f"available (audio_len {audio_len}); use at most {max_frames} frames"
        )
