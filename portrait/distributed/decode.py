"""Decode and interpolation split across the ranks of one clip (docs/distributed.md).

After window-parallel sampling every rank holds the same latents. The decode chunks are those of the single
process (``range(0, num_frames, decode_chunk_size)``, so the temporal decoder sees the same frames) and are
dealt round-robin: chunk ``c`` on rank ``c mod N``. A rank decodes its chunk, passes the chunk's last decoded
frame to the owner of chunk ``c + 1`` (RIFE needs it for the midframe across the seam), interpolates its
chunk exactly as :func:`portrait.generate.interpolated` does, and sends the float32 frames to rank 0. Rank 0
receives the chunks in order and yields them to the encoder, so it holds about one chunk at a time and every
other rank at most two; the frames are bit-identical to a one-process run.

Messages are ``torch.distributed`` point-to-point sends of raw bytes (a 3-int64 shape header, then the
frames), issued in the same order on both ends of every pair, which NCCL needs (it ignores tags).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from portrait.distributed.group import exit_hook
from portrait.errors import DistributedError

logger = logging.getLogger(__name__)

#: Test hook ``"RANK:CHUNK"``: that rank leaves abruptly (``os._exit(3)``) before decoding decode chunk CHUNK.
DECODE_EXIT_HOOK_ENV = "PORTRAIT_DIST_TEST_EXIT_AT_DECODE"

#: ``decode(c)``: decode chunk ``c`` → (n, 3, H, W) float32 CPU frames in [0, 1].
DecodeChunk = Callable[[int], torch.Tensor]
#: ``interpolate(chunk, previous)``: chunk (n, 3, H, W), previous (3, H, W) or None → output frames.
InterpolateChunk = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def num_decode_chunks(num_frames: int, chunk_size: int) -> int:
    """Decode chunks of the single process: those starting before ``num_frames`` (the padding after is
    decoded inside the last one only)."""
    if num_frames < 0 or chunk_size < 1:
        raise ValueError(f"need num_frames >= 0 and chunk_size >= 1, got {num_frames}, {chunk_size}")
    return -(-num_frames // chunk_size)


def chunk_owner(chunk: int, world_size: int) -> int:
    """The rank that decodes decode chunk ``chunk`` (round-robin, so rank 0 can stream while others work)."""
    return chunk % world_size


def chunks_per_rank(num_chunks: int, world_size: int) -> list[int]:
    """How many decode chunks each rank decodes."""
    return [len(range(r, num_chunks, world_size)) for r in range(world_size)]


@dataclass
class ChunkStreamer:
    """Moves decoded chunks between ranks; one per job.

    ``device``: where tensors travel (the rank's GPU for NCCL, the CPU for gloo); received frames come back
    to the CPU as float32, like :meth:`PortraitPipeline.decode_frames` yields them.
    """

    rank: int
    world_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    exit_at_chunk: int | None = None
    _pending: list[object] = field(default_factory=list)

    def _fail(self, what: str, chunk: int, err: Exception) -> DistributedError:
        return DistributedError(
            f"rank {self.rank}: lost contact with the other ranks in decode chunk {chunk} ({what}: "
            f"{type(err).__name__}: {' '.join(str(err).split())[:300]})"
        )

    def send(self, frames: torch.Tensor, dst: int, chunk: int) -> None:
        """Start sending ``frames`` (n, 3, H, W) float32 to ``dst`` (non-blocking; see :meth:`wait`)."""
        import torch.distributed as dist

        header = torch.tensor(list(frames.shape[:1]) + list(frames.shape[2:]), dtype=torch.int64)
        payload = frames.to(torch.float32).contiguous().to(self.device).view(torch.uint8)
        try:
            for tensor in (header.to(self.device), payload):
                self._pending.append((dist.isend(tensor, dst), tensor))  # keep the buffer alive
        except Exception as err:  # noqa: BLE001 - gloo/NCCL raise RuntimeError subclasses
            raise self._fail(f"send to rank {dst}", chunk, err) from err

    def recv(self, src: int, chunk: int) -> torch.Tensor:
        """Receive frames sent by :meth:`send` on ``src``: (n, 3, H, W) float32 on the CPU."""
        import torch.distributed as dist

        try:
            header = torch.empty(3, dtype=torch.int64, device=self.device)
            dist.recv(header, src)
            n, h, w = (int(v) for v in header.tolist())
            payload = torch.empty(n * 3 * h * w * 4, dtype=torch.uint8, device=self.device)
            dist.recv(payload, src)
        except Exception as err:  # noqa: BLE001
            raise self._fail(f"receive from rank {src}", chunk, err) from err
        return payload.view(torch.float32).view(n, 3, h, w).cpu()

    def wait(self, chunk: int, keep: int = 0) -> None:
        """Finish the sends started before the last ``keep`` of them (bounds memory to a few chunks)."""
        while len(self._pending) > keep:
            work, _ = self._pending.pop(0)  # type: ignore[misc]
            try:
                work.wait()  # type: ignore[attr-defined]
            except Exception as err:  # noqa: BLE001
                raise self._fail("send", chunk, err) from err

    def check_exit_hook(self, chunk: int) -> None:
        if self.exit_at_chunk is not None and chunk >= self.exit_at_chunk:
            logger.error("rank %d leaving at decode chunk %d (%s)", self.rank, chunk, DECODE_EXIT_HOOK_ENV)
            os._exit(3)


def split_decode(
    rank: int,
    world_size: int,
    num_chunks: int,
    decode: DecodeChunk,
    interpolate: InterpolateChunk | None,
    *,
    device: torch.device | None = None,
    hold_last: bool = True,
    env: Mapping[str, str] | None = None,
) -> Iterator[torch.Tensor]:
    """Decode (and interpolate) this rank's decode chunks; on rank 0 yield every chunk's frames in order.

    Every rank must iterate the generator to its end (ranks > 0 yield nothing). ``interpolate=None``: no
    frame interpolation (no seam frames are passed). With interpolation and ``hold_last``, rank 0 yields the
    last frame once more at the end, as :func:`portrait.generate.interpolated` does.

    Raises:
        DistributedError: another rank was lost while frames were moving.
    """
    env = os.environ if env is None else env
    streamer = ChunkStreamer(
        rank, world_size, device or torch.device("cpu"), exit_hook(DECODE_EXIT_HOOK_ENV, rank, env)
    )
    last: torch.Tensor | None = None
    own_seam: torch.Tensor | None = None  # this rank's previous chunk's last frame (when it owns both)
    for c in range(num_chunks):
        owner = chunk_owner(c, world_size)
        if owner != rank:
            if rank == 0:
                out = streamer.recv(owner, c)
                last = out[-1]
                yield out
            continue
        streamer.check_exit_hook(c)
        frames = decode(c)
        nxt = chunk_owner(c + 1, world_size)
        pass_seam = interpolate is not None and c + 1 < num_chunks and nxt != rank
        if pass_seam and nxt != 0:  # early, so the next owner's interpolation need not wait for ours
            streamer.send(frames[-1:], nxt, c)
        previous = None
        if interpolate is not None and c > 0:
            before = chunk_owner(c - 1, world_size)
            previous = own_seam if before == rank else streamer.recv(before, c)[0]
        own_seam = frames[-1].clone() if nxt == rank else None
        out = interpolate(frames, previous) if interpolate is not None else frames
        if rank == 0:
            last = out[-1]
            yield out
        else:
            streamer.wait(c, keep=2 if pass_seam and nxt != 0 else 0)  # the previous chunk's sends
            streamer.send(out, 0, c)
            if pass_seam and nxt == 0:  # after the frames: rank 0 takes them in that order
                streamer.send(frames[-1:], 0, c)
        del frames, out
    streamer.wait(num_chunks)
    if rank == 0 and interpolate is not None and hold_last and last is not None:
        yield last[None]
