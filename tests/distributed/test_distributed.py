"""Window-parallel sampling (issue 18): N gloo ranks on the CPU give the single process's frames, bit for bit;
only rank 0 writes; a rank that dies makes every rank fail in bounded time and leaves nothing behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from portrait.distributed import group as distributed
from portrait.distributed.group import Launch, launch_from_env, split_windows, timeout_from_env
from portrait.errors import DistributedError

ASSETS = Path(__file__).resolve().parents[2] / "portrait" / "assets"
# 48 frames; 8-frame windows with overlap 3 → L = 56, 12 windows per step, frames covered by two windows.
FAST = [
    "--image", str(ASSETS / "sample_portrait.jpg"), "--audio", str(ASSETS / "sample_speech.wav"),
    "--size", "64", "--steps", "2", "--quiet", "--offline", "--no-interpolate", "--no-full-frame",
    "--device", "cpu", "--seed", "5",
    "--set", "sampling.frames_per_window=8", "--set", "sampling.overlap=3",
]  # fmt: skip
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    from portrait.testing.trees import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("dist") / "w", layout="portrait", seed=2)


@pytest.fixture(scope="module")
def single(weights, tmp_path_factory) -> Path:
    """Frames of the one-process run, in this process (one thread, as the ranks)."""
    from portrait.cli.main import main

    folder = tmp_path_factory.mktemp("single")
    out = ["-o", str(folder / "out.mp4"), "--dump-frames", str(folder / "d")]
    assert main(["--weights", str(weights), *FAST, *out]) == 0
    assert "distributed" not in json.loads((folder / "out.mp4.json").read_text())
    return folder / "d"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return env | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"} | extra


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_frames(a: Path, b: Path, count: int = 48) -> None:
    names = sorted(p.name for p in a.glob("*.png"))
    assert len(names) == count and names == sorted(p.name for p in b.glob("*.png"))
    for name in names:
        assert np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name))), name


def _launch_ranks(
    weights: Path, root: Path, world: int, args: list[str] = FAST, **extra_env: str
) -> list[subprocess.CompletedProcess]:
    """Start ``world`` ranks by hand (torchrun's environment contract), each in its own working folder with
    relative output paths, so whatever a rank writes lands in its own folder."""
    port = str(_free_port())
    procs = []
    for rank in range(world):
        cwd = root / f"rank{rank}"
        cwd.mkdir()
        env = _env(
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            PORTRAIT_DIST_TIMEOUT="60",
            **extra_env,
        )
        cmd = [sys.executable, "-m", "portrait.cli.main", "--weights", str(weights), *args]
        procs.append(
            subprocess.Popen(
                [*cmd, "-o", "out.mp4", "--dump-frames", "d"],
                cwd=cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def test_three_ranks_under_torchrun_equal_one_process(weights, single, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3"]
    cmd += ["-m", "portrait.cli.main", "--weights", str(weights), *FAST]
    done = subprocess.run(
        [*cmd, "-o", str(tmp_path / "out.mp4"), "--dump-frames", str(tmp_path / "d")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_frames(single, tmp_path / "d")
    sidecar = json.loads((tmp_path / "out.mp4.json").read_text())
    assert sidecar["distributed"] == {
        "world_size": 3,
        "backend": "gloo",
        "launcher": "torchrun",
        "split": "contiguous",
        "windows_per_rank": [4, 4, 4],
        "decode_chunks_per_rank": [2, 2, 1],  # 5 chunks of 10 frames, dealt round-robin
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "out.mp4", "out.mp4.json"]


def test_two_ranks_equal_one_process_and_only_rank_0_writes(weights, single, tmp_path):
    rank0, rank1 = _launch_ranks(weights, tmp_path, 2)
    assert rank0.returncode == 0, rank0.stderr[-3000:]
    assert rank1.returncode == 0, rank1.stderr[-3000:]
    assert rank1.stdout == ""  # no "wrote ..." line either
    _assert_same_frames(single, tmp_path / "rank0" / "d")
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["d", "out.mp4", "out.mp4.json"]
    assert list((tmp_path / "rank1").iterdir()) == []
    sidecar = json.loads((tmp_path / "rank0" / "out.mp4.json").read_text())
    assert sidecar["distributed"]["windows_per_rank"] == [6, 6]
    assert sidecar["distributed"]["world_size"] == 2
    assert sidecar["distributed"]["decode_chunks_per_rank"] == [3, 2]


def test_a_rank_that_dies_fails_every_rank_and_leaves_nothing(weights, tmp_path):
    results = _launch_ranks(weights, tmp_path, 2, PORTRAIT_DIST_TEST_EXIT_AT="1:1")
    assert results[1].returncode == 3  # the hook's abrupt exit at step 1
    assert results[0].returncode == 1, results[0].stderr[-3000:]
    assert "error: rank 0: lost contact with the other ranks in denoising step 1" in results[0].stderr
    for rank in (0, 1):
        assert list((tmp_path / f"rank{rank}").iterdir()) == []  # no mp4, work folder, sidecar or frames


# Interpolation (RIFE across every decode-chunk seam) and the full-frame paste back on; 7-frame decode
# chunks, so 48 frames make 7 chunks and every rank owns a chunk on both sides of some seam.
SEAMS = [a for a in FAST if a not in ("--no-interpolate", "--no-full-frame")]
SEAMS += ["--full-frame", "--set", "sampling.decode_chunk_size=7"]


def test_split_decode_with_interpolation_and_full_frame_equals_one_process(weights, tmp_path):
    from portrait.cli.main import main

    one = tmp_path / "one"
    one.mkdir()
    out = ["-o", str(one / "out.mp4"), "--dump-frames", str(one / "d")]
    assert main(["--weights", str(weights), *SEAMS, *out]) == 0
    reference = json.loads((one / "out.mp4.json").read_text())
    assert reference["interpolated"] is True and reference["video_frames"] == 96
    (tmp_path / "ranks").mkdir()
    results = _launch_ranks(weights, tmp_path / "ranks", 3, SEAMS)
    for rank, done in enumerate(results):
        assert done.returncode == 0, (rank, done.stderr[-3000:])
    rank0 = tmp_path / "ranks" / "rank0"
    _assert_same_frames(one / "d", rank0 / "d", count=96)
    assert reference["output_size"] != [64, 64]  # the photo came back: the paste really ran
    sidecar = json.loads((rank0 / "out.mp4.json").read_text())
    assert sidecar["video_frames"] == 96 and sidecar["output_size"] == reference["output_size"]
    assert sidecar["distributed"]["decode_chunks_per_rank"] == [3, 2, 2]
    assert [list((tmp_path / "ranks" / f"rank{r}").iterdir()) for r in (1, 2)] == [[], []]


def test_a_rank_that_dies_in_decode_fails_every_rank_and_leaves_nothing(weights, tmp_path):
    # rank 1 leaves before decoding chunk 1, its first: rank 0 has already dumped chunk 0's frames
    results = _launch_ranks(weights, tmp_path, 2, PORTRAIT_DIST_TEST_EXIT_AT_DECODE="1:1")
    assert results[1].returncode == 3
    assert results[0].returncode == 1, results[0].stderr[-3000:]
    assert "error: rank 0: lost contact with the other ranks in decode chunk 1" in results[0].stderr
    for rank in (0, 1):
        assert list((tmp_path / f"rank{rank}").iterdir()) == []  # no mp4, work folder, sidecar or frames


# ---------------------------------------------------------------------------------------- pure pieces


def test_window_splits_cover_every_window_once():
    assert split_windows(12, 2) == [list(range(6)), list(range(6, 12))]
    assert split_windows(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_windows(7, 3, "round_robin") == [[0, 3, 6], [1, 4], [2, 5]]
    assert split_windows(2, 3) == [[0], [1], []]
    for mode in distributed.SPLITS:
        for n, world in ((301, 8), (6, 4), (1, 1)):
            shares = split_windows(n, world, mode)
            assert sorted(k for share in shares for k in share) == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(DistributedError, match="unknown window split 'blocks'"):
        split_windows(3, 2, "blocks")


def test_launch_is_read_from_torchrun_or_srun_variables():
    assert launch_from_env({}) is None
    assert launch_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert launch_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == Launch(2, 4, 0, "torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    assert launch_from_env(slurm) == Launch(5, 8, 1, "srun")
    assert launch_from_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) is None  # an sbatch script, no srun
    with pytest.raises(DistributedError, match="RANK is not set"):
        launch_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="rank 4 is outside world size 2"):
        launch_from_env({"WORLD_SIZE": "2", "RANK": "4"})
    assert timeout_from_env({}) == distributed.DEFAULT_TIMEOUT_S
    assert timeout_from_env({"PORTRAIT_DIST_TIMEOUT": "12.5"}) == 12.5
    with pytest.raises(DistributedError, match="PORTRAIT_DIST_TIMEOUT='-3'"):
        timeout_from_env({"PORTRAIT_DIST_TIMEOUT": "-3"})
    with pytest.raises(DistributedError, match="needs MASTER_ADDR and MASTER_PORT"):
        distributed.init_distributed("cpu", env={"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"})


def test_executor_in_a_one_rank_group_gives_the_same_latents(tiny_pipe, tmp_path):
    """The executor's pack → all_gather → unpack path returns exactly the pipeline's own stepped windows."""
    import torch.distributed as dist

    from portrait.distributed.group import RankWindowExecutor

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))
    try:
        g = torch.Generator().manual_seed(0)
        cfg = tiny_pipe.audio_projector.config
        args = (
            torch.rand(1, 3, 64, 64, generator=g) * 2 - 1,
            torch.rand(1, 3, 224, 224, generator=g),
            torch.ones(1, 3, 64, 64),
            torch.randn(11, cfg.seq_len, cfg.blocks, cfg.channels, generator=g),
            torch.rand(1, tiny_pipe.emotion_model.config.prior_dim, generator=g),
        )
        kw = dict(steps=2, frames_per_window=4, overlap=1, output_type="latent")
        plain = tiny_pipe(*args, **kw, generator=torch.Generator().manual_seed(1)).latents
        executor = RankWindowExecutor(0, 1)
        spread = tiny_pipe(
            *args, **kw, generator=torch.Generator().manual_seed(1), window_executor=executor
        ).latents
    finally:
        dist.destroy_process_group()
    assert executor.windows_per_rank == [5] and executor.steps_run == 2  # L = 15, stride 3
    assert torch.equal(plain, spread)


def test_decode_chunks_are_the_single_process_chunks_dealt_round_robin():
    from portrait.distributed.decode import chunk_owner, chunks_per_rank, num_decode_chunks

    assert num_decode_chunks(48, 10) == 5 and num_decode_chunks(48, 7) == 7 and num_decode_chunks(0, 4) == 0
    assert [chunk_owner(c, 3) for c in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert chunks_per_rank(7, 3) == [3, 2, 2] and chunks_per_rank(2, 4) == [1, 1, 0, 0]


def test_split_decode_in_a_one_rank_group_equals_interpolated(tmp_path):
    """Seams passed inside one rank: the same frames as ``interpolated`` over the whole decode stream."""
    import torch.distributed as dist

    from portrait.distributed.decode import split_decode
    from portrait.generate import interpolated

    class Mean(torch.nn.Module):  # a stand-in for RIFE: the pair's mean
        device, dtype = torch.device("cpu"), torch.float32

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a + b) / 2

    frames = torch.rand(23, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    chunks = list(frames.split(5))
    model = Mean()

    def interpolate(chunk: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        head = [] if previous is None else [previous[None]]
        return torch.cat(list(interpolated(iter([*head, chunk]), model, hold_last=False))[len(head) :])

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))
    try:
        spread = torch.cat(list(split_decode(0, 1, len(chunks), chunks.__getitem__, interpolate, env={})))
        plain = torch.cat(list(split_decode(0, 1, len(chunks), chunks.__getitem__, None, env={})))
    finally:
        dist.destroy_process_group()
    expected = torch.cat(list(interpolated(iter(chunks), model)))
    assert spread.shape == (46, 3, 4, 4) and torch.equal(spread, expected)
    assert torch.equal(spread[1], (frames[0] + frames[1]) / 2) and torch.equal(spread[-1], frames[-1])
    assert torch.equal(plain, frames)
