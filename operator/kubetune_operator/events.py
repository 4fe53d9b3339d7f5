"""Events on FineTuneJobs, posted by the operator itself (not kopf.event: kopf's event queue is a context
variable set only inside kopf's handlers, so an Event from a timer or a progress report raised LookupError
after the status was written, and was lost).

An Event is posted before the status patch that records its transition, under a name derived from the job's
uid and the transition (generation, run, attempt, retries, type, reason). A crash or a 409 between the two
re-plans the same transition, whose Event then answers AlreadyExists: each transition is posted once, and
none is lost."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from kubetune_api import API_VERSION, KIND
from kubetune_api.status import now_rfc3339

from .conditions import Event

COMPONENT = "kubetune-operator"
MESSAGE_LIMIT = 1024


def event_name(body: dict[str, Any], status: dict[str, Any], event: Event) -> str:
    """`<job>.<16 hex>`: the same for the same transition of the same job, whenever it is planned."""
    meta = body["metadata"]
    key = "/".join(str(x) for x in (
        meta.get("uid"), meta.get("generation"), status.get("run"), status.get("attempts"), status.get("retries"),
        event.type, event.reason,
    ))
    return f"{meta['name']}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def build_event(body: dict[str, Any], status: dict[str, Any], event: Event, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about the job `body` whose planned status is `status`."""
    meta, stamp = body["metadata"], now_rfc3339(now)
    message = event.message if len(event.message) <= MESSAGE_LIMIT else event.message[: MESSAGE_LIMIT - 3] + "..."
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(body, status, event), "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION, "kind": KIND, "name": meta["name"], "namespace": meta["namespace"],
            "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": message,
        "count": 1,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,  # core/v1 applies no further validation to it
    }
