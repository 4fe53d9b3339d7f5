"""The FineTuneJob state machine as one pure function:

    plan(Observed(job body, its pods, now, latest progress, runtime)) -> Plan(status, gang to create,
                                                                           pods to delete, events, requeue)

An attempt is a gang of pods (one, or spec.resources.nodes), folded into one state by gang.py; the plan
decides on the gang, never on one of its pods. Everything is derived from what is observed (the stored
status and the pods' own state), so a restarted operator reaches the same decisions: a pod of a newer
attempt than the status knows is adopted (and its gang completed), a failure already accounted for
(status.nextAttemptTime set) is not counted twice, a pod that finished while the operator was down still
yields its result. retrying.py decides what follows a failed attempt, outcome.py writes a finished gang's
result into the status; the reconciler (reconciler.py) does the I/O.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubetune_api import ConditionType as C
from kubetune_api import FineTuneJob, Reason, derive_phase, set_condition
from kubetune_api.status import Progress, is_true, now_rfc3339

from . import watching
from .builders import gang_name_error, gang_pod_names, pod_name, processes_per_pod, world_size
from .conditions import Event, headline, parse_time, read_status, transition_events
from .fits import fit_of
from .gang import Gang, describe, fold_run
from .observe import PodView, Stage, view_pod
from .outcome import record_success
from .retrying import after_failure
from .validation import resolve
from .watching import RECHECK_SECONDS

# How soon to try again a pod creation the API server refused for now (403 Forbidden).
REFUSED_RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Observed:
    body: dict[str, Any]  # the FineTuneJob as read from the API server
    pods: list[dict[str, Any]]  # pods carrying its job-name label
    now: datetime
    progress: Progress | None = None  # the trainer's latest report, when it may be written now
    runtime: dict[str, Any] | None = None  # spec of the ClusterFineTuneRuntime named by spec.runtimeRef
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node name -> its Ready condition
    rejected: str | None = None  # the API server refused the pod this plan would create (its message)
    refused: str | None = None  # ... for now (403: a quota, a missing PriorityClass, an admission webhook)
    gpu_memory: dict[str, float] | None = None  # GPU product -> GiB (settings); None: the API's table


@dataclass
class Plan:
    job: FineTuneJob | None
    status: dict[str, Any] = field(default_factory=dict)  # the whole desired status (wire form)
    create_attempt: int | None = None  # create the pods of attempt n (with its ConfigMap and Secret) first
    create_indices: list[int] | None = None  # only these pods of its gang (lost before it ran); None: all
    run: int = 1  # the run the pod to create belongs to
    image_id: str | None = None  # the image digest an earlier attempt ran, passed on for lineage.json
    run_start: str | None = None  # when the run of a first attempt was asked for (the start-up metric)
    deadline_left: int | None = None  # seconds of activeDeadlineSeconds left, for the new pod
    delete: list[str] = field(default_factory=list)  # pod names
    cleanup: bool = False  # ttlSecondsAfterFinished passed: delete every child, keep the job
    requeue_after: float | None = None
    events: list[Event] = field(default_factory=list)

    def wait(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def plan(obs: Observed, image_pull_grace: float) -> Plan:
    return _Planner(obs, image_pull_grace).run()


def _owned(pod: dict[str, Any], uid: str | None) -> bool:
    return any(ref.get("uid") == uid for ref in (pod.get("metadata") or {}).get("ownerReferences") or [])


class _Planner:
    def __init__(self, obs: Observed, image_pull_grace: float):
        self.obs, self.now, self.grace = obs, obs.now, image_pull_grace
        self.stamp = now_rfc3339(obs.now)
        meta = obs.body.get("metadata") or {}
        self.generation = meta.get("generation")
        self.old = read_status(obs.body.get("status"))
        self.st = self.old.model_copy(deep=True)
        self.out = Plan(job=None)
        uid = meta.get("uid")
        self.views = [view_pod(p) for p in obs.pods if _owned(p, uid)]
        # Pods of an earlier FineTuneJob of the same name, not yet garbage-collected: they hold our names.
        self.orphans = [p for p in obs.pods if not _owned(p, uid)]
        self.out.delete += [
            p["metadata"]["name"] for p in self.orphans if not p["metadata"].get("deletionTimestamp")
        ]
        self.mine: dict[int, Gang] = {}  # this run's attempts

    # -------------------------------------------------------------- helpers

    def cond(self, ctype: str, status: bool | str, reason: str, message: str = "") -> None:
        """set_condition, keeping each condition where it was in the list, so re-planning an unchanged job
        yields an identical status (and no patch)."""
        updated = set_condition(self.st.conditions, ctype, status, reason, message, self.generation, self.stamp)
        order = [c.type for c in self.st.conditions]
        self.st.conditions = sorted(updated, key=lambda c: order.index(c.type) if c.type in order else len(order))

    def delete(self, views: list[PodView]) -> None:
        self.out.delete += [v.name for v in views if not v.deleting and v.name not in self.out.delete]

    def seconds_since(self, stamp: str) -> float:
        return (self.now - parse_time(stamp)).total_seconds()

    # -------------------------------------------------------------- flow

    def run(self) -> Plan:
        if (self.obs.body.get("metadata") or {}).get("deletionTimestamp"):
            # Being deleted (e.g. with its namespace): its pods go with it; nothing to start or record.
            self.out.status = copy.deepcopy(self.obs.body.get("status") or {})
            return self.out
        job, reason, errors = resolve(self.obs.body, self.obs.runtime)
        if job is None:
            self.invalid(reason, errors)
        else:
            self.out.job = job
            self.valid(job)
        self.st.observed_generation = self.generation
        # Every condition was re-evaluated against this generation, including those that did not change.
        self.st.conditions = [c.model_copy(update={"observed_generation": self.generation}) for c in self.st.conditions]
        self.st.phase = derive_phase(self.st.conditions)
        self.st.message = headline(self.st.conditions)
        self.out.status = self.st.to_wire()
        self.out.events += transition_events(self.old.conditions, self.st.conditions)
        return self.out

    def invalid(self, reason: str, errors: list[str]) -> None:
        message = "; ".join(errors)
        self.cond(C.VALIDATED, False, reason, message)
        if reason == Reason.RUNTIME_NOT_FOUND:
            return  # hold everything as it is until the runtime exists (its creation wakes the job)
        if not is_true(self.st.conditions, C.FAILED):
            self.st.completion_time = self.stamp
        self.cond(C.FAILED, True, Reason.INVALID_SPEC, message)
        for ctype in (C.RUNNING, C.SUCCEEDED):
            if is_true(self.st.conditions, ctype):
                self.cond(ctype, False, Reason.INVALID_SPEC, "the spec is invalid")
        self.st.spec_hash = None  # whatever valid spec comes next starts a new run
        self.st.next_attempt_time = None
        self.delete([v for v in self.views if v.active])

    def valid(self, job: FineTuneJob) -> None:
        run_hash = job.spec_hash
        if self.st.spec_hash != run_hash:
            if self.finished() and self.old.observed_generation == self.generation:
                # The hash moved without an edit of this job (its runtime changed, or a newer operator
                # hashes differently): a finished job stays finished; the change applies to the next run.
                run_hash = self.st.spec_hash
            else:
                self.new_run(run_hash)
        self.st.run = max(self.st.run, 1)  # a status from before run numbers: run 1
        ours = [v for v in self.views if (v.spec_hash, v.run) == (run_hash, self.st.run)]
        # Running True (or Unknown: its node stopped reporting) was only ever set with every pod running.
        ran = any(c.type == C.RUNNING and c.status != "False" for c in self.st.conditions)
        self.mine = fold_run(ours, job.metadata.name, self.st.run, self.obs.nodes, self.st.attempts if ran else None)
        unnamed = None if self.st.attempts or self.mine else gang_name_error(job, self.st.run)
        if unnamed:  # refused as an invalid spec, before the run's first pod: no retry shortens a name
            self.invalid(Reason.INVALID_SPEC, [unnamed])
            return
        self.cond(C.VALIDATED, True, Reason.VALID, "the spec is valid")
        # An earlier run's pod may still be running a stale spec; finished ones stay for `kubectl logs`.
        self.delete([v for v in self.views if v.active and v not in ours])
        if not self.finished() and self.fits(job):
            self.adopt(job)
            self.step(job)
        if self.finished():
            self.settle(job)

    def members(self, active: bool = True) -> list[PodView]:
        return [m for g in self.mine.values() for m in g.members if m.active or not active]

    def finished(self) -> bool:
        return is_true(self.st.conditions, C.SUCCEEDED) or is_true(self.st.conditions, C.FAILED)

    def new_run(self, run_hash: str) -> None:
        """A changed spec (or a valid one after an invalid one): stop the old run, start from attempt 1."""
        if self.st.spec_hash:
            message = f"the spec changed (hash {self.st.spec_hash} -> {run_hash}): starting a new run"
        else:
            message = "starting a new run"
        for cond in list(self.st.conditions):
            if cond.type == C.EVALUATION_PASSED:
                self.cond(cond.type, "Unknown", Reason.SPEC_CHANGED, message)
            elif cond.type not in (C.VALIDATED, C.SUSPENDED):
                self.cond(cond.type, False, Reason.SPEC_CHANGED, message)
        for name in ("pod_name", "start_time", "completion_time", "progress", "eval_summary", "artifacts",
                     "next_attempt_time", "data_version", "stop_reason", "best_step"):
            setattr(self.st, name, None)
        self.st.attempts = self.st.retries = 0
        self.st.metrics, self.st.base_metrics = {}, {}
        self.st.spec_hash = run_hash
        # A new run number (and pod names): an operator restart before this status is written plans the
        # same number again from the same stored status, so a pod created meanwhile is adopted.
        first = self.st.run == 0
        self.st.run += 1
        created = (self.obs.body.get("metadata") or {}).get("creationTimestamp")
        self.st.run_start_time = (created if first else None) or self.stamp

    def settle(self, job: FineTuneJob) -> None:
        """A finished job: nothing may run; its children go once ttlSecondsAfterFinished has passed."""
        self.delete(self.members())
        ttl = job.spec.ttl_seconds_after_finished
        if ttl is None or not self.st.completion_time:
            return
        left = ttl - self.seconds_since(self.st.completion_time)
        if left > 0:
            self.out.wait(left)
        else:
            self.out.cleanup = True
            self.delete(list(self.views))

    def adopt(self, job: FineTuneJob) -> None:
        """A pod of a newer attempt than the status records was created just before an operator restart."""
        top = max(self.mine, default=0)
        if top > self.st.attempts:
            gang = self.mine[top]
            first = pod_name(job.metadata.name, top, self.st.run, 0 if gang.size > 1 else None)
            self.st.attempts, self.st.pod_name, self.st.next_attempt_time = top, first, None
            self.st.world_size = gang.size * processes_per_pod(job)
            self.st.start_time = self.st.start_time or min(m.created or self.stamp for m in gang.members)

    def step(self, job: FineTuneJob) -> None:
        pod = self.mine.get(self.st.attempts) if self.st.attempts else None
        if pod is not None and pod.image_id:
            self.st.trainer_image_id = pod.image_id
        if pod is not None and pod.stage is Stage.SUCCEEDED:
            self.succeed(job, pod)
        elif job.spec.suspend:
            self.suspend()
        elif is_true(self.st.conditions, C.SUSPENDED) and (pod is None or pod.stage is Stage.FAILED or
                                                          pod.stage is Stage.TERMINATING):
            self.start_attempt(job, resume=True)
        elif self.deadline_passed(job):
            pass
        elif self.st.next_attempt_time:
            left = -self.seconds_since(self.st.next_attempt_time)
            if left > 0:
                self.out.wait(left)
            else:
                self.start_attempt(job)
        elif pod is None and self.st.attempts == 0:
            self.start_attempt(job)
        elif pod is None:
            self.failed(job, Reason.PREEMPTED, True, f"pod {self.st.pod_name} was deleted before it finished")
        elif pod.stage is Stage.FAILED:
            self.delete(self.members())  # the gang's other pods cannot go on without it
            self.failed(job, pod.reason, pod.retryable, pod.message, since=pod.finished)
        else:
            if is_true(self.st.conditions, C.SUSPENDED):
                self.cond(C.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false: resumed")
            if pod.missing:
                self.recreate(job, pod)
            else:
                self.watch(job, pod)

    def fits(self, job: FineTuneJob) -> bool:
        """The Fits condition. A job that cannot fit its GPU fails before its first pod, for good: no retry
        can fit it, and the next spec edit starts a new run. A run already started goes on."""
        fit = fit_of(job, self.obs.gpu_memory)
        if fit is None:
            return True
        self.cond(C.FITS, fit.status, fit.reason, fit.message)
        if not fit.refused or self.st.attempts or self.mine:
            return True
        self.fail(fit.reason, fit.message)
        self.st.spec_hash = None
        return False

    # -------------------------------------------------------------- transitions

    def start_attempt(self, job: FineTuneJob, resume: bool = False, after: str = "") -> None:
        """Create the next pod, but never while another pod of this job may still be running, and never
        under a name a pod being deleted still holds."""
        attempt = self.st.attempts + 1
        names = gang_pod_names(job, attempt, self.st.run)
        name, pods = names[0], describe(names)
        if self.out.delete or self.orphans or any(v.active or v.deleting for v in self.views):
            if after:  # the cause stays in the status while the attempt's other pods stop
                self.cond(C.RUNNING, False, Reason.WAITING, f"stopping the pods of attempt {attempt - 1}{after}")
            self.out.wait(RECHECK_SECONDS)
            return
        if self.obs.rejected is not None:
            self.reject(name, self.obs.rejected)
            return
        if self.obs.refused is not None:
            # Possibly temporary (a quota frees up, the PriorityClass gets created): said, and tried again.
            self.cond(C.SCHEDULED, False, Reason.POD_CREATE_FAILED,
                      f"the API server refused {pods}; trying again in {REFUSED_RETRY_SECONDS:.0f}s: "
                      f"{self.obs.refused}")
            self.out.wait(REFUSED_RETRY_SECONDS)
            return
        self.out.create_attempt, self.out.run = attempt, self.st.run
        if attempt == 1:
            self.out.run_start = self.st.run_start_time
        self.st.attempts, self.st.pod_name, self.st.next_attempt_time = attempt, name, None
        self.st.world_size = world_size(job)
        if resume:
            # As for Kubernetes Jobs, the activeDeadlineSeconds clock restarts on resumption.
            self.st.start_time = self.stamp
            self.cond(C.SUSPENDED, False, Reason.RESUMED, "spec.suspend is false: resuming from the last checkpoint")
        self.st.start_time = self.st.start_time or self.stamp
        self.cond(C.SCHEDULED, False, Reason.POD_CREATED, f"created {pods} (attempt {attempt}); waiting for a node")
        self.cond(C.RUNNING, False, Reason.WAITING, f"{pods} {'is' if len(names) == 1 else 'are'} pending{after}")
        self.out.image_id = self.st.trainer_image_id
        deadline = job.spec.active_deadline_seconds
        if deadline:
            self.out.deadline_left = max(1, int(deadline - self.seconds_since(self.st.start_time)))

    def recreate(self, job: FineTuneJob, gang: Gang) -> None:
        """Pods of the current attempt that are gone while none of its pods has ended (the operator stopped
        while creating the gang, or Kueue removed them before admitting the gang): created again under their
        own names, so the attempt's one gang is completed, never a second one started."""
        what = describe(list(gang.missing))
        self.cond(C.RUNNING, False, Reason.WAITING, f"{what} of attempt {gang.attempt} {'is' if len(gang.missing) == 1 else 'are'} "
                  "missing: creating them again")
        if self.out.delete or self.orphans:
            self.out.wait(RECHECK_SECONDS)
            return
        self.out.create_attempt, self.out.run = gang.attempt, self.st.run
        self.out.create_indices = list(gang.missing_indices)
        self.out.image_id = self.st.trainer_image_id
        deadline = job.spec.active_deadline_seconds
        if deadline and self.st.start_time:
            self.out.deadline_left = max(1, int(deadline - self.seconds_since(self.st.start_time)))

    def watch(self, job: FineTuneJob, gang: Gang) -> None:
        """Conditions of a gang that has not ended (watching.py)."""
        waited = self.seconds_since(gang.created) if gang.created else 0.0
        verdict = watching.watch(job, gang, self.obs.nodes, self.grace, waited)
        for ctype, status, reason, message in verdict.conditions:
            self.cond(ctype, status, reason, message)
        if verdict.fail is not None:
            self.fail(*verdict.fail)
        if verdict.wait is not None:
            self.out.wait(verdict.wait)
        if verdict.training and self.obs.progress is not None:
            self.st.progress = self.obs.progress

    def reject(self, name: str, message: str) -> None:
        """The API server refused the pod (422 Invalid): no retry can help; the next spec edit starts a run."""
        self.fail(Reason.POD_REJECTED, f"the API server rejected pod {name}: {message}")
        self.st.spec_hash = None  # as for InvalidSpec: whatever spec comes next starts a new run

    def suspend(self) -> None:
        self.delete(self.members())
        if not is_true(self.st.conditions, C.SUSPENDED):
            stopped = f"; stopped pod {self.st.pod_name}" if self.st.attempts else ""
            self.cond(C.SUSPENDED, True, Reason.SUSPENDED, f"spec.suspend is true{stopped}")
        self.cond(C.RUNNING, False, Reason.SUSPENDED, "suspended")
        self.st.next_attempt_time = None  # a pending retry happens on resumption instead

    def deadline_passed(self, job: FineTuneJob) -> bool:
        deadline = job.spec.active_deadline_seconds
        if not deadline or not self.st.start_time:
            return False
        left = deadline - self.seconds_since(self.st.start_time)
        if left > 0:
            self.out.wait(left)
            return False
        self.fail(Reason.DEADLINE_EXCEEDED, f"the job ran longer than spec.activeDeadlineSeconds ({deadline}s)")
        return True

    def failed(self, job: FineTuneJob, reason: str, retryable: bool, message: str, since: str | None = None) -> None:
        """An attempt ended in failure: the next attempt now or after backoff, or the job fails (retrying.py)."""
        verdict = after_failure(job.spec.failure_policy, self.st.attempts, self.st.retries, reason, retryable,
                                message, self.now, parse_time(since) if since else None)
        self.st.retries = verdict.retries
        if verdict.next_attempt is not None:
            self.st.next_attempt_time = now_rfc3339(verdict.next_attempt)
        for ctype, status, why, text in verdict.conditions:
            self.cond(ctype, status, why, text)
        self.out.events += verdict.events
        if verdict.fail is not None:
            self.fail(*verdict.fail)
        elif verdict.start_now is not None:
            self.start_attempt(job, after=verdict.start_now)
        elif verdict.next_attempt is not None:
            self.out.wait((verdict.next_attempt - self.now).total_seconds())

    def fail(self, reason: str, message: str) -> None:
        self.cond(C.FAILED, True, reason, message)
        self.cond(C.RUNNING, False, reason, message)
        self.st.completion_time, self.st.next_attempt_time = self.stamp, None
        self.delete(self.members())

    def succeed(self, job: FineTuneJob, gang: Gang) -> None:
        self.st.completion_time, self.st.next_attempt_time = gang.finished or self.stamp, None
        record_success(self.st, self.cond, job, gang, self.obs.progress)
