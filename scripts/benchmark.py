#!/usr/bin/env python
"""Speed/memory benchmark on random weights; see ``portrait/benchmark.py``.

    python scripts/benchmark.py --compare                   # GPU: eager fp16 vs optimised, 10 s, 512², 25 steps
    python scripts/benchmark.py --tiny --compare --seconds 3 --steps 2   # CPU smoke run (CI)
"""

import sys

from portrait.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
