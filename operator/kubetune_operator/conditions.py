"""Status bookkeeping as pure functions: reading a stored status, the Events a transition deserves, the
one-line summaries for `kubectl get`, and the merge patch between two statuses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from pydantic import ValidationError

from kubetune_api import ConditionType, FineTuneJobStatus, Reason
from kubetune_api.status import Condition, get_condition, is_true

NORMAL, WARNING = "Normal", "Warning"
# Reasons that tell a user something went wrong (Event type Warning).
WARNING_REASONS = frozenset({
    Reason.INVALID_SPEC, Reason.RUNTIME_NOT_FOUND, Reason.UNSCHEDULABLE, Reason.IMAGE_PULL_FAILED,
    Reason.DATA_INVALID, Reason.ACCESS_DENIED, Reason.NOT_FOUND, Reason.OOM_KILLED, Reason.PREEMPTED,
    Reason.DEADLINE_EXCEEDED, Reason.RETRIES_EXHAUSTED, Reason.TRAINER_ERROR, Reason.POD_DELETED,
    Reason.BACKOFF, Reason.GATE_FAILED, Reason.SECRET_NOT_FOUND, Reason.CONTAINER_CONFIG_ERROR, Reason.POD_REJECTED,
    Reason.NODE_NOT_READY, Reason.POD_CREATE_FAILED, Reason.INSUFFICIENT_GPU_MEMORY,
})
# Metrics worth a place in the one-line summary, in order of preference after the gate's metric.
SUMMARY_METRICS = ("evalLoss", "rougeL", "exactMatch", "perplexity", "bleu", "chrf", "rouge1", "rouge2")


class Event(NamedTuple):
    type: str
    reason: str
    message: str


def parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def read_status(raw: dict[str, Any] | None) -> FineTuneJobStatus:
    """The stored status, tolerating fields this version does not know (an older or newer operator)."""
    try:
        return FineTuneJobStatus.model_validate(raw or {})
    except ValidationError:
        known = {field.alias or name for name, field in FineTuneJobStatus.model_fields.items()}
        try:
            return FineTuneJobStatus.model_validate({k: v for k, v in (raw or {}).items() if k in known})
        except ValidationError:
            return FineTuneJobStatus()


def transition_events(old: list[Condition], new: list[Condition]) -> list[Event]:
    """One Event per condition whose status or reason changed; a reason shared by several conditions in
    one transition (Succeeded=True and Running=False, both Completed) is reported once."""
    changed = [
        c for c in new
        if (prev := get_condition(old, c.type)) is None or (prev.status, prev.reason) != (c.status, c.reason)
    ]
    changed.sort(key=lambda c: c.status != "True")  # stable: True conditions first
    events, seen = [], set()
    for c in changed:
        if c.reason in seen:
            continue
        seen.add(c.reason)
        warn = c.reason in WARNING_REASONS or (c.type == ConditionType.FAILED and c.status == "True")
        events.append(Event(WARNING if warn else NORMAL, c.reason, c.message or f"{c.type} is {c.status}"))
    return events


def headline(conditions: list[Condition]) -> str | None:
    """status.message: what a user most needs to read now."""
    for ctype in (ConditionType.FAILED, ConditionType.SUCCEEDED, ConditionType.SUSPENDED):
        if is_true(conditions, ctype):
            return get_condition(conditions, ctype).message  # type: ignore[union-attr]
    for ctype in (ConditionType.RUNNING, ConditionType.SCHEDULED, ConditionType.VALIDATED):
        cond = get_condition(conditions, ctype)
        if cond is not None:
            return cond.message
    return None


def eval_summary(metrics: dict[str, float], base: dict[str, float], first: str | None = None) -> str | None:
    """e.g. "rougeL=0.412 (+0.118) evalLoss=1.21 (-0.64)": up to three metrics with the gain over base."""
    order = ([first] if first else []) + [m for m in SUMMARY_METRICS if m != first]
    order += sorted(m for m in metrics if m not in order)
    parts = []
    for name in [m for m in order if m in metrics][:3]:
        text = f"{name}={metrics[name]:.3g}"
        if name in base:
            text += f" ({metrics[name] - base[name]:+.3g})"
        parts.append(text)
    return " ".join(parts) or None


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The RFC 7386 merge patch turning `old` into `new` (empty when nothing changed)."""
    patch: dict[str, Any] = {key: None for key in old.keys() - new.keys()}
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, dict) and isinstance(old[key], dict):
            sub = merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif old[key] != value:
            patch[key] = value
    return patch
