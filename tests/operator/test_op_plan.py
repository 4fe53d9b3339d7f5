"""The job state machine (plan.py) as a pure function: each test feeds observed state, applies the planned
status as the API server would, and checks what a user would see in `kubectl get/describe`."""

from __future__ import annotations

import copy

from opkit import (
    MINIMAL_SPEC,
    SETTINGS,
    UID,
    at,
    job_body,
    parsed,
    pod,
    result_message,
    running,
    stamp,
    terminated,
)

from kubetune_api import ConditionType as C
from kubetune_api import Reason
from kubetune_api.status import get_condition
from kubetune_operator.builders import build_trainer_pod
from kubetune_operator.conditions import merge_patch, read_status
from kubetune_operator.plan import Observed, plan
from kubetune_operator.progress import to_status

GRACE = 60.0


def reconcile(body, pods=(), now=0.0, **kw):
    """Plan, then return (plan, the job as it is after the status patch)."""
    p = plan(Observed(body=body, pods=list(pods), now=at(now), **kw), GRACE)
    after = copy.deepcopy(body)
    after["status"] = p.status
    if p.create_attempt is None and not p.delete and p.requeue_after != 0:
        # Level-triggered: planning again on what was just written finds nothing to do.
        again = plan(Observed(body=after, pods=list(pods), now=at(now), runtime=kw.get("runtime"),
                              nodes=kw.get("nodes") or {}), GRACE)
        assert merge_patch(after["status"], again.status) == {} and again.events == []
    return p, after


def cond(body, ctype):
    return get_condition(read_status(body.get("status")).conditions, ctype)


def reasons(p):
    return [e.reason for e in p.events]


def started():
    """A job whose first pod (demo-1) has been created."""
    p, body = reconcile(job_body())
    assert p.create_attempt == 1
    return body


def test_a_new_job_gets_its_first_pod():
    p, body = reconcile(job_body())
    assert p.create_attempt == 1 and p.delete == []
    st = body["status"]
    assert st["attempts"] == 1 and st["podName"] == "demo-1" and st["startTime"] == stamp(0)
    assert st["phase"] == "Pending" and st["observedGeneration"] == 1 and st["specHash"]
    assert cond(body, C.VALIDATED).status == "True"
    assert (cond(body, C.SCHEDULED).status, cond(body, C.SCHEDULED).reason) == ("False", Reason.POD_CREATED)
    assert Reason.POD_CREATED in reasons(p)


def test_planning_again_on_unchanged_state_changes_nothing():
    body = started()
    for pods in ([pod(body, 1, node=None)], [running(body, 1)]):
        _, body = reconcile(body, pods, now=5)
        p, _ = reconcile(body, pods, now=9)
        assert merge_patch(body["status"], p.status) == {}
        assert p.events == [] and p.create_attempt is None and p.delete == []


def test_running_pod_and_progress():
    body = started()
    report = to_status(
        __import__("kubetune_api").ProgressEvent(stage="training", step=30, total_steps=120, loss=1.5, eta_seconds=90),
        stamp(10),
    )
    p, body = reconcile(body, [running(body, 1)], now=10, progress=report)
    assert body["status"]["phase"] == "Running"
    assert cond(body, C.RUNNING).reason == Reason.TRAINING and cond(body, C.SCHEDULED).status == "True"
    assert body["status"]["progress"] == {"step": 30, "totalSteps": 120, "percent": 25, "loss": 1.5,
                                          "etaSeconds": 90, "stage": "training", "lastUpdated": stamp(10)}
    assert {Reason.POD_SCHEDULED, Reason.TRAINING} <= set(reasons(p))


def test_success_records_metrics_artifacts_and_gate():
    body = started()
    msg = result_message(metrics={"evalLoss": 1.2, "rougeL": 0.41}, baseMetrics={"evalLoss": 1.9, "rougeL": 0.3},
                         artifacts={"adapter": "s3://out/team-a/demo/h/adapter/", "extra": "x"}, gatePassed=True,
                         gateMessage="rougeL 0.41 >= 0.4")
    p, body = reconcile(body, [terminated(body, 1, 0, "Completed", msg, finished=40)], now=41)
    st = body["status"]
    assert st["phase"] == "Succeeded" and st["completionTime"] == stamp(40)
    assert st["metrics"] == {"evalLoss": 1.2, "rougeL": 0.41} and st["baseMetrics"]["rougeL"] == 0.3
    assert st["artifacts"]["adapter"] == "s3://out/team-a/demo/h/adapter/"
    assert st["artifacts"]["root"] == f"s3://out/team-a/demo/{st['specHash']}/"
    assert st["evalSummary"] == "evalLoss=1.2 (-0.7) rougeL=0.41 (+0.11)"
    assert st["progress"]["percent"] == 100
    assert (cond(body, C.EVALUATION_PASSED).status, cond(body, C.EVALUATION_PASSED).reason) == ("True", Reason.GATE_PASSED)
    assert cond(body, C.RUNNING).status == "False"
    assert reasons(p).count(Reason.COMPLETED) == 1  # Succeeded=True and Running=False: one Event


def test_the_data_version_and_folder_of_a_run_on_changed_data_reach_the_status():
    body = started()
    root = "s3://out/team-a/demo/h-data-0123456789abcdef/"
    msg = result_message(metrics={"evalLoss": 1.2}, dataVersion="0123456789abcdef",
                         artifacts={"root": root, "adapter": root + "adapter/"})
    _, body = reconcile(body, [terminated(body, 1, 0, "Completed", msg, finished=40)], now=41)
    st = body["status"]
    assert st["dataVersion"] == "0123456789abcdef"
    assert st["artifacts"]["root"] == root and st["artifacts"]["adapter"] == root + "adapter/"


def test_failed_gate_is_a_successful_run_that_fails_evaluation():
    body = started()
    msg = result_message(metrics={"rougeL": 0.2}, gatePassed=False, gateMessage="rougeL 0.2 < 0.4")
    _, body = reconcile(body, [terminated(body, 1, 0, "Completed", msg)], now=41)
    assert body["status"]["phase"] == "Succeeded"
    gate = cond(body, C.EVALUATION_PASSED)
    assert (gate.status, gate.reason, gate.message) == ("False", Reason.GATE_FAILED, "rougeL 0.2 < 0.4")


def test_serving_and_tracking_verdicts_become_conditions():
    body = started()
    msg = result_message(metrics={"evalLoss": 1.2}, servingCompatible=False, servingReason="RankAboveServingLimit",
                         servingMessage="rank 64 is above output.serving.maxLoraRank 16: start vLLM with "
                         "--max-lora-rank 64", tracked=False, trackingMessage="MLflow at http://m:5000 failed")
    _, body = reconcile(body, [terminated(body, 1, 0, "Completed", msg)], now=41)
    assert body["status"]["phase"] == "Succeeded", "neither verdict fails the job"
    serving, tracked = cond(body, C.SERVING_COMPATIBLE), cond(body, C.TRACKED)
    assert (serving.status, serving.reason) == ("False", Reason.RANK_ABOVE_SERVING_LIMIT)
    assert "--max-lora-rank 64" in serving.message
    assert (tracked.status, tracked.reason) == ("False", Reason.TRACKER_UNAVAILABLE) and "http://m:5000" in tracked.message


def test_why_training_stopped_reaches_the_status():
    body = started()
    msg = result_message(metrics={"evalLoss": 0.4}, step=42, totalSteps=105, stopReason="EarlyStopped", bestStep=36,
                         message="training complete: evalLoss 0.4; stopped after step 42 of 105 (EarlyStopped), "
                         "adapter of step 36 kept (lowest held-out loss)")
    _, body = reconcile(body, [terminated(body, 1, 0, "Completed", msg)], now=41)
    st = body["status"]
    assert (st["stopReason"], st["bestStep"], st["progress"]["step"]) == ("EarlyStopped", 36, 42)
    assert "adapter of step 36 kept" in cond(body, C.SUCCEEDED).message


def test_a_result_without_verdicts_sets_no_such_conditions():
    body = started()
    _, body = reconcile(body, [terminated(body, 1, 0, "Completed", result_message(metrics={"evalLoss": 1.0}))], now=41)
    assert cond(body, C.SERVING_COMPATIBLE) is None and cond(body, C.TRACKED) is None


def test_oom_is_retried_after_backoff_and_the_retry_succeeds():
    body = job_body({**MINIMAL_SPEC, "failurePolicy": {"maxRetries": 2, "backoffSeconds": 10}})
    _, body = reconcile(body)
    oom = terminated(body, 1, 137, "OOMKilled", finished=30)
    p, body = reconcile(body, [oom], now=31)
    st = body["status"]
    assert p.create_attempt is None and st["retries"] == 1 and st["nextAttemptTime"] == stamp(40)
    assert st["phase"] == "Pending" and cond(body, C.RUNNING).reason == Reason.BACKOFF
    assert "OOMKilled" in cond(body, C.RUNNING).message and p.requeue_after == 9
    assert ("Warning", Reason.OOM_KILLED) in [(e.type, e.reason) for e in p.events]
    p, same = reconcile(body, [oom], now=35)  # still backing off: the failure is not counted again
    assert p.create_attempt is None and same["status"]["retries"] == 1
    p, body = reconcile(body, [oom], now=40)
    assert p.create_attempt == 2 and body["status"]["attempts"] == 2 and "nextAttemptTime" not in body["status"]
    env = {e["name"]: e.get("value") for e in running(body, 2)["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_ATTEMPT"] == "2"
    _, body = reconcile(body, [oom, terminated(body, 2, 0, "Completed", result_message(), finished=90)], now=91)
    assert body["status"]["phase"] == "Succeeded" and body["status"]["attempts"] == 2


def test_the_image_the_kubelet_ran_is_recorded_and_passed_to_the_next_attempt():
    digest = "docker-pullable://registry.example/t@sha256:" + "a" * 64
    body = job_body({**MINIMAL_SPEC, "failurePolicy": {"maxRetries": 1, "backoffSeconds": 0}})
    _, body = reconcile(body)
    first = running(body, 1)
    first["status"]["containerStatuses"][0]["imageID"] = digest
    _, body = reconcile(body, [first], now=10)
    assert body["status"]["trainerImageID"] == digest
    failed = terminated(body, 1, 137, "OOMKilled", finished=20)
    failed["status"]["containerStatuses"][0]["imageID"] = digest
    _, body = reconcile(body, [failed], now=21)
    p, body = reconcile(body, [failed], now=22)  # the retry (no backoff)
    assert p.create_attempt == 2 and p.image_id == digest
    env = {e["name"]: e.get("value") for e in build_trainer_pod(parsed(body), 2, SETTINGS, image_id=p.image_id)[
        "spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_IMAGE_ID"] == digest and env["KUBETUNE_IMAGE"] == SETTINGS.trainer_image


def test_backoff_doubles_and_retries_run_out():
    body = job_body({**MINIMAL_SPEC, "failurePolicy": {"maxRetries": 2, "backoffSeconds": 10}})
    _, body = reconcile(body)
    pods = [terminated(body, 1, 1, finished=20)]
    _, body = reconcile(body, pods, now=20)
    _, body = reconcile(body, pods, now=30)  # attempt 2 created
    pods.append(terminated(body, 2, 1, finished=50))
    _, body = reconcile(body, pods, now=50)
    assert body["status"]["nextAttemptTime"] == stamp(70)  # 10 s, then 20 s
    _, body = reconcile(body, pods, now=70)
    pods.append(terminated(body, 3, 1, message="boom", finished=80))
    p, body = reconcile(body, pods, now=80)
    failed = cond(body, C.FAILED)
    assert body["status"]["phase"] == "Failed" and failed.reason == Reason.RETRIES_EXHAUSTED
    assert "TrainerError" in failed.message and "maxRetries (2)" in failed.message
    assert body["status"]["attempts"] == 3 and p.create_attempt is None


def test_typed_trainer_failures_are_not_retried():
    for code, reason in ((11, Reason.DATA_INVALID), (12, Reason.ACCESS_DENIED), (13, Reason.NOT_FOUND),
                         (10, Reason.INVALID_SPEC)):
        body = started()
        msg = result_message(ok=False, reason=reason, message="row 3: missing output")
        p, body = reconcile(body, [terminated(body, 1, code, message=msg)], now=30)
        assert body["status"]["phase"] == "Failed" and cond(body, C.FAILED).reason == reason
        assert "row 3: missing output" in cond(body, C.FAILED).message
        assert p.create_attempt is None and body["status"]["retries"] == 0
        assert ("Warning", reason) in [(e.type, e.reason) for e in p.events]


def test_invalid_spec_fails_with_the_field_and_no_pod():
    bad = {**MINIMAL_SPEC, "training": {"learningRate": 5, "epocs": 2}}
    p, body = reconcile(job_body(bad))
    assert p.create_attempt is None and body["status"]["phase"] == "Failed"
    failed = cond(body, C.FAILED)
    assert failed.reason == Reason.INVALID_SPEC
    assert "spec.training.learningRate" in failed.message and "spec.training.epocs: unknown field" in failed.message
    assert cond(body, C.VALIDATED).status == "False"
    assert [(e.type, e.reason) for e in p.events].count(("Warning", Reason.INVALID_SPEC)) == 1


def test_relative_paths_are_rejected_in_a_cluster():
    spec = {**MINIMAL_SPEC, "dataset": {"train": {"uri": "./data/train.jsonl"}}}
    p, body = reconcile(job_body(spec))
    assert p.create_attempt is None and cond(body, C.FAILED).reason == Reason.INVALID_SPEC
    assert cond(body, C.FAILED).message.startswith("spec.dataset.train.uri: './data/train.jsonl' is relative")


def test_fixing_an_invalid_spec_starts_a_run():
    _, body = reconcile(job_body({**MINIMAL_SPEC, "training": {"learningRate": 5}}))
    fixed = {**body, "spec": MINIMAL_SPEC, "metadata": {**body["metadata"], "generation": 2}}
    p, body = reconcile(fixed, now=10)
    assert p.create_attempt == 1 and body["status"]["phase"] == "Pending"
    assert cond(body, C.FAILED).status == "False" and cond(body, C.FAILED).reason == Reason.SPEC_CHANGED


def test_unschedulable_says_why():
    body = started()
    why = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."}]
    p, body = reconcile(body, [pod(body, 1, node=None, conditions=why)], now=5)
    scheduled = cond(body, C.SCHEDULED)
    assert (scheduled.status, scheduled.reason) == ("False", Reason.UNSCHEDULABLE)
    assert "Insufficient nvidia.com/gpu" in scheduled.message and body["status"]["phase"] == "Pending"
    assert ("Warning", Reason.UNSCHEDULABLE) in [(e.type, e.reason) for e in p.events]


def test_image_pull_fails_after_the_grace_period():
    body = started()
    pulling = pod(body, 1, created=1, container={"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}})
    p, body = reconcile(body, [pulling], now=20)
    assert body["status"]["phase"] == "Pending" and p.requeue_after == GRACE - 19
    p, body = reconcile(body, [pulling], now=1 + GRACE)
    assert body["status"]["phase"] == "Failed" and cond(body, C.FAILED).reason == Reason.IMAGE_PULL_FAILED
    assert "no such image" in cond(body, C.FAILED).message and p.delete == ["demo-1"]


def test_deadline_exceeded_stops_the_pod():
    body = job_body({**MINIMAL_SPEC, "activeDeadlineSeconds": 100})
    p, body = reconcile(body)
    assert p.deadline_left == 100
    p, body = reconcile(body, [running(body, 1)], now=50)
    assert p.requeue_after == 50
    p, body = reconcile(body, [running(body, 1)], now=100)
    assert cond(body, C.FAILED).reason == Reason.DEADLINE_EXCEEDED and p.delete == ["demo-1"]
    # The pod's own activeDeadlineSeconds may fire first: same verdict.
    body2 = job_body({**MINIMAL_SPEC, "activeDeadlineSeconds": 100})
    _, body2 = reconcile(body2)
    _, body2 = reconcile(body2, [pod(body2, 1, "Failed", reason="DeadlineExceeded")], now=99)
    assert cond(body2, C.FAILED).reason == Reason.DEADLINE_EXCEEDED


def test_a_retry_gets_what_is_left_of_the_deadline():
    body = job_body({**MINIMAL_SPEC, "activeDeadlineSeconds": 100, "failurePolicy": {"backoffSeconds": 0}})
    _, body = reconcile(body)
    pods = [terminated(body, 1, 137, "OOMKilled", finished=30)]
    _, body = reconcile(body, pods, now=30)
    p, body = reconcile(body, pods, now=31)
    assert p.create_attempt == 2 and p.deadline_left == 69


def test_suspend_stops_the_pod_and_resume_starts_a_new_attempt_without_using_a_retry():
    body = started()
    _, body = reconcile(body, [running(body, 1)], now=5)
    suspended = {**body, "spec": {**body["spec"], "suspend": True}, "metadata": {**body["metadata"], "generation": 2}}
    p, body = reconcile(suspended, [running(body, 1)], now=10)
    assert p.delete == ["demo-1"] and body["status"]["phase"] == "Suspended"
    assert cond(body, C.SUSPENDED).reason == Reason.SUSPENDED and Reason.SUSPENDED in reasons(p)
    p, body = reconcile(body, [running(body, 1, deleting=True)], now=11)
    assert p.delete == [] and p.create_attempt is None
    resumed = {**body, "spec": {**body["spec"], "suspend": False}, "metadata": {**body["metadata"], "generation": 3}}
    p, body2 = reconcile(resumed, [terminated(body, 1, 143, deleting=True)], now=12)
    assert p.create_attempt is None and body2["status"]["phase"] == "Suspended"  # waits for the old pod to go
    p, body = reconcile(resumed, [], now=13)
    assert p.create_attempt == 2 and body["status"]["retries"] == 0 and body["status"]["startTime"] == stamp(13)
    assert cond(body, C.SUSPENDED).reason == Reason.RESUMED and Reason.RESUMED in reasons(p)
    assert body["status"]["phase"] == "Pending"


def test_created_suspended_starts_nothing_until_resumed():
    p, body = reconcile(job_body({**MINIMAL_SPEC, "suspend": True}))
    assert p.create_attempt is None and body["status"]["phase"] == "Suspended" and body["status"]["attempts"] == 0
    p, body = reconcile({**body, "spec": MINIMAL_SPEC}, now=5)
    assert p.create_attempt == 1 and body["status"]["startTime"] == stamp(5)


def test_a_changed_spec_hash_stops_the_run_and_starts_a_new_one():
    body = started()
    old_hash = body["status"]["specHash"]
    old_pod = running(body, 1)
    _, body = reconcile(body, [old_pod], now=5)
    edited = {**body, "spec": {**MINIMAL_SPEC, "training": {"learningRate": 1e-4}},
              "metadata": {**body["metadata"], "generation": 2}}
    p, body = reconcile(edited, [old_pod], now=10)
    st = body["status"]
    assert p.delete == ["demo-1"] and p.create_attempt is None  # the name is reused: wait for it to go
    assert st["specHash"] != old_hash and st["attempts"] == 0 and st["phase"] == "Pending"
    assert cond(body, C.RUNNING).reason == Reason.SPEC_CHANGED and Reason.SPEC_CHANGED in reasons(p)
    p, body = reconcile(body, [], now=12)
    assert p.create_attempt == 1 and body["status"]["attempts"] == 1


def test_edits_that_do_not_change_the_result_never_restart():
    body = started()
    pods = [running(body, 1)]
    _, body = reconcile(body, pods, now=5)
    edited = {**body, "spec": {**MINIMAL_SPEC, "resources": {"memory": "64Gi"}, "failurePolicy": {"maxRetries": 5}},
              "metadata": {**body["metadata"], "generation": 2}}
    p, after = reconcile(edited, pods, now=6)
    assert p.delete == [] and p.create_attempt is None
    assert after["status"]["observedGeneration"] == 2 and after["status"]["phase"] == "Running"


def test_an_unchanged_finished_job_reapplied_never_retrains():
    body = started()
    done = [terminated(body, 1, 0, "Completed", result_message())]
    _, body = reconcile(body, done, now=40)
    for again in (body, {**body, "metadata": {**body["metadata"], "generation": 2,
                                              "labels": {"team": "a"}}}):
        for pods in (done, []):  # with its pod, or after the pod is gone
            p, after = reconcile(again, pods, now=500)
            assert p.create_attempt is None and p.delete == [] and after["status"]["phase"] == "Succeeded"
            generation = again["metadata"]["generation"]
            assert {c["observedGeneration"] for c in after["status"]["conditions"]} == {generation}


def test_ttl_removes_the_children_and_keeps_the_status():
    body = job_body({**MINIMAL_SPEC, "ttlSecondsAfterFinished": 60})
    _, body = reconcile(body)
    done = [terminated(body, 1, 0, "Completed", result_message(), finished=40)]
    p, body = reconcile(body, done, now=41)
    assert p.requeue_after == 59 and not p.cleanup
    p, after = reconcile(body, done, now=100)
    assert p.cleanup and p.delete == ["demo-1"] and after["status"] == body["status"]


def test_a_restarted_operator_adopts_the_pod_it_created():
    body = job_body()
    p, _ = reconcile(body, [running(body, 1)], now=5)  # status never recorded the pod
    assert p.create_attempt is None and p.status["attempts"] == 1 and p.status["phase"] == "Running"
    # ... also when it crashed between creating the retry pod and recording it.
    body = job_body({**MINIMAL_SPEC, "failurePolicy": {"backoffSeconds": 1}})
    _, body = reconcile(body)
    pods = [terminated(body, 1, 137, "OOMKilled", finished=10)]
    _, body = reconcile(body, pods, now=10)
    p, body = reconcile(body, [*pods, running(body, 2)], now=20)
    assert p.create_attempt is None and body["status"]["attempts"] == 2 and "nextAttemptTime" not in body["status"]
    assert body["status"]["retries"] == 1


def test_a_pod_deleted_out_from_under_the_job_uses_no_retry():
    """A disruption (here: the pod vanished) is not the trainer's failure: the next attempt starts at once
    and failurePolicy.maxRetries is untouched, even when it is 0."""
    body = started()
    body["spec"]["failurePolicy"] = {"maxRetries": 0}
    _, body = reconcile(body, [running(body, 1)], now=5)
    p, body = reconcile(body, [], now=8)
    assert p.create_attempt == 2 and body["status"]["retries"] == 0 and body["status"]["podName"] == "demo-2"
    warning = next(e for e in p.events if e.reason == Reason.PREEMPTED)
    assert warning.type == "Warning" and "no retry used" in warning.message and "demo-1" in warning.message


def test_an_eviction_or_a_disruption_target_pod_uses_no_retry():
    for failed in (lambda b: pod(b, 1, "Failed", reason="Evicted", message="The node was low on resource: memory."),
                   lambda b: terminated(b, 1, 143, conditions=[{"type": "DisruptionTarget", "status": "True",
                                                                "reason": "EvictionByEvictionAPI",
                                                                "message": "Eviction API: evicting"}])):
        body = started()
        body["spec"]["failurePolicy"] = {"maxRetries": 0}
        p, body = reconcile(body, [failed(body)], now=8)
        assert p.create_attempt == 2 and body["status"]["retries"] == 0 and not cond(body, C.FAILED)


def test_oom_names_the_limit_and_what_to_try():
    body = job_body({**MINIMAL_SPEC, "resources": {"memory": "3Gi"}, "failurePolicy": {"maxRetries": 0}})
    _, body = reconcile(body)
    p, body = reconcile(body, [terminated(body, 1, 137, "OOMKilled")], now=30)
    failed = cond(body, C.FAILED)
    assert failed.reason == Reason.RETRIES_EXHAUSTED and "OOMKilled" in failed.message
    for words in ("memory limit of 3Gi", "spec.resources.memory", "qlora", "training.batchSize",
                  "training.maxSeqLength", "gradientCheckpointing"):
        assert words in failed.message


def test_a_missing_secret_is_reported_then_fails_after_the_grace_period():
    spec = {**MINIMAL_SPEC, "storage": {"s3": {"secretRef": {"name": "s3-creds"}}}}
    body = job_body(spec)
    _, body = reconcile(body)
    stuck = pod(body, 1, created=1, container={"waiting": {"reason": "CreateContainerConfigError",
                                                           "message": 'secret "s3-creds" not found'}})
    p, body = reconcile(body, [stuck], now=10)
    running_cond = cond(body, C.RUNNING)
    assert (running_cond.status, running_cond.reason) == ("False", Reason.SECRET_NOT_FOUND)
    assert "Secret s3-creds (named by spec.storage.s3.secretRef) does not exist" in running_cond.message
    assert ("Warning", Reason.SECRET_NOT_FOUND) in [(e.type, e.reason) for e in p.events]
    assert p.requeue_after == 1 + GRACE - 10 and not cond(body, C.FAILED)
    p, body = reconcile(body, [stuck], now=1 + GRACE)
    failed = cond(body, C.FAILED)
    assert failed.reason == Reason.SECRET_NOT_FOUND and "spec.storage.s3.secretRef" in failed.message
    assert p.delete == ["demo-1"] and body["status"]["retries"] == 0


def test_a_secret_created_within_the_grace_period_lets_the_pod_start():
    spec = {**MINIMAL_SPEC, "storage": {"s3": {"secretRef": {"name": "s3-creds"}}}}
    body = job_body(spec)
    _, body = reconcile(body)
    stuck = pod(body, 1, created=1, container={"waiting": {"reason": "CreateContainerConfigError",
                                                           "message": 'secret "s3-creds" not found'}})
    _, body = reconcile(body, [stuck], now=10)
    p, body = reconcile(body, [running(body, 1)], now=20)
    assert cond(body, C.RUNNING).reason == Reason.TRAINING and not cond(body, C.FAILED)
    assert Reason.TRAINING in reasons(p)


def test_a_secret_without_the_key_names_the_key():
    spec = {**MINIMAL_SPEC, "model": {"uri": "hf://org/m", "secretRef": {"name": "hub", "key": "token"}}}
    body = job_body(spec)
    _, body = reconcile(body)
    stuck = pod(body, 1, created=1, container={"waiting": {
        "reason": "CreateContainerConfigError", "message": "couldn't find key token in Secret team-a/hub"}})
    _, body = reconcile(body, [stuck], now=1 + GRACE)
    failed = cond(body, C.FAILED)
    assert failed.reason == Reason.SECRET_NOT_FOUND
    assert "Secret hub (named by spec.model.secretRef) has no key token" in failed.message


def test_a_pod_the_api_server_rejects_fails_the_job_at_once_and_an_edit_starts_a_run():
    body = job_body()
    p, after = reconcile(body, rejected='Pod "demo-1" is invalid: spec.affinity: Invalid value')
    failed = cond(after, C.FAILED)
    assert p.create_attempt is None and failed.reason == Reason.POD_REJECTED
    assert 'Pod "demo-1" is invalid: spec.affinity' in failed.message and after["status"]["attempts"] == 0
    p, same = reconcile(after, now=5)
    assert p.create_attempt is None and cond(same, C.FAILED).reason == Reason.POD_REJECTED
    edited = copy.deepcopy(after)
    edited["metadata"]["generation"] = 2
    edited["spec"]["resources"] = {"memory": "2Gi"}  # not a hashed field: the edit still starts a run
    p, _ = reconcile(edited, now=10)
    assert p.create_attempt == 1


def test_a_pod_refused_for_now_is_said_and_tried_again():
    # Not through reconcile(): the refusal is observed once, by the pass whose creation it answered.
    p = plan(Observed(body=job_body(), pods=[], now=at(0), refused='pods "demo-1" is forbidden: exceeded quota: '
                                                                  'gpu-quota'), GRACE)
    body = {**job_body(), "status": p.status}
    scheduled = cond(body, C.SCHEDULED)
    assert p.create_attempt is None and body["status"]["attempts"] == 0 and not cond(body, C.FAILED)
    assert scheduled.reason == Reason.POD_CREATE_FAILED and "exceeded quota: gpu-quota" in scheduled.message
    assert p.requeue_after == 30
    p, _ = reconcile(body, now=30)
    assert p.create_attempt == 1


def test_a_not_ready_node_is_named_in_the_status():
    body = started()
    _, body = reconcile(body, [running(body, 1)], now=5)
    ready = {"status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status.",
             "lastTransitionTime": stamp(7)}
    p, body = reconcile(body, [running(body, 1)], now=9, nodes={"node-1": ready})
    running_cond = cond(body, C.RUNNING)
    assert (running_cond.status, running_cond.reason) == ("Unknown", Reason.NODE_NOT_READY)
    assert "node node-1" in running_cond.message and "Kubelet stopped posting" in running_cond.message
    assert Reason.NODE_NOT_READY in reasons(p)
    _, body = reconcile(body, [running(body, 1)], now=20, nodes={"node-1": {"status": "True"}})
    assert cond(body, C.RUNNING).reason == Reason.TRAINING


def test_a_new_run_gets_new_pod_names_and_keeps_the_old_runs_finished_pods():
    body = started()
    old = terminated(body, 1, 11, message="bad row 3")
    _, body = reconcile(body, [old], now=10)
    assert cond(body, C.FAILED).reason == Reason.DATA_INVALID and body["status"]["run"] == 1
    edited = copy.deepcopy(body)
    edited["metadata"]["generation"] = 2
    edited["spec"]["training"] = {"epochs": 2}
    p, body = reconcile(edited, [old], now=20)
    assert p.create_attempt == 1 and p.run == 2 and "demo-1" not in p.delete
    assert body["status"]["podName"] == "demo-r2-1" and body["status"]["runStartTime"] == stamp(20)
    assert p.run_start == stamp(20)
    # The planner recognises the new run's pod (and not the old one) as its attempt 1.
    new = build_trainer_pod(parsed(body), 1, SETTINGS, run=2)
    assert new["metadata"]["name"] == "demo-r2-1" and new["metadata"]["labels"]["kubetune.io/run"] == "2"
    new.update(status={"phase": "Running", "containerStatuses": [{"name": "trainer", "state": {"running": {}}}]})
    new["spec"]["nodeName"], new["metadata"]["creationTimestamp"] = "node-1", stamp(21)
    _, body = reconcile(body, [old, new], now=22)
    assert cond(body, C.RUNNING).reason == Reason.TRAINING and "demo-r2-1" in cond(body, C.RUNNING).message


def test_the_first_run_starts_at_the_jobs_creation():
    p, body = reconcile(job_body(), now=30)
    assert body["status"]["run"] == 1 and p.run_start == stamp(0)


def test_a_pod_that_finished_unseen_still_gives_its_step():
    body = started()
    done = terminated(body, 1, 0, "Completed", message=result_message(step=120, totalSteps=120))
    _, body = reconcile(body, [done], now=40)
    assert body["status"]["progress"]["step"] == 120 and body["status"]["progress"]["totalSteps"] == 120


def test_no_new_pod_while_an_earlier_jobs_pod_holds_the_name():
    body = job_body()
    orphan = running(body, 1)
    orphan["metadata"]["ownerReferences"][0]["uid"] = "an-earlier-job"
    p, _ = reconcile(body, [orphan])
    assert p.create_attempt is None and p.delete == ["demo-1"]
    p, _ = reconcile(body, [])
    assert p.create_attempt == 1


def test_missing_runtime_holds_the_job_with_a_clear_condition():
    spec = {**MINIMAL_SPEC, "runtimeRef": "llama-8b"}
    p, body = reconcile(job_body(spec))
    validated = cond(body, C.VALIDATED)
    assert (validated.status, validated.reason) == ("False", Reason.RUNTIME_NOT_FOUND)
    assert "llama-8b" in validated.message and body["status"]["phase"] == "Pending" and p.create_attempt is None
    p, body = reconcile(body, runtime={"image": "registry.example/llama:1", "resources": {"gpus": 4}})
    assert p.create_attempt == 1 and p.job.spec.image == "registry.example/llama:1"
    assert p.job.spec.resources.gpus == 4


def test_owner_uid_is_the_jobs():
    body = started()
    assert running(body, 1)["metadata"]["ownerReferences"][0]["uid"] == UID


def test_a_job_being_deleted_gets_no_new_pod():
    body = started()
    _, body = reconcile(body, [running(body, 1)], now=5)
    body["metadata"]["deletionTimestamp"] = stamp(6)
    p, after = reconcile(body, [], now=7)  # its pods went first
    assert p.create_attempt is None and p.events == [] and after["status"] == body["status"]
