"""The progress endpoint: per-job tokens, its answers to bad requests, and the bounded write rate."""

from __future__ import annotations

import asyncio
import json

from aiohttp.test_utils import TestClient, TestServer

from kubetune_api.results import PROGRESS_PATH
from kubetune_operator.progress import MAX_BODY, ProgressStore, progress_app, progress_token

KEY = b"operator-key"
JOBS = {("team-a", "demo"): "uid-1", ("team-b", "other"): "uid-2"}
EVENT = {"event": "progress", "stage": "training", "step": 5, "totalSteps": 20, "loss": 2.5}


def token(ns: str, name: str) -> str:
    return progress_token(KEY, ns, name, JOBS[(ns, name)])


def post_all(requests: list[tuple[str, str, dict | bytes, dict]]) -> tuple[list[int], ProgressStore, list]:
    """Send (namespace, name, body, headers) requests to a fresh endpoint; return their statuses."""
    store, woken = ProgressStore(interval=10), []

    async def run() -> list[int]:
        app = progress_app(KEY, lambda ns, n: JOBS.get((ns, n)), store, lambda k, s: woken.append((k, s)))
        async with TestClient(TestServer(app)) as client:
            codes = []
            for ns, name, body, headers in requests:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                resp = await client.post(PROGRESS_PATH.format(namespace=ns, name=name), data=data, headers=headers)
                codes.append(resp.status)
            return codes

    return asyncio.run(run()), store, woken


def bearer(value: str) -> dict:
    return {"Authorization": f"Bearer {value}", "Content-Type": "application/json"}


def test_token_binds_namespace_name_and_uid():
    t = progress_token(KEY, "team-a", "demo", "uid-1")
    assert len(t) == 64 and t == progress_token(KEY, "team-a", "demo", "uid-1")
    assert t != progress_token(KEY, "team-a", "demo", "uid-9")  # a recreated job gets a new token
    assert t != progress_token(KEY, "team-b", "demo", "uid-1")
    assert t != progress_token(b"another-key", "team-a", "demo", "uid-1")


def test_a_report_with_the_jobs_token_is_accepted_and_stored():
    codes, store, woken = post_all([("team-a", "demo", EVENT, bearer(token("team-a", "demo")))])
    assert codes == [202]
    progress = store.due(("team-a", "demo"))
    assert progress.step == 5 and progress.percent == 25 and progress.loss == 2.5 and progress.last_updated
    assert woken == [(("team-a", "demo"), 0.0)]


def test_bad_requests_are_refused():
    good = token("team-a", "demo")
    codes, store, woken = post_all([
        ("team-a", "demo", EVENT, {"Content-Type": "application/json"}),  # no token
        ("team-a", "demo", EVENT, bearer("0" * 64)),  # wrong token
        ("team-a", "demo", EVENT, bearer(token("team-b", "other"))),  # another job's token
        ("team-a", "gone", EVENT, bearer(good)),  # unknown job
        ("team-a", "demo", b"x" * (MAX_BODY + 1), bearer(good)),  # oversized
        ("team-a", "demo", {"stage": "training", "step": "many"}, bearer(good)),  # not a ProgressEvent
    ])
    assert codes == [401, 403, 403, 404, 413, 400]
    assert store.due(("team-a", "demo")) is None and woken == []


def test_the_store_lets_one_write_per_interval_through():
    now = [100.0]
    store = ProgressStore(interval=10, clock=lambda: now[0])
    key = ("team-a", "demo")
    assert store.wait(key) is None  # nothing pending
    first = object()
    assert store.put(key, first) == 0.0 and store.due(key) is first
    store.written(key, first)
    assert store.due(key) is None and store.wait(key) is None
    now[0] = 103.0
    second, third = object(), object()
    assert store.put(key, second) == 7.0 and store.due(key) is None
    store.put(key, third)  # only the latest is kept
    now[0] = 110.0
    assert store.due(key) is third
    store.written(key, third)
    store.forget(key)
    assert store.wait(key) is None
