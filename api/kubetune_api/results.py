"""The contract between the trainer and the operator: exit codes, the termination-message result and
progress events. The trainer writes them, the operator reads them; both import them from here."""

from __future__ import annotations

import json
from enum import IntEnum
from typing import Literal

from pydantic import Field

from .base import ApiModel
from .status import Reason

TERMINATION_LOG = "/dev/termination-log"
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message


class ExitCode(IntEnum):
    """Trainer process exit codes. `retryable` says whether a new attempt could succeed."""

    OK = 0
    INTERNAL = 1
    INVALID_CONFIG = 10
    DATA_INVALID = 11
    ACCESS_DENIED = 12
    NOT_FOUND = 13
    OUT_OF_MEMORY = 14
    TRANSIENT = 15
    INSUFFICIENT_GPU_MEMORY = 16  # the estimate exceeds the device's memory: no retry can fit it

    @property
    def reason(self) -> str:
        return _REASONS[self]

    @property
    def retryable(self) -> bool:
        return self in (ExitCode.INTERNAL, ExitCode.OUT_OF_MEMORY, ExitCode.TRANSIENT)


_REASONS = {
    ExitCode.OK: Reason.COMPLETED,
    ExitCode.INTERNAL: Reason.TRAINER_ERROR,
    ExitCode.INVALID_CONFIG: Reason.INVALID_SPEC,
    ExitCode.DATA_INVALID: Reason.DATA_INVALID,
    ExitCode.ACCESS_DENIED: Reason.ACCESS_DENIED,
    ExitCode.NOT_FOUND: Reason.NOT_FOUND,
    ExitCode.OUT_OF_MEMORY: Reason.OOM_KILLED,
    ExitCode.TRANSIENT: Reason.TRAINER_ERROR,
    ExitCode.INSUFFICIENT_GPU_MEMORY: Reason.INSUFFICIENT_GPU_MEMORY,
}


def exit_code_of(code: int) -> ExitCode | None:
    try:
        return ExitCode(code)
    except ValueError:
        return None


class TrainerResult(ApiModel):
    """Compact result written to the termination-message path (at most 4 KiB)."""

    ok: bool = Field(description="True when artefacts and _SUCCESS were written.")
    reason: str = Field(description="Reason constant: Completed, AlreadyComplete, DataInvalid, ...")
    message: str = Field(default="", description="Human-readable detail; never contains secret values.")
    spec_hash: str | None = Field(default=None, description="Spec hash of the run.")
    data_version: str | None = Field(default=None, description="Data version the run trained on (dataversion.py).")
    metrics: dict[str, float] = Field(default_factory=dict, description="Tuned-model metrics.")
    base_metrics: dict[str, float] = Field(default_factory=dict, description="Base-model metrics.")
    gate_passed: bool | None = Field(default=None, description="Result of evaluation.gate and regression; null when none.")
    gate_message: str | None = Field(default=None, description="Why the gate passed or failed.")
    artifacts: dict[str, str] = Field(default_factory=dict, description="Artefact URIs by name.")
    step: int | None = Field(default=None, description="Optimizer steps done, for a status written after the fact.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    stop_reason: str | None = Field(default=None, description="Why training stopped (status.StopReason).")
    best_step: int | None = Field(default=None, description="The step whose adapter was saved.")
    serving_compatible: bool | None = Field(default=None, description="vLLM/SGLang serve the adapter as trained.")
    serving_reason: str | None = Field(default=None, description="Reason constant of the serving check.")
    serving_message: str | None = Field(default=None, description="What the serving check found, and what to do.")
    tracked: bool | None = Field(default=None, description="The experiment tracker got the run; null when none is set.")
    tracking_message: str | None = Field(default=None, description="Where the run is tracked, or why it is not.")

    def to_termination_message(self) -> str:
        """Serialise within Kubernetes' 4 KiB limit, shortening the message first if needed."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        text = json.dumps(data, separators=(",", ":"))
        while len(text.encode()) > TERMINATION_LIMIT and data.get("message"):
            data["message"] = data["message"][: max(0, len(data["message"]) // 2 - 3)] + "..."
            if len(data["message"]) <= 3:
                data["message"] = ""
            text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > TERMINATION_LIMIT:
            data.pop("artifacts", None)
            text = json.dumps(data, separators=(",", ":"))
        return text

    @classmethod
    def from_termination_message(cls, text: str | None) -> TrainerResult | None:
        if not text:
            return None
        try:
            return cls.model_validate_json(text)
        except ValueError:
            return None


class ProgressEvent(ApiModel):
    """One progress report from the trainer (one JSON line)."""

    event: Literal["progress"] = "progress"
    stage: str = Field(description="loading, training, evaluating, saving, done")
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    eta_seconds: int | None = None
    time: str | None = None

    @property
    def percent(self) -> int:
        if not self.total_steps:
            return 0
        return max(0, min(100, int(100 * self.step / self.total_steps)))


class Env:
    """Environment variables the operator sets on the trainer pod (and `kubetune run` sets locally)."""

    CONFIG = "KUBETUNE_CONFIG"  # path of the FineTuneJob manifest (YAML) to run; default /etc/kubetune/job.yaml
    MANIFEST = "KUBETUNE_MANIFEST"  # the manifest itself (JSON), for a schedule's data-version probe pod
    TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"  # where the TrainerResult goes; default /dev/termination-log
    PROGRESS_URL = "KUBETUNE_PROGRESS_URL"  # operator endpoint for progress events; unset -> stdout only
    PROGRESS_TOKEN = "KUBETUNE_PROGRESS_TOKEN"  # bearer token valid for this job's progress only
    ATTEMPT = "KUBETUNE_ATTEMPT"  # 1-based attempt number
    IMAGE = "KUBETUNE_IMAGE"  # the trainer image as the pod names it (for lineage.json)
    IMAGE_ID = "KUBETUNE_IMAGE_ID"  # the image digest the kubelet reported for an earlier attempt, if any
    CACHE_DIR = "KUBETUNE_CACHE_DIR"  # model download cache (a volume in the pod)
    WORK_DIR = "KUBETUNE_WORK_DIR"  # scratch space
    # The accelerator memory (GiB) the trainer's fit preflight assumes instead of what the device reports: for
    # tests (on CPU, where there is no limit, the check is skipped unless this is set) and for devices whose
    # usable memory is less than they report (MIG slices, memory shared with other processes).
    DEVICE_MEMORY_GIB = "KUBETUNE_DEVICE_MEMORY_GIB"
    HF_TOKEN = "HF_TOKEN"
    MLFLOW_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"
    MLFLOW_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
    MLFLOW_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"
    AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
    AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"


DEFAULT_CONFIG_PATH = "/etc/kubetune/job.yaml"
# Progress endpoint path on the operator: POST {url}/v1/progress/{namespace}/{name} with a ProgressEvent body.
PROGRESS_PATH = "/v1/progress/{namespace}/{name}"
