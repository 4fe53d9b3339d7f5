"""The reconcile loop: a keyed work queue in front of `plan()`, and the I/O that carries a plan out.

kopf delivers watch events for FineTuneJobs, their pods and runtimes; the handlers only file them here and
ask for the job to be reconciled. Each job has at most one reconcile running; requests arriving meanwhile
coalesce into one more pass. Time-driven steps (backoff, image-pull grace, deadline, TTL, progress flush)
are asyncio timers on the same loop, never sleeps.

A reconcile plans on the watch cache first, which is enough to see that nothing needs doing (the common
case: our own status patch coming back). Anything that writes is planned again on a fresh GET of the job
and LIST of its pods (from the API server's watch cache, no older than what our watch has seen), and the
status patch is conditional on the job's resourceVersion, so a stale cache or a concurrent edit can never
make the operator act twice.

With more than one replica, only the leader acts (`lead`, driven by leader.py): a standby files kopf's
events like the leader, so its caches are warm when it takes over, but it reconciles nothing and keeps no
timers.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from .builders import JOB_LABEL
from .children import Children, PodRefused, PodRejected, StaleChild
from .conditions import merge_patch
from .events import build_event
from .kube import Kube
from .plan import Observed, Plan, plan
from .progress import Key, ProgressStore
from .settings import Settings
from .workqueue import KeyedQueue

log = logging.getLogger(__name__)

# Reconciles that may talk to the API server at once: an operator restart with hundreds of jobs ramps up
# instead of bursting.
MAX_CONCURRENT_WRITES = 16


def newest_version(objects: Iterable[dict[str, Any]]) -> str:
    """The newest resourceVersion among `objects`, "0" (any) when there are none. resourceVersions are
    opaque by the API conventions, but every API server encodes them as etcd revisions, decimal integers,
    and compares them so itself; anything else falls back to "0"."""
    try:
        return str(max((int(o["metadata"].get("resourceVersion") or 0) for o in objects), default=0))
    except ValueError:
        return "0"


class Reconciler(KeyedQueue):
    resource = "FineTuneJob"
    expected = {StaleChild: "stale-child"}

    def __init__(self, kube: Kube, settings: Settings, store: ProgressStore, active: bool = True):
        super().__init__(active)
        self.kube, self.settings, self.store = kube, settings, store
        self.children = Children(kube, settings)
        self.jobs: dict[Key, dict[str, Any]] = {}  # latest body seen per job
        self.pods: dict[Key, dict[str, dict[str, Any]]] = {}  # pods per job, by name
        self.runtimes: dict[str, dict[str, Any]] = {}  # ClusterFineTuneRuntime specs by name
        self.nodes: dict[str, dict[str, Any]] = {}  # each node's Ready condition, by node name
        self._events: dict[Key, int] = {}  # watch events per job (its own and its pods'), see reconcile()
        self._cleaned: set[str] = set()  # uids whose children were removed after their TTL
        self._writes = asyncio.Semaphore(MAX_CONCURRENT_WRITES)

    # ------------------------------------------------------------------ inputs from kopf

    def _serves(self, namespace: str) -> bool:
        """KUBETUNE_NAMESPACES also holds when kopf was started by hand with other namespace flags."""
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def job_event(self, kind: str | None, body: dict[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if not self._serves(key[0]):
            return
        if kind == "DELETED":
            self.forget(key)
            return
        self.jobs[key] = copy.deepcopy(body)
        self._events[key] = self._events.get(key, 0) + 1
        self.request(key)

    def pod_event(self, kind: str | None, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], (meta.get("labels") or {}).get(JOB_LABEL, ""))
        if not self._serves(key[0]):
            return
        pods = self.pods.setdefault(key, {})
        if kind == "DELETED":
            pods.pop(meta["name"], None)
        else:
            pods[meta["name"]] = copy.deepcopy(pod)
        if key in self.jobs:
            self._events[key] = self._events.get(key, 0) + 1
            self.request(key)
        elif not pods:
            self.pods.pop(key, None)

    def runtime_event(self, kind: str | None, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        if kind == "DELETED":
            self.runtimes.pop(name, None)
        else:
            self.runtimes[name] = copy.deepcopy(body.get("spec") or {})
        for key, job in self.jobs.items():
            if (job.get("spec") or {}).get("runtimeRef") == name:
                self.request(key)

    def node_event(self, kind: str | None, body: dict[str, Any]) -> None:
        """A node's Ready condition; a change of its status wakes the jobs with a pod on that node."""
        name = body["metadata"]["name"]
        conditions = (body.get("status") or {}).get("conditions") or []
        ready = {} if kind == "DELETED" else next((c for c in conditions if c.get("type") == "Ready"), {})
        ready = {k: ready.get(k) for k in ("status", "reason", "message", "lastTransitionTime")} if ready else {}
        before = self.nodes.get(name)
        if kind == "DELETED":
            self.nodes.pop(name, None)
        else:
            self.nodes[name] = ready
        if (before or {}).get("status") == (ready or {}).get("status"):
            return
        for key, pods in self.pods.items():
            if key in self.jobs and any((p.get("spec") or {}).get("nodeName") == name for p in pods.values()):
                self.request(key)

    def uid_of(self, namespace: str, name: str) -> str | None:
        job = self.jobs.get((namespace, name))
        return job["metadata"].get("uid") if job else None

    def phases(self) -> list[str | None]:
        return [(job.get("status") or {}).get("phase") for job in list(self.jobs.values())]

    def forget(self, key: Key) -> None:
        self.jobs.pop(key, None)
        self.pods.pop(key, None)
        self.store.forget(key)
        self._events.pop(key, None)
        self.cancel(key)

    def known_keys(self) -> list[Key]:
        return list(self.jobs)

    # ------------------------------------------------------------------ one reconcile

    def _observe(self, body: dict[str, Any], pods: list[dict[str, Any]], key: Key) -> tuple[Observed, Any]:
        progress = self.store.due(key)
        ref = (body.get("spec") or {}).get("runtimeRef")
        runtime = self.runtimes.get(ref) if ref else None
        now = datetime.now(timezone.utc)
        on = {(p.get("spec") or {}).get("nodeName") for p in pods}
        nodes = {n: self.nodes[n] for n in on if n in self.nodes and self.nodes[n]}
        return Observed(body=body, pods=pods, now=now, progress=progress, runtime=runtime, nodes=nodes,
                        gpu_memory=self.settings.gpu_memory), progress

    def _writes_needed(self, body: dict[str, Any], p: Plan) -> bool:
        uid = body["metadata"].get("uid", "")
        return bool(
            p.create_attempt or p.delete or (p.cleanup and uid not in self._cleaned)
            or merge_patch(body.get("status") or {}, p.status)
        )

    def _next(self, key: Key, p: Plan) -> float | None:
        waits = [w for w in (p.requeue_after, self.store.wait(key)) if w is not None]
        return min(waits) if waits else None

    async def reconcile(self, key: Key) -> float | None:
        body = self.jobs.get(key)
        if body is None:
            return None
        obs, progress = self._observe(body, list(self.pods.get(key, {}).values()), key)
        p = plan(obs, self.settings.image_pull_grace)
        if not self._writes_needed(body, p):
            if progress is not None:
                self.store.written(key, progress)
            return self._next(key, p)
        async with self._writes:
            events = self._events.get(key, 0)
            fresh = await self.kube.get_job(*key)
            if fresh is None:
                self.forget(key)
                return None
            pods = await self.kube.list_pods(*key, not_older_than=newest_version(self.pods.get(key, {}).values()))
            # The reads replace the watch cache only if no watch event for this job arrived while they were
            # in flight: such an event (a pod turning Running) may be newer than the reads, and overwriting
            # it would leave the job stuck, since that event was already spent on requesting the next pass.
            if self._events.get(key, 0) == events:
                self.jobs[key] = fresh
                self.pods[key] = {pod["metadata"]["name"]: pod for pod in pods}
            obs, progress = self._observe(fresh, pods, key)
            p = plan(obs, self.settings.image_pull_grace)
            try:
                await self._execute(key, fresh, obs.now, p)
            except PodRejected as err:
                # Planned again with the refusal observed: the job fails, with the API server's words.
                p = plan(dataclasses.replace(obs, rejected=err.message), self.settings.image_pull_grace)
                await self._execute(key, fresh, obs.now, p)
            except PodRefused as err:
                p = plan(dataclasses.replace(obs, refused=err.message), self.settings.image_pull_grace)
                await self._execute(key, fresh, obs.now, p)
        if progress is not None:
            self.store.written(key, progress)
        return self._next(key, p)

    async def _execute(self, key: Key, body: dict[str, Any], now: datetime, p: Plan) -> None:
        """Create first (a restart adopts what exists), then record the status, then delete: the verdict
        is stored before the pods it was read from can disappear."""
        namespace, name = key
        if p.create_attempt is not None and p.job is not None:
            await self.children.create_attempt(body, now, p)
        patch = merge_patch(body.get("status") or {}, p.status)
        if patch:
            # Events first, under names derived from their transition (events.py): one that a crash or a 409
            # keeps from being recorded is planned and posted again, and a repeat answers AlreadyExists.
            for event in p.events:
                await self.kube.create_event(build_event(body, p.status, event, now))
            self.jobs[key] = await self.kube.patch_job_status(
                namespace, name, {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": patch}
            )
            for event in p.events:  # logged once recorded, whoever posted the Event
                log.info("FineTuneJob %s/%s: %s %s", namespace, name, event.reason, event.message)
        for pod in p.delete:
            await self.kube.delete(namespace, "pods", pod)
        uid = body["metadata"].get("uid", "")
        if p.cleanup and uid not in self._cleaned:
            await self.children.remove(namespace, name)
            self._cleaned.add(uid)
            log.info("FineTuneJob %s/%s: ttlSecondsAfterFinished passed; removed its pods and config", *key)
