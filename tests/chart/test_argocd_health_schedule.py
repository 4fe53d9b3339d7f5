"""The Argo CD health check for FineTuneSchedules (docs/argocd-health-schedule.lua), run by a real Lua."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("lupa")

from .test_argocd_health import health as job_health  # noqa: E402  (after the skip)

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "argocd-health-schedule.lua"


def schedule(status=None, generation=1, suspend=False) -> dict:
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSchedule",
           "metadata": {"name": "s", "namespace": "ns", "generation": generation},
           "spec": {"schedule": "0 3 * * *", "suspend": suspend}}
    if status is not None:
        obj["status"] = status
    return obj


def health(obj: dict) -> tuple[str, str]:
    return job_health(obj, SCRIPT)


VALID = [{"type": "Validated", "status": "True", "reason": "Valid", "message": ""}]


@pytest.mark.parametrize("obj,expected,words", [
    (schedule(), "Progressing", "Waiting for the operator"),
    (schedule({"observedGeneration": 1, "conditions": VALID}, generation=2), "Progressing", "Waiting"),
    (schedule({"observedGeneration": 1, "conditions": [
        {"type": "Validated", "status": "False", "reason": "InvalidSpec", "message": "spec.schedule: bad"}]}),
     "Degraded", "InvalidSpec: spec.schedule: bad"),
    (schedule({"observedGeneration": 1, "conditions": VALID}, suspend=True), "Suspended", "spec.suspend"),
    (schedule({"observedGeneration": 1, "conditions": VALID, "lastOutcome": "DataCheckFailed",
               "message": "skipped: AccessDenied"}), "Degraded", "AccessDenied"),
    (schedule({"observedGeneration": 1, "conditions": VALID, "lastOutcome": "DataUnchanged",
               "lastScheduleTime": "2026-03-02T03:00:00Z", "latestAdapter": "s3://out/a/adapter/"}),
     "Healthy", "last: DataUnchanged at 2026-03-02T03:00:00Z; latest passing adapter s3://out/a/adapter/"),
])
def test_schedule_health(obj, expected, words):
    status, message = health(obj)
    assert status == expected and words in message, (status, message)
