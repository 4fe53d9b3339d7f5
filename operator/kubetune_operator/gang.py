"""The gang is a value: the pods of one attempt (one pod, or spec.resources.nodes pods training together under
torchrun's c10d rendezvous) folded into one state, so plan.py decides on the attempt, never on one pod.

    fold(views of one attempt's pods, size, nodes' Ready conditions) -> Gang
    fold_run(views of one run's pods, ...) -> {attempt: Gang}

The rules, in order:

* Failed: a pod failed, or a pod is gone once the gang has run whole (the status said Running) or while
  another pod has ended (its ranks cannot finish without it). The
  cause named in the status is a permanent failure if there is one (the job fails once), else the pod that
  was lost, deleted or disrupted (no retry used: the others stopped because of it), else the pod that
  failed first.
* Missing pods before the gang ever ran whole, while none has ended (the operator was stopped while
  creating the gang, or Kueue removed a pod before admission): `missing` lists them; the plan creates them
  under their names again.
* Terminating: a pod is being deleted.
* Succeeded: every pod succeeded; the result is the writer's (torchrun's rank 0, on whichever pod the
  rendezvous put it), the one that reports artefacts.
* Otherwise the least advanced pod speaks for the gang (Unschedulable, ImagePull, ConfigError, Pending,
  Starting), and the gang is Running only when every pod runs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from kubetune_api import Reason, TrainerResult

from .builders import pod_name
from .observe import PodView, Stage

# Which pod speaks for a gang that has not ended: the first stage found here, in this order.
LEAST_ADVANCED = (Stage.UNSCHEDULABLE, Stage.IMAGE_PULL, Stage.CONFIG_ERROR, Stage.PENDING, Stage.STARTING,
                  Stage.RUNNING)


@dataclass(frozen=True)
class Gang:
    """One attempt's pods as one state; `lead` is the pod the state is about (stage, reason and message
    are the gang's, for one pod exactly its own)."""

    attempt: int
    size: int
    members: tuple[PodView, ...]  # the pods that exist, by index
    missing: tuple[str, ...]  # names of the pods that do not exist (never created, or deleted)
    missing_indices: tuple[int, ...]
    lead: PodView

    # The parts of the lead plan.py and stuck.py read, so a gang reads like one pod.
    def __getattr__(self, name: str) -> Any:
        if name in ("stage", "reason", "retryable", "message", "node", "created", "finished", "result", "name"):
            return getattr(self.lead, name)
        raise AttributeError(name)

    @property
    def active(self) -> bool:
        """Some pod might still be running a trainer process."""
        return any(m.active for m in self.members)

    @property
    def image_id(self) -> str | None:
        return next((m.image_id for m in self.members if m.image_id), None)

    @property
    def what(self) -> str:
        """`pod <name>`, or `pods <a>, <b>, ...` for a gang."""
        return describe([m.name for m in self.members] + list(self.missing))

    @property
    def nodes(self) -> str:
        placed = sorted({m.node for m in self.members if m.node})
        return ("node " if len(placed) == 1 else "nodes ") + ", ".join(placed)


def describe(names: list[str]) -> str:
    names = sorted(names, key=lambda n: (len(n), n))
    if len(names) == 1:
        return f"pod {names[0]}"
    shown = names if len(names) <= 4 else [names[0], names[1], "...", names[-1]]
    return f"pods {', '.join(shown)}" + (f" ({len(names)})" if len(names) > 4 else "")


def fold(views: list[PodView], names: list[str], nodes: dict[str, dict[str, Any]] | None = None,
         ran: bool = False) -> Gang | None:
    """The gang of one attempt whose pods are `names` (by index), from the views of those that exist; None
    when none exists. `ran`: the status has seen this gang running whole (a pod missing since was lost)."""
    if not views:
        return None
    members = tuple(sorted(views, key=lambda v: v.index))
    present = {v.name for v in members}
    missing = tuple(n for n in names if n not in present)
    gang = Gang(attempt=members[0].attempt, size=len(names), members=members, missing=missing,
                missing_indices=tuple(i for i, n in enumerate(names) if n not in present), lead=members[0])
    return replace(gang, lead=_lead(gang, nodes or {}, ran))


def fold_run(views: list[PodView], job_name: str, run: int, nodes: dict[str, dict[str, Any]] | None = None,
             ran: int | None = None) -> dict[int, Gang]:
    """The pods of one run (`run`) folded into one gang per attempt, each at the size it was created with.
    `ran`: the attempt whose gang the status has seen running whole."""
    out = {}
    for attempt in sorted({v.attempt for v in views}):
        members = [v for v in views if v.attempt == attempt]
        size = max(v.gang_size for v in members)
        names = [pod_name(job_name, attempt, run, i if size > 1 else None) for i in range(size)]
        out[attempt] = fold(members, names, nodes, attempt == ran)
    return out


def _lead(gang: Gang, nodes: dict[str, dict[str, Any]], ran: bool) -> PodView:
    members = gang.members
    failed = [m for m in members if m.stage is Stage.FAILED]
    ended = failed or any(m.stage in (Stage.SUCCEEDED, Stage.TERMINATING) or m.deleting for m in members)
    if failed or (gang.missing and (ended or ran)):
        return _cause(gang, failed)
    if gang.missing:
        return members[0]
    terminating = [m for m in members if m.stage is Stage.TERMINATING]
    if terminating:
        return terminating[0]
    if all(m.stage is Stage.SUCCEEDED for m in members):
        return _succeeded(members)
    for stage in LEAST_ADVANCED:
        at = [m for m in members if m.stage is stage]
        if stage is Stage.RUNNING:
            # A pod on a node that stopped reporting speaks for the gang (Running=Unknown).
            lost = [m for m in at if (nodes.get(m.node or "") or {}).get("status") not in (None, "True")]
            at = lost or at
        if at:
            return at[0]
    return members[0]


def _named(gang: Gang, view: PodView) -> PodView:
    """A gang member's failure says which pod it was (one pod's is already about it)."""
    return view if gang.size == 1 else replace(view, message=f"pod {view.name}: {view.message}")


def _cause(gang: Gang, failed: list[PodView]) -> PodView:
    by_time = sorted(failed, key=lambda m: (m.finished or "~", m.index))
    permanent = [m for m in by_time if not m.retryable]
    if permanent:
        return _named(gang, permanent[0])
    if gang.missing:
        lost = gang.missing[0]
        return PodView(name=lost, attempt=gang.attempt, spec_hash=gang.members[0].spec_hash,
                       run=gang.members[0].run, stage=Stage.FAILED, reason=Reason.PREEMPTED, retryable=True,
                       message=f"pod {lost} was deleted before the gang finished",
                       finished=by_time[0].finished if by_time else None,
                       index=gang.missing_indices[0], gang_size=gang.size)
    # A pod being deleted while another failed: deleted by someone else (the plan deletes the others only
    # once the failure is accounted for), and its SIGTERM is what stopped the others.
    deleted = [m for m in gang.members if m.stage is Stage.TERMINATING]
    if deleted:
        return replace(deleted[0], stage=Stage.FAILED, reason=Reason.PREEMPTED, retryable=True,
                       message=f"pod {deleted[0].name} was deleted before the gang finished",
                       finished=by_time[0].finished if by_time else None)
    # Failed pods only: a disrupted one stopped the others (its SIGTERM stops every rank after the same step).
    disrupted = [m for m in by_time if m.reason == Reason.PREEMPTED]
    return _named(gang, (disrupted or by_time)[0])


def _succeeded(members: tuple[PodView, ...]) -> PodView:
    """The writer's pod: its result names the artefacts (the other pods' workers report none)."""
    results: list[TrainerResult] = [m.result for m in members if m.result is not None]
    writer = next((r for r in results if r.artifacts), results[0] if results else None)
    lead = next((m for m in members if m.result is writer), members[0])
    finished = max((m.finished for m in members if m.finished), default=None)
    return replace(lead, finished=finished)
