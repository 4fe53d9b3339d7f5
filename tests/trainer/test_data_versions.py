"""Data versions against a real S3 server: new data at the same URI trains again into its own folder,
unchanged data never does, and a run stored before data versions existed is recognised."""

from __future__ import annotations

import json

import pytest

from kubetune_api.dataversion import versioned_root
from kubetune_api.job import parse_job
from kubetune_trainer.runner import run_job

from .conftest import manifest, sku_rows, tiny_spec, write_jsonl

BUCKET = "kt-data-versions"
KEY = "dv/train.jsonl"


@pytest.fixture(scope="module")
def bucket(s3, tiny_model):
    s3.make_bucket(BUCKET)
    s3.upload_dir(tiny_model, BUCKET, "models/tiny")
    return BUCKET


def keys(s3, prefix: str) -> set[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"].removeprefix(prefix) for page in pages for o in page.get("Contents", [])}


def put_rows(s3, tmp_path, rows: list[dict]) -> str:
    s3.client().upload_file(str(write_jsonl(tmp_path / "train.jsonl", rows)), BUCKET, KEY)
    return s3.client().head_object(Bucket=BUCKET, Key=KEY)["ETag"]


def read(s3, key: str) -> bytes:
    return s3.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_changed_data_at_the_same_uri_retrains_into_a_new_folder_unchanged_data_never(
        s3, bucket, tmp_path, s3_env, cache_dir):
    spec = tiny_spec(f"s3://{BUCKET}/models/tiny", f"s3://{BUCKET}/{KEY}", f"s3://{BUCKET}/dv-runs")
    spec["storage"] = {"s3": {"endpoint": s3.endpoint, "addressingStyle": "path"}}
    job = parse_job(manifest(spec, name="dv"))
    first_root = job.artifact_root()
    first_prefix = first_root.removeprefix(f"s3://{BUCKET}/")
    put_rows(s3, tmp_path, sku_rows())

    _, first = run_job(job)
    assert first.ok and first.reason == "Completed" and first.artifacts["root"] == first_root
    assert first.data_version and json.loads(read(s3, first_prefix + "lineage.json"))["dataVersion"] == first.data_version

    # A run stored before data versions existed: its lineage and data manifest list the inputs only.
    for name in ("lineage.json", "data-manifest.json"):
        doc = json.loads(read(s3, first_prefix + name))
        del doc["dataVersion"]
        s3.client().put_object(Bucket=BUCKET, Key=first_prefix + name, Body=json.dumps(doc).encode())
    _, again = run_job(job)
    assert again.reason == "AlreadyComplete" and again.data_version == first.data_version
    assert again.artifacts["root"] == first_root

    adapter_before = read(s3, first_prefix + "adapter/adapter_model.safetensors")
    put_rows(s3, tmp_path, sku_rows() + [{"instruction": "SKU for a grey tent?", "input": "", "output": "NV-KAV-GY"}])
    _, changed = run_job(job)
    assert changed.reason == "Completed", changed.message
    assert changed.data_version != first.data_version
    new_root = versioned_root(first_root, changed.data_version)
    assert changed.artifacts["root"] == new_root and changed.artifacts["adapter"] == new_root + "adapter/"
    new_prefix = new_root.removeprefix(f"s3://{BUCKET}/")
    assert "_SUCCESS" in keys(s3, new_prefix)
    assert json.loads(read(s3, new_prefix + "lineage.json"))["dataVersion"] == changed.data_version
    # The earlier run is untouched, and an adapter trained on other data is not the same adapter.
    assert read(s3, first_prefix + "adapter/adapter_model.safetensors") == adapter_before
    assert read(s3, new_prefix + "adapter/adapter_model.safetensors") != adapter_before

    _, unchanged = run_job(job)
    assert unchanged.reason == "AlreadyComplete" and unchanged.artifacts["root"] == new_root

    put_rows(s3, tmp_path, sku_rows())  # the first data again: its run is found where it was
    _, back = run_job(job)
    assert back.reason == "AlreadyComplete" and back.artifacts["root"] == first_root
    assert back.data_version == first.data_version


def test_data_version_command_is_the_probe_a_schedule_runs(tmp_path):
    """`kubetune data-version` (a FineTuneSchedule's probe pod): the version of the data only, changing with
    its bytes; a missing input is a typed NotFound in the termination message."""
    import os
    import subprocess
    import sys

    from kubetune_api.results import TrainerResult

    data = write_jsonl(tmp_path / "data" / "train.jsonl", sku_rows())
    doc = manifest(tiny_spec("hf://org/model", str(data.parent), str(tmp_path / "out")))
    env = {**os.environ, "KUBETUNE_MANIFEST": json.dumps(doc), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "term")}

    def probe() -> tuple[int, TrainerResult]:
        proc = subprocess.run([sys.executable, "-m", "kubetune_trainer", "data-version"], env=env,
                              capture_output=True, text=True, timeout=60)
        return proc.returncode, TrainerResult.from_termination_message((tmp_path / "term").read_text())

    code, first = probe()
    assert code == 0 and first.ok and len(first.data_version) == 16
    assert probe()[1].data_version == first.data_version, "the same bytes, the same version"
    write_jsonl(data, sku_rows()[:-1])
    assert probe()[1].data_version != first.data_version
    data.unlink()
    data.parent.rmdir()
    code, missing = probe()
    assert code == 13 and (missing.ok, missing.reason) == (False, "NotFound") and str(data.parent) in missing.message
