"""Issue 4's scenarios 1 and 3 with the real trainer: the node agent runs the pod's `kubetune train` as a
local process, against a tiny random-init model and data in a SeaweedFS S3 server."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from clusterkit import condition, pod_names, wait_condition

from kubetune_api import parse_job

pytestmark = [pytest.mark.k8s, pytest.mark.s3]

BUCKET = "kubetune-e2e"  # the bucket examples/tiny-s3.yaml names
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tiny-s3.yaml"
PLACEHOLDER_ENDPOINT = "http://s3.invalid:8333"

ROWS = [{"instruction": f"SKU for a {colour} {item}?", "input": "", "output": f"NV-{code}-{c}"}
        for item, code in (("tent", "KAV"), ("boots", "FJL"), ("backpack", "RYG"), ("lamp", "LYS"))
        for colour, c in (("red", "RD"), ("blue", "BL"), ("green", "GR"))]


@pytest.fixture(scope="module")
def tiny_s3(s3_server, tmp_path_factory):
    """The tiny model and the example data in S3, where examples/tiny-s3.yaml expects them. One bucket for
    everything: each SeaweedFS bucket is a collection with volumes of its own, and the test server has few."""
    from fixtures.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama")
    s3_server.make_bucket(BUCKET)
    s3_server.upload_dir(model, BUCKET, "models/tiny-llama")
    s3_server.upload_dir(ROOT / "examples" / "data" / "nordvik-sku", BUCKET, "data/nordvik-sku")
    body = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    s3_server.client().put_object(Bucket=BUCKET, Key="data/sku/train.jsonl", Body=body)
    return s3_server


def manifest(name: str, s3, **training) -> dict:
    """A tiny job on the bucket. fp32: `precision: auto` is bf16 on a CPU that multiplies bf16 natively, and
    the gang test compares four processes with one at fp32's tolerance, whichever CPU runs it."""
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "model": {"uri": f"s3://{BUCKET}/models/tiny-llama/"},
            "dataset": {"train": {"uri": f"s3://{BUCKET}/data/sku/train.jsonl"}, "evalSplit": 0.25, "maxSeqLength": 64},
            "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
            "training": {"maxSteps": 8, "batchSize": 4, "learningRate": 0.01, "seed": 3, "precision": "fp32",
                         **training},
            "evaluation": {"maxSamples": 3, "generation": {"maxNewTokens": 6}},
            "checkpoint": {"everySteps": 4, "keep": 1},
            "output": {"uri": f"s3://{BUCKET}/runs/"},
            "storage": {"s3": {"endpoint": s3.endpoint, "addressingStyle": "path", "secretRef": {"name": "s3"}}},
            "resources": {"gpus": 0, "cpu": "2", "memory": "6Gi"},
            "failurePolicy": {"maxRetries": 1, "backoffSeconds": 1},
        },
    }


def s3_secret(cluster, ns: str, s3, name: str = "s3") -> None:
    cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}})


def keys(s3, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def test_kubectl_apply_trains_a_tiny_model_to_success(kube_cluster, kube_namespace, operator_up, node_agent,
                                                        tiny_s3, tmp_path):
    """Scenario 1: `kubectl apply -f examples/tiny-s3.yaml` (its placeholder endpoint pointed at the test's S3
    server) -> pod -> the trainer trains -> kubectl wait returns; the status holds the metrics and artefact
    URIs, which exist in S3."""
    ns = kube_namespace
    s3_secret(kube_cluster, ns, tiny_s3, "s3-credentials")
    text = EXAMPLE.read_text()
    assert PLACEHOLDER_ENDPOINT in text
    path = tmp_path / "tiny-s3.yaml"
    path.write_text(text.replace(PLACEHOLDER_ENDPOINT, tiny_s3.endpoint))
    kube_cluster.kubectl("apply", "-n", ns, "-f", str(path))
    try:
        job = wait_condition(kube_cluster, ns, "tiny-s3", "Succeeded", timeout=300)
    except Exception:
        print(node_agent.logs(ns, "tiny-s3-1")[-5000:])
        raise
    st = job["status"]
    doc = yaml.safe_load(path.read_text())
    assert st["attempts"] == 1 and condition(job, "Succeeded")["reason"] == "Completed"
    assert "evalLoss" in st["metrics"] and "evalLoss" in st["baseMetrics"] and st["evalSummary"]
    assert st["progress"]["totalSteps"] == doc["spec"]["training"]["maxSteps"]  # reported over HTTP
    doc["metadata"]["namespace"] = ns
    assert st["artifacts"]["root"] == parse_job(doc).artifact_root()
    for name in ("adapter", "report", "metrics"):
        assert keys(tiny_s3, st["artifacts"][name]), f"{name}: nothing at {st['artifacts'][name]}"
    assert any(k.endswith("adapter_model.safetensors") for k in keys(tiny_s3, st["artifacts"]["adapter"]))


def test_oom_on_attempt_one_resumes_from_its_checkpoint_on_attempt_two(
    kube_cluster, kube_namespace, operator_up, scripted, tiny_s3
):
    """Scenario 3: the first pod is OOMKilled once it has written a checkpoint; the operator retries, and
    the second attempt resumes from that checkpoint and succeeds."""
    ns = kube_namespace
    s3_secret(kube_cluster, ns, tiny_s3)
    doc = manifest("oom", tiny_s3, maxSteps=150, batchSize=2)
    doc["spec"]["checkpoint"] = {"everySteps": 5, "keep": 2}
    doc["spec"]["evaluation"] = {"maxSamples": 2, "compareBase": False, "generation": {"maxNewTokens": 4}}
    root = parse_job({**doc, "metadata": {"name": "oom", "namespace": ns}}).artifact_root()
    killed_at: list[int] = []

    def first_attempt():
        """Run the real trainer in 0.5 s slices until a checkpoint is complete, then OOM-kill it (the node
        agent pulls script steps one at a time)."""
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            done = [k for k in keys(tiny_s3, root + "checkpoints/") if k.endswith("/COMPLETE")]
            if done:
                killed_at.append(max(int(Path(k).parent.name.removeprefix("step-")) for k in done))
                break
            yield {"run": True, "seconds": 0.5}
        yield {"terminate": {"exitCode": 137, "reason": "OOMKilled"}}

    scripted({"oom-1": first_attempt(), "oom-2": [{"run": True}]})
    kube_cluster.apply(doc, namespace=ns)
    job = wait_condition(kube_cluster, ns, "oom", "Succeeded", timeout=400)
    assert killed_at, "attempt 1 finished before it could be OOM-killed"
    st = job["status"]
    assert st["attempts"] == 2 and st["retries"] == 1 and pod_names(kube_cluster, ns) == ["oom-1", "oom-2"]
    bucket, _, key = (root + "train-log.jsonl").removeprefix("s3://").partition("/")
    log = [json.loads(line) for line in tiny_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
    resumes = [e["step"] for e in log if e["event"] == "resume"]
    assert resumes and resumes[0] >= killed_at[0] > 0, (resumes, killed_at)
