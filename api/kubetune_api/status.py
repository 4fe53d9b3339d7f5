"""FineTuneJob status: conditions keyed by type, and the phase derived from them for print columns."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

from pydantic import Field

from .base import ApiModel


class ConditionType:
    """Condition types, one entry each in status.conditions."""

    VALIDATED = "Validated"
    SCHEDULED = "Scheduled"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    EVALUATION_PASSED = "EvaluationPassed"
    SERVING_COMPATIBLE = "ServingCompatible"  # vLLM/SGLang serve the adapter as trained (docs/serving.md)
    TRACKED = "Tracked"  # the run reached the experiment tracker (spec.tracking)
    FITS = "Fits"  # the estimated peak GPU memory fits the GPU (docs/memory.md)


class Reason:
    """CamelCase condition reasons: the one list of them."""

    VALID = "Valid"
    INVALID_SPEC = "InvalidSpec"
    RUNTIME_NOT_FOUND = "RuntimeNotFound"
    POD_CREATED = "PodCreated"
    POD_SCHEDULED = "PodScheduled"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    SECRET_NOT_FOUND = "SecretNotFound"  # a Secret (or a key of it) the pod's env names does not exist
    CONTAINER_CONFIG_ERROR = "ContainerConfigError"  # any other CreateContainerConfigError of the kubelet
    POD_REJECTED = "PodRejected"  # the API server refused the trainer pod (422 Invalid)
    POD_CREATE_FAILED = "PodCreateFailed"  # the API server refused the pod for now (403 quota / admission)
    NODE_NOT_READY = "NodeNotReady"  # the pod's node stopped reporting Ready
    TRAINING = "Training"
    WAITING = "Waiting"
    BACKOFF = "BackoffBeforeRetry"
    COMPLETED = "Completed"
    ALREADY_COMPLETE = "AlreadyComplete"
    DATA_INVALID = "DataInvalid"
    ACCESS_DENIED = "AccessDenied"
    NOT_FOUND = "NotFound"
    OOM_KILLED = "OOMKilled"
    PREEMPTED = "Preempted"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    TRAINER_ERROR = "TrainerError"
    POD_DELETED = "PodDeleted"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    SPEC_CHANGED = "SpecChanged"
    GATE_PASSED = "GatePassed"
    GATE_FAILED = "GateFailed"
    NO_GATE = "NoGate"
    SERVABLE = "Servable"
    RANK_ABOVE_SERVING_LIMIT = "RankAboveServingLimit"
    UNSUPPORTED_TARGET_MODULES = "UnsupportedTargetModules"
    UNSUPPORTED_ADAPTER_FEATURE = "UnsupportedAdapterFeature"  # DoRA, trained bias, modules_to_save
    LOGGED = "Logged"  # the tracker has the run
    TRACKER_UNAVAILABLE = "TrackerUnavailable"  # the tracker failed; training went on without it
    # FineTuneSchedule outcomes of a scheduled time (status.lastOutcome and its Events)
    JOB_CREATED = "JobCreated"  # the data changed (or nothing trained yet): a job was created
    DATA_UNCHANGED = "DataUnchanged"  # the data is what the last successful (or a running) job trained on
    JOB_ALREADY_ACTIVE = "JobAlreadyActive"  # concurrencyPolicy Forbid and a job still runs: time skipped
    JOB_REPLACED = "JobReplaced"  # concurrencyPolicy Replace: the running job was deleted for the new one
    DATA_CHECK_FAILED = "DataCheckFailed"  # the probe could not list the data: time skipped, said why
    HISTORY_PRUNED = "HistoryPruned"  # a finished job beyond the history limits was deleted
    FITS_GPU_MEMORY = "FitsGPUMemory"  # the estimate is within the GPU's memory
    INSUFFICIENT_GPU_MEMORY = "InsufficientGPUMemory"  # it is not: refused before any pod (or weights) start
    GPU_MEMORY_UNKNOWN = "GPUMemoryUnknown"  # no gpuProduct, or one the GPU table does not list


class StopReason:
    """Why training stopped (status.stopReason, metrics.json, the train log)."""

    EARLY_STOPPED = "EarlyStopped"  # the held-out loss stopped improving; the best adapter is kept
    MAX_EPOCHS = "MaxEpochs"  # training.epochs done (or earlyStopping.maxEpochs when no length is set)
    MAX_STEPS = "MaxSteps"  # training.maxSteps done


Phase = Literal["Pending", "Running", "Unknown", "Suspended", "Succeeded", "Failed"]


class Condition(ApiModel):
    """One observed aspect of the job, Kubernetes style."""

    type: str = Field(description="Condition type, e.g. Validated, Scheduled, Running, Succeeded, Failed.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase machine-readable reason.")
    message: str = Field(default="", description="Human-readable detail.")
    last_transition_time: str = Field(description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, description="metadata.generation this condition describes.")


class Progress(ApiModel):
    """Live training progress reported by the trainer."""

    step: int = Field(default=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    percent: int = Field(default=0, description="step / totalSteps as a whole percent.")
    epoch: float | None = Field(default=None, description="Fractional epoch.")
    loss: float | None = Field(default=None, description="Recent training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to the end of training.")
    stage: str | None = Field(default=None, description="Trainer stage: loading, training, evaluating, saving.")
    last_updated: str | None = Field(default=None, description="When the trainer reported this (RFC 3339).")


class Artifacts(ApiModel):
    """URIs of what the run wrote."""

    root: str | None = Field(
        default=None, description="{output.uri}/{namespace}/{name}/{specHash}/, or {specHash}-data-{dataVersion}/ "
        "when that folder already holds a run on other data.",
    )
    adapter: str | None = Field(default=None, description="PEFT adapter folder.")
    merged: str | None = Field(default=None, description="Merged model folder, when output.mergeAdapter is set.")
    report: str | None = Field(default=None, description="HTML report with the loss curve and base-vs-tuned table.")
    metrics: str | None = Field(default=None, description="metrics.json")
    predictions: str | None = Field(default=None, description="predictions.jsonl")


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob, written only by the operator."""

    conditions: list[Condition] = Field(default_factory=list, description="Conditions keyed by type.")
    phase: Phase | None = Field(default=None, description="Pending, Running, Unknown (the node running it stopped reporting), Suspended, Succeeded or Failed (derived).")
    observed_generation: int | None = Field(default=None, description="Last metadata.generation acted on.")
    spec_hash: str | None = Field(default=None, description="Hash of the spec fields that change the result.")
    data_version: str | None = Field(
        default=None, description="The data version this run trained on (or found already trained): a digest "
        "of every data file's URI, size and ETag (sha256 for local files), set when the run succeeds. Changed "
        "data at the same URIs trains again into {specHash}-data-{dataVersion}/ (docs/lineage.md).",
    )
    run: int = Field(
        default=0, description="Runs started: 1 for the first spec, one more for each spec change that starts a "
        "new run. Run 1's pods are <name>-<attempt>, run n's <name>-r<n>-<attempt>."
    )
    run_start_time: str | None = Field(default=None, description="When this run was asked for (RFC 3339).")
    attempts: int = Field(default=0, description="Trainer pods started for this spec hash.")
    retries: int = Field(
        default=0, description="Failed attempts retried so far; suspension and resumption do not count."
    )
    next_attempt_time: str | None = Field(
        default=None, description="When the next attempt starts, after a retryable failure (RFC 3339)."
    )
    pod_name: str | None = Field(default=None, description="The current or last trainer pod.")
    trainer_image_id: str | None = Field(
        default=None, alias="trainerImageID",
        description="The trainer image the kubelet ran for that pod (its imageID, with the digest): the exact "
        "bits behind the adapter, also passed to later attempts for lineage.json.",
    )
    world_size: int | None = Field(
        default=None, description="Training processes of the current or last attempt: one per GPU in each of "
        "its spec.resources.nodes pods (nodes x gpus), under torchrun when more than one (WORLD_SIZE); "
        "spec.training.batchSize is per process."
    )
    start_time: str | None = Field(default=None, description="When the first pod of this run was created.")
    completion_time: str | None = Field(default=None, description="When the job succeeded or failed.")
    progress: Progress | None = Field(default=None, description="Live training progress.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Held-out metrics of the tuned model.")
    base_metrics: dict[str, float] = Field(default_factory=dict, description="The same metrics for the base model.")
    stop_reason: str | None = Field(
        default=None, description="Why training stopped: EarlyStopped, MaxEpochs or MaxSteps."
    )
    best_step: int | None = Field(
        default=None, description="The optimizer step whose adapter was kept (the lowest held-out loss when "
        "early stopping watched it; else the last step)."
    )
    eval_summary: str | None = Field(default=None, description="One-line metric summary for kubectl get.")
    artifacts: Artifacts | None = Field(default=None, description="Artefact URIs.")
    message: str | None = Field(default=None, description="Latest human-readable state.")


def now_rfc3339(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def get_condition(conditions: list[Condition], ctype: str) -> Condition | None:
    return next((c for c in conditions if c.type == ctype), None)


def is_true(conditions: list[Condition], ctype: str) -> bool:
    cond = get_condition(conditions, ctype)
    return cond is not None and cond.status == "True"


def set_condition(
    conditions: list[Condition],
    ctype: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """Return conditions with `ctype` set. lastTransitionTime moves only when the status flips."""
    status_str = status if isinstance(status, str) else ("True" if status else "False")
    existing = get_condition(conditions, ctype)
    transition = now or now_rfc3339()
    if existing is not None and existing.status == status_str:
        transition = existing.last_transition_time
    updated = Condition(
        type=ctype, status=status_str, reason=reason, message=message,
        last_transition_time=transition, observed_generation=generation,
    )
    out = [c for c in conditions if c.type != ctype]
    out.append(updated)
    return out


def derive_phase(conditions: list[Condition]) -> Phase:
    """The single place phase comes from; conditions are the truth."""
    for ctype, phase in (
        (ConditionType.FAILED, "Failed"),
        (ConditionType.SUCCEEDED, "Succeeded"),
        (ConditionType.SUSPENDED, "Suspended"),
        (ConditionType.RUNNING, "Running"),
    ):
        if is_true(conditions, ctype):
            return phase  # type: ignore[return-value]
    running = get_condition(conditions, ConditionType.RUNNING)
    if running is not None and running.status == "Unknown":
        return "Unknown"  # as a pod's phase when its node stops reporting: it may well still be training
    return "Pending"
