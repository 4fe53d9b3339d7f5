"""FineTuneSchedule's pure plan: due times (time zones, missed times), the data check, concurrency
policies, history pruning and what the status records; `now` is passed in, so the clock is the test's."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest
from opkit import MINIMAL_SPEC, SETTINGS

from kubetune_api import Reason
from kubetune_operator.conditions import merge_patch
from kubetune_operator.schedule_builders import build_probe_pod, build_schedule_event, job_name, probe_name
from kubetune_operator.schedule_plan import ScheduleObserved, plan_schedule

SCHED_UID = "5b1f7e2a-0c3d-4e5f-8a9b-0c1d2e3f4a5b"
CREATED = datetime(2026, 3, 1, 0, 0, 30, tzinfo=timezone.utc)


def schedule_body(cron="0 3 * * *", zone="UTC", status=None, **spec) -> dict:
    body = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSchedule",
            "metadata": {"name": "nightly", "namespace": "team-a", "uid": SCHED_UID, "generation": 1,
                         "resourceVersion": "7", "creationTimestamp": CREATED.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "spec": {"schedule": cron, "timeZone": zone,
                     "jobTemplate": {"metadata": {"labels": {"team": "a"}}, "spec": copy.deepcopy(MINIMAL_SPEC)},
                     **spec}}
    if status is not None:
        body["status"] = status
    return body


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def probe(body, when, version=None, phase="Succeeded", message=None) -> dict:
    pod = build_probe_pod(body, when, SETTINGS)
    result = message if message is not None else json.dumps({"ok": True, "reason": "Completed", "dataVersion": version})
    pod["status"] = {"phase": phase, "containerStatuses": [
        {"name": "probe", "state": {"terminated": {"exitCode": 0 if phase == "Succeeded" else 13,
                                                   "message": result}}}]}
    return pod


def scheduled_job(body, when, phase=None, version=None, passed=True, adapter=None) -> dict:
    from kubetune_operator.schedule_builders import build_job

    job = build_job(body, when, version)
    if phase:
        job["status"] = {"phase": phase, "dataVersion": version, "conditions": [
            {"type": "EvaluationPassed", "status": "True" if passed else "False", "reason": "GatePassed",
             "lastTransitionTime": "2026-03-01T00:00:00Z"}]}
        if adapter:
            job["status"]["artifacts"] = {"adapter": adapter}
    return job


def plan(body, now, jobs=(), probes=()):
    p = plan_schedule(ScheduleObserved(body=body, jobs=list(jobs), probes=list(probes), now=now))
    after = copy.deepcopy(body)
    after["status"] = p.status
    return p, after


def test_nothing_is_due_before_the_first_time_and_the_next_time_is_recorded():
    p, body = plan(schedule_body(), utc(2026, 3, 1, 2, 59, 0))
    assert p.create_probe is None and p.create_job is None
    assert body["status"]["nextScheduleTime"] == "2026-03-01T03:00:00Z" and p.requeue_after == 60


def test_a_due_time_checks_the_data_first_then_creates_the_job_named_after_the_time():
    due = utc(2026, 3, 1, 3, 0, 0)
    p, body = plan(schedule_body(), due + timedelta(seconds=1))
    assert p.create_probe == due and p.create_job is None, "no job before the data version is known"
    p, body = plan(body, due + timedelta(seconds=5), probes=[probe(body, due, "v1")])
    job = p.create_job
    assert job["metadata"]["name"] == job_name("nightly", due) == "nightly-1772334000"
    assert job["metadata"]["labels"] == {"team": "a", "kubetune.io/schedule-name": "nightly"}
    assert job["metadata"]["annotations"]["kubetune.io/data-version"] == "v1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == SCHED_UID and job["spec"] == MINIMAL_SPEC
    st = body["status"]
    assert st["lastScheduleTime"] == "2026-03-01T03:00:00Z" and st["lastOutcome"] == Reason.JOB_CREATED
    assert st["lastRun"]["name"] == job["metadata"]["name"] and st["active"] == [job["metadata"]["name"]]
    assert p.delete_probes == [probe_name("nightly", due)]
    # The same observation again (an operator restart before the job showed in the cache): the job of that
    # time exists, so the time is handled and nothing is created twice.
    restarted = copy.deepcopy(body)
    restarted["status"].pop("lastScheduleTime")  # ... or before its status was written
    again, _ = plan(restarted, due + timedelta(seconds=6), jobs=[job], probes=[probe(body, due, "v1")])
    assert again.create_job is None and again.create_probe is None
    # Its Event has the name of the one posted before the restart, if that was posted (AlreadyExists).
    names = {build_schedule_event(body, due, e, due)["metadata"]["name"] for e in p.events + again.events}
    assert len(names) == 1 and [e.reason for e in again.events] == [Reason.JOB_CREATED]


def test_time_zone_keeps_local_time_across_daylight_saving():
    body = schedule_body(zone="Europe/Berlin")
    # 03:00 in Berlin is 02:00 UTC before the switch on 2026-03-29, 01:00 UTC after it.
    assert plan(body, utc(2026, 3, 28, 2, 0, 1))[0].create_probe == utc(2026, 3, 28, 2, 0, 0)
    body["status"] = {"lastScheduleTime": "2026-03-28T02:00:00Z"}
    p, after = plan(body, utc(2026, 3, 28, 12, 0, 0))
    assert p.create_probe is None and after["status"]["nextScheduleTime"] == "2026-03-29T01:00:00Z"


def test_missed_times_collapse_into_the_latest():
    body = schedule_body(cron="*/10 * * * *", status={"lastScheduleTime": "2026-03-01T01:00:00Z"})
    p, _ = plan(body, utc(2026, 3, 1, 1, 47, 0))  # the operator was down for 01:10 .. 01:40
    assert p.create_probe == utc(2026, 3, 1, 1, 40, 0)


def test_unchanged_data_creates_no_job():
    due = utc(2026, 3, 2, 3, 0, 0)
    body = schedule_body(status={"lastScheduleTime": "2026-03-01T03:00:00Z"})
    old = scheduled_job(body, utc(2026, 3, 1, 3), phase="Succeeded", version="v1", adapter="s3://out/a/adapter/")
    p, after = plan(body, due + timedelta(seconds=3), jobs=[old], probes=[probe(body, due, "v1")])
    assert p.create_job is None and after["status"]["lastOutcome"] == Reason.DATA_UNCHANGED
    assert after["status"]["lastScheduleTime"] == "2026-03-02T03:00:00Z"
    assert "data version v1 is what nightly-1772334000 trained on" in after["status"]["message"]
    assert [e.reason for e in p.events] == [Reason.DATA_UNCHANGED]
    # Changed data the next night: a new job.
    p, _ = plan(after, due + timedelta(days=1, seconds=3), jobs=[old],
                probes=[probe(after, due + timedelta(days=1), "v2")])
    assert p.create_job is not None and p.create_job["metadata"]["annotations"]["kubetune.io/data-version"] == "v2"


def test_a_failed_probe_skips_the_time_and_says_why():
    due = utc(2026, 3, 1, 3)
    failed = probe(schedule_body(), due, phase="Failed",
                   message=json.dumps({"ok": False, "reason": "AccessDenied", "message": "S3 denied access to s3://data/"}))
    p, body = plan(schedule_body(), due + timedelta(seconds=3), probes=[failed])
    assert p.create_job is None and body["status"]["lastOutcome"] == Reason.DATA_CHECK_FAILED
    assert "AccessDenied" in body["status"]["message"] and "S3 denied access" in body["status"]["message"]
    assert p.events[0].type == "Warning"


@pytest.mark.parametrize("policy", ["Forbid", "Allow", "Replace"])
def test_concurrency_policies(policy):
    due = utc(2026, 3, 2, 3)
    body = schedule_body(concurrencyPolicy=policy, status={"lastScheduleTime": "2026-03-01T03:00:00Z"})
    running = scheduled_job(body, utc(2026, 3, 1, 3), version="v1")
    running["status"] = {"phase": "Running"}
    p, after = plan(body, due + timedelta(seconds=3), jobs=[running], probes=[probe(body, due, "v2")])
    if policy == "Forbid":
        assert p.create_job is None and p.create_probe is None
        assert after["status"]["lastOutcome"] == Reason.JOB_ALREADY_ACTIVE
    else:
        assert p.create_job["metadata"]["name"] == job_name("nightly", due)
        assert p.delete_jobs == ([running["metadata"]["name"]] if policy == "Replace" else [])
    # The running job's own data version is never started twice, whatever the policy.
    if policy != "Forbid":
        p, _ = plan(body, due + timedelta(seconds=3), jobs=[running], probes=[probe(body, due, "v1")])
        assert p.create_job is None


def test_history_limits_prune_the_oldest_finished_jobs_and_the_latest_passing_adapter_is_kept():
    body = schedule_body(successfulJobsHistoryLimit=2, failedJobsHistoryLimit=1,
                         status={"lastScheduleTime": "2026-03-06T03:00:00Z"})
    jobs = [scheduled_job(body, utc(2026, 3, d, 3), phase=phase, version=f"v{d}", passed=passed,
                          adapter=f"s3://out/nightly-{d}/adapter/")
            for d, phase, passed in ((1, "Succeeded", True), (2, "Succeeded", True), (3, "Failed", False),
                                     (4, "Succeeded", False), (5, "Failed", False), (6, "Succeeded", False))]
    p, after = plan(body, utc(2026, 3, 6, 12), jobs=jobs)
    names = [j["metadata"]["name"] for j in jobs]
    assert sorted(p.delete_jobs) == sorted([names[0], names[1], names[2]])
    st = after["status"]
    assert st["lastSuccessfulRun"]["name"] == names[5] and st["lastSuccessfulRun"]["dataVersion"] == "v6"
    assert st["lastPassingRun"]["name"] == names[1] and st["latestAdapter"] == "s3://out/nightly-2/adapter/"
    # Once the passing job is gone, the status still names it and its adapter.
    p, later = plan(after, utc(2026, 3, 6, 13), jobs=jobs[3:])
    assert later["status"]["latestAdapter"] == "s3://out/nightly-2/adapter/" and p.delete_jobs == []
    assert merge_patch(after["status"], later["status"]) == {}


def test_suspend_creates_nothing_and_an_invalid_schedule_names_the_field():
    p, body = plan(schedule_body(suspend=True), utc(2026, 3, 1, 3, 0, 5))
    assert p.create_probe is None and "suspended" in body["status"]["message"]
    p, body = plan(schedule_body(cron="0 25 * * *"), utc(2026, 3, 1, 3, 0, 5))
    assert p.create_probe is None
    cond = body["status"]["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", Reason.INVALID_SPEC)
    assert cond["message"].startswith("spec.schedule: '0 25 * * *' is not a cron expression")


def test_a_probe_slower_than_the_interval_is_waited_for_not_replaced():
    body = schedule_body(cron="* * * * * */2")  # every 2 seconds (croniter's seconds field, last)
    first = utc(2026, 3, 1, 0, 1, 0)
    running = probe(body, first, phase="Running")
    p, _ = plan(body, first + timedelta(seconds=5), probes=[running])
    assert p.create_probe is None and p.delete_probes == [], "the probe of 00:01:00 is still the one asked"
    p, after = plan(body, first + timedelta(seconds=6), probes=[probe(body, first, "v1")])
    assert p.create_job["metadata"]["name"] == job_name("nightly", first)
    assert after["status"]["lastScheduleTime"] == "2026-03-01T00:01:00Z"
    p, _ = plan(after, first + timedelta(seconds=6, milliseconds=100), probes=[probe(body, first, "v1")])
    assert p.create_probe == first + timedelta(seconds=6) and p.delete_probes == [probe_name("nightly", first)]


def test_a_template_a_cluster_cannot_run_is_refused_on_the_schedule():
    body = schedule_body()
    body["spec"]["jobTemplate"]["spec"]["dataset"]["train"]["uri"] = "./data/train.jsonl"
    p, after = plan(body, utc(2026, 3, 1, 3, 0, 5))
    assert p.create_probe is None and p.create_job is None
    cond = after["status"]["conditions"][0]
    assert cond["status"] == "False" and cond["message"].startswith("spec.jobTemplate.spec.dataset.train.uri: ")
