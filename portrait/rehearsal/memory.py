"""A process's own peak host memory, read from ``/proc`` (Linux)."""

from __future__ import annotations

import re
from pathlib import Path


def vm_hwm_mib(pid: int | str = "self") -> float | None:
    """Peak resident memory of ``pid``'s own address space (``VmHWM``) in MiB; ``None`` once it has gone.

    Unlike ``getrusage``/``wait4``'s ``ru_maxrss``, which Linux carries over from the spawning process across
    ``fork`` and ``exec``, ``VmHWM`` counts only the address space the process has had since its ``exec``.
    """
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    return round(int(match.group(1)) / 1024, 1) if match else None
