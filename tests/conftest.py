"""Shared test set-up: quiet, offline, single-threaded; GPU tests skipped without CUDA."""

from __future__ import annotations

import os

# Before any heavy import: one thread (2 shared cores make tiny models 10-100x slower with more), no network,
# no telemetry.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

import pytest  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:  # torch is a hard dependency, but the config tests do not need it
    torch = None
else:
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``gpu`` when no CUDA device is available, and tests marked ``slow`` unless asked
    for (``PORTRAIT_SLOW_TESTS=1`` or ``-m slow``): CI runs their fast variants."""
    no_gpu = torch is None or not torch.cuda.is_available()
    run_slow = os.environ.get("PORTRAIT_SLOW_TESTS") == "1" or "slow" in (config.getoption("-m") or "")
    for item in items:
        if no_gpu and item.get_closest_marker("gpu") is not None:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if not run_slow and item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.skip(reason="slow: run with PORTRAIT_SLOW_TESTS=1 or -m slow"))


# ------------------------------------------------------------------------------------------------------
# Fixtures (added by the lead: tiny components, sample assets, ...) go below this line.
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory):
    """A complete tiny random-weight weights tree in our layout (seed 0)."""
    from portrait.testing.trees import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny", layout="portrait", seed=0)


@pytest.fixture(scope="session")
def portrait_tree(tmp_path_factory: pytest.TempPathFactory):
    """Another tiny tree in our layout (seed 0) for tests that compare trees byte for byte (read it only)."""
    from tiny_inputs import tiny_tree

    return tiny_tree(tmp_path_factory, "portrait")


@pytest.fixture(scope="session")
def release_tree(tmp_path_factory: pytest.TempPathFactory):
    """The same tiny weights in the research release's layout (``write_tiny_weights(layout="dice-talk")``)."""
    from tiny_inputs import tiny_tree

    return tiny_tree(tmp_path_factory, "dice-talk")


@pytest.fixture(scope="session")
def tiny_pipe(tiny_weights):
    """The tiny pipeline loaded strictly from ``tiny_weights`` (CPU, fp32). Do not mutate it."""
    from portrait.weights.load import load_pipeline

    pipe = load_pipeline(tiny_weights, device="cpu", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe
