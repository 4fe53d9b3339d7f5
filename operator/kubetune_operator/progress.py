"""Progress transport: trainer pods POST ProgressEvents to the operator; the operator writes them to
status.progress at a bounded rate. See docs/progress.md for the design and its load.

    POST {KUBETUNE_PROGRESS_URL}/v1/progress/{namespace}/{name}
    Authorization: Bearer <HMAC-SHA256(key, "{namespace}/{name}/{uid}") in hex>
    <ProgressEvent JSON>

The trainer pod holds no API credentials: its token is good for its own job's progress and nothing else,
and a recreated job of the same name (a new uid) gets a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from kubetune_api import ProgressEvent
from kubetune_api.results import PROGRESS_PATH
from kubetune_api.status import Progress

from . import metrics

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
MAX_BODY = 16 * 1024  # a ProgressEvent is ~200 bytes


def progress_token(key: bytes, namespace: str, name: str, uid: str) -> str:
    return hmac.new(key, f"{namespace}/{name}/{uid}".encode(), hashlib.sha256).hexdigest()


def to_status(event: ProgressEvent, received: str) -> Progress:
    return Progress(
        step=event.step, total_steps=event.total_steps, percent=event.percent, epoch=event.epoch,
        loss=event.loss, learning_rate=event.learning_rate, eta_seconds=event.eta_seconds, stage=event.stage,
        last_updated=event.time or received,
    )


class ProgressStore:
    """The latest report per job, and when each job's progress last went into its status.

    Reports arrive as often as the trainer likes; `due` lets one through per job per `interval`."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval, self._clock = interval, clock
        self._latest: dict[Key, Progress] = {}
        self._written: dict[Key, float] = {}

    def put(self, key: Key, progress: Progress) -> float:
        """Keep the report; returns the seconds until it may be written."""
        self._latest[key] = progress
        return self.wait(key) or 0.0

    def wait(self, key: Key) -> float | None:
        """Seconds until the pending report may be written (0: now); None when nothing is pending."""
        if key not in self._latest:
            return None
        last = self._written.get(key)
        return 0.0 if last is None else max(0.0, last + self.interval - self._clock())

    def due(self, key: Key) -> Progress | None:
        """The pending report if it may be written now."""
        return self._latest.get(key) if self.wait(key) == 0.0 else None

    def written(self, key: Key, progress: Progress) -> None:
        """`progress` went into the status (or needed not to): it is no longer pending."""
        self._written[key] = self._clock()
        if self._latest.get(key) is progress:
            del self._latest[key]

    def forget(self, key: Key) -> None:
        self._latest.pop(key, None)
        self._written.pop(key, None)


def _reject(code: str, error: type[web.HTTPException], text: str, **kw: Any) -> web.HTTPException:
    metrics.PROGRESS_REPORTS.labels(code=code).inc()
    return error(text=text, **kw)


def progress_app(
    key: bytes, uid_of: Callable[[str, str], str | None], store: ProgressStore, on_report: Callable[[Key, float], None]
) -> web.Application:
    """The endpoint. `uid_of(namespace, name)` is the uid of a job the operator knows, else None;
    `on_report(key, seconds)` asks for the job's status to be written in `seconds`."""

    async def post(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            raise _reject("401", web.HTTPUnauthorized, "a Bearer token is required",
                          headers={"WWW-Authenticate": "Bearer"})
        uid = uid_of(namespace, name)
        if uid is None:
            raise _reject("404", web.HTTPNotFound, f"no FineTuneJob {namespace}/{name}")
        if not hmac.compare_digest(auth[len("Bearer "):].strip(), progress_token(key, namespace, name, uid)):
            raise _reject("403", web.HTTPForbidden, f"the token is not valid for FineTuneJob {namespace}/{name}")
        if (request.content_length or 0) > MAX_BODY:
            raise _reject("413", web.HTTPRequestEntityTooLarge, f"at most {MAX_BODY} bytes",
                          max_size=MAX_BODY, actual_size=request.content_length)
        body = await request.read()  # aiohttp answers 413 itself for longer chunked bodies
        try:
            event = ProgressEvent.model_validate_json(body)
        except ValidationError as err:
            raise _reject("400", web.HTTPBadRequest, f"not a ProgressEvent ({err.error_count()} errors)") from None
        received = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        k = (namespace, name)
        on_report(k, store.put(k, to_status(event, received)))
        metrics.PROGRESS_REPORTS.labels(code="202").inc()
        return web.json_response({"accepted": True}, status=202)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(PROGRESS_PATH, post)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    """Start serving on the running (kopf's) event loop; `await runner.cleanup()` stops it."""
    runner = web.AppRunner(app, access_log=None)  # per-report access lines would drown the log
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("progress endpoint listening on %s:%s", host, port)
    return runner
