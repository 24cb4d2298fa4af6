"""The learning check: training shown to learn on a synthetic task whose answers are known (docs/training.md).

- ``base``: the stand-in for the release (a tiny tree whose VAE and UNet first learn the synthetic clips).
- ``render``: held-out driving paths rendered with and without the trained guider, measured.
- ``figures``: loss curves, trajectories and frames as PNGs.
- ``check``: every stage end to end (``scripts/learning_check.py``), the pass marks, the deliberate breaks.
"""
