"""The Fits condition in the job state machine (plan.py, fits.py): a job whose model shape is known and whose
estimated peak exceeds its GPU's memory fails with InsufficientGPUMemory before any pod, for good; one that
fits gets Fits True and its pod. Pure planning, as in test_op_plan.py."""

from __future__ import annotations

import copy

from opkit import MINIMAL_SPEC, at, job_body, result_message, running, terminated
from test_op_plan import cond, reconcile

from kubetune_api import ConditionType as C
from kubetune_api import Reason
from kubetune_operator.plan import Observed, plan
from kubetune_operator.settings import Settings, SettingsError

LLAMA_8B = {"layers": 32, "hidden": 4096, "intermediate": 14336, "heads": 32, "kvHeads": 8, "vocab": 128256}


def spec(product: str | None = "NVIDIA-L4", batch: int = 8, shape: dict | None = LLAMA_8B, **training) -> dict:
    out = copy.deepcopy(MINIMAL_SPEC)
    if shape:
        out["model"]["shape"] = shape
    out["dataset"]["maxSeqLength"] = 2048
    out["training"] = {"batchSize": batch, **training}
    out["resources"] = {"gpus": 1, **({"gpuProduct": product} if product else {})}
    return out


def test_a_job_that_cannot_fit_its_gpu_fails_before_any_pod_with_the_numbers_and_the_advice():
    p, body = reconcile(job_body(spec()))
    assert p.create_attempt is None and p.delete == []
    failed, fits = cond(body, C.FAILED), cond(body, C.FITS)
    assert (failed.status, failed.reason) == ("True", Reason.INSUFFICIENT_GPU_MEMORY)
    assert (fits.status, fits.reason) == ("False", Reason.INSUFFICIENT_GPU_MEMORY)
    for words in ("NVIDIA-L4", "exceeds the GPU's 22.5 GiB", "estimated peak", "would fit:",
                  "training.gradientCheckpointing: true"):
        assert words in failed.message, failed.message
    assert body["status"]["phase"] == "Failed" and body["status"].get("attempts", 0) == 0
    assert Reason.INSUFFICIENT_GPU_MEMORY in [e.reason for e in p.events if e.type == "Warning"]
    # never retried: planning again later still creates nothing
    again, _ = reconcile(body, now=3600)
    assert again.create_attempt is None


def test_following_the_advice_starts_a_new_run_that_fits():
    _, body = reconcile(job_body(spec()))
    edited = copy.deepcopy(body)
    edited["spec"]["training"]["gradientCheckpointing"] = True
    edited["spec"]["training"]["batchSize"] = 2
    edited["metadata"]["generation"] = 2
    p, after = reconcile(edited, now=10)
    assert p.create_attempt == 1
    assert cond(after, C.FITS).status == "True" and cond(after, C.FAILED).status == "False"
    assert "fits the GPU's 22.5 GiB" in cond(after, C.FITS).message


def test_a_larger_gpu_product_alone_is_enough_to_start_again():
    _, body = reconcile(job_body(spec(batch=2, gradientCheckpointing=True, product="Tesla-T4")))
    assert cond(body, C.FAILED).reason == Reason.INSUFFICIENT_GPU_MEMORY
    edited = copy.deepcopy(body)
    edited["spec"]["resources"]["gpuProduct"] = "NVIDIA-A100-SXM4-80GB"  # not part of the spec hash
    edited["metadata"]["generation"] = 2
    p, after = reconcile(edited, now=10)
    assert p.create_attempt == 1 and cond(after, C.FITS).status == "True"


def test_a_job_that_fits_gets_fits_true_and_its_pod():
    p, body = reconcile(job_body(spec(batch=1, gradientCheckpointing=True)))
    assert p.create_attempt == 1
    fits = cond(body, C.FITS)
    assert (fits.status, fits.reason) == ("True", Reason.FITS_GPU_MEMORY) and "GiB" in fits.message


def test_unknown_memory_or_shape_never_blocks_a_job():
    p, body = reconcile(job_body(spec(product=None)))
    assert p.create_attempt == 1
    assert (cond(body, C.FITS).status, cond(body, C.FITS).reason) == ("Unknown", Reason.GPU_MEMORY_UNKNOWN)
    p, body = reconcile(job_body(spec(shape=None)))
    assert p.create_attempt == 1 and cond(body, C.FITS) is None


def test_the_operators_gpu_table_overrides_the_built_in_one():
    table = Settings.from_env({"KUBETUNE_GPU_MEMORY_GIB": '{"NVIDIA-L4": 200}'}).gpu_memory
    p, body = reconcile(job_body(spec()), gpu_memory=table)
    assert p.create_attempt == 1 and cond(body, C.FITS).status == "True"
    assert Settings.from_env({}).gpu_memory["NVIDIA-L4"] == 22.5
    for bad in ('{"NVIDIA-L4": "lots"}', "[1]", "not json", '{"NVIDIA-L4": -1}'):
        try:
            Settings.from_env({"KUBETUNE_GPU_MEMORY_GIB": bad})
        except SettingsError as err:
            assert "KUBETUNE_GPU_MEMORY_GIB" in str(err)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_a_run_already_started_is_not_stopped_by_a_new_verdict():
    # e.g. an operator upgraded while the job runs: Fits says so, the pod goes on
    body = job_body(spec(shape=None))
    _, body = reconcile(body)
    body["spec"]["model"]["shape"] = LLAMA_8B  # the shape is not part of the spec hash: same run
    p = plan(Observed(body=body, pods=[running(body, 1)], now=at(5)), 60.0)
    assert p.delete == [] and "Failed" not in [c["type"] for c in p.status["conditions"] if c["status"] == "True"]
    fits = next(c for c in p.status["conditions"] if c["type"] == C.FITS)
    assert (fits["status"], fits["reason"]) == ("False", Reason.INSUFFICIENT_GPU_MEMORY)


def test_the_trainers_own_refusal_sets_fits_false_and_is_never_retried():
    # no shape in the spec: the operator could not check; the trainer did, from config.json (exit 16)
    _, body = reconcile(job_body(spec(shape=None)))
    message = result_message(ok=False, reason="InsufficientGPUMemory",
                             message="estimated peak 30.1 GiB per GPU (...) exceeds the GPU's 22.5 GiB")
    p, after = reconcile(body, [terminated(body, 1, 16, message=message)], now=40)
    assert p.create_attempt is None and after["status"].get("retries", 0) == 0
    failed, fits = cond(after, C.FAILED), cond(after, C.FITS)
    assert (failed.status, failed.reason) == ("True", Reason.INSUFFICIENT_GPU_MEMORY)
    assert (fits.status, fits.reason) == ("False", Reason.INSUFFICIENT_GPU_MEMORY)
    assert "exceeds the GPU's 22.5 GiB" in fits.message and "exceeds the GPU's 22.5 GiB" in failed.message
