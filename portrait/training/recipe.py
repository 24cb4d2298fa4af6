"""What the two recipes share: options over defaults, the cache's clips and splits, the run identity, export.

:class:`CachedRecipe` is the base of ``training.emotion_embedder.EmbedderRecipe`` and
``training.landmark_guider.MotionRecipe``; each adds its model, frozen parts and losses
(:class:`~portrait.training.trainer.Recipe` is the protocol the trainer sees).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from portrait.errors import InputError
from portrait.training.data import Cache, weights_hash


def export_component(model: nn.Module, out: Path, name: str) -> Path:
    """``out/<name>/`` with ``config.json`` and the weights file the layout names for ``name``."""
    from safetensors.torch import save_file

    from portrait.layout import component

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(folder)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / component(name).weights_file))
    return folder


class CachedRecipe:
    """A recipe trained on a prepared cache against one weights tree.

    Attributes (class): ``name``: the recipe's name in the run identity and in messages (``"embedder"``,
    ``"motion"``); ``component``: the weights-tree folder it trains; ``defaults``: its options.

    Raises:
        InputError: an unknown option, or a cache prepared with other weights.
    """

    name: ClassVar[str]
    component: ClassVar[str]
    defaults: ClassVar[Mapping[str, Any]]

    def __init__(self, cache: Cache, weights_root: Path, options: Mapping[str, Any]) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults)
            raise InputError(f"unknown {self.name} option(s) {', '.join(unknown)}; known: {known}")
        self.opts = {**self.defaults, **options}
        cache.check_weights(weights_root)
        self.cache, self.root = cache, Path(weights_root)
        self.device = torch.device("cpu")

    def _load_clips(self) -> None:
        """Every cached clip in memory, and the train / val entries."""
        self.clips = {e.id: self.cache.load(e.id) for e in self.cache.entries}
        self.train_entries = self.cache.split("train")
        self.val_entries = self.cache.split("val")

    def identity(self) -> dict[str, Any]:
        """The recipe, the weights tree's hash and the cache index's hash: what a resume must match."""
        index = json.dumps(self.cache.index["entries"], sort_keys=True).encode()
        return {
            "recipe": self.name,
            "weights": weights_hash(self.root),
            "cache": hashlib.sha256(index).hexdigest(),
        }

    def export(self, model: nn.Module, out: Path) -> Path:
        return export_component(model, out, self.component)
