"""The builders against golden manifests (regenerate with KUBETUNE_UPDATE_GOLDEN=1 and review the diff),
plus the properties a reviewer cares about spelled out, and the manifests checked against the Kubernetes
schema."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from opkit import SETTINGS, UID, job_body, parsed

from kubetune_api import load_manifest
from kubetune_operator.builders import (
    HASH_LABEL,
    build_config_map,
    build_gang,
    build_gang_service,
    build_progress_secret,
    build_trainer_pod,
)
from kubetune_operator.settings import Settings

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("KUBETUNE_UPDATE_GOLDEN") == "1"
K8S_VERSION = "1.29.0"

FULL_SPEC = {
    "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "secretRef": {"name": "hf-token"}},
    "dataset": {"train": {"uri": "s3://datasets/support/train.parquet"}, "schema": "alpaca"},
    "output": {"uri": "s3://finetunes/"},
    "method": {"type": "qlora"},
    "training": {"maxSteps": 500, "learningRate": 1e-4},
    "storage": {"s3": {"endpoint": "https://minio.storage.svc:9000", "addressingStyle": "path",
                       "secretRef": {"name": "s3-credentials", "accessKeyIdKey": "user", "secretAccessKeyKey": "pass"}}},
    "resources": {
        "gpus": 2, "gpuProduct": "NVIDIA-A100-SXM4-80GB", "cpu": "8", "memory": "64Gi",
        "nodeSelector": {"node-pool": "gpu"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]}},
        "priorityClassName": "batch-low",
    },
    "image": "ghcr.io/kubetune/trainer:0.1.0",
    "activeDeadlineSeconds": 86400,
}


def full_job():
    return parsed(job_body(FULL_SPEC, name="support-bot", labels={"kueue.x-k8s.io/queue-name": "gpu-queue"}))


def minimal_job():
    return parsed(job_body())


def gang_job(nodes: int = 2, queue: str | None = "gpu-queue"):
    spec = {**FULL_SPEC, "resources": {**FULL_SPEC["resources"], "nodes": nodes}}
    return parsed(job_body(spec, name="support-bot", labels={"kueue.x-k8s.io/queue-name": queue} if queue else None))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's job.yaml) as readable literal blocks."""


_Dumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def check_golden(name: str, obj: dict) -> None:
    path = GOLDEN / name
    text = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=110)
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"{path} is missing; run with KUBETUNE_UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(), f"{name} differs from its golden file (KUBETUNE_UPDATE_GOLDEN=1 rewrites it)"


CASES = {
    "pod-minimal.yaml": lambda: build_trainer_pod(minimal_job(), 1, Settings(trainer_image="registry.example/t:1")),
    "pod-full.yaml": lambda: build_trainer_pod(
        full_job(), 3, Settings(**{**SETTINGS.__dict__, "trainer_service_account": "trainer-s3"}), 3600
    ),
    "configmap-full.yaml": lambda: build_config_map(full_job()),
    "secret-progress.yaml": lambda: build_progress_secret(minimal_job(), "0" * 64),
    "gang-service.yaml": lambda: build_gang_service(gang_job()),
    "gang-pod-0.yaml": lambda: build_gang(gang_job(), 3, SETTINGS, 3600, run=2)[0],
    "gang-pod-1.yaml": lambda: build_gang(gang_job(), 3, SETTINGS, 3600, run=2)[1],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_golden_and_the_kubernetes_schema(name):
    obj = CASES[name]()
    check_golden(name, obj)
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_pod_identity_labels_and_owner():
    pod = build_trainer_pod(full_job(), 3, SETTINGS)
    meta = pod["metadata"]
    assert meta["name"] == "support-bot-3" and meta["namespace"] == "team-a"
    assert meta["labels"]["kubetune.io/job-name"] == "support-bot"
    assert meta["labels"]["kubetune.io/attempt"] == "3"
    assert meta["labels"][HASH_LABEL] == full_job().spec_hash
    assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    for key in ("name", "instance", "component", "managed-by", "part-of"):
        assert meta["labels"][f"app.kubernetes.io/{key}"]
    assert meta["ownerReferences"] == [{
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "name": "support-bot", "uid": UID,
        "controller": True, "blockOwnerDeletion": True,
    }]


def test_pod_is_locked_down_and_holds_no_api_credentials():
    spec = build_trainer_pod(full_job(), 1, SETTINGS)["spec"]
    container = spec["containers"][0]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }
    assert container["command"] == ["kubetune", "train"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in spec["volumes"]


def test_credentials_are_passed_by_reference_only():
    env = {e["name"]: e for e in build_trainer_pod(full_job(), 1, SETTINGS)["spec"]["containers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {"secretKeyRef": {"name": "s3-credentials", "key": "user"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-credentials", "key": "pass"}}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}
    assert env["KUBETUNE_PROGRESS_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "support-bot-progress", "key": "token"}}
    assert env["KUBETUNE_PROGRESS_URL"]["value"] == SETTINGS.progress_url
    assert env["KUBETUNE_ATTEMPT"]["value"] == "1"
    assert env["KUBETUNE_CONFIG"]["value"] == "/etc/kubetune/job.yaml"
    assert all("value" not in e for name, e in env.items() if name.startswith(("AWS_", "HF_", "KUBETUNE_PROGRESS_T")))


def test_placement_and_resources_come_from_the_spec():
    spec = build_trainer_pod(full_job(), 1, SETTINGS, active_deadline_seconds=120)["spec"]
    assert spec["nodeSelector"] == {"node-pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert spec["tolerations"] == FULL_SPEC["resources"]["tolerations"]
    assert spec["affinity"] == FULL_SPEC["resources"]["affinity"]
    assert spec["priorityClassName"] == "batch-low"
    assert spec["activeDeadlineSeconds"] == 120
    resources = spec["containers"][0]["resources"]
    assert resources["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == {"cpu": "8", "memory": "64Gi"}
    cpu_only = build_trainer_pod(parsed(job_body({**FULL_SPEC, "resources": {"gpus": 0}})), 1, SETTINGS)
    assert "nvidia.com/gpu" not in cpu_only["spec"]["containers"][0]["resources"]["limits"]
    assert spec["containers"][0]["image"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert build_trainer_pod(minimal_job(), 1, SETTINGS)["spec"]["containers"][0]["image"] == SETTINGS.trainer_image


def test_config_map_is_the_resolved_manifest_the_trainer_can_load(tmp_path):
    data = build_config_map(full_job())["data"]
    (tmp_path / "job.yaml").write_text(data["job.yaml"])
    loaded = load_manifest(tmp_path / "job.yaml")
    assert loaded.spec_hash == full_job().spec_hash
    assert loaded.metadata.name == "support-bot" and loaded.metadata.namespace == "team-a"
    assert yaml.safe_load(data["job.yaml"])["spec"]["training"]["batchSize"] == 8  # defaults spelled out


def test_progress_secret_holds_the_token():
    secret = build_progress_secret(minimal_job(), "abc123")
    assert base64.b64decode(secret["data"]["token"]).decode() == "abc123"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == UID


def test_one_node_is_the_single_pod_of_before():
    assert build_gang(full_job(), 3, SETTINGS, 3600) == [build_trainer_pod(full_job(), 3, SETTINGS, 3600)]


def test_a_gang_is_n_pods_that_find_pod_0s_rendezvous_by_dns():
    pods = build_gang(gang_job(nodes=3, queue=None), 2, SETTINGS)
    service = build_gang_service(gang_job(nodes=3, queue=None))
    assert [p["metadata"]["name"] for p in pods] == ["support-bot-2-0", "support-bot-2-1", "support-bot-2-2"]
    assert service["metadata"]["name"] == "support-bot-gang" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    for i, pod in enumerate(pods):
        assert pod["spec"]["hostname"] == pod["metadata"]["name"]
        assert pod["spec"]["subdomain"] == service["metadata"]["name"]
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items()), "the Service selects it"
        assert "kueue.x-k8s.io/pod-group-name" not in labels and "annotations" not in pod["metadata"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}
        assert env["PET_NNODES"] == "3" and env["PET_NPROC_PER_NODE"] == "2" and env["PET_NODE_RANK"] == str(i)
        assert env["PET_RDZV_BACKEND"] == "c10d" and "PET_STANDALONE" not in env
        assert env["PET_RDZV_ENDPOINT"] == "support-bot-2-0.support-bot-gang:29400"
        assert env["PET_RDZV_ID"] == "support-bot-2"
        assert env["PET_LOCAL_ADDR"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    next_attempt = build_gang(gang_job(nodes=3, queue=None), 3, SETTINGS)[0]["spec"]["containers"][0]["env"]
    assert {"name": "PET_RDZV_ID", "value": "support-bot-3"} in next_attempt, "one rendezvous per attempt"


def test_a_queued_gang_is_one_kueue_pod_group():
    pods = build_gang(gang_job(nodes=4), 1, SETTINGS)
    for pod in pods:
        meta = pod["metadata"]
        assert meta["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert meta["labels"]["kueue.x-k8s.io/pod-group-name"] == "support-bot-1"
        assert meta["annotations"] == {"kueue.x-k8s.io/pod-group-total-count": "4"}
