"""Fixtures of the hostile-input suite (helpers live in ``hostile_support``)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def hostile_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random weights in the portrait layout (seed 1)."""
    from portrait.testing.trees import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("hostile") / "w", layout="portrait", seed=1)
