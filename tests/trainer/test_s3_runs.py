"""The trainer as the operator runs it (`kubetune train`, env from the pod), against a real S3 server."""

from __future__ import annotations

import json

import pytest

from kubetune_api.job import parse_job
from kubetune_api.results import ExitCode, ProgressEvent, TrainerResult
from kubetune_trainer.runner import run_job

from .conftest import REPO, manifest, run_cli, sku_rows, tiny_spec, write_jsonl, write_manifest

BUCKET = "kt-trainer-tests"


@pytest.fixture(scope="module")
def bucket(s3, tiny_model, tmp_path_factory):
    s3.make_bucket(BUCKET)
    s3.upload_dir(tiny_model, BUCKET, "models/tiny")
    data = tmp_path_factory.mktemp("s3data")
    client = s3.client()
    client.upload_file(str(write_jsonl(data / "train.jsonl", sku_rows())), BUCKET, "data/train.jsonl")
    bad = [json.dumps({"instruction": "q", "output": "a"}), json.dumps({"instruction": "no answer"})]
    client.upload_file(str(write_jsonl(data / "bad.jsonl", bad)), BUCKET, "data/bad.jsonl")
    client.put_object(Bucket=BUCKET, Key="outside/sentinel.txt", Body=b"do not touch")
    return BUCKET


def s3_spec(s3, name: str, train: str = "data/train.jsonl", **overrides) -> dict:
    spec = tiny_spec(f"s3://{BUCKET}/models/tiny", f"s3://{BUCKET}/{train}", f"s3://{BUCKET}/runs", **overrides)
    spec["storage"] = {"s3": {"endpoint": s3.endpoint, "addressingStyle": "path"}}
    return manifest(spec, name=name)


def keys(s3, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


def pod_env(s3, tmp_path, config, cache_dir) -> dict[str, str]:
    return {**s3.env(), "KUBETUNE_CONFIG": str(config), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "term"),
            "KUBETUNE_CACHE_DIR": str(cache_dir), "KUBETUNE_WORK_DIR": str(tmp_path), "KUBETUNE_ATTEMPT": "1"}


def test_train_reads_s3_writes_every_artefact_and_reports_progress(s3, bucket, tmp_path, cache_dir):
    config = write_manifest(tmp_path / "job.yaml", s3_spec(s3, "from-s3"))
    proc = run_cli(["train"], env=pod_env(s3, tmp_path, config, cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = TrainerResult.from_termination_message((tmp_path / "term").read_text())
    assert result.ok and result.reason == "Completed"
    job = parse_job(s3_spec(s3, "from-s3"))
    root = job.artifact_root()
    assert result.artifacts["root"] == root and result.spec_hash == job.spec_hash
    prefix = root.removeprefix(f"s3://{BUCKET}/")
    written = keys(s3, prefix)
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "metrics.json", "predictions.jsonl", "report.md", "report.html", "loss-curve.png", "config.json",
                 "data-manifest.json", "train-log.jsonl", "_SUCCESS"):
        assert name in written, f"{name} missing from {sorted(written)}"
    body = s3.client().get_object(Bucket=BUCKET, Key=prefix + "data-manifest.json")["Body"].read()
    train_input = json.loads(body)["inputs"]["train"][0]
    etag = s3.client().head_object(Bucket=BUCKET, Key="data/train.jsonl")["ETag"].strip('"')
    assert train_input["uri"] == f"s3://{BUCKET}/data/train.jsonl" and train_input["etag"] == etag
    events = [ProgressEvent.model_validate_json(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    stages = [e.stage for e in events]
    assert {"loading", "training", "evaluating", "saving"} <= set(stages) and stages[-1] == "done"
    assert max(e.step for e in events) == 6 and events[-1].total_steps == 6
    assert set(result.metrics) == {"evalLoss", "perplexity", "rouge1", "rouge2", "rougeL", "exactMatch", "bleu", "chrf"}
    assert set(result.base_metrics) == set(result.metrics)

    again = run_cli(["train"], env=pod_env(s3, tmp_path, config, cache_dir))
    assert again.returncode == 0, again.stderr[-2000:]
    repeat = TrainerResult.from_termination_message((tmp_path / "term").read_text())
    assert repeat.reason == "AlreadyComplete" and repeat.metrics == result.metrics
    assert "already trained" in again.stderr
    assert not any('"stage":"training"' in line for line in again.stdout.splitlines())
    assert s3.client().get_object(Bucket=BUCKET, Key="outside/sentinel.txt")["Body"].read() == b"do not touch"


@pytest.mark.parametrize("case", ["missing-data", "missing-model", "bad-data", "wrong-credentials"])
def test_failures_are_typed_name_the_culprit_and_leave_no_success(s3, bucket, case, monkeypatch, cache_dir):
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    data = {"missing-data": "data/nope.jsonl", "bad-data": "data/bad.jsonl"}.get(case, "data/train.jsonl")
    doc = s3_spec(s3, f"fail-{case}", train=data)
    if case == "missing-model":
        doc["spec"]["model"]["uri"] = f"s3://{BUCKET}/models/absent"
    if case == "wrong-credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    job = parse_job(doc)
    code, result = run_job(job)
    expected = {
        "missing-data": (ExitCode.NOT_FOUND, f"s3://{BUCKET}/data/nope.jsonl does not exist"),
        "missing-model": (ExitCode.NOT_FOUND, f"s3://{BUCKET}/models/absent/ does not exist"),
        "bad-data": (ExitCode.DATA_INVALID,
                     f"s3://{BUCKET}/data/bad.jsonl: row 2: field 'output' is missing or empty"),
        "wrong-credentials": (ExitCode.ACCESS_DENIED, f"S3 denied access to s3://{BUCKET}/runs/"),
    }[case]
    assert code == expected[0] and not result.ok and result.reason == expected[0].reason
    assert expected[1] in result.message
    if case == "wrong-credentials":
        assert "AWS_SECRET_ACCESS_KEY" in result.message and "not-the-secret" not in result.message
    prefix = job.artifact_root().removeprefix(f"s3://{BUCKET}/")
    assert "_SUCCESS" not in keys(s3, prefix)
    assert s3.client().get_object(Bucket=BUCKET, Key="outside/sentinel.txt")["Body"].read() == b"do not touch"


def test_termination_message_stays_under_4_kib_with_thousands_of_bad_rows(tmp_path, tiny_model):
    rows = [json.dumps({"instruction": f"question {i} " + "x" * 200}) for i in range(2000)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = tiny_spec(str(tiny_model), str(train), str(tmp_path / "out"))
    spec["dataset"]["schema"] = "alpaca"
    config = write_manifest(tmp_path / "job.yaml", manifest(spec))
    proc = run_cli(["train"], env={"KUBETUNE_CONFIG": str(config), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "t")})
    assert proc.returncode == ExitCode.DATA_INVALID
    text = (tmp_path / "t").read_text()
    assert len(text.encode()) <= 4096
    result = TrainerResult.from_termination_message(text)
    assert result.reason == "DataInvalid" and "row 1: field 'output' is missing" in result.message
    assert "2000 invalid record(s)" in proc.stderr


def test_tiny_s3_example_trains_against_a_real_s3_server(s3, tiny_model, tmp_path, cache_dir):
    """examples/tiny-s3.yaml, as the operator's end-to-end tests use it, with the endpoint rewritten."""
    import yaml

    doc = yaml.safe_load((REPO / "examples" / "tiny-s3.yaml").read_text())
    doc["spec"]["storage"]["s3"]["endpoint"] = s3.endpoint
    bucket = s3.make_bucket("kubetune-e2e")
    s3.upload_dir(tiny_model, bucket, "models/tiny-llama")
    s3.upload_dir(REPO / "examples" / "data" / "nordvik-sku", bucket, "data/nordvik-sku")
    config = write_manifest(tmp_path / "tiny-s3.yaml", doc)
    proc = run_cli(["train"], env=pod_env(s3, tmp_path, config, cache_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = TrainerResult.from_termination_message((tmp_path / "term").read_text())
    assert result.ok and result.artifacts["root"].startswith("s3://kubetune-e2e/runs/default/tiny-s3/")
    assert "_SUCCESS" in keys_in(s3, bucket, result.artifacts["root"].removeprefix(f"s3://{bucket}/"))


def keys_in(s3, bucket: str, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}
