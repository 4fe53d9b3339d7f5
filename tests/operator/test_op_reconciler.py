"""The reconciler's I/O discipline against a fake API server: nothing is sent when nothing changed, writes
are planned on fresh reads, children are created before the status is written and pods deleted after it,
AlreadyExists is success, and no Secret is ever read."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from opkit import SETTINGS, job_body, pod, running, terminated

from kubetune_operator.kube import ApiError
from kubetune_operator.progress import ProgressStore
from kubetune_operator.reconciler import Reconciler


class FakeKube:
    """Holds one job and its pods; records every call."""

    def __init__(self, job: dict, pods: list[dict] | None = None):
        self.job, self.pods = copy.deepcopy(job), {p["metadata"]["name"]: p for p in pods or []}
        self.calls: list[tuple[str, ...]] = []
        self.existing: set[tuple[str, str]] = set()  # (kind, name) that answer AlreadyExists
        self.conflicts = 0
        self.list_versions: list[str] = []
        self.events: dict[str, dict] = {}  # Event objects by name, as the API server keeps them

    async def get_job(self, ns, name):
        self.calls.append(("get_job", name))
        return copy.deepcopy(self.job)

    async def list_pods(self, ns, job_name, not_older_than="0"):
        self.calls.append(("list_pods", job_name))
        self.list_versions.append(not_older_than)
        return [copy.deepcopy(p) for p in self.pods.values()]

    async def create(self, obj):
        kind, name = obj["kind"], obj["metadata"]["name"]
        self.calls.append(("create", kind, name))
        if (kind, name) in self.existing:
            raise ApiError(409, "POST", name, "AlreadyExists", "exists")
        if kind == "Pod":
            self.pods[name] = obj
        return obj

    async def get(self, ns, plural, name):
        self.calls.append(("get", plural, name))
        return copy.deepcopy(self.pods.get(name)) if plural == "pods" else None

    async def patch(self, ns, kind, name, patch):
        self.calls.append(("patch", kind, name))
        return {}

    async def patch_job_status(self, ns, name, patch):
        self.calls.append(("patch_status", name))
        if self.conflicts:
            self.conflicts -= 1
            raise ApiError(409, "PATCH", name, "Conflict", "the object has been modified")
        assert patch["metadata"]["resourceVersion"] == self.job["metadata"]["resourceVersion"]
        self.job["status"] = {**(self.job.get("status") or {}), **patch["status"]}
        return copy.deepcopy(self.job)

    async def create_event(self, event):
        name = event["metadata"]["name"]
        if name in self.events:
            return False
        self.events[name] = event
        return True

    async def delete(self, ns, plural, name):
        self.calls.append(("delete", plural, name))
        self.pods.pop(name, None)
        return True


def reconcile(kube: FakeKube, cached_job: dict, cached_pods: list[dict]) -> tuple[Reconciler, list, Any]:
    before = set(kube.events)
    r = Reconciler(kube, SETTINGS, ProgressStore(10))

    async def run():
        r.jobs[("team-a", "demo")] = copy.deepcopy(cached_job)
        r.pods[("team-a", "demo")] = {p["metadata"]["name"]: copy.deepcopy(p) for p in cached_pods}
        return await r.reconcile(("team-a", "demo"))

    result = asyncio.run(run())
    events = [(e["type"], e["reason"]) for name, e in kube.events.items() if name not in before]
    return r, events, result


def settled(job: dict, pods: list[dict]) -> dict:
    """The job after the operator has written what it wanted for these pods."""
    kube = FakeKube(job, pods)
    reconcile(kube, job, pods)
    return kube.job


def test_new_job_creates_children_then_writes_status():
    kube = FakeKube(job_body())
    _, events, _ = reconcile(kube, job_body(), [])
    assert kube.calls == [
        ("get_job", "demo"), ("list_pods", "demo"),
        ("create", "ConfigMap", "demo-config"), ("create", "Secret", "demo-progress"), ("create", "Pod", "demo-1"),
        ("patch_status", "demo"),
    ]
    assert kube.job["status"]["attempts"] == 1 and ("Normal", "PodCreated") in events


def test_nothing_changed_means_no_request_at_all():
    job = settled(job_body(), [])
    pods = [running(job, 1)]
    job = settled(job, pods)
    kube = FakeKube(job, pods)
    _, events, _ = reconcile(kube, job, pods)
    assert kube.calls == [] and events == []


def test_already_existing_children_are_adopted_and_secrets_never_read():
    body = job_body()
    kube = FakeKube(body, [])
    kube.existing = {("ConfigMap", "demo-config"), ("Secret", "demo-progress")}
    pod = running(body, 1)
    kube.pods["demo-1"] = pod
    # The watch cache has not seen the pod yet: the fresh LIST has, so it is adopted, not recreated.
    reconcile(kube, body, [])
    assert ("create", "Pod", "demo-1") not in kube.calls
    assert kube.job["status"]["attempts"] == 1 and kube.job["status"]["phase"] == "Running"
    kube2 = FakeKube(body, [])
    kube2.existing = {("ConfigMap", "demo-config"), ("Secret", "demo-progress"), ("Pod", "demo-1")}
    kube2.pods["demo-1"] = pod
    kube2.list_pods = lambda ns, name, not_older_than="0": _empty()  # created between our LIST and our POST
    reconcile(kube2, body, [])
    assert ("patch", "ConfigMap", "demo-config") in kube2.calls and ("patch", "Secret", "demo-progress") in kube2.calls
    assert ("get", "pods", "demo-1") in kube2.calls and kube2.job["status"]["attempts"] == 1
    assert not [c for c in kube.calls + kube2.calls if c[0] == "get" and c[1] != "pods"]


def test_the_fresh_pod_list_is_no_older_than_what_the_watch_has_seen():
    """The fresh LIST is served from the API server's watch cache; with several API servers the one that
    answers may lag the one our watch uses, so the LIST names the newest pod version the watch delivered."""
    body = job_body()
    old_attempt, current = terminated(body, 1, 1), running(body, 2)
    old_attempt["metadata"]["resourceVersion"], current["metadata"]["resourceVersion"] = "97", "1204"
    stale = copy.deepcopy(body)
    stale["metadata"]["generation"] = 2  # so the pass reads afresh
    kube = FakeKube(body, [old_attempt, current])
    reconcile(kube, stale, [old_attempt, current])
    assert kube.list_versions == ["1204"]  # compared as numbers: "97" > "1204" as text
    kube = FakeKube(body, [])
    reconcile(kube, body, [])
    assert kube.list_versions == ["0"]  # nothing seen yet: any version


async def _empty():
    return []


def test_status_is_written_before_pods_are_deleted():
    body = job_body({**job_body()["spec"], "activeDeadlineSeconds": 1})
    job = settled(body, [])
    job["status"]["startTime"] = "2020-01-01T00:00:00Z"  # long past
    pods = [running(job, 1)]
    kube = FakeKube(job, pods)
    reconcile(kube, job, pods)
    writes = [c for c in kube.calls if c[0] in ("patch_status", "delete")]
    assert writes == [("patch_status", "demo"), ("delete", "pods", "demo-1")]
    assert kube.job["status"]["phase"] == "Failed"


def test_a_conflicting_edit_means_look_again():
    job = settled(job_body(), [])
    pods = [terminated(job, 1, 0, "Completed", "")]
    kube = FakeKube(job, pods)
    kube.conflicts = 1

    async def run():
        r = Reconciler(kube, SETTINGS, ProgressStore(10))
        r.jobs[("team-a", "demo")] = job
        r.pods[("team-a", "demo")] = {"demo-1": pods[0]}
        return await r._reconcile_logged(("team-a", "demo"))

    assert asyncio.run(run()) == 0.2
    assert kube.job["status"]["phase"] == "Pending"  # not written; the next pass writes it


def test_namespaces_outside_the_setting_are_ignored():
    from kubetune_operator.settings import Settings

    r = Reconciler(FakeKube(job_body()), Settings(namespaces=("team-b",)), ProgressStore(10))
    r.job_event("ADDED", job_body())  # namespace team-a
    assert r.jobs == {}


def test_a_standby_replica_keeps_its_cache_warm_but_acts_only_while_it_leads():
    kube = FakeKube(job_body())
    key = ("team-a", "demo")

    async def run():
        r = Reconciler(kube, SETTINGS, ProgressStore(10), active=False)
        r.job_event("ADDED", job_body())
        r.request(key, delay=0.01)
        await asyncio.sleep(0.05)
        assert kube.calls == [] and key in r.jobs and not r._timers and not r._tasks
        r.lead(True)  # taking over: every known job at once
        await asyncio.gather(*r._tasks.values())
        assert ("create", "Pod", "demo-1") in kube.calls and kube.job["status"]["attempts"] == 1
        r.request(key, delay=30)
        assert r._timers
        r.lead(False)  # stepping down: no timers, no new work
        assert not r._timers
        before = list(kube.calls)
        r.job_event("MODIFIED", kube.job)
        r.pod_event("MODIFIED", running(kube.job, 1))
        await asyncio.sleep(0.05)
        assert kube.calls == before and r.pods[key]

    asyncio.run(run())


def test_a_watch_event_that_arrives_during_the_fresh_read_is_not_lost():
    """A pod turning Running while the reconciler's LIST is in flight: the older LIST reply must not replace
    the newer event in the cache, or the job stays at Scheduled forever (seen at 200 jobs applied at once)."""
    job = settled(job_body(), [])
    pending, now_running = pod(job, 1), running(job, 1)
    kube = FakeKube(job, [pending])
    r = Reconciler(kube, SETTINGS, ProgressStore(10))
    key = ("team-a", "demo")
    original_list = kube.list_pods

    async def list_then_watch_event(ns, name, not_older_than="0"):
        reply = await original_list(ns, name, not_older_than)  # the server answers with the pod still Pending ...
        kube.pods["demo-1"] = copy.deepcopy(now_running)
        r.pod_event("MODIFIED", copy.deepcopy(now_running))  # ... and the watch delivers Running meanwhile
        return reply

    kube.list_pods = list_then_watch_event
    # The cache has an outdated job (generation bump) so the first pass reads afresh.
    stale = copy.deepcopy(job)
    stale["metadata"]["generation"] = 2

    async def run():
        r.jobs[key] = stale
        r.pods[key] = {"demo-1": copy.deepcopy(pending)}
        await r.reconcile(key)
        assert r.pods[key]["demo-1"]["status"]["phase"] == "Running", "the newer watch event was overwritten"
        kube.list_pods = original_list
        for _ in range(50):  # the pass the event requested runs on the event loop
            if kube.job["status"].get("phase") == "Running":
                break
            await asyncio.sleep(0.02)

    asyncio.run(run())
    assert kube.job["status"]["phase"] == "Running"


def test_events_of_a_transition_whose_status_patch_failed_are_posted_once():
    """Events go out before the status patch, under names derived from the transition: a 409 (or a crash)
    between the two plans the same transition again, and its Events answer AlreadyExists, so the user sees
    each exactly once and none is lost."""
    job = settled(job_body(), [])
    pods = [terminated(job, 1, 0, "Completed", "")]
    kube = FakeKube(job, pods)
    kube.conflicts = 1

    async def run():
        r = Reconciler(kube, SETTINGS, ProgressStore(10))
        r.jobs[("team-a", "demo")] = job
        r.pods[("team-a", "demo")] = {"demo-1": pods[0]}
        first = await r._reconcile_logged(("team-a", "demo"))
        return first, await r._reconcile_logged(("team-a", "demo"))

    assert asyncio.run(run())[0] == 0.2
    assert kube.job["status"]["phase"] == "Succeeded"
    completed = [e for e in kube.events.values() if e["reason"] == "Completed"]
    assert len(completed) == 1 and completed[0]["involvedObject"]["name"] == "demo"
    assert [c for c in kube.calls if c[0] == "patch_status"] == [("patch_status", "demo")] * 2


def test_a_pod_the_api_server_rejects_fails_the_job_with_its_message():
    kube = FakeKube(job_body())

    async def reject(obj):
        kube.calls.append(("create", obj["kind"], obj["metadata"]["name"]))
        if obj["kind"] == "Pod":
            raise ApiError(422, "POST", "pods", "Invalid", 'Pod "demo-1" is invalid: spec.affinity: Unsupported value')
        return obj

    kube.create = reject
    _, events, _ = reconcile(kube, job_body(), [])
    st = kube.job["status"]
    assert st["phase"] == "Failed" and st["attempts"] == 0
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PodRejected" and "spec.affinity: Unsupported value" in failed["message"]
    assert ("Warning", "PodRejected") in events and ("Normal", "PodCreated") not in events


def test_the_start_up_metric_counts_from_the_start_of_the_run():
    """A re-run after a spec change is measured from the change, not from the job's creation long ago."""
    from datetime import datetime, timedelta, timezone

    from kubetune_api.status import now_rfc3339
    from kubetune_operator import metrics

    now = datetime.now(timezone.utc)
    body = job_body()
    body["metadata"]["creationTimestamp"] = now_rfc3339(now - timedelta(hours=1))
    job = settled(body, [])
    edited = copy.deepcopy(job)
    edited["metadata"]["generation"] = 2
    edited["spec"]["training"] = {"epochs": 2}
    before = metrics.CREATION_TO_POD._sum.get()
    kube = FakeKube(edited, [])
    reconcile(kube, edited, [])  # the new run begins; the first run's pod is gone, so its pod is created
    assert ("create", "Pod", "demo-r2-1") in kube.calls
    assert metrics.CREATION_TO_POD._sum.get() - before < 60
