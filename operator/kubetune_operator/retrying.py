"""What follows an attempt that ended in failure, as a pure verdict: the next attempt at once when a
disruption ended it (no retry used), the job's failure when the cause is permanent or
failurePolicy.maxRetries is used up, else a retry after exponential backoff. plan.py applies it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from kubetune_api import ConditionType as C
from kubetune_api import Reason
from kubetune_api.spec import FailurePolicy

from .conditions import Event


@dataclass
class AfterFailure:
    retries: int  # retries used, this one included
    next_attempt: datetime | None = None  # when the next attempt may start; the failure is accounted for
    start_now: str | None = None  # a disruption: start the next attempt now; why (the Running message's tail)
    fail: tuple[str, str] | None = None  # (reason, message): the job fails for good
    conditions: list[tuple[str, bool | str, str, str]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


def after_failure(policy: FailurePolicy, attempt: int, retries: int, reason: str, retryable: bool, message: str,
                  now: datetime, since: datetime | None = None) -> AfterFailure:
    """`attempt` failed with `reason` (`since`: when its pod ended, the start of the backoff; else now)."""
    what = f"attempt {attempt} failed with {reason}: {message}"
    if reason == Reason.PREEMPTED:
        # A disruption (eviction, drain, preemption, a pod deleted by someone else) is not the trainer's
        # failure: like a Job's podFailurePolicy Ignore for DisruptionTarget, it uses no retry. The
        # trainer checkpointed on SIGTERM, and the next attempt resumes there. nextAttemptTime marks it
        # as accounted for, should the pod creation wait.
        return AfterFailure(retries, next_attempt=now, start_now=f" (attempt {attempt} was disrupted: {message})",
                            events=[Event("Warning", reason, f"attempt {attempt} was disrupted ({message}); "
                                                             "starting the next attempt, no retry used")])
    if not retryable:
        out = AfterFailure(retries, fail=(reason, what))
        if reason == Reason.INSUFFICIENT_GPU_MEMORY:  # the trainer's own check, from config.json
            out.conditions.append((C.FITS, False, reason, message))
        return out
    if retries >= policy.max_retries:
        return AfterFailure(retries, fail=(Reason.RETRIES_EXHAUSTED,
                                           f"{what}; failurePolicy.maxRetries ({policy.max_retries}) used up"))
    retries += 1
    delay = policy.backoff_seconds * 2 ** (retries - 1)
    return AfterFailure(
        retries, next_attempt=(since or now) + timedelta(seconds=delay),
        conditions=[(C.RUNNING, False, Reason.BACKOFF, f"{what}; retry {retries} of {policy.max_retries} in {delay}s")],
        events=[Event("Warning", reason, what)])
