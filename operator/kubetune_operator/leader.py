"""Leader election between operator replicas: a coordination.k8s.io/v1 Lease, held the way client-go's
leaderelection package holds one (same fields, same timing rules), so `kubectl get lease` shows who leads.

Every replica runs kopf standalone and keeps its watch caches warm; only the replica holding the Lease lets
its reconciler act (`Reconciler.lead`). kopf's peering cannot do this job: replicas of one Deployment share a
priority, and kopf pauses *every* operator of an equal priority; and while kopf pauses its watch streams,
the reconciler's own timers and the progress endpoint would go on writing.

Safety rests on time, as in client-go: a standby takes the Lease only once it has seen no change to it for
the lease duration (measured on its own clock, so clock skew between nodes does not matter), and a leader
that could not renew for `renew_deadline` (shorter than the lease duration) stops acting before that.
Should two ever act at once anyway, the reconciler's writes stay safe (docs/operator.md, restart safety).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

import aiohttp

from .kube import ApiError, Kube

log = logging.getLogger(__name__)


def micro_time(when: datetime) -> str:
    """A MicroTime as the API server writes it."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LeaderElection:
    """`await run()` forever; `on_change(True/False)` is called whenever this replica starts or stops leading."""

    def __init__(
        self, kube: Kube, namespace: str, name: str, identity: str, on_change: Callable[[bool], None],
        lease_seconds: float = 15.0, clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = _utcnow,
    ):
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.on_change, self.clock, self.wall = on_change, clock, wall
        self.lease_seconds = max(1, round(lease_seconds))
        # client-go's defaults are 15 s lease, 10 s renew deadline, 2 s retry; other durations keep the ratios.
        self.renew_deadline = self.lease_seconds * 2 / 3
        self.retry_period = self.lease_seconds / 7.5
        self.leading = False
        self._seen = ("", 0.0)  # the lease's resourceVersion as last seen, and when it was first seen
        self._renewed = 0.0
        self._last_error = ""

    async def run(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(self.retry_period)

    async def step(self) -> bool:
        """One try to acquire or renew; returns whether this replica leads now."""
        # A leader must know by its renew deadline whether it renewed: a request may not outlast that.
        budget = self.renew_deadline - (self.clock() - self._renewed) if self.leading else self.renew_deadline
        try:
            held: bool | None = await asyncio.wait_for(self._acquire_or_renew(), max(budget, 0.1))
            self._last_error = ""
        except (ApiError, aiohttp.ClientError, asyncio.TimeoutError) as err:
            text = f"{type(err).__name__}: {err}"
            if text != self._last_error:  # once per distinct error, not every retry period
                log.warning("leader election on Lease %s/%s: %s", self.namespace, self.name, text)
                self._last_error = text
            held = None  # unknown: a leader keeps acting until its renew deadline
        if held:
            self._renewed = self.clock()
            self._set(True)
        elif held is False or self.clock() - self._renewed >= self.renew_deadline:
            self._set(False)
        return self.leading

    async def release(self) -> None:
        """Stop leading and give the Lease up (on shutdown), so a standby takes over at once rather than
        after the lease expires."""
        if not self.leading:
            return
        self._set(False)
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            spec = (lease or {}).get("spec") or {}
            if lease is not None and spec.get("holderIdentity") == self.identity:
                stamp = micro_time(self.wall())
                lease["spec"] = {"leaseDurationSeconds": 1, "acquireTime": stamp, "renewTime": stamp,
                                 "leaseTransitions": spec.get("leaseTransitions") or 0}
                await self.kube.replace_lease(lease)
        except (ApiError, aiohttp.ClientError, asyncio.TimeoutError) as err:
            log.warning("could not release Lease %s/%s (a standby takes over once it expires): %s",
                        self.namespace, self.name, err)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info("%s Lease %s/%s as %s: this replica %s", "acquired" if leading else "lost", self.namespace,
                     self.name, self.identity, "acts now" if leading else "is on standby")
            self.on_change(leading)

    async def _acquire_or_renew(self) -> bool:
        """True if this replica holds the Lease now; False if another one does (or got there first)."""
        lease = await self.kube.get_lease(self.namespace, self.name)
        now = self.wall()
        if lease is None:
            return await self._write(self.kube.create_lease, self._record(None, now))
        spec = lease.get("spec") or {}
        version = lease["metadata"].get("resourceVersion", "")
        if version != self._seen[0]:
            self._seen = (version, self.clock())
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            duration = spec.get("leaseDurationSeconds") or self.lease_seconds
            if self.clock() - self._seen[1] < duration:
                return False  # another replica holds it and renewed it lately
        return await self._write(self.kube.replace_lease, self._record(lease, now))

    @staticmethod
    async def _write(send: Callable[[dict], Awaitable[Any]], lease: dict) -> bool:
        try:
            await send(lease)
        except ApiError as err:
            if err.conflict:  # AlreadyExists, or written since we read it: another replica got there first
                return False
            raise
        return True

    def _record(self, lease: dict | None, now: datetime) -> dict:
        spec = (lease or {}).get("spec") or {}
        ours = lease is not None and spec.get("holderIdentity") == self.identity
        stamp = micro_time(now)
        transitions = spec.get("leaseTransitions") or 0
        body = lease or {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": self.name, "namespace": self.namespace}}
        return {**body, "spec": {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_seconds,
            "acquireTime": spec.get("acquireTime") if ours and spec.get("acquireTime") else stamp,
            "renewTime": stamp,
            "leaseTransitions": transitions if ours or lease is None else transitions + 1,
        }}
