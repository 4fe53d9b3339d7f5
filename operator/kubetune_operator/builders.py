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
# Kueue's plain-pod groups: the pods of one gang are admitted together (all or none).
POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
POD_GROUP_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
# A gang pod's place in its gang (0..nodes-1) and the gang's size, as created (resources can change mid-run).
GANG_INDEX_LABEL = f"{GROUP}/gang-index"
GANG_SIZE_LABEL = f"{GROUP}/gang-size"
# A pod's hostname and a Service's name are DNS labels: at most 63 characters.
DNS_LABEL_MAX = 63
# torchrun's c10d rendezvous port (its default), served by the agent of the pod at the endpoint.
RDZV_PORT = 29400
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


def pod_name(job_name: str, attempt: int, run: int = 1, index: int | None = None) -> str:
    """`<name>-<attempt>` in the first run, `<name>-r<run>-<attempt>` after a spec change: a new run never
    takes the name (nor deletes the pod and logs) of an earlier run's pod. The pods of a multi-node gang add
    their index: `<name>-<attempt>-<index>`."""
    base = f"{job_name}-{attempt}" if run <= 1 else f"{job_name}-r{run}-{attempt}"
    return base if index is None else f"{base}-{index}"


def gang_size(job: FineTuneJob) -> int:
    """Pods per attempt (spec.resources.nodes)."""
    return job.spec.resources.nodes


def gang_pod_names(job: FineTuneJob, attempt: int, run: int = 1) -> list[str]:
    """The pod names of one attempt: one pod as before, or `<attempt's pod name>-<index>` for a gang."""
    name = job.metadata.name
    if gang_size(job) == 1:
        return [pod_name(name, attempt, run)]
    return [pod_name(name, attempt, run, i) for i in range(gang_size(job))]


def gang_name_error(job: FineTuneJob, run: int) -> str | None:
    """Why the gang pods of `run` cannot all be named, or None. A gang pod's hostname is its name, a DNS
    label; the longest is the last pod's of the last attempt the retries allow (1 + failurePolicy.maxRetries):
    `<name>[-r<run>]-<attempt>-<index>`. In run 1 it always fits (the API bounds the name, nodes and
    retries), but the run number grows with each new run (each change of the spec hash). Kueue's pod-group label (that name
    without `-<index>`) and the Service's name are shorter. Disruptions and resumptions add attempts beyond
    the retries: a name that outgrows the limit then is rejected by the API server (PodRejected)."""
    name, nodes, retries = job.metadata.name, gang_size(job), job.spec.failure_policy.max_retries
    if nodes == 1:
        return None
    longest = pod_name(name, 1 + retries, run, nodes - 1)
    over = len(longest) - DNS_LABEL_MAX
    if over <= 0:
        return None
    return (f"metadata.name: {name!r} is too long for a gang of spec.resources.nodes {nodes} in run {run}: the "
            f"hostname of its last pod, {longest!r} (attempt {1 + retries}: failurePolicy.maxRetries {retries}), "
            f"would be {len(longest)} characters, over the {DNS_LABEL_MAX} of a DNS label; create the job under "
            f"a name of at most {len(name) - over} characters"
            + (", or delete it and create it again (a new job starts at run 1)" if run > 1 else ""))


def gang_service_name(job_name: str) -> str:
    """The job's headless Service: the DNS domain of its gang pods (`<pod name>.<service>`)."""
    return f"{job_name}-gang"


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
    if spec["resources"].get("nodes") == 1:  # left out at its default: trainer images older than it still run
        del spec["resources"]["nodes"]
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


def _env(job: FineTuneJob, attempt: int, settings: Settings, image_id: str | None = None, run: int = 1,
         index: int | None = None) -> list[dict[str, Any]]:
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
    return env + _torchrun_env(job, attempt, run, index)


def processes_per_pod(job: FineTuneJob) -> int:
    """Training processes in one pod: one per GPU (one on CPU)."""
    return max(1, job.spec.resources.gpus)


def world_size(job: FineTuneJob) -> int:
    """Training processes of one attempt, all pods of the gang together."""
    return gang_size(job) * processes_per_pod(job)


def _torchrun_env(job: FineTuneJob, attempt: int, run: int, index: int | None) -> list[dict[str, Any]]:
    """With several processes `kubetune train` becomes torchrun's agent and starts one worker per GPU. The
    settings are torchrun's own PET_* variables (`torchrun` reads each flag from PET_<FLAG>). One pod is
    torchrun --standalone; a gang's agents meet at pod 0's c10d rendezvous store, which assigns the ranks."""
    if world_size(job) == 1:
        return []
    env = [{"name": "PET_NPROC_PER_NODE", "value": str(processes_per_pod(job))}]
    if index is None:
        env.append({"name": "PET_STANDALONE", "value": "1"})
    else:
        first = pod_name(job.metadata.name, attempt, run, 0)
        env += [
            {"name": "PET_NNODES", "value": str(gang_size(job))},
            # Read by torchrun's static rendezvous only; c10d assigns the node ranks itself (by agent address).
            {"name": "PET_NODE_RANK", "value": str(index)},
            {"name": "PET_RDZV_BACKEND", "value": "c10d"},
            {"name": "PET_RDZV_ENDPOINT", "value": f"{first}.{gang_service_name(job.metadata.name)}:{RDZV_PORT}"},
            # One rendezvous per attempt: agents of an earlier attempt never join this one.
            {"name": "PET_RDZV_ID", "value": pod_name(job.metadata.name, attempt, run)},
            # The address the other pods reach this one at (torchrun's default, the FQDN, may not resolve).
            {"name": "PET_LOCAL_ADDR", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ]
    # On SIGTERM the agent gives the workers this long to finish the step and checkpoint it, then
    # kills them and writes the termination message before the kubelet's grace period ends.
    env.append({"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(GRACE_SECONDS - 10)})
    return env


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
               image_id: str | None = None, run: int = 1, index: int | None = None) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": job.spec.image or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent",
        "command": TRAINER_COMMAND,
        "env": _env(job, attempt, settings, image_id, run, index),
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
    image_id: str | None = None, index: int | None = None,
) -> dict[str, Any]:
    """The trainer pod of `attempt` in `run` (`pod_name`), or pod `index` of its gang when
    spec.resources.nodes > 1 (`build_gang`). `active_deadline_seconds` is what is left of the job's
    activeDeadlineSeconds (the caller knows the clock; this function does not); `image_id` is the digest
    the kubelet reported for an earlier attempt (status.trainerImageID), for lineage.json."""
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
        "containers": [_container(job, attempt, settings, mounts, image_id, run, index)],
        "volumes": volumes,
        **_placement(job),
    }
    if settings.trainer_service_account:
        spec["serviceAccountName"] = settings.trainer_service_account
    if active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = max(1, int(active_deadline_seconds))
    metadata = _metadata(job, pod_name(job.metadata.name, attempt, run, index), attempt, run)
    if index is not None:
        _gang_member(job, attempt, run, index, metadata, spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def _gang_member(job: FineTuneJob, attempt: int, run: int, index: int, metadata: dict[str, Any],
                 spec: dict[str, Any]) -> None:
    """What makes a pod one of a gang: its index and the gang's size, its DNS name `<pod name>.<service>`
    (hostname and subdomain), and Kueue's pod group when the job is queued."""
    metadata["labels"][GANG_INDEX_LABEL] = str(index)
    metadata["labels"][GANG_SIZE_LABEL] = str(gang_size(job))
    spec["hostname"] = metadata["name"]
    spec["subdomain"] = gang_service_name(job.metadata.name)
    if QUEUE_LABEL in metadata["labels"]:
        metadata["labels"][POD_GROUP_LABEL] = pod_name(job.metadata.name, attempt, run)
        metadata["annotations"] = {POD_GROUP_COUNT_ANNOTATION: str(gang_size(job))}


def build_gang(
    job: FineTuneJob, attempt: int, settings: Settings, active_deadline_seconds: int | None = None, run: int = 1,
    image_id: str | None = None,
) -> list[dict[str, Any]]:
    """Every pod of one attempt: the one trainer pod, or the spec.resources.nodes pods of a gang (whose
    headless Service is `build_gang_service`)."""
    indices: list[int | None] = [None] if gang_size(job) == 1 else list(range(gang_size(job)))
    return [build_trainer_pod(job, attempt, settings, active_deadline_seconds, run, image_id, i) for i in indices]


def build_gang_service(job: FineTuneJob) -> dict[str, Any]:
    """The headless Service that gives every gang pod of the job a DNS name, `<hostname>.<service>`, so the
    pods find pod 0's rendezvous. One per job: hostnames carry the attempt, so the gangs of two attempts
    never share a name. Addresses are published before the pods are ready (they have no readiness probe,
    and the rendezvous happens while they start)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, gang_service_name(job.metadata.name)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: job.metadata.name},
            "ports": [{"name": "rendezvous", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}],
        },
    }
