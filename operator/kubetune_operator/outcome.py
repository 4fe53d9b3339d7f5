"""Status writing for a finished gang: the writer's TrainerResult becomes the job's Succeeded condition, its
metrics, artefact URIs and the evaluation, serving and tracking verdicts. Pure: it fills a status model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kubetune_api import ConditionType as C
from kubetune_api import FineTuneJob, Reason
from kubetune_api.status import Artifacts, FineTuneJobStatus, Progress

from .conditions import eval_summary
from .gang import Gang


def record_success(st: FineTuneJobStatus, cond: Callable[..., Any], job: FineTuneJob, gang: Gang,
                   progress: Progress | None) -> None:
    """`cond(type, status, reason, message)` sets one condition of `st`."""
    result = gang.result
    reason = result.reason if result and result.reason == Reason.ALREADY_COMPLETE else Reason.COMPLETED
    attempts = f"{st.attempts} attempt" + ("s" if st.attempts != 1 else "")
    cond(C.SUCCEEDED, True, reason, (result.message if result else "") or f"trained in {attempts}")
    cond(C.RUNNING, False, Reason.COMPLETED, f"{gang.what} completed")
    progress = progress or st.progress or Progress()
    done: dict[str, Any] = {"percent": 100, "stage": "done"}
    if result is not None and result.step is not None:  # the last reports may never have reached us
        done.update(step=max(progress.step, result.step), total_steps=result.total_steps or progress.total_steps)
    st.progress = progress.model_copy(update=done)
    if result is None:
        cond(C.EVALUATION_PASSED, "Unknown", Reason.COMPLETED, "the trainer reported no result")
        return
    st.metrics, st.base_metrics = dict(result.metrics), dict(result.base_metrics)
    st.data_version = result.data_version
    st.stop_reason, st.best_step = result.stop_reason, result.best_step
    known = {k: v for k, v in result.artifacts.items() if k in Artifacts.model_fields}
    st.artifacts = Artifacts(**{"root": job.artifact_root(), **known})
    gate = job.spec.evaluation.gate
    st.eval_summary = eval_summary(st.metrics, st.base_metrics, gate.metric if gate else None)
    if result.gate_passed is None:
        cond(C.EVALUATION_PASSED, True, Reason.NO_GATE, result.gate_message or "no evaluation gate is set")
    elif result.gate_passed:
        cond(C.EVALUATION_PASSED, True, Reason.GATE_PASSED, result.gate_message or "the gate passed")
    else:
        cond(C.EVALUATION_PASSED, False, Reason.GATE_FAILED, result.gate_message or "the gate failed")
    if result.serving_compatible is not None:  # runs stored before the serving check carry none
        cond(C.SERVING_COMPATIBLE, result.serving_compatible, result.serving_reason or Reason.SERVABLE,
             result.serving_message or "")
    if result.tracked is not None:
        cond(C.TRACKED, result.tracked, Reason.LOGGED if result.tracked else Reason.TRACKER_UNAVAILABLE,
             result.tracking_message or "")
