"""The one place that knows the process group: rank, world size, who writes, barriers, reductions, and the
data-parallel wrapper. The recipe reads the same for one process or N; with one process every method here
is a no-op, so a plain `kubetune train` never imports torch.distributed.

Under torchrun (or `kubetune train` with PET_NPROC_PER_NODE > 1, see launch.py) each worker has RANK,
WORLD_SIZE and LOCAL_RANK in its environment. The group uses NCCL on CUDA and gloo on CPU.

Data parallelism (`training.sharding: ddp`): every rank holds the whole model and the adapter, and trains
its share of each optimizer step; the adapter's gradients are all-reduced by torch's DistributedDataParallel
(averaged), after which every rank takes the same optimizer step, so the adapters stay identical.

Sharded data parallelism (`fsdp`, torch's FSDP2 `fully_shard`): each decoder layer's weights, frozen base and
LoRA alike, are split across the ranks and gathered for the layer's forward and backward only, so a base
that does not fit one GPU trains on several. Every forward is then a collective: all ranks run the same
number of passes per step, and evaluation runs every batch on every rank instead of sharding them.
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
        self.sharded = False  # FSDP: parameters are DTensors, forwards are collectives
        self._started = False
        self._root = None  # the module fully_shard made the FSDP root

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

    def device_name(self, device: str) -> str:
        """Where this rank's model goes: its own GPU by index (bitsandbytes' device_map reads "cuda" as GPU 0)."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.distributed else device

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

    @property
    def is_node_leader(self) -> bool:
        """The first process of its pod (LOCAL_RANK 0): it fills what the pod's processes share (the model
        cache), since in a multi-node gang each pod has its own."""
        return self.local_rank == 0

    @contextlib.contextmanager
    def node_leaders_first(self) -> Iterator[None]:
        """Each pod's first process runs the block before that pod's others do (one barrier for all)."""
        if not self.is_node_leader:
            self.barrier()
        yield
        if self.is_node_leader:
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
        """This rank's share of `items` for work every rank splits: items rank, rank + W, rank + 2W, ...
        (all of them under FSDP, where every rank must run every forward)."""
        return items if self.sharded else items[self.rank::self.world_size]

    def sum_shards(self, values: list[float]) -> list[float]:
        """Totals of per-shard sums: added over the ranks, unless every rank ran every shard (FSDP)."""
        return list(values) if self.sharded else self.sum(values)

    def gather(self, mine: list) -> list:
        """The inverse of `shard`: every rank's results in the order of the items `shard` was given."""
        if not self._started or self.sharded:
            return list(mine)
        import torch.distributed as dist

        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, mine)
        out = []
        for i in range(max(len(p) for p in parts)):
            out += [p[i] for p in parts if i < len(p)]
        return out

    # ---- data parallelism --------------------------------------------------------------------------
    def wrap(self, model, sharding: str = "ddp"):
        """The module the training forward goes through: `model` under DistributedDataParallel (only its
        trainable parameters are synchronised), `model` itself sharded in place by FSDP2, or the model
        itself for one process."""
        if not self._started:
            return model
        if sharding == "fsdp":
            return self._fully_shard(model)
        from torch.nn.parallel import DistributedDataParallel

        # Frozen base weights (4-bit ones included) and buffers are identical on every rank by
        # construction; broadcasting them would send the whole base model at start-up.
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, frozen + [n for n, _ in model.named_buffers()])
        return DistributedDataParallel(model, device_ids=[self.local_rank] if self.device == "cuda" else None,
                                       broadcast_buffers=False)

    def _fully_shard(self, model):
        import torch
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        # The root is the transformers model under the PEFT wrapper: generate() calls its forward directly,
        # and the root's hooks are what gather its own parameters (embeddings, final norm, output layer).
        root = model.get_base_model()
        mesh = init_device_mesh(self.device, (self.world_size,))
        layer_types = set(getattr(root, "_no_split_modules", None) or [])
        for module in root.modules():
            if type(module).__name__ in layer_types:
                fully_shard(module, mesh=mesh)
        fully_shard(root, mesh=mesh)
        if self.device == "cuda":  # a 4-bit base quantized in host memory: its constants follow the shards
            for module in root.modules():
                if getattr(module, "quant_state", None) is not None:
                    module.quant_state.to(torch.device("cuda", self.local_rank))
        self.sharded, self._root = True, root
        return model

    def accumulating(self, wrapped, last: bool):
        """Around one forward/backward pass of a step (`wrapped` from `wrap`): the gradients are reduced
        in the backward of the `last` pass only."""
        if self.sharded:
            self._root.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return wrapped.no_sync() if self._started and not last else contextlib.nullcontext()

    # ---- checkpoints: whole tensors, whatever the sharding, so any world size can resume them ----------
    def trainable_state(self, model) -> dict:
        """{name: whole CPU tensor} of the trainable parameters (gathered from every rank under FSDP: all
        ranks call this together)."""
        out = {}
        for name, p in model.named_parameters():
            if p.requires_grad:
                full = p.full_tensor() if self.sharded else p
                out[name] = full.detach().cpu().clone()
        return out

    def optimizer_state(self, model, optimizer) -> dict:
        """The optimizer's state keyed by parameter name, whole tensors on the writer (all ranks call it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True) if self._started else None
        return get_optimizer_state_dict(model, optimizer, options=options)

    def load_state(self, model, optimizer, trainable: dict, optimizer_state: dict) -> None:
        """Put whole tensors from a checkpoint back into (possibly sharded) parameters and optimizer state."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        self.load_trainable(model, trainable)
        if all(isinstance(k, int) for k in optimizer_state.get("state", {})):  # a checkpoint from before names
            optimizer.load_state_dict(optimizer_state)
            return
        options = StateDictOptions(full_state_dict=True) if self._started else None
        set_optimizer_state_dict(model, optimizer, optim_state_dict=optimizer_state, options=options)

    def load_trainable(self, model, trainable: dict) -> None:
        """Whole tensors (from `trainable_state`) back into the (possibly sharded) trainable parameters."""
        import torch

        params = dict(model.named_parameters())
        missing = [n for n in trainable if n not in params]
        if missing:
            raise RuntimeError(f"the checkpoint does not match the model: {missing[:3]}")
        with torch.no_grad():
            for name, value in trainable.items():
                p = params[name]
                if self.sharded:
                    from torch.distributed.tensor import distribute_tensor

                    value = distribute_tensor(value.to(p.dtype), p.device_mesh, p.placements).to_local()
                    p.to_local().copy_(value)
                else:
                    p.copy_(value)


def choose_sharding(requested: str, method: str, device: str, weights_bytes: int, device_bytes: int) -> str:
    """`training.sharding` resolved: an explicit choice as is; auto is DDP on CPU, else the API's rule
    (kubetune_api.memory.auto_sharding, which the memory estimate applies too) on the weight files."""
    from kubetune_api.memory import auto_sharding

    if requested != "auto":
        return requested
    if device != "cuda":
        return "ddp"
    return auto_sharding(method, weights_bytes, device_bytes)


def weights_bytes(model_path) -> int:
    """Bytes of a model folder's weight files (what the base takes in memory at its stored precision)."""
    from pathlib import Path

    return sum(f.stat().st_size for f in Path(model_path).rglob("*") if f.suffix in (".safetensors", ".bin"))


def device_bytes(device: str) -> int:
    """Memory of one accelerator (0 on CPU, where the choice does not arise)."""
    if device != "cuda":
        return 0
    import torch

    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


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
