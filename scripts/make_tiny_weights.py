"""Write a seeded random weights tree (for tests, demos and rehearsals; see portrait.testing).

Usage: python scripts/make_tiny_weights.py DIR [--layout portrait|dice-talk] [--seed N] [--real-size]

``--layout dice-talk`` writes the research-release layout that ``portrait-gen convert --from-dice-talk DIR``
converts; ``portrait`` (default) writes a ready-to-load weights tree. ``--real-size`` writes every component
at the release's true size (about 12 GB on disk, 7 GB of memory at the peak, a few minutes) instead of the
tiny test sizes (10 MB, seconds).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="folder to create (must be empty or absent)")
    parser.add_argument("--layout", choices=("portrait", "dice-talk"), default="portrait")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-size", action="store_true", help="the release's true sizes (~12 GB)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        from portrait.testing.trees import write_weights
    except ModuleNotFoundError:  # a source checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from portrait.testing.trees import write_weights

    size = "real" if args.real_size else "tiny"
    try:
        write_weights(args.dir, layout=args.layout, seed=args.seed, size=size)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
