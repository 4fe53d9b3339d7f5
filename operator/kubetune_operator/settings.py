"""The operator's own settings, read once from the environment (the Helm chart sets them).

`Settings` is what our code reads; `configure_kopf` applies kopf's settings. Both are called from the one
startup hook in handlers.py, so every knob is set in one place with the reason next to it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from dataclasses import dataclass, field

import kopf

from kubetune_api import GROUP, __version__
from kubetune_api.fit import GPU_MEMORY_GIB

from .builders import JOB_LABEL

log = logging.getLogger(__name__)

DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{__version__}"


class SettingsError(ValueError):
    """An operator environment variable holds a value that cannot be used."""


def _number(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < 0:
        raise SettingsError(f"{name}={raw!r} must not be negative")
    return value


@dataclass(frozen=True)
class Settings:
    """Operator settings. Every field is an environment variable of the operator's Deployment."""

    # KUBETUNE_TRAINER_IMAGE: the trainer image used when a job sets no spec.image.
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    # KUBETUNE_TRAINER_SERVICE_ACCOUNT: service account of trainer pods, for clusters that hand out S3
    # credentials by workload identity (IRSA and alike). The API token itself is never mounted.
    trainer_service_account: str | None = None
    # KUBETUNE_PROGRESS_URL: the URL trainer pods post progress to (this operator's Service). Unset: trainer
    # pods get no progress URL and report to their log only.
    progress_url: str | None = None
    # KUBETUNE_PROGRESS_KEY: HMAC key for per-job progress tokens, from a Secret. Unset: a random key, so
    # tokens of running pods stop working when the operator restarts (their progress shows again after the
    # next retry); set it in production.
    progress_key: bytes = field(default=b"", repr=False)
    progress_key_generated: bool = False
    # KUBETUNE_PROGRESS_PORT: where the progress endpoint listens; 0 disables it.
    progress_port: int = 8080
    # KUBETUNE_PROGRESS_INTERVAL: at most one progress status patch per job per this many seconds.
    # 10 s keeps 500 running jobs at <= 50 patches/s, and kubectl sees a report within ~10 s (< 30 s).
    progress_interval: float = 10.0
    # KUBETUNE_METRICS_PORT: Prometheus /metrics; 0 disables it.
    metrics_port: int = 9090
    # KUBETUNE_IMAGE_PULL_GRACE_SECONDS: how long a pod may fail to pull its image before the job fails
    # with ImagePullFailed. Registries have transient hiccups; a wrong image name does not heal.
    image_pull_grace: float = 120.0
    # KUBETUNE_NAMESPACES: comma-separated namespaces to watch; empty means the whole cluster.
    namespaces: tuple[str, ...] = ()
    # KUBETUNE_LEADER_ELECTION_LEASE: "<namespace>/<name>" of a coordination.k8s.io Lease. Set (the chart
    # does with more than one replica), the replicas elect a leader through it and only the leader acts;
    # the others keep warm caches and take over when it goes (leader.py). Empty: this process always acts.
    leader_lease: tuple[str, str] | None = None
    # KUBETUNE_LEADER_ELECTION_SECONDS: how long a standby waits on a silent leader before taking over
    # (client-go's default of 15 s). A leader that shuts down hands over at once.
    lease_seconds: float = 15.0
    # KUBETUNE_POD_NAME: this replica's name in the Lease (the chart sets it to the pod's name); unset, the
    # host name plus a random suffix, so two processes on one host never take each other for itself.
    identity: str = ""
    # KUBETUNE_GPU_MEMORY_GIB: a JSON object, nvidia.com/gpu.product value -> one GPU's memory in GiB, for the
    # Fits condition (the chart's gpuMemory). Unset: the API's table of common GPUs (kubetune_api.fit).
    gpu_memory: dict[str, float] = field(default_factory=lambda: dict(GPU_MEMORY_GIB))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        key = env.get("KUBETUNE_PROGRESS_KEY", "").encode()
        return cls(
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
            trainer_service_account=env.get("KUBETUNE_TRAINER_SERVICE_ACCOUNT") or None,
            progress_url=(env.get("KUBETUNE_PROGRESS_URL") or "").rstrip("/") or None,
            progress_key=key or secrets.token_bytes(32),
            progress_key_generated=not key,
            progress_port=int(_number(env, "KUBETUNE_PROGRESS_PORT", 8080)),
            progress_interval=_number(env, "KUBETUNE_PROGRESS_INTERVAL", 10.0),
            metrics_port=int(_number(env, "KUBETUNE_METRICS_PORT", 9090)),
            image_pull_grace=_number(env, "KUBETUNE_IMAGE_PULL_GRACE_SECONDS", 120.0),
            namespaces=tuple(n.strip() for n in env.get("KUBETUNE_NAMESPACES", "").split(",") if n.strip()),
            leader_lease=_lease(env.get("KUBETUNE_LEADER_ELECTION_LEASE", "")),
            lease_seconds=_number(env, "KUBETUNE_LEADER_ELECTION_SECONDS", 15.0),
            identity=env.get("KUBETUNE_POD_NAME") or f"{socket.gethostname()}_{secrets.token_hex(4)}",
            gpu_memory=_gpu_memory(env.get("KUBETUNE_GPU_MEMORY_GIB", "")),
        )


def _gpu_memory(raw: str) -> dict[str, float]:
    if not raw.strip():
        return dict(GPU_MEMORY_GIB)
    try:
        table = json.loads(raw)
    except ValueError:
        table = None
    if not isinstance(table, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in table.values()
    ):
        raise SettingsError(f"KUBETUNE_GPU_MEMORY_GIB={raw[:200]!r} must be a JSON object of GPU product -> "
                            "GiB (a positive number), e.g. {\"NVIDIA-L4\": 22.5}")
    return {str(k): float(v) for k, v in table.items()}


def _lease(raw: str) -> tuple[str, str] | None:
    if not raw.strip():
        return None
    namespace, _, name = raw.strip().partition("/")
    if not namespace or not name or "/" in name:
        raise SettingsError(f"KUBETUNE_LEADER_ELECTION_LEASE={raw!r} must be <namespace>/<name>")
    return namespace, name


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """kopf's settings, each with the reason it is not the default."""
    # Our name for a finalizer. No handler needs one today: deleting a FineTuneJob needs nothing from the
    # operator (owner references let the garbage collector remove pods, ConfigMaps and Secrets), so jobs
    # stay deletable while the operator is down. Named anyway so nothing ever carries kopf's generic one.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # kopf's default progress storage writes status.kopf, which the CRD's structural schema would prune;
    # keep any handler bookkeeping in annotations under our own prefix instead.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # kopf peering is not used: the chart always runs kopf --standalone, and with more than one replica the
    # replicas elect a leader through a Lease (leader.py). kopf peering pauses every replica of an equal
    # priority (all of one Deployment), and pausing kopf would not pause our own timers. Should someone run
    # with --peering anyway, its keep-alive line every minute per replica tells nobody anything.
    settings.peering.stealth = True
    # Handler log lines stay logs. Every status transition gets its own Event, posted by events.py (not
    # through kopf's event queue, which loses events outside a handler's context), so only warnings and
    # errors are additionally turned into Events, or `kubectl describe` would drown.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "kubetune-operator"
    # The API server closes watches at random after 5-10 minutes anyway; ask for 5 so a dead connection
    # is noticed early, and bound connection attempts to a value a restarting API server can meet.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Only pods that carry our job label are watched (server side): a cluster's other pods never reach
    # the operator's memory. (kopf >= 1.45; older ones filter the same label client-side, in handlers.py.)
    selectors = getattr(settings.watching, "label_selectors", None)
    if selectors is not None:
        selectors["v1", "pods"] = JOB_LABEL
    # A request that hangs longer than this is retried rather than blocking a job's reconcile forever.
    settings.networking.request_timeout = 60
    # kopf logs "Handler 'pod_event' succeeded." for every watch event; our watch handlers only file the
    # event, and with hundreds of jobs reporting progress that line would be most of the log.
    logging.getLogger("kopf.objects").addFilter(_QuietWatchHandlers())


class _QuietWatchHandlers(logging.Filter):
    HANDLERS = ("job_event", "pod_event", "runtime_event", "schedule_event")

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (text.endswith("succeeded.") and any(f"Handler '{h}'" in text for h in self.HANDLERS))
