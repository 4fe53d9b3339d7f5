"""What a trainer pod's observed state means for its job: a pure function of the pod object.

The kubelet reports how the container ended (OOMKilled, exit code, termination message), the eviction
manager and the node controller set the pod's own reason, and the scheduler sets PodScheduled. The trainer's
typed exit codes and its result come from the API (`ExitCode`, `TrainerResult`), never redefined here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from kubetune_api import ExitCode, Reason, TrainerResult
from kubetune_api.results import exit_code_of

from .builders import ATTEMPT_LABEL, CONTAINER, GANG_INDEX_LABEL, GANG_SIZE_LABEL, HASH_LABEL, RUN_LABEL

# Pod-level reasons meaning the node or the cluster took the pod away, not the trainer failing.
DISRUPTION_REASONS = ("Evicted", "Preempting", "NodeLost", "NodeShutdown", "Shutdown", "Terminated")
IMAGE_PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
# The kubelet could not build the container's config: a Secret or ConfigMap (or a key of it) the env names is
# missing, or runAsNonRoot cannot be verified. It retries forever; the job gives it the same grace period.
CONFIG_ERROR_REASONS = ("CreateContainerConfigError",)
# The kubelet's messages for a missing Secret / key in an env valueFrom (pkg/kubelet/kubelet_pods.go).
SECRET_MISSING = re.compile(r'secrets? "(?P<name>[^"]+)" not found|'
                            r"couldn't find key (?P<key>\S+) in Secret (?:[^/\s]+/)?(?P<kname>\S+)")
SIGNALS = {137: "killed by SIGKILL", 143: "stopped by SIGTERM"}
MESSAGE_LIMIT = 1024


class Stage(str, Enum):
    PENDING = "Pending"  # created, not yet on a node
    UNSCHEDULABLE = "Unschedulable"  # the scheduler found no node
    IMAGE_PULL = "ImagePull"  # on a node, but the image does not pull
    CONFIG_ERROR = "ConfigError"  # on a node, but the kubelet cannot build the container's config
    STARTING = "Starting"  # on a node, container being created
    RUNNING = "Running"
    TERMINATING = "Terminating"  # being deleted, not yet ended
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class PodView:
    """One trainer pod as the job sees it."""

    name: str
    attempt: int
    spec_hash: str
    run: int
    stage: Stage
    reason: str = ""  # a Reason constant for FAILED/SUCCEEDED, the waiting/scheduler reason otherwise
    retryable: bool = False
    message: str = ""
    node: str | None = None
    deleting: bool = False  # has a deletionTimestamp
    created: str | None = None
    finished: str | None = None
    result: TrainerResult | None = None
    image_id: str | None = None  # the kubelet's imageID of the trainer container (with the digest)
    index: int = 0  # its place in its gang (gang.py)
    gang_size: int = 1  # pods in its gang, as created

    @property
    def active(self) -> bool:
        """Might still be running a trainer process."""
        return self.stage not in (Stage.SUCCEEDED, Stage.FAILED)


def _trim(text: str | None) -> str:
    text = (text or "").strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 3] + "..."


def _container_status(pod: dict) -> dict:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return next((s for s in statuses if s.get("name") == CONTAINER), statuses[0] if statuses else {})


def _condition(pod: dict, ctype: str) -> dict:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == ctype), {})


def oom_message(pod: dict, detail: str = "") -> str:
    """Which limit was hit, and what to try."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    container = next((c for c in containers if c.get("name") == CONTAINER), containers[0])
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    what = f"its memory limit of {limit}" if limit else "the memory available to it"
    return (f"the trainer ran out of memory: it exceeded {what} (spec.resources.memory)"
            + (f" ({detail})" if detail else "")
            + "; try a larger spec.resources.memory, method.type qlora, a smaller training.batchSize or "
              "training.maxSeqLength, or training.gradientCheckpointing: true")


def missing_secret(message: str) -> tuple[str, str | None] | None:
    """(Secret name, key or None) when a CreateContainerConfigError message says a Secret or key is missing."""
    m = SECRET_MISSING.search(message or "")
    if m is None:
        return None
    return (m.group("name"), None) if m.group("name") else (m.group("kname"), m.group("key"))


def disruption_of(pod: dict) -> str | None:
    """Why the cluster (not the trainer) ended the pod, if it did: the DisruptionTarget condition (Kubernetes
    1.26+: eviction, preemption, taint manager, node GC) or the pod reasons older clusters set."""
    status = pod.get("status") or {}
    target = _condition(pod, "DisruptionTarget")
    if target.get("status") == "True":
        return f"{target.get('reason') or 'DisruptionTarget'}: {_trim(target.get('message'))}".rstrip(": ")
    if (status.get("reason") or "") in DISRUPTION_REASONS:
        return f"{status['reason']}: {_trim(status.get('message'))}".rstrip(": ")
    return None


def failure_of(pod: dict) -> tuple[str, bool, str]:
    """(reason, retryable, message) of a pod in phase Failed."""
    status = pod.get("status") or {}
    pod_reason, pod_message = status.get("reason") or "", _trim(status.get("message"))
    disruption = disruption_of(pod)
    if disruption:
        return Reason.PREEMPTED, True, disruption
    if pod_reason == "DeadlineExceeded":
        return Reason.DEADLINE_EXCEEDED, False, (f"spec.activeDeadlineSeconds ran out: the kubelet stopped the pod "
                                                 f"({pod_message or 'its activeDeadlineSeconds passed'})")
    cstatus = _container_status(pod)
    term = (cstatus.get("state") or {}).get("terminated") or (cstatus.get("lastState") or {}).get("terminated")
    if not term:
        return Reason.TRAINER_ERROR, True, pod_message or "the pod failed before its container ran"
    if term.get("reason") == "OOMKilled":
        return Reason.OOM_KILLED, True, oom_message(pod)
    code = int(term.get("exitCode", 1))
    result = TrainerResult.from_termination_message(term.get("message"))
    message = result.message if result else _trim(term.get("message"))
    typed = exit_code_of(code)
    if typed is ExitCode.OUT_OF_MEMORY:
        return Reason.OOM_KILLED, True, oom_message(pod, message)
    if typed is None or typed is ExitCode.OK:
        detail = SIGNALS.get(code, f"exit code {code}")
        return Reason.TRAINER_ERROR, True, f"the trainer {detail}" + (f": {message}" if message else "")
    return typed.reason, typed.retryable, message or f"exit code {code} ({typed.name})"


def _stage_of(pod: dict) -> tuple[Stage, str, str]:
    """(stage, reason, message) for pods that have not failed."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Succeeded":
        return Stage.SUCCEEDED, Reason.COMPLETED, ""
    if meta.get("deletionTimestamp"):
        return Stage.TERMINATING, "", "the pod is being deleted"
    if phase == "Running":
        return Stage.RUNNING, "", ""
    if phase == "Unknown":
        return Stage.TERMINATING, status.get("reason") or "", _trim(status.get("message"))
    waiting = (_container_status(pod).get("state") or {}).get("waiting") or {}
    if waiting.get("reason") in IMAGE_PULL_REASONS:
        return Stage.IMAGE_PULL, waiting["reason"], _trim(waiting.get("message"))
    if waiting.get("reason") in CONFIG_ERROR_REASONS:
        return Stage.CONFIG_ERROR, waiting["reason"], _trim(waiting.get("message"))
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return Stage.UNSCHEDULABLE, Reason.UNSCHEDULABLE, _trim(scheduled.get("message"))
    if (pod.get("spec") or {}).get("nodeName"):
        return Stage.STARTING, waiting.get("reason") or "", _trim(waiting.get("message"))
    return Stage.PENDING, "", ""


def view_pod(pod: dict) -> PodView:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    term = (_container_status(pod).get("state") or {}).get("terminated") or {}
    common = {
        "name": meta.get("name", ""),
        "attempt": int(labels.get(ATTEMPT_LABEL, "0") or 0),
        "spec_hash": labels.get(HASH_LABEL, ""),
        "run": int(labels.get(RUN_LABEL, "1") or 1),  # pods from before run numbers were all run 1
        "node": (pod.get("spec") or {}).get("nodeName"),
        "deleting": bool(meta.get("deletionTimestamp")),
        "created": meta.get("creationTimestamp"),
        "finished": term.get("finishedAt"),
        "image_id": _container_status(pod).get("imageID") or None,
        "index": int(labels.get(GANG_INDEX_LABEL, "0") or 0),
        "gang_size": int(labels.get(GANG_SIZE_LABEL, "1") or 1),
    }
    if status.get("phase") == "Failed":
        reason, retryable, message = failure_of(pod)
        if meta.get("deletionTimestamp") and reason == Reason.TRAINER_ERROR:
            # Deleted by someone else while running: the SIGTERM exit is not the trainer's fault.
            reason, retryable, message = Reason.PREEMPTED, True, f"the pod was deleted ({message})"
        return PodView(stage=Stage.FAILED, reason=reason, retryable=retryable, message=message, **common)
    stage, reason, message = _stage_of(pod)
    result = TrainerResult.from_termination_message(term.get("message")) if stage is Stage.SUCCEEDED else None
    return PodView(stage=stage, reason=reason, message=message, result=result, **common)
