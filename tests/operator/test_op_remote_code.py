"""The platform's remote-code policy as the operator applies it: `model.trustRemoteCode: true` runs only
under a ClusterFineTuneRuntime that sets `allowRemoteCode: true`; otherwise the job is InvalidSpec at apply
time, with a message naming the field and how to get it allowed, and no pod is built."""

from __future__ import annotations

import pytest

from kubetune_api import Reason
from kubetune_operator.validation import resolve


def body(trust: bool, runtime_ref: str | None = None) -> dict:
    spec = {"model": {"uri": "hf://acme/custom-arch", "trustRemoteCode": trust},
            "dataset": {"train": {"uri": "s3://data/train.jsonl"}}, "output": {"uri": "s3://out/"}}
    if runtime_ref:
        spec["runtimeRef"] = runtime_ref
    return {"metadata": {"name": "j", "namespace": "team"}, "spec": spec}


@pytest.mark.parametrize("runtime_ref,runtime,says", [
    (None, None, "the job names no spec.runtimeRef"),
    ("plain", {"description": "no remote code"}, "ClusterFineTuneRuntime 'plain' does not set allowRemoteCode: true"),
    ("off", {"allowRemoteCode": False}, "ClusterFineTuneRuntime 'off' does not set allowRemoteCode: true"),
])
def test_remote_code_without_a_runtime_that_allows_it_is_an_invalid_spec(runtime_ref, runtime, says):
    job, reason, errors = resolve(body(True, runtime_ref), runtime)
    assert job is None and reason == Reason.INVALID_SPEC
    assert len(errors) == 1 and errors[0].startswith("spec.model.trustRemoteCode:") and says in errors[0]
    assert "allowRemoteCode: true" in errors[0] and "set trustRemoteCode: false" in errors[0]


def test_a_runtime_that_allows_remote_code_lets_the_job_run():
    job, reason, errors = resolve(body(True, "custom"), {"allowRemoteCode": True})
    assert reason == Reason.VALID and not errors and job.spec.model.trust_remote_code


def test_jobs_without_remote_code_need_no_runtime():
    assert resolve(body(False), None)[1] == Reason.VALID
