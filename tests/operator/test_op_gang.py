"""A multi-node gang (spec.resources.nodes > 1) in the pure state machine: the N pods of an attempt are one
value (gang.py), and the plan decides on the gang: Running only when every pod runs, any pod failing ends
the attempt and stops the others, a permanent failure on one rank fails the job once naming that pod, and
pods lost before the gang ran are created again under their own names, never as a second gang."""

from __future__ import annotations

import copy

from opkit import MINIMAL_SPEC, SETTINGS, job_body, parsed, result_message, stamp
from test_op_plan import cond, reasons, reconcile

from kubetune_api import ConditionType as C
from kubetune_api import Reason
from kubetune_api.job import MAX_NAME_LENGTH
from kubetune_operator.builders import DNS_LABEL_MAX, build_gang, gang_name_error, gang_service_name, pod_name

GANG_SPEC = {**MINIMAL_SPEC, "resources": {"gpus": 2, "nodes": 2},
             "failurePolicy": {"maxRetries": 1, "backoffSeconds": 10}}


def gang_job(**spec):
    return job_body({**copy.deepcopy(GANG_SPEC), **spec})


def member(body, attempt, index, phase="Pending", *, node="node-1", container=None, deleting=False, created=1):
    """Pod `index` of the gang the operator builds for `attempt`, in the given observed state."""
    obj = build_gang(parsed(body), attempt, SETTINGS)[index]
    obj["metadata"]["creationTimestamp"] = stamp(created)
    if deleting:
        obj["metadata"]["deletionTimestamp"] = stamp(created + 1)
    if node:
        obj["spec"]["nodeName"] = f"{node}-{index}"
    obj["status"] = {"phase": phase}
    if container is not None:
        obj["status"]["containerStatuses"] = [{"name": "trainer", "state": container}]
    return obj


def running(body, attempt, index, **kw):
    return member(body, attempt, index, "Running", container={"running": {"startedAt": stamp(2)}}, **kw)


def ended(body, attempt, index, code, reason="Error", message="", finished=30, **kw):
    state = {"terminated": {"exitCode": code, "reason": reason, "message": message, "finishedAt": stamp(finished)}}
    return member(body, attempt, index, "Succeeded" if code == 0 else "Failed", container=state, **kw)


def started():
    p, body = reconcile(gang_job())
    assert p.create_attempt == 1 and p.create_indices is None
    return body


def test_a_gang_job_creates_every_pod_of_its_first_attempt_and_counts_every_process():
    body = started()
    st = body["status"]
    assert st["attempts"] == 1 and st["podName"] == "demo-1-0" and st["worldSize"] == 4
    assert cond(body, C.SCHEDULED).message == "created pods demo-1-0, demo-1-1 (attempt 1); waiting for a node"


def test_the_gang_runs_only_when_every_pod_runs():
    body = started()
    _, body = reconcile(body, [running(body, 1, 0), member(body, 1, 1, node=None)], now=5)
    assert cond(body, C.RUNNING).status == "False" and "demo-1-1" in cond(body, C.RUNNING).message
    assert body["status"]["phase"] == "Pending"
    _, body = reconcile(body, [running(body, 1, 0), running(body, 1, 1)], now=6)
    assert (cond(body, C.RUNNING).status, cond(body, C.RUNNING).message) == (
        "True", "attempt 1 is training in pods demo-1-0, demo-1-1")
    assert cond(body, C.SCHEDULED).message == "pods demo-1-0, demo-1-1 are on nodes node-1-0, node-1-1"


def test_one_pod_failing_ends_the_attempt_stops_the_others_and_the_next_gang_starts_after_backoff():
    body = started()
    pods = [running(body, 1, 0), ended(body, 1, 1, 137, "OOMKilled", finished=20)]
    p, body = reconcile(body, pods, now=21)
    assert p.delete == ["demo-1-0"] and p.create_attempt is None
    assert body["status"]["retries"] == 1 and "pod demo-1-1: the trainer ran out of memory" in cond(body, C.RUNNING).message
    # The other rank stops too (its peer is gone); the failure is counted once.
    pods = [ended(body, 1, 0, 1, finished=22), pods[1]]
    p, body = reconcile(body, pods, now=25)
    assert p.create_attempt is None and body["status"]["retries"] == 1
    p, body = reconcile(body, pods, now=31)
    assert p.create_attempt == 2 and p.create_indices is None and body["status"]["podName"] == "demo-2-0"


def test_a_permanent_failure_on_one_rank_fails_the_job_once_naming_the_pod():
    body = started()
    invalid = result_message(ok=False, reason=Reason.DATA_INVALID, message="train.jsonl line 3: no output")
    pods = [ended(body, 1, 0, 1, finished=31), ended(body, 1, 1, 11, message=invalid, finished=30)]
    p, body = reconcile(body, pods, now=32)
    failed = cond(body, C.FAILED)
    assert (failed.status, failed.reason) == ("True", Reason.DATA_INVALID)
    assert "pod demo-1-1: train.jsonl line 3: no output" in failed.message
    assert p.create_attempt is None and body["status"]["retries"] == 0
    assert reasons(p).count(Reason.DATA_INVALID) == 1
    p, again = reconcile(body, pods, now=40)
    assert p.events == [] and p.create_attempt is None


def test_a_pod_lost_while_the_gang_trains_ends_the_attempt_without_a_retry_and_names_it():
    body = started()
    _, body = reconcile(body, [running(body, 1, 0), running(body, 1, 1)], now=5)
    # Pod 1 was deleted (gone before the operator saw it end); pod 0 stopped after the same step.
    p, body = reconcile(body, [ended(body, 1, 0, 15, finished=40)], now=41)
    assert Reason.PREEMPTED in reasons(p) and body["status"]["retries"] == 0
    assert any("pod demo-1-1 was deleted before the gang finished" in e.message for e in p.events)
    assert p.create_attempt == 2, "the next gang starts at once: a disruption uses no retry"
    assert cond(body, C.RUNNING).message == ("pods demo-2-0, demo-2-1 are pending (attempt 1 was disrupted: "
                                             "pod demo-1-1 was deleted before the gang finished)")


def test_a_pod_being_deleted_while_its_peer_stops_is_the_cause_not_the_peer():
    body = started()
    _, body = reconcile(body, [running(body, 1, 0), running(body, 1, 1)], now=5)
    pods = [ended(body, 1, 0, 15, finished=40), member(body, 1, 1, "Running", deleting=True,
                                                       container={"running": {"startedAt": stamp(2)}})]
    p, body = reconcile(body, pods, now=41)
    assert Reason.PREEMPTED in reasons(p) and body["status"]["retries"] == 0
    assert any("pod demo-1-1 was deleted before the gang finished" in e.message for e in p.events)
    assert cond(body, C.RUNNING).message == ("stopping the pods of attempt 1 (attempt 1 was disrupted: "
                                             "pod demo-1-1 was deleted before the gang finished)")


def test_a_pod_that_vanishes_while_the_whole_gang_trains_is_lost_not_recreated():
    """The pod was deleted and gone before its peer stopped: once the gang ran whole, a missing pod can
    only have been lost, and recreating it into a finished rendezvous would help nobody."""
    body = started()
    _, body = reconcile(body, [running(body, 1, 0), running(body, 1, 1)], now=5)
    p, body = reconcile(body, [running(body, 1, 0)], now=41)
    assert p.create_attempt is None and p.delete == ["demo-1-0"]
    assert Reason.PREEMPTED in reasons(p) and body["status"]["retries"] == 0
    assert "pod demo-1-1 was deleted before the gang finished" in cond(body, C.RUNNING).message


def test_an_operator_stopped_mid_gang_adopts_the_pods_and_completes_the_same_attempt():
    """The pods are created before the status is written: after a crash between pod 0 and pod 1 the status
    knows no attempt; the plan adopts pod 0 and creates only pod 1, never a second gang."""
    body = gang_job()
    p, _ = reconcile(body)
    assert p.create_attempt == 1
    p, after = reconcile(body, [member(body, 1, 0)], now=3)
    assert (p.create_attempt, p.create_indices) == (1, [1])
    assert after["status"]["attempts"] == 1 and after["status"]["podName"] == "demo-1-0"
    assert after["status"]["worldSize"] == 4
    p, _ = reconcile(after, [member(body, 1, 0), member(body, 1, 1)], now=4)
    assert p.create_attempt is None


def test_a_pod_kueue_removed_before_the_gang_ran_is_created_again():
    body = started()
    p, body = reconcile(body, [member(body, 1, 1, node=None)], now=5)
    assert (p.create_attempt, p.create_indices) == (1, [0])
    assert "pod demo-1-0 of attempt 1 is missing" in cond(body, C.RUNNING).message
    assert body["status"]["attempts"] == 1 and body["status"]["retries"] == 0


def test_the_gang_succeeds_with_the_writers_result_wherever_rank_0_ran():
    body = started()
    writer = result_message(metrics={"evalLoss": 1.5}, artifacts={"adapter": "s3://out/a/adapter/"})
    other = result_message()
    p, body = reconcile(body, [ended(body, 1, 0, 0, "Completed", other, finished=50),
                               ended(body, 1, 1, 0, "Completed", writer, finished=49)], now=51)
    assert cond(body, C.SUCCEEDED).status == "True"
    assert body["status"]["metrics"] == {"evalLoss": 1.5}
    assert body["status"]["artifacts"]["adapter"] == "s3://out/a/adapter/"
    assert body["status"]["completionTime"] == stamp(50), "the gang finished with its last pod"


def test_one_pod_done_and_one_still_running_is_still_running():
    body = started()
    _, body = reconcile(body, [ended(body, 1, 0, 0, "Completed", result_message(), finished=50),
                               running(body, 1, 1)], now=51)
    assert cond(body, C.SUCCEEDED) is None or cond(body, C.SUCCEEDED).status != "True"
    assert cond(body, C.RUNNING).status == "True"


def test_suspend_and_the_deadline_stop_every_pod_of_the_gang():
    body = started()
    pods = [running(body, 1, 0), running(body, 1, 1)]
    suspended = copy.deepcopy(body)
    suspended["spec"]["suspend"] = True
    p, _ = reconcile(suspended, pods, now=5)
    assert sorted(p.delete) == ["demo-1-0", "demo-1-1"]
    timed = gang_job(activeDeadlineSeconds=60)
    p, timed = reconcile(timed)
    p, timed = reconcile(timed, [running(timed, 1, 0), running(timed, 1, 1)], now=61)
    assert cond(timed, C.FAILED).reason == Reason.DEADLINE_EXCEEDED and sorted(p.delete) == ["demo-1-0", "demo-1-1"]


def test_ttl_removes_every_pod_of_a_finished_gang():
    body = gang_job(ttlSecondsAfterFinished=10)
    _, body = reconcile(body)
    pods = [ended(body, 1, i, 0, "Completed", result_message(), finished=50) for i in range(2)]
    p, body = reconcile(body, pods, now=51)
    assert cond(body, C.SUCCEEDED).status == "True" and not p.cleanup
    p, _ = reconcile(body, pods, now=61)
    assert p.cleanup and sorted(p.delete) == ["demo-1-0", "demo-1-1"]


# The longest names a gang can produce: 64 pods (index 63), 20 retries (attempt 21).
WIDEST = {"resources": {"gpus": 1, "nodes": 64}, "failurePolicy": {"maxRetries": 20}}


def named(name: str, run: int = 1, **spec):
    return parsed(job_body({**MINIMAL_SPEC, **WIDEST, **spec}, name=name)), run


def test_run_1_of_the_longest_name_has_names_that_fit():
    name = "g" * MAX_NAME_LENGTH
    assert gang_name_error(*named(name)) is None
    assert len(pod_name(name, 21, 1, 63)) <= DNS_LABEL_MAX and len(gang_service_name(name)) <= DNS_LABEL_MAX


def test_a_gang_name_fits_up_to_the_dns_label_limit_over_every_retry_and_not_one_character_more():
    # Run 1000: `<name>-r1000-21-63` leaves 63 - 12 = 51 characters for the name.
    assert gang_name_error(*named("g" * 51, run=1000)) is None
    error = gang_name_error(*named("g" * 52, run=1000))
    assert error.startswith(f"metadata.name: '{'g' * 52}' is too long for a gang of spec.resources.nodes 64 in run 1000")
    assert f"'{'g' * 52}-r1000-21-63' (attempt 21: failurePolicy.maxRetries 20), would be 64 characters, over the 63" in error
    assert "a name of at most 51 characters" in error
    # Fewer retries or pods shorten the longest name; one pod has no hostname of its own.
    assert gang_name_error(*named("g" * 52, run=1000, failurePolicy={"maxRetries": 8})) is None
    assert gang_name_error(*named("g" * 52, run=1000, resources={"nodes": 10})) is None
    assert gang_name_error(*named("g" * 52, run=10**9, resources={"nodes": 1})) is None


def test_a_gang_whose_names_would_be_too_long_fails_before_its_first_pod_and_a_fix_starts_the_next_run():
    name = "g" * MAX_NAME_LENGTH
    # 999 runs so far; this spec is new, so it starts run 1000.
    body = job_body({**MINIMAL_SPEC, **WIDEST}, name=name, generation=2,
                    status={"run": 999, "specHash": "0123456789abcdef", "observedGeneration": 1})
    p, body = reconcile(body)
    assert p.create_attempt is None and p.delete == [] and body["status"]["run"] == 1000
    failed = cond(body, C.FAILED)
    assert (failed.status, failed.reason) == ("True", Reason.INVALID_SPEC) and "over the 63" in failed.message
    assert (cond(body, C.VALIDATED).status, cond(body, C.VALIDATED).message) == ("False", failed.message)
    assert body["status"]["phase"] == "Failed" and reasons(p) == [Reason.INVALID_SPEC]
    # Fewer pods: the edit starts run 1001, whose longest name, `<name>-r1001-21-7`, fits.
    body["spec"]["resources"]["nodes"] = 8
    body["metadata"]["generation"] = 3
    p, body = reconcile(body, now=5)
    assert p.create_attempt == 1 and body["status"]["run"] == 1001 and cond(body, C.VALIDATED).status == "True"
    assert body["status"]["podName"] == f"{name}-r1001-1-0"
    # A run once started goes on whatever its later edits (resources are not hashed: the same run); a name
    # that outgrows the limit then is the API server's to reject (PodRejected).
    pods = [{**pod, "status": {"phase": "Pending"}} for pod in build_gang(parsed(body), 1, SETTINGS, run=1001)]
    body["spec"]["resources"]["nodes"] = 64
    body["metadata"]["generation"] = 4
    p, body = reconcile(body, pods, now=6)
    assert body["status"]["run"] == 1001 and cond(body, C.FAILED).status == "False" and p.delete == []
    assert cond(body, C.VALIDATED).status == "True"
