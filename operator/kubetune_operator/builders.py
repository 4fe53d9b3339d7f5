"""Pure builders: a parsed FineTuneJob in, Kubernetes manifests out. No client, no clock, no randomness,
so every manifest is checked against a golden file in tests/operator/golden/."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import yaml

from kubetune_api import API_VERSION, GROUP, KIND, FineTuneJob
from kubetune_api.results import DEFAULT_CONFIG_PATH, TERMINATION_LOG, Env

if TYPE_CHECKING:
    from .settings import Settings

JOB_LABEL = f"{GROUP}/job-name"
ATTEMPT_LABEL = f"{GROUP}/attempt"
HASH_LABEL = f"{GROUP}/spec-hash"
RUN_LABEL = f"{GROUP}/run"
# Kueue admits workloads by this label; it is copied from the FineTuneJob to its pods.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONTAINER = "trainer"
TRAINER_COMMAND = ["kubetune", "train"]
CONFIG_DIR, CONFIG_KEY = DEFAULT_CONFIG_PATH.rsplit("/", 1)
WORK_DIR = "/var/lib/kubetune/work"
CACHE_DIR = "/var/cache/kubetune"
TOKEN_KEY = "token"
# The trainer image's unprivileged user (numeric, so runAsNonRoot can be verified by the kubelet).
TRAINER_UID = 1000
# Room for the trainer to finish writing a checkpoint after SIGTERM (suspend, spec change, deadline).
GRACE_SECONDS = 60


def pod_name(job_name: str, attempt: int, run: int = 1) -> str:
    """`<name>-<attempt>` in the first run, `<name>-r<run>-<attempt>` after a spec change: a new run never
    takes the name (nor deletes the pod and logs) of an earlier run's pod."""
    return f"{job_name}-{attempt}" if run <= 1 else f"{job_name}-r{run}-{attempt}"


def config_map_name(job_name: str) -> str:
    return f"{job_name}-config"


def progress_secret_name(job_name: str) -> str:
    return f"{job_name}-progress"


def labels(job: FineTuneJob, attempt: int | None = None, run: int = 1) -> dict[str, str]:
    """Labels of every object made for `job`; pods also carry their run and attempt."""
    out = {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": job.metadata.name,
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/managed-by": "kubetune-operator",
        "app.kubernetes.io/part-of": "kubetune",
        JOB_LABEL: job.metadata.name,
        HASH_LABEL: job.spec_hash,
    }
    if attempt is not None:
        out[RUN_LABEL] = str(run)
        out[ATTEMPT_LABEL] = str(attempt)
    queue = (getattr(job.metadata, "labels", None) or {}).get(QUEUE_LABEL)
    if queue:
        out[QUEUE_LABEL] = queue
    return out


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    """Makes the job the controller of a child, so deleting the job garbage-collects the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": getattr(job.metadata, "uid", None) or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: FineTuneJob, name: str, attempt: int | None = None, run: int = 1) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": labels(job, attempt, run),
        "ownerReferences": [owner_reference(job)],
    }


def trainer_manifest(job: FineTuneJob) -> dict[str, Any]:
    """The manifest the trainer runs: identity plus the spec with every default spelled out, so a trainer
    image built from another API version still runs exactly what the operator validated and hashed."""
    spec = job.spec.to_wire()
    spec.pop("runtimeRef", None)  # already merged in by the operator; the trainer cannot read runtimes
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace},
        "spec": spec,
    }


def build_config_map(job: FineTuneJob) -> dict[str, Any]:
    """The trainer's config: the full manifest YAML at job.yaml, mounted at /etc/kubetune. It holds Secret
    names only, never their values."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, config_map_name(job.metadata.name)),
        "data": {CONFIG_KEY: yaml.safe_dump(trainer_manifest(job), sort_keys=False)},
    }


def build_progress_secret(job: FineTuneJob, token: str) -> dict[str, Any]:
    """The job's progress token, which the pod reads as KUBETUNE_PROGRESS_TOKEN."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(job, progress_secret_name(job.metadata.name)),
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def _secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(job: FineTuneJob, attempt: int, settings: Settings, image_id: str | None = None) -> list[dict[str, Any]]:
    spec = job.spec
    env: list[dict[str, Any]] = [
        {"name": Env.CONFIG, "value": DEFAULT_CONFIG_PATH},
        # Said explicitly although it is the trainer's default: it must be the container's
        # terminationMessagePath, and a runtime that relocates that path can then find it here too.
        {"name": Env.TERMINATION_LOG, "value": TERMINATION_LOG},
        {"name": Env.ATTEMPT, "value": str(attempt)},
        {"name": Env.IMAGE, "value": job.spec.image or settings.trainer_image},  # for lineage.json
        *([{"name": Env.IMAGE_ID, "value": image_id}] if image_id else []),
        {"name": Env.WORK_DIR, "value": WORK_DIR},
        {"name": Env.CACHE_DIR, "value": CACHE_DIR},
        # The root filesystem is read-only; libraries that default to ~/.cache write under /tmp instead.
        {"name": "HOME", "value": "/tmp"},
    ]
    if settings.progress_url:
        env.append({"name": Env.PROGRESS_URL, "value": settings.progress_url})
        env.append(_secret_env(Env.PROGRESS_TOKEN, progress_secret_name(job.metadata.name), TOKEN_KEY))
    s3 = spec.storage.s3.secret_ref
    if s3 is not None:
        env.append(_secret_env(Env.AWS_ACCESS_KEY_ID, s3.name, s3.access_key_id_key))
        env.append(_secret_env(Env.AWS_SECRET_ACCESS_KEY, s3.name, s3.secret_access_key_key))
    hub = spec.model.secret_ref
    if hub is not None:
        env.append(_secret_env(Env.HF_TOKEN, hub.name, hub.key))
    mlflow = spec.tracking.mlflow.secret_ref if spec.tracking.mlflow else None
    if mlflow is not None:  # basic auth or a token: the keys the Secret lacks stay unset (optional)
        for name, key in ((Env.MLFLOW_TRACKING_USERNAME, mlflow.username_key),
                          (Env.MLFLOW_TRACKING_PASSWORD, mlflow.password_key),
                          (Env.MLFLOW_TRACKING_TOKEN, mlflow.token_key)):
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": mlflow.name, "key": key,
                                                                      "optional": True}}})
    return env + _torchrun_env(job)


def world_size(job: FineTuneJob) -> int:
    """Training processes in the pod: one per GPU (one on CPU)."""
    return max(1, job.spec.resources.gpus)


def _torchrun_env(job: FineTuneJob) -> list[dict[str, Any]]:
    """With several GPUs `kubetune train` becomes torchrun's agent and starts one worker per GPU. The
    settings are torchrun's own PET_* variables (`torchrun` reads each flag from PET_<FLAG>), so a
    multi-node gang replaces PET_STANDALONE with PET_NNODES, PET_NODE_RANK and the rendezvous ones."""
    if world_size(job) == 1:
        return []
    return [
        {"name": "PET_NPROC_PER_NODE", "value": str(world_size(job))},
        {"name": "PET_STANDALONE", "value": "1"},
        # On SIGTERM the agent gives the workers this long to finish the step and checkpoint it, then
        # kills them and writes the termination message before the kubelet's grace period ends.
        {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(GRACE_SECONDS - 10)},
    ]


def _resources(job: FineTuneJob) -> dict[str, Any]:
    res = job.spec.resources
    # Requests equal limits: the pod is Guaranteed, so it is the last to be evicted under memory pressure.
    requests = {"cpu": res.cpu, "memory": res.memory}
    limits = dict(requests)
    if res.gpus:
        limits["nvidia.com/gpu"] = str(res.gpus)
    return {"requests": requests, "limits": limits}


def _volumes(job: FineTuneJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes = [
        {"name": "config", "configMap": {"name": config_map_name(job.metadata.name)}},
        {"name": "work", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        # PyTorch data loaders share tensors through /dev/shm; the runtime's default is 64 MiB.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "work", "mountPath": WORK_DIR},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    return volumes, mounts


def _placement(job: FineTuneJob) -> dict[str, Any]:
    res = job.spec.resources
    out: dict[str, Any] = {}
    selector = dict(res.node_selector)
    if res.gpu_product:
        selector["nvidia.com/gpu.product"] = res.gpu_product
    if selector:
        out["nodeSelector"] = selector
    if res.tolerations:
        out["tolerations"] = [t.to_wire() for t in res.tolerations]
    if res.affinity:
        out["affinity"] = res.affinity
    if res.priority_class_name:
        out["priorityClassName"] = res.priority_class_name
    return out


def _container(job: FineTuneJob, attempt: int, settings: Settings, mounts: list[dict[str, Any]],
               image_id: str | None = None) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": job.spec.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": TRAINER_COMMAND,
        "env": _env(job, attempt, settings, image_id),
        "resources": _resources(job),
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        # The trainer writes its TrainerResult there; if it dies before that, the log tail says why.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
    }


def build_trainer_pod(
    job: FineTuneJob, attempt: int, settings: Settings, active_deadline_seconds: int | None = None, run: int = 1,
    image_id: str | None = None,
) -> dict[str, Any]:
    """The trainer pod of `attempt` in `run` (`pod_name`). `active_deadline_seconds` is what is left of the
    job's activeDeadlineSeconds (the caller knows the clock; this function does not); `image_id` is the
    digest the kubelet reported for an earlier attempt (status.trainerImageID), for lineage.json."""
    volumes, mounts = _volumes(job)
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The trainer talks to nobody but S3 and the operator's progress endpoint: no API credentials.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(job, attempt, settings, mounts, image_id)],
        "volumes": volumes,
        **_placement(job),
    }
    if settings.trainer_service_account:
        spec["serviceAccountName"] = settings.trainer_service_account
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(job, pod_name(job.metadata.name, attempt, run), attempt, run),
        "spec": spec,
    }
