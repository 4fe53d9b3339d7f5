"""The one place that knows the process group: rank, world size, who writes, barriers, reductions, and the
data-parallel wrapper. The recipe reads the same for one process or N; with one process every method here
is a no-op, so a plain `kubetune train` never imports torch.distributed.

Under torchrun (or `kubetune train` with PET_NPROC_PER_NODE > 1, see launch.py) each worker has RANK,
WORLD_SIZE and LOCAL_RANK in its environment. The group uses NCCL on CUDA and gloo on CPU.

Data parallelism: every rank holds the whole model and the adapter, and trains its share of each optimizer
step; the adapter's gradients are all-reduced by torch's DistributedDataParallel (averaged), after which
every rank takes the same optimizer step, so the adapters stay identical without ever being broadcast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta

# Collective timeout: rank 0 alone downloads the base model while the others wait at a barrier, which for a
# 70B model from S3 takes minutes, far longer than any training step.
TIMEOUT_ENV = "KUBETUNE_DIST_TIMEOUT_SECONDS"
DEFAULT_TIMEOUT_S = 3600


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


class ProcessGroup:
    """This process's place among the training processes (torchrun's RANK / WORLD_SIZE / LOCAL_RANK)."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK {rank} is outside WORLD_SIZE {world_size}")
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = "cpu"
        self._started = False

    @classmethod
    def from_env(cls) -> ProcessGroup:
        return cls(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """The one process that writes artefacts, checkpoints, progress and the termination message."""
        return self.rank == 0

    # ---- lifetime ----------------------------------------------------------------------------------
    def start(self, device: str) -> None:
        """Join the group (NCCL on CUDA, gloo on CPU); on CUDA this rank uses GPU LOCAL_RANK."""
        self.device = device
        if not self.distributed or self._started:
            return
        import torch
        import torch.distributed as dist

        if device == "cuda":
            torch.cuda.set_device(self.local_rank)
        timeout = timedelta(seconds=_env_int(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=self.rank,
                                world_size=self.world_size, timeout=timeout)
        self._started = True

    def close(self) -> None:
        if self._started:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._started = False

    # ---- collectives -------------------------------------------------------------------------------
    def barrier(self) -> None:
        if self._started:
            import torch.distributed as dist

            dist.barrier()

    @contextlib.contextmanager
    def writer_first(self) -> Iterator[None]:
        """The writer runs the block before the others do (e.g. filling a cache they then read)."""
        if not self.is_writer:
            self.barrier()
        yield
        if self.is_writer:
            self.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over the ranks, in float64 (one all-reduce)."""
        if not self._started:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value):
        """The writer's `value` on every rank (a small picklable object)."""
        if not self._started:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, items: list) -> list:
        """This rank's share of `items` for work every rank splits: items rank, rank + W, rank + 2W, ..."""
        return items[self.rank::self.world_size]

    def gather(self, mine: list) -> list:
        """The inverse of `shard`: every rank's results in the order of the items `shard` was given."""
        if not self._started:
            return list(mine)
        import torch.distributed as dist

        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, mine)
        out = []
        for i in range(max(len(p) for p in parts)):
            out += [p[i] for p in parts if i < len(p)]
        return out

    # ---- data parallelism --------------------------------------------------------------------------
    def wrap(self, model):
        """`model` under DistributedDataParallel (only its trainable parameters are synchronised), or the
        model itself for one process."""
        if not self._started:
            return model
        from torch.nn.parallel import DistributedDataParallel

        # Frozen base weights (4-bit ones included) and buffers are identical on every rank by
        # construction; broadcasting them would send the whole base model at start-up.
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, frozen + [n for n, _ in model.named_buffers()])
        return DistributedDataParallel(model, device_ids=[self.local_rank] if self.device == "cuda" else None,
                                       broadcast_buffers=False)

    def accumulating(self, wrapped, last: bool):
        """Around one forward/backward pass of a step (`wrapped` from `wrap`): the gradients are all-reduced
        in the backward of the `last` pass only."""
        return wrapped.no_sync() if self._started and not last else contextlib.nullcontext()


def balanced_shards(lengths: list[int], world_size: int) -> list[list[int]]:
    """Indices of one micro-batch's examples split among `world_size` ranks: as equal in number as they can
    be (at most one apart, so every rank's batch is the same shape of work) and, within that, in tokens
    (longest first onto the rank with the fewest tokens). Deterministic: every rank computes every rank's
    share without talking to the others."""
    floor, extra = divmod(len(lengths), world_size)  # `extra` ranks get floor + 1 examples, the rest floor
    shards: list[list[int]] = [[] for _ in range(world_size)]
    tokens = [0] * world_size
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        bigger = sum(len(s) > floor for s in shards)
        open_ranks = [r for r in range(world_size)
                      if len(shards[r]) < floor or (len(shards[r]) == floor and bigger < extra)]
        r = min(open_ranks, key=lambda r: (tokens[r], len(shards[r]), r))
        shards[r].append(i)
        tokens[r] += lengths[i]
    return [sorted(s) for s in shards]
