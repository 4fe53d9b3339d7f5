"""FineTuneSchedule: retrain on a cron schedule, only when the data changed.

A schedule holds a FineTuneJob template. At each scheduled time the operator checks the template's data
version (kubetune_api.dataversion) with a small CPU-only probe pod, and creates a FineTuneJob from the
template only when that version differs from the one the last successful job trained on. Its status names
the last job, the last job that passed its evaluation gate and that job's adapter: the key a GitOps
promotion reads. The operator's side is schedule_plan.py (pure) and schedule_reconciler.py.
"""

from __future__ import annotations

from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import Field, ValidationError, field_validator

from .base import ApiModel
from .job import MAX_NAME_LENGTH, ObjectMeta, SpecError, format_errors
from .spec import DNS1123_LABEL, FineTuneJobSpec
from .status import Condition

SCHEDULE_KIND = "FineTuneSchedule"
SCHEDULE_PLURAL = "finetuneschedules"
# Jobs are named `<schedule>-<scheduled time as Unix seconds>` (10 digits, as a CronJob's jobs carry the
# minute): a schedule name leaves room for them within a FineTuneJob's name limit.
MAX_SCHEDULE_NAME_LENGTH = MAX_NAME_LENGTH - 11
CRON_HELP = ("a cron expression of 5 fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * 1'), "
             "or 6 with seconds last (e.g. '0 3 * * 1 30'), or a nickname such as @daily")


class JobTemplateMeta(ApiModel):
    """Labels and annotations copied onto every job the schedule creates."""

    labels: dict[str, str] = Field(default_factory=dict, description="Labels for the created jobs.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations for the created jobs.")


class FineTuneJobTemplate(ApiModel):
    """The FineTuneJob the schedule creates; its spec is copied as written (a runtimeRef is resolved when
    the job runs, as for any job)."""

    metadata: JobTemplateMeta = Field(default_factory=JobTemplateMeta, description="Labels and annotations.")
    spec: FineTuneJobSpec = Field(description="The FineTuneJob spec of every created job.")


class FineTuneScheduleSpec(ApiModel):
    """Retrains a FineTuneJob on a cron schedule, whenever its data changed since the last successful run."""

    schedule: str = Field(
        min_length=1, description=f"When to check the data and maybe retrain: {CRON_HELP}. Evaluated in timeZone."
    )
    time_zone: str = Field(
        default="UTC", min_length=1,
        description="IANA time zone of the schedule, e.g. Europe/Berlin (a 03:00 schedule stays at 03:00 local "
        "time across daylight-saving changes). Default: UTC.",
    )
    job_template: FineTuneJobTemplate = Field(description="The FineTuneJob to create.")
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = Field(
        default="Forbid",
        description="What a due time does while an earlier job still runs, as for a CronJob: Allow starts "
        "another, Forbid skips this time, Replace deletes the running job and starts the new one. Default: "
        "Forbid (two trainings of one adapter rarely help, and each holds GPUs).",
    )
    successful_jobs_history_limit: int = Field(
        default=3, ge=0, le=100, description="Succeeded jobs kept; older ones are deleted. Default: 3."
    )
    failed_jobs_history_limit: int = Field(
        default=1, ge=0, le=100, description="Failed jobs kept; older ones are deleted. Default: 1."
    )
    suspend: bool = Field(
        default=False,
        description="Create no jobs while true; running jobs go on. On resumption the most recent missed "
        "time is checked.",
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not {CRON_HELP}")
        return value

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone name, e.g. UTC or Europe/Berlin") from None
        return value


class ScheduleMeta(ObjectMeta):
    name: str = Field(min_length=1, max_length=MAX_SCHEDULE_NAME_LENGTH, pattern=DNS1123_LABEL)


class ScheduledRun(ApiModel):
    """One job the schedule created."""

    name: str = Field(description="The FineTuneJob's name.")
    scheduled_time: str | None = Field(default=None, description="The scheduled time it was created for (RFC 3339).")
    data_version: str | None = Field(default=None, description="The data version it was created for.")
    phase: str | None = Field(default=None, description="Its phase when last seen.")
    adapter: str | None = Field(default=None, description="Its adapter URI, once it succeeded.")


class FineTuneScheduleStatus(ApiModel):
    """Observed state of a FineTuneSchedule, written only by the operator."""

    conditions: list[Condition] = Field(default_factory=list, description="Validated (the spec is valid).")
    observed_generation: int | None = Field(default=None, description="Last metadata.generation acted on.")
    last_schedule_time: str | None = Field(
        default=None, description="The last scheduled time that was handled (a job created, or skipped and why)."
    )
    next_schedule_time: str | None = Field(default=None, description="The next scheduled time (RFC 3339).")
    last_outcome: str | None = Field(
        default=None, description="What the last scheduled time did: JobCreated, DataUnchanged, SkippedForbid, "
        "DataCheckFailed, ..."
    )
    active: list[str] = Field(default_factory=list, description="Jobs of this schedule that have not finished.")
    last_run: ScheduledRun | None = Field(default=None, description="The newest job the schedule created.")
    last_successful_run: ScheduledRun | None = Field(
        default=None, description="The newest job that succeeded; its data version is what a due time compares."
    )
    last_passing_run: ScheduledRun | None = Field(
        default=None, description="The newest job that succeeded and passed its evaluation gate (or had none)."
    )
    latest_adapter: str | None = Field(
        default=None, description="lastPassingRun's adapter URI: the key a GitOps promotion reads."
    )
    message: str | None = Field(default=None, description="Latest human-readable state.")


class FineTuneSchedule(ApiModel):
    """A FineTuneSchedule manifest."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneSchedule"]
    metadata: ScheduleMeta
    spec: FineTuneScheduleSpec
    status: FineTuneScheduleStatus | None = None


def parse_schedule(data: Any, source: str = "schedule") -> FineTuneSchedule:
    if not isinstance(data, dict):
        raise SpecError([f"expected a {SCHEDULE_KIND} mapping, got {type(data).__name__}"], source)
    try:
        return FineTuneSchedule.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_errors(err, FineTuneSchedule, ""), source) from None
