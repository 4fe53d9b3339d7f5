"""The FineTuneSchedule loop: a keyed work queue in front of `plan_schedule()`, and the I/O that carries a
plan out. Built like reconciler.py for jobs: kopf's watch handlers file schedules, the FineTuneJobs they
created (by the schedule label) and their probe pods here; a reconcile plans on that cache, and anything
that writes is planned again on fresh reads, with a status patch conditional on the resourceVersion. The
next scheduled time is an asyncio timer, never a sleep. Only the leader acts (leader.py)."""

from __future__ import annotations

import copy
import logging
from datetime import datetime, timezone
from typing import Any

from .conditions import merge_patch
from .kube import ApiError, Kube
from .schedule_builders import SCHEDULE_LABEL, build_probe_pod, build_schedule_event
from .schedule_plan import ScheduleObserved, SchedulePlan, plan_schedule
from .settings import Settings
from .workqueue import Key, KeyedQueue

log = logging.getLogger(__name__)


class ScheduleReconciler(KeyedQueue):
    resource = "FineTuneSchedule"

    def __init__(self, kube: Kube, settings: Settings, active: bool = True):
        super().__init__(active)
        self.kube, self.settings = kube, settings
        self.schedules: dict[Key, dict[str, Any]] = {}
        self.jobs: dict[Key, dict[str, dict[str, Any]]] = {}  # per schedule, by name
        self.probes: dict[Key, dict[str, dict[str, Any]]] = {}

    # ------------------------------------------------------------------ inputs from kopf

    def _serves(self, namespace: str) -> bool:
        return not self.settings.namespaces or namespace in self.settings.namespaces

    def schedule_event(self, kind: str | None, body: dict[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        if not self._serves(key[0]):
            return
        if kind == "DELETED":
            self.schedules.pop(key, None)
            self.cancel(key)
            return
        self.schedules[key] = copy.deepcopy(body)
        self.request(key)

    def child_event(self, kind: str | None, obj: dict[str, Any], probe: bool = False) -> None:
        """A FineTuneJob (or, with `probe`, a data-version probe pod) carrying the schedule label."""
        meta = obj["metadata"]
        key = (meta["namespace"], (meta.get("labels") or {}).get(SCHEDULE_LABEL, ""))
        if not self._serves(key[0]):
            return
        cache = self.probes if probe else self.jobs
        children = cache.setdefault(key, {})
        if kind == "DELETED":
            children.pop(meta["name"], None)
        else:
            children[meta["name"]] = copy.deepcopy(obj)
        if key in self.schedules:
            self.request(key)

    def known_keys(self) -> list[Key]:
        return list(self.schedules)

    # ------------------------------------------------------------------ one reconcile

    def _observe(self, key: Key, body: dict[str, Any], jobs=None, probes=None) -> ScheduleObserved:
        return ScheduleObserved(
            body=body, now=datetime.now(timezone.utc),
            jobs=list(jobs if jobs is not None else self.jobs.get(key, {}).values()),
            probes=list(probes if probes is not None else self.probes.get(key, {}).values()),
        )

    @staticmethod
    def _writes_needed(body: dict[str, Any], p: SchedulePlan) -> bool:
        return bool(p.create_job or p.create_probe or p.delete_jobs or p.delete_probes
                    or merge_patch(body.get("status") or {}, p.status))

    async def reconcile(self, key: Key) -> float | None:
        body = self.schedules.get(key)
        if body is None:
            return None
        p = plan_schedule(self._observe(key, body))
        if not self._writes_needed(body, p):
            return p.requeue_after
        fresh = await self.kube.get_schedule(*key)
        if fresh is None:
            self.schedules.pop(key, None)
            return None
        selector = f"{SCHEDULE_LABEL}={key[1]}"
        jobs = await self.kube.list_jobs(key[0], selector)
        probes = await self.kube.list_pods_by(key[0], selector)
        obs = self._observe(key, fresh, jobs, probes)
        p = plan_schedule(obs)
        await self._execute(key, fresh, obs.now, p)
        return p.requeue_after

    async def _execute(self, key: Key, body: dict[str, Any], now: datetime, p: SchedulePlan) -> None:
        """Replaced jobs go first, then the new job or probe (AlreadyExists: made before a restart), then
        the Events and the status, then the probes and pruned jobs the status no longer needs."""
        namespace, name = key
        deleted = set()
        if p.create_job is not None:
            for job in p.delete_jobs:  # concurrencyPolicy Replace
                await self.kube.delete_job(namespace, job)
                deleted.add(job)
            await self._create(self.kube.create_job, p.create_job)
        if p.create_probe is not None:
            await self._create(self.kube.create, build_probe_pod(body, p.create_probe, self.settings))
        # Events before the status that records them (a repeat after a crash answers AlreadyExists).
        for event in p.events:
            try:
                if await self.kube.create_event(build_schedule_event(body, p.due, event, now)):
                    log.info("FineTuneSchedule %s/%s: %s %s", namespace, name, event.reason, event.message)
            except ApiError as err:  # an Event is worth a log line, never a missed schedule
                log.warning("FineTuneSchedule %s/%s: cannot post an Event: %s", namespace, name, err)
        patch = merge_patch(body.get("status") or {}, p.status)
        if patch:
            self.schedules[key] = await self.kube.patch_schedule_status(
                namespace, name, {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
                                  "status": patch})
        for pod in p.delete_probes:
            await self.kube.delete(namespace, "pods", pod)
        for job in p.delete_jobs:
            if job not in deleted:
                await self.kube.delete_job(namespace, job)

    @staticmethod
    async def _create(create, obj: dict[str, Any]) -> None:
        try:
            await create(obj)
        except ApiError as err:
            if err.reason != "AlreadyExists":
                raise
