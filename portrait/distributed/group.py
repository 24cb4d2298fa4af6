"""One clip on many processes: window-parallel denoising under ``torchrun`` or ``srun`` (docs/distributed.md).

The windows of one denoising step are independent given the previous step's latents. Each rank steps its
share of them; the stepped windows are all-gathered (bit for bit, as raw bytes) and every rank scatter-adds
**all** of them in the canonical window order, then averages: exactly the single process's arithmetic, so
every rank holds the same latents and the output is bit-identical to a one-process run of the same seed
(with ``runtime.window_batch = 1``; larger batches group windows differently per rank). Communication per
step: the stepped windows, ``W × F × C × h × w`` elements (≈ the latents).

Launch detection: ``WORLD_SIZE`` > 1 with ``RANK`` / ``LOCAL_RANK`` (torchrun), else ``SLURM_PROCID`` /
``SLURM_STEP_NUM_TASKS`` / ``SLURM_LOCALID`` (an ``srun`` job step; needs ``MASTER_ADDR`` and
``MASTER_PORT``). NCCL on CUDA (one process per GPU, ``cuda:LOCAL_RANK`` modulo the visible GPUs), gloo
on the CPU. Collectives time out after ``$PORTRAIT_DIST_TIMEOUT`` seconds (default
:data:`DEFAULT_TIMEOUT_S`), so a lost rank makes the others fail in bounded time even without a launcher
that kills them.
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch

from portrait.errors import DistributedError
from portrait.pipeline import Denoise

logger = logging.getLogger(__name__)

#: Default collective timeout in seconds; it must exceed rank 0's decode + encode time (the other ranks wait
#: for it at the end of a job).
DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_ENV = "PORTRAIT_DIST_TIMEOUT"
#: Test hook ``"RANK:STEP"``: that rank leaves abruptly (``os._exit(3)``) when it reaches that step.
EXIT_HOOK_ENV = "PORTRAIT_DIST_TEST_EXIT_AT"
SPLITS = ("contiguous", "round_robin")

#: ``denoise(group)``: (k, F) window indices → k stepped windows (1, F, C, h, w).


@dataclass(frozen=True)
class Launch:
    """Where this process sits in a multi-process launch."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun" or "srun"


#: Largest world size and collective timeout accepted from the environment (beyond: a typo, not a launch).
MAX_WORLD_SIZE = 65536
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def _int(env: Mapping[str, str], name: str, default: int | None = None, maximum: int = MAX_WORLD_SIZE) -> int:
    """``env[name]`` as an integer in ``[0, maximum]`` (``default`` when unset or empty, if given)."""
    text = env.get(name, "")
    if not text.strip():
        if default is None:
            raise DistributedError(f"{name} is not set but the launch needs it")
        return default
    try:
        value = int(text.strip())
    except ValueError:
        raise DistributedError(f"{name}={text[:40]!r} is not an integer") from None
    if not 0 <= value <= maximum:
        raise DistributedError(f"{name}={value} must be between 0 and {maximum}")
    return value


def launch_from_env(env: Mapping[str, str] | None = None) -> Launch | None:
    """The multi-process launch described by ``env`` (default ``os.environ``); None for a single process.

    Raises:
        DistributedError: a launch variable is not an integer or out of range, or the rank is outside the
            world (one error line, never a traceback).
    """
    env = os.environ if env is None else env
    if _int(env, "WORLD_SIZE", 1) > 1:
        launch = Launch(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK", 0), "torchrun")
    elif _int(env, "SLURM_STEP_NUM_TASKS", 1) > 1:  # set by srun for a job step, not by sbatch
        launch = Launch(
            _int(env, "SLURM_PROCID"),
            _int(env, "SLURM_STEP_NUM_TASKS"),
            _int(env, "SLURM_LOCALID", 0),
            "srun",
        )
    else:
        return None
    if not 0 <= launch.rank < launch.world_size:
        raise DistributedError(f"rank {launch.rank} is outside world size {launch.world_size}")
    return launch


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """``$PORTRAIT_DIST_TIMEOUT`` in seconds (finite, > 0, at most a week), else :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ if env is None else env
    text = env.get(TIMEOUT_ENV)
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise DistributedError(
            f"{TIMEOUT_ENV}={text[:40]!r} must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}"
        )
    return value


def split_windows(num_windows: int, world_size: int, mode: str = "contiguous") -> list[list[int]]:
    """Window numbers of each rank: ``contiguous`` blocks (sizes differ by at most one, larger first) or
    ``round_robin`` (window ``k`` on rank ``k mod N``). A rank may get none when windows < ranks."""
    if mode not in SPLITS:
        raise DistributedError(f"unknown window split {mode!r}; choose one of {', '.join(SPLITS)}")
    if num_windows < 0 or world_size < 1:
        raise ValueError(f"need num_windows >= 0 and world_size >= 1, got {num_windows}, {world_size}")
    if mode == "round_robin":
        return [list(range(r, num_windows, world_size)) for r in range(world_size)]
    base, extra = divmod(num_windows, world_size)
    shares, start = [], 0
    for r in range(world_size):
        size = base + (1 if r < extra else 0)
        shares.append(list(range(start, start + size)))
        start += size
    return shares


def exit_hook(name: str, rank: int, env: Mapping[str, str]) -> int | None:
    """Test hook ``env[name] = "RANK:N"``: the step or decode chunk after which ``rank`` leaves, or None."""
    text = env.get(name)
    if not text:
        return None
    hook_rank, _, at = text.partition(":")
    return int(at or 0) if int(hook_rank) == rank else None


@dataclass
class RankWindowExecutor:
    """Steps one denoising step's windows across the ranks; called by ``PortraitPipeline`` per step.

    ``executor(windows, window_batch, denoise, latents)`` returns the W stepped windows (1, F, C, h, w) in
    window order, identical on every rank; the pipeline then scatter-adds and averages them as usual.
    """

    rank: int
    world_size: int
    split: str = "contiguous"
    windows_per_rank: list[int] = field(default_factory=list)
    steps_run: int = 0
    exit_at_step: int | None = None  # the EXIT_HOOK_ENV test hook

    def __call__(
        self, windows: torch.Tensor, window_batch: int, denoise: Denoise, latents: torch.Tensor
    ) -> list[torch.Tensor]:
        """Args: windows (W, F) frame indices; latents (1, L, C, h, w) (for dtype, device and frame shape)."""
        import torch.distributed as dist

        if self.exit_at_step is not None and self.steps_run >= self.exit_at_step:
            logger.error("rank %d leaving at step %d (%s)", self.rank, self.steps_run, EXIT_HOOK_ENV)
            os._exit(3)
        if latents.device.type == "cuda" and latents.device.index != torch.cuda.current_device():
            raise DistributedError(
                f"rank {self.rank} samples on {latents.device} but its GPU is "
                f"cuda:{torch.cuda.current_device()}: call init_distributed() before load_engine and load "
                "the engine on its .device"
            )
        shares = split_windows(windows.shape[0], self.world_size, self.split)
        self.windows_per_rank = [len(s) for s in shares]
        mine = shares[self.rank]
        stepped: list[torch.Tensor] = []
        for start in range(0, len(mine), window_batch):
            stepped.extend(denoise(windows[mine[start : start + window_batch]]))
        # Pack this rank's windows into a fixed-size buffer (all_gather needs equal sizes) and move raw bytes:
        # the transfer is exact for every dtype and backend.
        frame_shape = (1, windows.shape[1], *latents.shape[2:])
        most = max(self.windows_per_rank)
        buffer = torch.zeros((most, *frame_shape), dtype=latents.dtype, device=latents.device)
        for j, x in enumerate(stepped):
            buffer[j] = x
        raw = buffer.view(torch.uint8)
        gathered = [torch.empty_like(raw) for _ in range(self.world_size)]
        try:
            dist.all_gather(gathered, raw)
        except Exception as err:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses
            raise DistributedError(
                f"rank {self.rank}: lost contact with the other ranks in denoising step {self.steps_run} "
                f"({type(err).__name__}: {' '.join(str(err).split())[:300]})"
            ) from err
        results: list[torch.Tensor | None] = [None] * windows.shape[0]
        for r, share in enumerate(shares):
            values = gathered[r].view(latents.dtype)
            for j, k in enumerate(share):
                results[k] = values[j]
        self.steps_run += 1
        return results  # type: ignore[return-value]


@dataclass
class DistributedContext:
    """An initialised process group and this process's place in it."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    launcher: str
    executor: RankWindowExecutor

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that encodes and writes (every rank decodes a share)."""
        return self.rank == 0

    def summary(self) -> dict[str, Any]:
        """The sidecar's ``"distributed"`` entry."""
        return {
            "world_size": self.world_size,
            "backend": self.backend,
            "launcher": self.launcher,
            "split": self.executor.split,
            "windows_per_rank": list(self.executor.windows_per_rank),
        }

    def finish(self) -> None:
        """Wait until every rank is here (rank 0 calls it after writing); a lost rank is an error."""
        import torch.distributed as dist

        try:
            dist.barrier()
        except Exception as err:  # noqa: BLE001
            raise DistributedError(
                f"rank {self.rank}: another rank failed before the job finished ({type(err).__name__})"
            ) from err

    def close(self) -> None:
        """Destroy the process group (idempotent)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _device_for(device_name: str, local_rank: int) -> torch.device:
    if device_name in ("auto", "cuda"):
        if torch.cuda.is_available():  # srun --gpus-per-task=1 shows each task only its own GPU
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if device_name == "cuda":
            raise DistributedError("device 'cuda' requested under torchrun but CUDA is not available")
        return torch.device("cpu")
    return torch.device(device_name)


def _raise_on_sigterm() -> None:
    """SIGTERM (sent by torchrun / Slurm to the survivors when a rank fails) → SystemExit, so ``finally``
    blocks remove work files."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def init_distributed(
    device_name: str = "auto",
    timeout_s: float | None = None,
    split: str = "contiguous",
    env: Mapping[str, str] | None = None,
) -> DistributedContext | None:
    """Join the launch's process group; None when this is a single-process run.

    Reuses a process group that is already initialised. ``device_name``: ``auto``/``cuda`` →
    ``cuda:LOCAL_RANK`` (or the CPU without CUDA for ``auto``), anything else as given.
    """
    import torch.distributed as dist

    env = os.environ if env is None else env
    launch = launch_from_env(env)
    if launch is None and not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return None
    if launch is None:  # an already initialised group without launcher variables (e.g. mp.spawn)
        launch = Launch(dist.get_rank(), dist.get_world_size(), dist.get_rank(), "external")
    device = _device_for(device_name, launch.local_rank)
    if not dist.is_initialized():
        if not ("MASTER_ADDR" in env and "MASTER_PORT" in env):
            raise DistributedError(
                f"{launch.launcher} launch of {launch.world_size} processes needs MASTER_ADDR and MASTER_PORT"
            )
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        seconds = timeout_s if timeout_s is not None else timeout_from_env(env)
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=launch.rank,
            world_size=launch.world_size,
            timeout=timedelta(seconds=seconds),
        )
        _raise_on_sigterm()
        logger.info(
            "rank %d/%d (%s, %s, %s) joined", launch.rank, launch.world_size, launch.launcher, backend, device
        )
    executor = RankWindowExecutor(
        launch.rank, launch.world_size, split, exit_at_step=exit_hook(EXIT_HOOK_ENV, launch.rank, env)
    )
    return DistributedContext(
        launch.rank,
        launch.world_size,
        launch.local_rank,
        str(dist.get_backend()),
        device,
        launch.launcher,
        executor,
    )
