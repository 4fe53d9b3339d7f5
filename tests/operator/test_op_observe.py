"""A table of observed trainer-pod states and what they mean: (stage, reason, retryable)."""

from __future__ import annotations

import pytest
from opkit import job_body, pod, result_message, running, terminated

from kubetune_api import Reason
from kubetune_operator.observe import Stage, view_pod

J = job_body()
UNSCHEDULABLE = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                  "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}]

TABLE = [
    # (case, pod, stage, reason, retryable)
    ("created", pod(J, 1, node=None), Stage.PENDING, "", False),
    ("unschedulable", pod(J, 1, node=None, conditions=UNSCHEDULABLE), Stage.UNSCHEDULABLE, Reason.UNSCHEDULABLE, False),
    ("container creating", pod(J, 1, container={"waiting": {"reason": "ContainerCreating"}}), Stage.STARTING,
     "ContainerCreating", False),
    ("image pull error", pod(J, 1, container={"waiting": {"reason": "ErrImagePull", "message": "not found"}}),
     Stage.IMAGE_PULL, "ErrImagePull", False),
    ("image pull backoff", pod(J, 1, container={"waiting": {"reason": "ImagePullBackOff"}}), Stage.IMAGE_PULL,
     "ImagePullBackOff", False),
    ("invalid image name", pod(J, 1, container={"waiting": {"reason": "InvalidImageName"}}), Stage.IMAGE_PULL,
     "InvalidImageName", False),
    ("secret missing", pod(J, 1, container={"waiting": {"reason": "CreateContainerConfigError",
                                                        "message": 'secret "s3" not found'}}),
     Stage.CONFIG_ERROR, "CreateContainerConfigError", False),
    ("running", running(J, 1), Stage.RUNNING, "", False),
    ("being deleted", running(J, 1, deleting=True), Stage.TERMINATING, "", False),
    ("node lost (phase Unknown)", pod(J, 1, "Unknown", reason="NodeLost"), Stage.TERMINATING, "NodeLost", False),
    ("succeeded", terminated(J, 1, 0, "Completed", result_message()), Stage.SUCCEEDED, Reason.COMPLETED, False),
    ("OOMKilled", terminated(J, 1, 137, "OOMKilled"), Stage.FAILED, Reason.OOM_KILLED, True),
    ("trainer's own OOM exit", terminated(J, 1, 14), Stage.FAILED, Reason.OOM_KILLED, True),
    ("evicted", pod(J, 1, "Failed", reason="Evicted", message="The node was low on resource: memory."),
     Stage.FAILED, Reason.PREEMPTED, True),
    ("preempting", pod(J, 1, "Failed", reason="Preempting"), Stage.FAILED, Reason.PREEMPTED, True),
    ("node lost", pod(J, 1, "Failed", reason="NodeLost"), Stage.FAILED, Reason.PREEMPTED, True),
    ("node shutdown", pod(J, 1, "Failed", reason="Shutdown"), Stage.FAILED, Reason.PREEMPTED, True),
    ("disruption target (1.26+)", terminated(J, 1, 143, conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]),
     Stage.FAILED, Reason.PREEMPTED, True),
    ("deleted by someone while running", terminated(J, 1, 143, deleting=True), Stage.FAILED, Reason.PREEMPTED, True),
    ("pod deadline", pod(J, 1, "Failed", reason="DeadlineExceeded"), Stage.FAILED, Reason.DEADLINE_EXCEEDED, False),
    ("internal error", terminated(J, 1, 1), Stage.FAILED, Reason.TRAINER_ERROR, True),
    ("transient", terminated(J, 1, 15), Stage.FAILED, Reason.TRAINER_ERROR, True),
    ("invalid config", terminated(J, 1, 10), Stage.FAILED, Reason.INVALID_SPEC, False),
    ("data invalid", terminated(J, 1, 11), Stage.FAILED, Reason.DATA_INVALID, False),
    ("access denied", terminated(J, 1, 12), Stage.FAILED, Reason.ACCESS_DENIED, False),
    ("not found", terminated(J, 1, 13), Stage.FAILED, Reason.NOT_FOUND, False),
    ("killed", terminated(J, 1, 137), Stage.FAILED, Reason.TRAINER_ERROR, True),
    ("segfault", terminated(J, 1, 139), Stage.FAILED, Reason.TRAINER_ERROR, True),
    ("failed before running", pod(J, 1, "Failed", message="failed to create container"), Stage.FAILED,
     Reason.TRAINER_ERROR, True),
]


@pytest.mark.parametrize("case,obj,stage,reason,retryable", TABLE, ids=[row[0] for row in TABLE])
def test_pod_states(case, obj, stage, reason, retryable):
    view = view_pod(obj)
    assert (view.stage, view.reason, view.retryable) == (stage, reason, retryable)
    assert view.attempt == 1 and view.name == "demo-1"


def test_messages_come_from_the_trainer_result_then_the_log_tail():
    typed = view_pod(terminated(J, 1, 11, message=result_message(ok=False, reason="DataInvalid",
                                                                 message="row 17: output is empty")))
    assert typed.message == "row 17: output is empty"
    fallback = view_pod(terminated(J, 1, 1, message="Traceback ...\nRuntimeError: CUDA error"))
    assert "CUDA error" in fallback.message
    assert "memory limit" in view_pod(terminated(J, 1, 137, "OOMKilled")).message
    assert view_pod(pod(J, 1, node=None, conditions=UNSCHEDULABLE)).message.startswith("0/3 nodes are available")


def test_success_carries_the_result():
    view = view_pod(terminated(J, 1, 0, "Completed", result_message(metrics={"rougeL": 0.5})))
    assert view.result is not None and view.result.metrics == {"rougeL": 0.5}
    assert view_pod(terminated(J, 1, 0, "Completed", "not json")).result is None


def test_the_kubelets_missing_secret_messages_name_the_secret_and_key():
    from kubetune_operator.observe import missing_secret

    assert missing_secret('secret "s3-creds" not found') == ("s3-creds", None)
    assert missing_secret("couldn't find key AWS_ACCESS_KEY_ID in Secret team-a/s3-creds") == (
        "s3-creds", "AWS_ACCESS_KEY_ID")
    assert missing_secret('configmap "x" not found') is None


def test_an_oom_names_the_pods_memory_limit_and_what_to_try():
    oom = terminated(J, 1, 137, "OOMKilled")
    limit = oom["spec"]["containers"][0]["resources"]["limits"]["memory"]  # the API's default: 32Gi
    message = view_pod(oom).message
    assert f"memory limit of {limit}" in message and "qlora" in message and "training.maxSeqLength" in message
