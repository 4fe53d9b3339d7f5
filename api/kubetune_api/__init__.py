"""The FineTuneJob API: spec, status, the trainer/operator contract and the CRD generator.

Depends only on pydantic and PyYAML, so the operator image (no torch) and the trainer image (no kopf)
both import it.
"""

# The release version, one place: pyproject.toml reads it, `kubetune --version` and the operator's startup log
# print it, and tests/test_lock.py checks that both images' OCI labels and the chart's appVersion agree.
__version__ = "0.1.0"

from .job import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    FineTuneJob,
    SpecError,
    load_manifest,
    parse_job,
    parse_spec,
    spec_hash,
)
from .results import ExitCode, ProgressEvent, TrainerResult
from .runtime import (
    RUNTIME_KIND,
    RUNTIME_PLURAL,
    ClusterFineTuneRuntime,
    FineTuneRuntimeSpec,
    apply_runtime,
    parse_runtime,
    parse_runtime_spec,
)
from .schedule import (
    SCHEDULE_KIND,
    SCHEDULE_PLURAL,
    FineTuneSchedule,
    FineTuneScheduleSpec,
    FineTuneScheduleStatus,
    parse_schedule,
)
from .spec import FineTuneJobSpec
from .status import Condition, ConditionType, FineTuneJobStatus, Reason, derive_phase, set_condition

__all__ = [
    "__version__",
    "API_VERSION", "GROUP", "KIND", "PLURAL", "RUNTIME_KIND", "RUNTIME_PLURAL", "SCHEDULE_KIND", "SCHEDULE_PLURAL",
    "VERSION", "FineTuneSchedule", "FineTuneScheduleSpec", "FineTuneScheduleStatus", "parse_schedule",
    "ClusterFineTuneRuntime", "Condition", "ConditionType", "ExitCode", "FineTuneJob", "FineTuneJobSpec",
    "FineTuneJobStatus", "FineTuneRuntimeSpec", "ProgressEvent", "Reason", "SpecError", "TrainerResult",
    "apply_runtime", "derive_phase", "load_manifest", "parse_job", "parse_runtime", "parse_runtime_spec",
    "parse_spec", "set_condition", "spec_hash",
]
