"""The Fits condition: the API's memory estimate (kubetune_api.memory, .fit) of a job whose model shape is
known (spec.model.shape, or its runtime's modelShape) against the memory of its GPU product, from the GPU
table in the operator's settings (the chart's gpuMemory). A pure function of the parsed job and the table."""

from __future__ import annotations

from typing import NamedTuple

from kubetune_api import FineTuneJob, Reason
from kubetune_api.fit import check_fit, gpu_memory_bytes


class Fit(NamedTuple):
    status: str  # "True", "False" or "Unknown"
    reason: str
    message: str

    @property
    def refused(self) -> bool:
        return self.status == "False"


def fit_of(job: FineTuneJob, gpu_memory: dict[str, float] | None = None) -> Fit | None:
    """The Fits condition of `job`, None when its model's shape is unknown or it trains on CPU."""
    spec = job.spec
    if spec.model.shape is None or spec.resources.gpus == 0:
        return None
    verdict = check_fit(spec.model.shape, spec, gpu_memory_bytes(spec.resources.gpu_product, gpu_memory))
    if verdict.fits is None:
        return Fit("Unknown", Reason.GPU_MEMORY_UNKNOWN, verdict.message)
    if verdict.fits:
        return Fit("True", Reason.FITS_GPU_MEMORY, verdict.message)
    return Fit("False", Reason.INSUFFICIENT_GPU_MEMORY,
               f"{spec.resources.gpu_product}: {verdict.message} (shape from spec.model.shape or the runtime's "
               "modelShape; docs/memory.md)")
