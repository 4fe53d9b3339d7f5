"""What a live attempt's gang shows, as a pure verdict: the Scheduled and Running conditions for each stage
the gang is in (pending, unschedulable, on a node that stopped reporting, pulling its image, stuck on its
configuration, starting, training), whether to give up on it, and when to look again. plan.py applies it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune_api import ConditionType as C
from kubetune_api import FineTuneJob, Reason

from . import stuck
from .gang import Gang
from .observe import Stage

# How soon to look again while waiting for something no event announces (a pod still being deleted).
RECHECK_SECONDS = 2.0


@dataclass
class Verdict:
    conditions: list[tuple[str, bool | str, str, str]] = field(default_factory=list)
    fail: tuple[str, str] | None = None  # (reason, message): give up on the job for good
    wait: float | None = None  # look again in this many seconds
    training: bool = False  # the gang trains: its progress is the job's


def watch(job: FineTuneJob, gang: Gang, nodes: dict[str, dict[str, Any]], grace: float, waited: float) -> Verdict:
    """`waited`: seconds since the gang's pods were created; `grace`: how long a pod the kubelet cannot
    start (stuck.py) is waited for."""
    out = Verdict()
    if gang.stage in (Stage.PENDING, Stage.UNSCHEDULABLE):
        if gang.stage is Stage.UNSCHEDULABLE:
            out.conditions.append((C.SCHEDULED, False, Reason.UNSCHEDULABLE, gang.message))
        else:
            out.conditions.append((C.SCHEDULED, False, Reason.POD_CREATED, f"pod {gang.name} is waiting for a node"))
        out.conditions.append((C.RUNNING, False, Reason.WAITING, f"pod {gang.name} is pending"))
        return out
    if gang.stage is Stage.TERMINATING:
        out.wait = RECHECK_SECONDS
        return out
    out.conditions.append((C.SCHEDULED, True, Reason.POD_SCHEDULED,
                           f"{gang.what} {'is' if gang.size == 1 else 'are'} on {gang.nodes}"))
    ready = nodes.get(gang.node or "")
    if ready is not None and ready.get("status") != "True":
        out.conditions.append((C.RUNNING, "Unknown", Reason.NODE_NOT_READY, stuck.node_not_ready(gang, ready)))
    elif gang.stage is Stage.IMAGE_PULL:
        _give_up_after_grace(out, stuck.image_pull(gang, grace), grace, waited)
    elif gang.stage is Stage.CONFIG_ERROR:
        _give_up_after_grace(out, stuck.config_error(job, gang, grace), grace, waited)
    elif gang.stage is Stage.STARTING:
        out.conditions.append((C.RUNNING, False, Reason.WAITING, f"pod {gang.name} is starting"))
    else:
        out.conditions.append((C.RUNNING, True, Reason.TRAINING, f"attempt {gang.attempt} is training in {gang.what}"))
        out.training = True
    return out


def _give_up_after_grace(out: Verdict, how: stuck.Stuck, grace: float, waited: float) -> None:
    """A pod the kubelet cannot start: wait out the grace period, then fail for good."""
    if waited >= grace:
        out.fail = (how.reason, f"{how.failed}; gave up after {waited:.0f}s")
        return
    out.conditions.append((C.RUNNING, False, Reason.WAITING if how.reason == Reason.IMAGE_PULL_FAILED else how.reason,
                           how.waiting))
    out.wait = grace - waited
