"""A private (0700) temporary folder for one app process; runs are pruned as it fills and removed at exit."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)
#: Finished runs kept in the workspace (older ones are pruned), and their longest life in seconds.
KEEP_RUNS = 16
RUN_MAX_AGE = 3600.0


# -------------------------------------------------------------------------------------------- workspace
class Workspace:
    """A private (0700) temporary folder for one app process; runs are pruned, the folder removed at exit."""

    def __init__(self, parent: Path | None = None, keep: int = KEEP_RUNS, max_age: float = RUN_MAX_AGE):
        self.root = Path(tempfile.mkdtemp(prefix="portrait-app-", dir=parent)).resolve()
        os.chmod(self.root, 0o700)
        self.runs = self.root / "runs"
        self.runs.mkdir(mode=0o700)
        self.keep, self.max_age = keep, max_age
        atexit.register(self.cleanup)

    def new_run(self) -> Path:
        """A fresh folder for one render (after pruning old ones)."""
        self.prune()
        return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=self.runs))

    def prune(self, now: float | None = None) -> list[Path]:
        """Remove runs older than ``max_age`` and all but the newest ``keep - 1``; returns what went."""
        now = time.time() if now is None else now
        runs = sorted(self.runs.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        gone = [p for i, p in enumerate(runs) if i >= self.keep - 1 or now - p.stat().st_mtime > self.max_age]
        for path in gone:
            shutil.rmtree(path, ignore_errors=True)
        return gone

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
