"""A keyed work queue on the event loop, shared by the FineTuneJob and FineTuneSchedule reconcilers.

Each key has at most one reconcile running; requests arriving meanwhile coalesce into one more pass.
Time-driven steps are asyncio timers on the same loop (an earlier pending request wins), never sleeps.
Errors are logged with their cause, counted, and retried with exponential backoff; a conflicting edit
(HTTP 409) is looked at again at once. Only the leader works (`lead`): a standby ignores requests.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from . import metrics
from .kube import ApiError

log = logging.getLogger(__name__)
Key = tuple[str, str]
MAX_ERROR_BACKOFF = 60.0


class KeyedQueue:
    resource = "object"  # what a key names, in log lines
    # Errors that are expected now and then: their metric label; their message is logged without a traceback.
    expected: dict[type[Exception], str] = {}

    def __init__(self, active: bool = True):
        self.active = active  # False on a standby replica (leader.py)
        self._timers: dict[Key, tuple[float, asyncio.TimerHandle]] = {}
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._again: set[Key] = set()
        self._errors: dict[Key, int] = {}

    async def reconcile(self, key: Key) -> float | None:
        """One pass for `key`; returns when to look again (seconds), or None."""
        raise NotImplementedError

    def known_keys(self) -> list[Key]:
        """Every key to reconcile when this replica takes over."""
        raise NotImplementedError

    def lead(self, active: bool) -> None:
        """Leader election's verdict. Taking over: every known key is reconciled at once (plans work from
        observed state, so nothing the old leader did is lost). Stepping down: timers are dropped and no new
        reconcile starts; one already running finishes its writes, which stay safe (fresh reads, conditional
        status patch), well inside the lease's renew deadline."""
        self.active = active
        if active:
            for key in self.known_keys():
                self.request(key)
            return
        for _, timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._again.clear()

    def request(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile `key` now, or after `delay` seconds (an earlier pending request wins)."""
        if not self.active:
            return
        if delay <= 0:
            self._kick(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        pending = self._timers.get(key)
        if pending and pending[0] <= when:
            return
        if pending:
            pending[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def cancel(self, key: Key) -> None:
        """Forget `key`'s pending timer and error count (the object is gone)."""
        self._errors.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer:
            timer[1].cancel()

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self._kick(key)

    def _kick(self, key: Key) -> None:
        if not self.active:
            return
        if key in self._tasks:
            self._again.add(key)
        else:
            self._tasks[key] = asyncio.get_running_loop().create_task(self._work(key))

    async def _work(self, key: Key) -> None:
        try:
            while True:
                self._again.discard(key)
                delay = await self._reconcile_logged(key)
                if delay is not None:
                    self.request(key, delay)
                if key not in self._again:
                    return
        finally:
            self._tasks.pop(key, None)

    async def stop(self) -> None:
        for _, timer in self._timers.values():
            timer.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _reconcile_logged(self, key: Key) -> float | None:
        try:
            delay = await self.reconcile(key)
        except Exception as err:
            label = next((v for k, v in self.expected.items() if isinstance(err, k)), None)
            if label is not None:
                kind, detail = label, getattr(err, "message", str(err))
            elif isinstance(err, ApiError) and err.conflict:
                log.info("%s %s/%s changed while it was reconciled; looking again", self.resource, *key)
                return 0.2
            elif isinstance(err, ApiError):
                kind, detail = "api", str(err)
            elif isinstance(err, (aiohttp.ClientError, asyncio.TimeoutError)):
                kind, detail = "connection", f"{type(err).__name__}: {err}"
            else:  # a bug: keep the traceback, keep the other keys going, retry this one
                log.exception("reconciling %s %s/%s failed", self.resource, *key)
                kind, detail = "bug", ""
        else:
            self._errors.pop(key, None)
            return delay
        metrics.RECONCILE_ERRORS.labels(kind=kind).inc()
        count = self._errors[key] = self._errors.get(key, 0) + 1
        backoff = min(MAX_ERROR_BACKOFF, 0.5 * 2**count)
        if detail:
            log.warning("reconciling %s %s/%s: %s; retrying in %.1fs", self.resource, *key, detail, backoff)
        return backoff
