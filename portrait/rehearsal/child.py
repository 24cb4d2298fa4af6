"""One stage in this process: ``python -m portrait.rehearsal.child KIND SPEC_JSON RESULT_JSON``.

Writes the stage's figures to ``RESULT_JSON`` (with the process's peak GPU memory on CUDA) and exits 0, or
writes ``{"error": ...}`` and exits 1. Its peak host memory (``VmHWM``) goes in ``RESULT_JSON`` too; the
parent also polls it, for a child killed before it can write.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

import torch


def _peak_vram_mib() -> float | None:
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def main(argv: list[str]) -> int:
    from portrait.rehearsal.memory import vm_hwm_mib
    from portrait.rehearsal.stages import Spec, run_stage

    kind, spec_text, result_path = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result, code = run_stage(kind, Spec(**json.loads(spec_text))), 0
    except Exception as err:  # noqa: BLE001 - any failure is the stage's result, the traceback goes to its log
        traceback.print_exc()
        result, code = {"error": f"{type(err).__name__}: {' '.join(str(err).split())[:500]}"}, 1
    result["peak_vram_mib"] = _peak_vram_mib()
    result["peak_rss_mib"] = vm_hwm_mib()
    Path(result_path).write_text(json.dumps(result, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
