"""Leader election against a fake Lease API with the API server's optimistic concurrency (resourceVersion)
and a fake clock: one leader at a time, a standby takes over only after the lease went silent for its
duration, a shutdown hands over at once, and a leader that cannot renew stops acting before anyone may
take over. tests/chart/test_operator_k8s.py runs two real operator processes."""

from __future__ import annotations

import asyncio
import copy
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import pytest

from kubetune_operator.kube import ApiError
from kubetune_operator.leader import LeaderElection

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


class FakeLeases:
    """One Lease, stored like the API server does: a PUT must carry the current resourceVersion."""

    def __init__(self):
        self.lease: dict | None = None
        self.version = 0
        self.down = False
        self.writes: list[str] = []  # holderIdentity of every write

    def _check(self):
        if self.down:
            raise aiohttp.ClientConnectionError("connection refused")

    def _store(self, lease: dict) -> dict:
        self.version += 1
        self.lease = copy.deepcopy(lease)
        self.lease["metadata"]["resourceVersion"] = str(self.version)
        self.writes.append(self.lease["spec"].get("holderIdentity", ""))
        return copy.deepcopy(self.lease)

    async def get_lease(self, namespace, name):
        self._check()
        lease = copy.deepcopy(self.lease)
        await asyncio.sleep(0)  # a real request yields: two replicas may read the same version
        return lease

    async def create_lease(self, lease):
        self._check()
        if self.lease is not None:
            raise ApiError(409, "POST", "leases", "AlreadyExists", "exists")
        return self._store(lease)

    async def replace_lease(self, lease):
        self._check()
        if lease["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "PUT", "leases", "Conflict", "the object has been modified")
        return self._store(lease)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return T0 + timedelta(seconds=self.now)


def replica(api: FakeLeases, clock: Clock, name: str, changes: list) -> LeaderElection:
    return LeaderElection(api, "kubetune-system", "kt-kubetune", name, lambda v: changes.append((name, v)),
                          lease_seconds=15, clock=clock, wall=clock.wall)


def step(election: LeaderElection) -> bool:
    return asyncio.run(election.step())


def test_one_leader_renews_while_the_standby_waits():
    api, clock, changes = FakeLeases(), Clock(), []
    a, b = replica(api, clock, "a", changes), replica(api, clock, "b", changes)
    assert step(a) and not step(b)
    assert changes == [("a", True)]
    spec = api.lease["spec"]
    assert spec["holderIdentity"] == "a" and spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"] == "2026-01-01T12:00:00.000000Z"
    for _ in range(20):  # a minute of renewals every 2 s: b never takes over
        clock.now += a.retry_period
        assert step(a) and not step(b)
    assert api.lease["spec"]["acquireTime"] == "2026-01-01T12:00:00.000000Z"
    assert api.lease["spec"]["renewTime"] > api.lease["spec"]["acquireTime"]
    assert set(api.writes) == {"a"} and changes == [("a", True)]


def test_the_standby_takes_over_only_after_the_lease_went_silent_for_its_duration():
    api, clock, changes = FakeLeases(), Clock(), []
    a, b = replica(api, clock, "a", changes), replica(api, clock, "b", changes)
    step(a)
    clock.now = 1
    assert not step(b)  # b sees the lease first at t=1: it waits 15 s from then, on its own clock
    clock.now = 15.9
    assert not step(b)
    clock.now = 16
    assert step(b)
    spec = api.lease["spec"]
    assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
    assert spec["acquireTime"] == "2026-01-01T12:00:16.000000Z"
    # The old leader, back from a pause, sees the new holder and steps down.
    assert not step(a)
    assert changes == [("a", True), ("b", True), ("a", False)]


def test_a_shutdown_hands_over_at_once():
    api, clock, changes = FakeLeases(), Clock(), []
    a, b = replica(api, clock, "a", changes), replica(api, clock, "b", changes)
    step(a)
    step(b)
    asyncio.run(a.release())
    assert not a.leading and "holderIdentity" not in api.lease["spec"]
    clock.now = 0.1
    assert step(b) and api.lease["spec"]["leaseTransitions"] == 1
    assert changes == [("a", True), ("a", False), ("b", True)]


def test_a_leader_that_cannot_renew_steps_down_before_anyone_may_take_over():
    api, clock, changes = FakeLeases(), Clock(), []
    a = replica(api, clock, "a", changes)
    step(a)
    api.down = True
    clock.now = 9.9
    assert step(a)  # within the renew deadline (10 s): still leading
    clock.now = 10
    assert not step(a) and changes == [("a", True), ("a", False)]
    assert a.renew_deadline < a.lease_seconds  # stopped before a standby could take over (15 s)
    api.down = False
    clock.now = 11
    assert step(a)  # the lease is still its own: it leads again
    assert api.lease["spec"]["leaseTransitions"] == 0


def test_a_renewal_that_hangs_cannot_outlast_the_renew_deadline():
    api, changes = FakeLeases(), []
    a = LeaderElection(api, "ns", "l", "a", changes.append, lease_seconds=1)

    async def hang(*_):
        await asyncio.sleep(3600)

    async def run():
        assert await a.step()
        api.replace_lease = hang
        t0 = time.monotonic()
        assert not await a.step()
        return time.monotonic() - t0

    assert asyncio.run(run()) < a.renew_deadline + 0.2 < a.lease_seconds
    assert changes == [True, False]


def test_two_standbys_racing_for_an_expired_lease_get_one_winner():
    api, clock, changes = FakeLeases(), Clock(), []
    a, b, c = (replica(api, clock, n, changes) for n in "abc")
    step(a)
    step(b)
    step(c)
    clock.now = 20
    lease = copy.deepcopy(api.lease)

    async def race():
        # Both read the same expired lease before either writes.
        b._seen = c._seen = (lease["metadata"]["resourceVersion"], 0.0)
        return await asyncio.gather(b.step(), c.step())

    assert sorted(asyncio.run(race())) == [False, True]
    assert api.lease["spec"]["leaseTransitions"] == 1


def test_an_api_error_other_than_a_conflict_is_logged_once(caplog):
    api, clock, changes = FakeLeases(), Clock(), []
    b = replica(api, clock, "b", changes)

    async def forbidden(*_):
        raise ApiError(403, "GET", "leases", "Forbidden", "leases is forbidden")

    api.get_lease = forbidden
    for _ in range(3):
        assert not step(b)
    warnings = [r for r in caplog.records if "leader election" in r.getMessage()]
    assert len(warnings) == 1 and "403 Forbidden" in warnings[0].getMessage()


@pytest.mark.parametrize("seconds,deadline,retry", [(15, 10, 2), (3, 2, 0.4)])
def test_timing_keeps_client_go_ratios(seconds, deadline, retry):
    e = LeaderElection(FakeLeases(), "ns", "l", "a", lambda v: None, lease_seconds=seconds)
    assert (e.lease_seconds, e.renew_deadline, e.retry_period) == pytest.approx((seconds, deadline, retry))
