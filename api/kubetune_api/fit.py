"""Whether a job fits its GPUs, and what would make it fit: the one verdict `kubetune estimate`, the
operator's Fits condition and the trainer's preflight all give.

    verdict = check_fit(shape, spec, gpu_memory_bytes(spec.resources.gpu_product))
    verdict.fits, verdict.message, verdict.options
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from .memory import GIB, Estimate, ModelShape, Workload, estimate, resolve_sharding

# Memory of common GPUs by their nvidia.com/gpu.product label (GPU feature discovery), in GiB as the
# driver reports it (nvidia-smi's total, MiB / 1024). The chart's values (gpuMemory) carry the same table,
# which a cluster extends or overrides; tests/chart checks that the two agree.
GPU_MEMORY_GIB: dict[str, float] = {
    "Tesla-T4": 15.0,
    "Tesla-V100-SXM2-16GB": 16.0,
    "Tesla-V100-SXM2-32GB": 32.0,
    "NVIDIA-A10": 22.5,
    "NVIDIA-A10G": 22.5,
    "NVIDIA-L4": 22.5,
    "NVIDIA-GeForce-RTX-4090": 24.0,
    "NVIDIA-A40": 45.0,
    "NVIDIA-L40S": 45.0,
    "NVIDIA-RTX-A6000": 48.0,
    "NVIDIA-A100-PCIE-40GB": 40.0,
    "NVIDIA-A100-SXM4-40GB": 40.0,
    "NVIDIA-A100-80GB-PCIe": 80.0,
    "NVIDIA-A100-SXM4-80GB": 80.0,
    "NVIDIA-H100-PCIe": 79.6,
    "NVIDIA-H100-80GB-HBM3": 79.6,
    "NVIDIA-H100-NVL": 93.6,
    "NVIDIA-H200": 140.4,
    "NVIDIA-B200": 179.0,
}
# GPUs without bf16 (compute capability below 8.0): there `training.precision: auto` trains in fp32.
NO_BF16 = frozenset({"Tesla-T4", "Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB"})
# World sizes tried when suggesting more GPUs with FSDP.
FSDP_SIZES = (2, 4, 8, 16)


def gpu_memory_bytes(product: str | None, table: dict[str, float] | None = None) -> int | None:
    """Memory of one GPU of `product` (a nvidia.com/gpu.product value), None when the table has no entry."""
    gib = (GPU_MEMORY_GIB if table is None else table).get(product or "")
    return int(gib * GIB) if gib else None


@dataclass(frozen=True)
class Option:
    """A change to the spec that would make the job fit, and the peak it would have then."""

    change: str  # what to set, in manifest terms, e.g. "training.gradientCheckpointing: true"
    estimate: Estimate


@dataclass(frozen=True)
class Verdict:
    estimate: Estimate
    capacity: int | None  # bytes of one GPU; None when unknown (no gpuProduct, or not in the table)
    workload: Workload
    options: list[Option] = field(default_factory=list)

    @property
    def fits(self) -> bool | None:
        """True or False against a known memory; None when it is unknown (a CPU job's, or no gpuProduct)."""
        if self.capacity is None:
            return None
        return self.estimate.total <= self.capacity

    @property
    def message(self) -> str:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in self.estimate.gib().items())
        peak = f"estimated peak {gib(self.estimate.total)} GiB per GPU ({parts})"
        if self.fits is None:
            return peak + ("; the GPU's memory is unknown (spec.resources.gpuProduct unset or not in the "
                           "GPU table)" if self.workload.accelerator else "; trains on CPU, no GPU memory to fit")
        if self.fits:
            return f"{peak} fits the GPU's {gib(self.capacity)} GiB"
        advice = "; ".join(f"{o.change} ({gib(o.estimate.total)} GiB)" for o in self.options)
        return (f"{peak} exceeds the GPU's {gib(self.capacity)} GiB; "
                + (f"would fit: {advice}" if advice else "no single change the estimate knows makes it fit"))


def gib(n: int | None) -> str:
    return f"{(n or 0) / GIB:.1f}"


def check_fit(shape: ModelShape, spec: Any, capacity: int | None, answer_fraction: float = 1.0,
              product: str | None = None) -> Verdict:
    """The estimate of a FineTuneJobSpec on GPUs of `capacity` bytes (of `product`, default the spec's
    resources.gpuProduct), with options when it does not fit."""
    work = Workload.from_spec(spec, answer_fraction)
    if spec.training.precision == "auto" and (product or spec.resources.gpu_product) in NO_BF16:
        work = replace(work, precision="fp32")
    return verdict_of(shape, resolve_sharding(shape, work, capacity), capacity)


def verdict_of(shape: ModelShape, work: Workload, capacity: int | None) -> Verdict:
    verdict = Verdict(estimate(shape, work), capacity, work)
    if verdict.fits is False:
        verdict = replace(verdict, options=options(shape, work, capacity or 0))
    return verdict


def options(shape: ModelShape, work: Workload, capacity: int) -> list[Option]:
    """Changes that bring the peak under `capacity`: each lever (gradient checkpointing, QLoRA, more GPUs
    with FSDP) alone or with QLoRA, at the largest batch size that then fits; simplest first, and no option
    that only adds changes to one already listed."""

    def fits(w: Workload) -> Estimate | None:
        est = estimate(shape, w)
        return est if est.total <= capacity else None

    checkpointing = "training.gradientCheckpointing: true"
    levers: list[tuple[list[str], Workload]] = [([], work)]
    if not work.gradient_checkpointing:
        levers.append(([checkpointing], replace(work, gradient_checkpointing=True)))
    if work.method == "lora":
        qlora = replace(work, method="qlora", sharding="ddp")
        levers.append((["method.type: qlora"], qlora))
        if not work.gradient_checkpointing:
            levers.append((["method.type: qlora", checkpointing], replace(qlora, gradient_checkpointing=True)))
        size = next((s for s in FSDP_SIZES if s > work.world_size
                     and fits(replace(work, world_size=s, sharding="fsdp", batch_size=1))), None)
        if size:
            levers.append(([f"resources.gpus: {size}", "training.sharding: fsdp"],
                           replace(work, world_size=size, sharding="fsdp")))
    found: list[tuple[set[str], Option]] = []
    for changes, lever in levers:
        batch = work.batch_size
        while batch >= 1 and not fits(replace(lever, batch_size=batch)):
            batch //= 2
        if batch < 1:
            continue
        if batch < work.batch_size:
            changes = [*changes, f"training.batchSize: {batch} (gradientAccumulation x{work.batch_size // batch} "
                                 "keeps the examples per step)"]
        if changes and not any(seen <= set(changes) for seen, _ in found):
            found.append((set(changes), Option(" and ".join(changes), estimate(shape, replace(lever, batch_size=batch)))))
    return [option for _, option in found]
