#!/usr/bin/env python
"""Speed/memory benchmark on random weights; prints one JSON line per run (see ``portrait/benchmark.py``).

    python scripts/benchmark.py --compare                                # GPU: eager fp16 vs optimised
    python scripts/benchmark.py --tiny --compare --seconds 3 --steps 2   # CPU smoke run (CI)

Exit code 1 when ``--compare`` finds the optimised frames differ from the eager ones (PSNR < 40 dB).
"""

import json
import sys

from portrait.benchmark import run_benchmark

if __name__ == "__main__":
    records = run_benchmark(sys.argv[1:])
    for record in records:
        print(json.dumps(record), flush=True)
    sys.exit(0 if records[-1].get("frames_match", True) else 1)
