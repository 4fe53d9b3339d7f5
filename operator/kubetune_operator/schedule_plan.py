"""The FineTuneSchedule controller as one pure function:

    plan_schedule(ScheduleObserved(schedule body, its jobs, its probe pods, now)) -> SchedulePlan(status,
        job to create, probe pod to create, jobs and pods to delete, events, when to look again)

A scheduled time T is due when it is the latest time of the cron expression at or before `now` and after
status.lastScheduleTime (or the schedule's creation): missed times collapse into the latest, as a CronJob's.
A due time first asks a CPU-only probe pod for the data version, then creates the job `<name>-<T>` only if
that version is not what the last successful job (or a running one) trained on. Everything is derived from
observed state, so a restarted operator decides the same: the job of a time that already exists means the
time was handled; the probe of a time is found again by its name.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from pydantic import ValidationError

from kubetune_api import ConditionType as C
from kubetune_api import Reason, SpecError, set_condition
from kubetune_api.results import TrainerResult
from kubetune_api.schedule import FineTuneSchedule, FineTuneScheduleStatus, ScheduledRun, parse_schedule
from kubetune_api.status import is_true, now_rfc3339

from .conditions import NORMAL, WARNING, Event, parse_time
from .schedule_builders import DATA_VERSION, SCHEDULED_TIME, build_job, job_name, probe_name

FINISHED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ScheduleObserved:
    body: dict[str, Any]  # the FineTuneSchedule as read from the API server
    jobs: list[dict[str, Any]]  # FineTuneJobs carrying its schedule label
    probes: list[dict[str, Any]]  # its data-version probe pods
    now: datetime


@dataclass
class SchedulePlan:
    status: dict[str, Any] = field(default_factory=dict)  # the whole desired status (wire form)
    create_job: dict[str, Any] | None = None
    create_probe: datetime | None = None  # build_probe_pod for this scheduled time
    delete_jobs: list[str] = field(default_factory=list)
    delete_probes: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    due: datetime | None = None  # the scheduled time acted on (names its Events)
    requeue_after: float | None = None


def read_schedule_status(raw: dict[str, Any] | None) -> FineTuneScheduleStatus:
    try:
        return FineTuneScheduleStatus.model_validate(raw or {})
    except ValidationError:
        return FineTuneScheduleStatus()


def _owned(obj: dict[str, Any], uid: str | None) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def run_of(job: dict[str, Any]) -> ScheduledRun:
    meta, status = job["metadata"], job.get("status") or {}
    annotations = meta.get("annotations") or {}
    return ScheduledRun(
        name=meta["name"], scheduled_time=annotations.get(SCHEDULED_TIME),
        data_version=status.get("dataVersion") or annotations.get(DATA_VERSION),
        phase=status.get("phase"), adapter=(status.get("artifacts") or {}).get("adapter"),
    )


def _passed(job: dict[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") == C.EVALUATION_PASSED and c.get("status") == "True" for c in conditions)


def due_and_next(spec, now: datetime, since: datetime) -> tuple[datetime | None, datetime]:
    """The latest scheduled time in (since, now], if any, and the first one after now, in spec.timeZone."""
    local = now.astimezone(ZoneInfo(spec.time_zone))
    latest = croniter(spec.schedule, local + timedelta(milliseconds=1)).get_prev(datetime)
    following = croniter(spec.schedule, local).get_next(datetime)
    return (latest if latest > since else None), following


def plan_schedule(obs: ScheduleObserved) -> SchedulePlan:
    return _SchedulePlanner(obs).run()


class _SchedulePlanner:
    def __init__(self, obs: ScheduleObserved):
        self.obs, self.now, self.stamp = obs, obs.now, now_rfc3339(obs.now)
        meta = obs.body.get("metadata") or {}
        self.generation, uid = meta.get("generation"), meta.get("uid")
        self.old = read_schedule_status(obs.body.get("status"))
        self.st = self.old.model_copy(deep=True)
        self.out = SchedulePlan()
        self.jobs = sorted((j for j in obs.jobs if _owned(j, uid)),
                           key=lambda j: ((j["metadata"].get("annotations") or {}).get(SCHEDULED_TIME) or "",
                                          j["metadata"]["name"]))
        self.probes = {p["metadata"]["name"]: p for p in obs.probes if _owned(p, uid)}

    def run(self) -> SchedulePlan:
        if (self.obs.body.get("metadata") or {}).get("deletionTimestamp"):
            self.out.status = copy.deepcopy(self.obs.body.get("status") or {})
            return self.out
        try:
            schedule = parse_schedule(self.obs.body)
        except SpecError as err:
            self.invalid("; ".join(err.errors))
        else:
            # The rules of a job run in a cluster (FineTuneJobSpec.in_cluster_errors), said on the schedule
            # rather than on every job it would create.
            problems = [e.replace("spec.", "spec.jobTemplate.spec.", 1)
                        for e in schedule.spec.job_template.spec.in_cluster_errors()]
            if problems:
                self.invalid("; ".join(problems))
            else:
                self.valid(schedule)
        self.st.observed_generation = self.generation
        self.out.status = self.st.to_wire()
        return self.out

    def cond(self, status: bool, reason: str, message: str) -> None:
        self.st.conditions = set_condition(self.st.conditions, C.VALIDATED, status, reason, message,
                                           self.generation, self.stamp)

    def invalid(self, message: str) -> None:
        if is_true(self.st.conditions, C.VALIDATED) or not self.st.conditions:
            self.out.events.append(Event(WARNING, Reason.INVALID_SPEC, message))
        self.cond(False, Reason.INVALID_SPEC, message)
        self.st.message, self.st.next_schedule_time = f"invalid spec: {message}", None

    def valid(self, schedule: FineTuneSchedule) -> None:
        self.cond(True, Reason.VALID, "the spec is valid")
        spec = schedule.spec
        self.observe_jobs()
        self.prune(spec)
        created = (self.obs.body.get("metadata") or {}).get("creationTimestamp")
        since = parse_time(self.st.last_schedule_time or created or self.stamp)
        due, following = due_and_next(spec, self.now, since)
        # A probe already asked about an earlier time that is not handled yet: finish that time first, or a
        # probe slower than the schedule's interval would be replaced by the next one forever.
        asked = [parse_time(t) for p in self.probes.values()
                 if (t := (p["metadata"].get("annotations") or {}).get(SCHEDULED_TIME)) and parse_time(t) > since]
        if due is not None and asked:
            due = min(asked)
        self.st.next_schedule_time = now_rfc3339(following)
        self.out.requeue_after = max(0.0, (following - self.now).total_seconds())
        if spec.suspend:
            self.st.message = "suspended: no jobs are created"
        elif due is not None:
            self.out.due = due
            self.tick(spec, due)
        # Probes of times already handled (or of a suspended schedule) are not needed any more; they are
        # deleted after the status recording the time is written.
        pending = due is not None and not spec.suspend and self.st.last_schedule_time != now_rfc3339(due)
        keep = probe_name(schedule.metadata.name, due) if pending else None
        self.out.delete_probes += [n for n, p in self.probes.items()
                                   if n != keep and not p["metadata"].get("deletionTimestamp")]

    def observe_jobs(self) -> None:
        """Active jobs, the last run, the last successful and the last passing one, from the jobs seen;
        a run recorded earlier stays until a newer one replaces it (its job may have been pruned)."""
        runs = [(j, run_of(j)) for j in self.jobs if not j["metadata"].get("deletionTimestamp")]
        self.st.active = [r.name for _, r in runs if r.phase not in FINISHED]
        for job, run in runs:
            self.st.last_run = self._newer(self.st.last_run, run)
            if run.phase == "Succeeded":
                self.st.last_successful_run = self._newer(self.st.last_successful_run, run)
                if _passed(job):
                    self.st.last_passing_run = self._newer(self.st.last_passing_run, run)
        self.st.latest_adapter = self.st.last_passing_run.adapter if self.st.last_passing_run else None

    @staticmethod
    def _newer(recorded: ScheduledRun | None, seen: ScheduledRun) -> ScheduledRun:
        if recorded is None or recorded.name == seen.name:
            return seen
        return seen if (seen.scheduled_time or "") > (recorded.scheduled_time or "") else recorded

    def prune(self, spec) -> None:
        """Finished jobs beyond successfulJobsHistoryLimit / failedJobsHistoryLimit, oldest first."""
        for phase, limit in (("Succeeded", spec.successful_jobs_history_limit),
                             ("Failed", spec.failed_jobs_history_limit)):
            done = [j for j in self.jobs if (j.get("status") or {}).get("phase") == phase
                    and not j["metadata"].get("deletionTimestamp")]
            for job in done[: max(0, len(done) - limit)]:
                name = job["metadata"]["name"]
                self.out.delete_jobs.append(name)
                self.out.events.append(Event(NORMAL, Reason.HISTORY_PRUNED,
                                             f"deleted {phase.lower()} job {name} (history limit {limit})"))

    def handled(self, due: datetime, outcome: str, event_type: str, message: str) -> None:
        self.st.last_schedule_time, self.st.last_outcome = now_rfc3339(due), outcome
        self.st.message = message
        self.out.events.append(Event(event_type, outcome, message))

    def tick(self, spec, due: datetime) -> None:
        name = job_name(self.obs.body["metadata"]["name"], due)
        when = now_rfc3339(due)
        if any(j["metadata"]["name"] == name for j in self.jobs):  # created before a restart: handled
            # (its Event, if it was posted before the restart, has this name and answers AlreadyExists)
            self.handled(due, Reason.JOB_CREATED, NORMAL, f"created job {name} for {when}")
            return
        active = [j for j in self.jobs if j["metadata"]["name"] in self.st.active]
        if active and spec.concurrency_policy == "Forbid":
            self.handled(due, Reason.JOB_ALREADY_ACTIVE, NORMAL, f"skipped {when}: job {active[-1]['metadata']['name']} "
                         "is still running (concurrencyPolicy Forbid)")
            return
        probe = self.probes.get(probe_name(self.obs.body["metadata"]["name"], due))
        if probe is None:
            self.out.create_probe = due
            self.st.message = f"checking the data version for {when}"
            return
        phase = (probe.get("status") or {}).get("phase")
        if phase not in ("Succeeded", "Failed"):
            return  # its next event wakes the schedule
        result = probe_result(probe)
        if phase == "Failed" or result is None or not result.data_version:
            why = result.message if result is not None else "the probe pod reported nothing"
            self.handled(due, Reason.DATA_CHECK_FAILED, WARNING, f"skipped {when}: cannot read the data version "
                         f"({result.reason if result else phase}): {why}")
            return
        self.create_or_skip(spec, due, result.data_version, active)

    def create_or_skip(self, spec, due: datetime, version: str, active: list[dict[str, Any]]) -> None:
        when = now_rfc3339(due)
        last = self.st.last_successful_run
        running = {run_of(j).data_version for j in active}
        if (last is not None and last.data_version == version) or version in running:
            whose = last.name if last is not None and last.data_version == version else "a running job"
            self.handled(due, Reason.DATA_UNCHANGED, NORMAL,
                         f"skipped {when}: data version {version} is what {whose} trained on")
            return
        if active and spec.concurrency_policy == "Replace":
            self.out.delete_jobs += [j["metadata"]["name"] for j in active]
            self.out.events.append(Event(NORMAL, Reason.JOB_REPLACED, "deleted running job(s) "
                                         f"{', '.join(j['metadata']['name'] for j in active)} (concurrencyPolicy Replace)"))
        self.out.create_job = build_job(self.obs.body, due, version)
        name = self.out.create_job["metadata"]["name"]
        self.st.last_run = ScheduledRun(name=name, scheduled_time=when, data_version=version, phase="Pending")
        self.st.active = sorted({*self.st.active, name} - set(self.out.delete_jobs))
        before = f"data version {last.data_version}" if last is not None else "no successful run yet"
        self.handled(due, Reason.JOB_CREATED, NORMAL, f"created job {name} for {when}: data version {version} "
                     f"({before})")


def probe_result(pod: dict[str, Any]) -> TrainerResult | None:
    """The TrainerResult the probe wrote as its termination message, if it wrote one."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    terminated = ((statuses[0].get("state") or {}).get("terminated") or {}) if statuses else {}
    return TrainerResult.from_termination_message(terminated.get("message"))
