"""Static shards of a batch: ``--shard I/N``, a Slurm job array or job step, or torchrun ranks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from portrait.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Static shard ``index`` of ``count`` (0-based) and where that came from."""

    index: int = 0
    count: int = 1
    source: str = "default"


# ------------------------------------------------------------------------------------------------ shards
def resolve_shard(text: str | None, env: Mapping[str, str] | None = None) -> Shard:
    """The static shard of this process.

    ``--shard I/N`` wins; else a Slurm job array (``SLURM_ARRAY_TASK_ID`` relative to
    ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, of ``SLURM_ARRAY_TASK_COUNT``); else Slurm
    tasks (``SLURM_PROCID`` / ``SLURM_NTASKS``); else torchrun (``RANK`` / ``WORLD_SIZE``); else 0/1.

    Raises:
        InputError: a malformed ``I/N`` or an index outside ``[0, N)``.
    """
    env = os.environ if env is None else env
    if text is not None:
        index, sep, count = text.partition("/")
        return _shard(index, count if sep else "", f"--shard {text}")
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        task, low = env["SLURM_ARRAY_TASK_ID"], env.get("SLURM_ARRAY_TASK_MIN", "0")
        step = env.get("SLURM_ARRAY_TASK_STEP", "1")
        try:
            index = (int(task) - int(low)) // max(int(step), 1)
        except ValueError:
            raise InputError(
                f"SLURM_ARRAY_TASK_ID={task!r} / _MIN={low!r} / _STEP={step!r} are not integers"
            ) from None
        return _shard(str(index), env["SLURM_ARRAY_TASK_COUNT"], "Slurm job array")
    for rank, size, what in (
        ("SLURM_PROCID", "SLURM_NTASKS", "Slurm tasks"),
        ("RANK", "WORLD_SIZE", "torchrun"),
    ):
        if rank in env and size in env:
            return _shard(env[rank], env[size], f"{what} ({rank}/{size})")
    return Shard()


def _shard(index: str, count: str, source: str) -> Shard:
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise InputError(f"shard from {source} must be I/N with integers, got {index!r}/{count!r}") from None
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard {i}/{n} from {source}: need N >= 1 and 0 <= I < N")
    return Shard(i, n, source)


def select_shard(entries: list[T], shard: Shard) -> list[T]:
    """Round-robin over the manifest's entries: entry k belongs to shard ``k mod N``."""
    return entries[shard.index :: shard.count]
