#!/usr/bin/env python
"""Rehearse the release at its true sizes: every stage in its own process, one JSON line per stage.

    python scripts/gpu_check.py --device cpu --real-size --size 64 --steps 1 --seconds 1 --out DIR
    python scripts/gpu_check.py --device cuda --real-size --out DIR --work /tmp/gc --deadline 540
    python scripts/gpu_check.py --device cpu --gpu-stages --out DIR        # the tiny dry run of CI

Stages: write (a seeded random release in the DICE-Talk layout), convert, load, render, a training cache and
one optimiser step of ``train motion`` and ``train embedder``; on CUDA first the benchmark (baseline vs
optimised at 512², 25 steps, 10 s, fp16), the offload tiers' peak memory, a 60 s clip and compile cold/warm.
Lines also go to ``DIR/results.jsonl`` (see ``portrait/rehearsal/runner.py``); exit code 1 when a stage
failed.
"""

import sys
from pathlib import Path

try:
    from portrait.rehearsal.runner import run
except ModuleNotFoundError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from portrait.rehearsal.runner import run


def _print_line(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], report=_print_line))
