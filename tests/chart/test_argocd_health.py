"""The Argo CD health check in docs/argocd-health.lua, run by a real Lua (lupa) against status fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

lupa = pytest.importorskip("lupa")

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "argocd-health.lua"
T = "2025-01-01T00:00:00Z"


def cond(ctype, status="True", reason="R", message=""):
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": T,
            "observedGeneration": 1}


def job(status=None, generation=1, suspend=False):
    obj = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "j", "namespace": "ns", "generation": generation},
           "spec": {"model": {"uri": "s3://m/b/"}, "suspend": suspend}}
    if status is not None:
        obj["status"] = status
    return obj


def health(obj: dict, script: Path = SCRIPT) -> tuple[str, str]:
    """Argo CD's verdict: the Lua health check run on `obj` as Argo CD runs it."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(script.read_text())
    return hs["status"], hs["message"]


@pytest.mark.parametrize(
    "obj,expected,words",
    [
        (job(), "Progressing", "Waiting for the operator"),
        (job({"conditions": [cond("Validated", reason="Valid")], "phase": "Pending", "observedGeneration": 1}),
         "Progressing", "Valid"),
        (job({"conditions": [cond("Validated"), cond("Scheduled", "False", "Unschedulable", "0/3 nodes have a GPU")],
              "phase": "Pending", "observedGeneration": 1}), "Progressing", "Unschedulable: 0/3 nodes"),
        (job({"conditions": [cond("Validated"), cond("Running", reason="Training")], "phase": "Running",
              "observedGeneration": 1, "progress": {"step": 40, "totalSteps": 100, "percent": 40}}),
         "Progressing", "Training 40% (step 40/100)"),
        (job({"conditions": [cond("Running", "False"), cond("Succeeded", reason="Completed"),
                             cond("EvaluationPassed", reason="GatePassed")],
              "phase": "Succeeded", "observedGeneration": 1, "evalSummary": "rougeL 0.41"}),
         "Healthy", "Succeeded (rougeL 0.41); EvaluationPassed=True (GatePassed)"),
        (job({"conditions": [cond("Failed", reason="OOMKilled", message="attempt 3 ran out of memory")],
              "phase": "Failed", "observedGeneration": 1}), "Degraded", "OOMKilled: attempt 3 ran out of memory"),
        (job({"conditions": [cond("Failed", reason="InvalidSpec", message="spec.training.learningRate: ...")],
              "phase": "Failed", "observedGeneration": 1}), "Degraded", "InvalidSpec"),
        (job({"conditions": [cond("Suspended", reason="Suspended")], "phase": "Suspended",
              "observedGeneration": 1}, suspend=True), "Suspended", "Suspended"),
        (job(suspend=True), "Suspended", "spec.suspend"),
        (job({"conditions": [cond("Validated"), cond("Running", "Unknown", "NodeNotReady", "node n1 of pod demo-1 is not Ready")],
              "phase": "Unknown", "observedGeneration": 1}), "Progressing", "NodeNotReady: node n1 of pod demo-1"),
        (job({"phase": "Succeeded", "observedGeneration": 1}), "Healthy", "Succeeded"),
        (job({"phase": "Failed", "observedGeneration": 1}), "Degraded", "Failed"),
        # A spec edit after success is a new run: Progressing until the operator has observed it.
        (job({"conditions": [cond("Succeeded")], "phase": "Succeeded", "observedGeneration": 1}, generation=2),
         "Progressing", "Spec changed (generation 2)"),
    ],
    ids=["new", "validated", "unschedulable", "training", "succeeded", "oom", "invalid", "suspended",
         "suspend-before-status", "node-not-ready", "phase-only-succeeded", "phase-only-failed", "spec-changed"],
)
def test_health(obj, expected, words):
    status, message = health(obj)
    assert status == expected, message
    assert words in message
