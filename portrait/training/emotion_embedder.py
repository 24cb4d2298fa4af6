"""Recipe ``train embedder``: the audio-visual emotion embedder from cached Whisper states and expressions.

Inputs per clip of ``clip_frames`` frames (12.5 fps): the Whisper tokens of each frame's own 80 ms
(``audio[:, 4:8]`` of the cached windows → (4·T, blocks, channels)) and the per-frame expression
probabilities (T, 7). Losses (docs/training.md), with m̂ = n + ι*(level)·(m_y − n):

* ``L_cls`` = NLL of the mixture weights at the label;
* ``L_reg`` = ‖prior − m̂‖² / D and ``0.1·(ι − ι*)²``;
* ``0.01·L_KL`` of N(prior, σ²) against N(m̂, 0.1²);
* ``contrastive`` (default 0.5): supervised contrastive term on the normalised priors, positives = same
  emotion from *another* speaker (identity disentangling), only when the batch has such pairs;
* ``distill`` (default 1.0): ‖E(prior) − E(m̂)‖² through the frozen release emotion model E.

Held-out accuracy: argmax of the weights over whole validation-speaker clips.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from portrait.errors import InputError
from portrait.layout import RELEASE_EMOTIONS
from portrait.models.emotion_embedder import EmotionEmbedder
from portrait.training.data import Cache
from portrait.training.recipe import CachedRecipe

logger = logging.getLogger(__name__)

#: ι* per level (MEAD levels 1-3).
LEVEL_INTENSITY = {1: 0.6, 2: 0.8, 3: 1.0}
DEFAULTS = {"dim": 256, "heads": 4, "clip_frames": 25, "contrastive": 0.5, "distill": 1.0,
            "target_std": 0.1, "temperature": 0.1}  # fmt: skip


class EmbedderRecipe(CachedRecipe):
    """Trains :class:`EmotionEmbedder` over the tree's bank; the release emotion model stays frozen."""

    name = "embedder"
    component = "emotion_embedder"
    defaults = DEFAULTS

    def __init__(self, cache: Cache, weights_root: Path, options: dict[str, Any], seed: int = 0) -> None:
        from portrait.weights.load import load_component, load_emotion_bank

        super().__init__(cache, weights_root, options)
        bank = load_emotion_bank(weights_root)
        # A render reads the K weights as the RELEASE_EMOTIONS in that order.
        self.names = list(RELEASE_EMOTIONS)
        lacking = [n for n in self.names if n not in bank]
        if lacking:
            raise InputError(
                f"the bank of {weights_root} lacks the release emotion(s) {', '.join(lacking)}: the "
                "embedder predicts weights over the eight release emotions"
            )
        missing = sorted({e.emotion for e in cache.entries} - set(self.names))
        if missing:
            raise InputError(
                f"the cache has label(s) {', '.join(missing)} outside the release emotions "
                f"({', '.join(self.names)}) the embedder predicts; relabel or drop those videos"
            )
        self.bank = torch.cat([bank[n] for n in self.names])  # (K, D)
        self.neutral = self.names.index("neutral")
        self.emotion_model = load_component("emotion_model", weights_root).requires_grad_(False).eval()
        self._load_clips()
        first = next(iter(self.clips.values()))
        blocks, channels = first["audio"].shape[2:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = EmotionEmbedder(
                audio_blocks=int(blocks), audio_channels=int(channels),
                visual_dim=int(first["expression"].shape[1]), dim=int(self.opts["dim"]),
                heads=int(self.opts["heads"]), bank_size=len(self.names), prior_dim=self.bank.shape[1],
            )  # fmt: skip

    def to(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.emotion_model.to(self.device)
        self.bank = self.bank.to(self.device)

    # ------------------------------------------------------------------------------------ batches
    def _clip(self, entry, start: int | None, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.clips[entry.id]
        n = data["audio"].shape[0]
        start = 0 if start is None else start
        idx = (torch.arange(frames) + start) % n  # short clips wrap around
        audio = data["audio"][idx, 4:8].float().flatten(0, 1)  # (4·T, blocks, channels)
        return audio, data["expression"][idx].float()

    def _batch(self, entries, starts, frames: int) -> dict[str, torch.Tensor]:
        pairs = [self._clip(e, s, frames) for e, s in zip(entries, starts, strict=True)]
        return {
            "audio": torch.stack([a for a, _ in pairs]).to(self.device),
            "visual": torch.stack([v for _, v in pairs]).to(self.device),
            "label": torch.tensor([self.names.index(e.emotion) for e in entries], device=self.device),
            "level": torch.tensor([LEVEL_INTENSITY.get(e.level, 0.8) for e in entries], device=self.device),
            "speaker": [e.speaker for e in entries],
        }

    def _losses(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        out = model(batch["audio"], batch["visual"])
        label, target_i = batch["label"], batch["level"]
        neutral = self.bank[self.neutral]
        target = neutral + target_i[:, None] * (self.bank[label] - neutral)
        prior = EmotionEmbedder.prior(
            out["weights"], out["intensity"], out["residual"], self.bank, self.neutral
        )
        loss = F.nll_loss(torch.log(out["weights"] + 1e-8), label)
        loss = loss + F.mse_loss(prior, target) + 0.1 * F.mse_loss(out["intensity"], target_i)
        s2 = float(self.opts["target_std"]) ** 2
        log_var = out["log_var"].clamp(-6, 2)
        kl = 0.5 * (
            log_var.exp() / s2 + (prior - target) ** 2 / s2 - 1 - log_var + torch.log(torch.tensor(s2))
        )
        loss = loss + 0.01 * kl.mean()
        if self.opts["contrastive"]:
            loss = loss + float(self.opts["contrastive"]) * self._supcon(prior, label, batch["speaker"])
        if self.opts["distill"]:
            tokens = self.emotion_model(prior, retrieval=False)
            with torch.no_grad():
                wanted = self.emotion_model(target, retrieval=False)
            loss = loss + float(self.opts["distill"]) * F.mse_loss(tokens, wanted)
        return loss

    def _supcon(self, prior: torch.Tensor, label: torch.Tensor, speakers: list[str]) -> torch.Tensor:
        z = F.normalize(prior - prior.mean(-1, keepdim=True), dim=-1)
        logits = z @ z.T / float(self.opts["temperature"])
        n = len(speakers)
        same_spk = torch.tensor([[a == b for b in speakers] for a in speakers], device=z.device)
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        positive = (label[:, None] == label[None]) & ~same_spk
        if not positive.any():
            return prior.sum() * 0
        logits = logits.masked_fill(eye, -1e9)
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        rows = positive.any(1)
        per_row = -(log_prob * positive).sum(1)[rows] / positive.sum(1)[rows]
        return per_row.mean()

    # ------------------------------------------------------------------------------------ recipe API
    def loss(self, model: nn.Module, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        frames = int(self.opts["clip_frames"])
        picks = torch.randint(len(self.train_entries), (batch_size,), generator=generator).tolist()
        entries = [self.train_entries[i] for i in picks]
        starts = [
            int(torch.randint(max(e.frames - frames, 0) + 1, (1,), generator=generator)) for e in entries
        ]
        return self._losses(model, self._batch(entries, starts, frames))

    @torch.no_grad()
    def fixed_loss(self, model: nn.Module) -> float:
        entries = self.train_entries
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return float(
                self._losses(model, self._batch(entries, [0] * len(entries), int(self.opts["clip_frames"])))
            )

    @torch.no_grad()
    def predict(self, model: nn.Module, entry) -> dict[str, torch.Tensor]:
        """Heads on a whole cached clip (eval mode: no modality dropout)."""
        audio, visual = self._clip(entry, 0, entry.frames)
        return model(audio[None].to(self.device), visual[None].to(self.device))

    @torch.no_grad()
    def validate(self, model: nn.Module) -> dict[str, float]:
        if not self.val_entries:
            return {}
        hits = [int(self.predict(model, e)["weights"].argmax(-1)) == self.names.index(e.emotion)
                for e in self.val_entries]  # fmt: skip
        return {"val_accuracy": sum(hits) / len(hits), "val_clips": float(len(hits))}
