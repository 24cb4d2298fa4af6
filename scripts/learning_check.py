"""Show that training learns: the synthetic learning check end to end; prints one JSON report.

    python scripts/learning_check.py                       # the full check (tiny models, CPU)
    python scripts/learning_check.py --preset quick        # the CI variant (tests/training/test_learning.py)
    python scripts/learning_check.py --sabotage sigma      # break the loss's σ convention: must fail
                                                           # (also: time, shift; see the check's docstring)
    python scripts/learning_check.py --figures docs/figures

Exit code 0 when every pass mark is met, 1 otherwise (the report says which). See
``portrait.training.learning_check``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=("full", "quick"))
    parser.add_argument(
        "--sabotage", default=None, choices=("sigma", "time", "shift"), help="break one convention"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="empty work folder (default: a temporary one)"
    )
    parser.add_argument("--figures", type=Path, default=None, help="write the PNG figures here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("portrait.motion", "portrait.pipeline", "portrait.generate", "portrait.render", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    from portrait.training.learning_check.check import preset, run_check

    torch.set_num_threads(args.threads)
    settings = preset(args.preset, sabotage=args.sabotage)
    with tempfile.TemporaryDirectory(prefix="learning_check_") as tmp:
        report = run_check(args.work or Path(tmp) / "work", settings, figures=args.figures)
    report.pop("settings")
    for render in report["renders"]:
        render.pop("trajectories")
    print(json.dumps(report))
    return 0 if report["checks"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
