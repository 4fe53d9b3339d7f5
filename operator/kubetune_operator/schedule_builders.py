"""Pure builders for FineTuneSchedules: a schedule and a scheduled time in, the FineTuneJob or the
data-version probe pod out. No client, no clock: the caller passes the time."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kubetune_api import API_VERSION, GROUP, KIND
from kubetune_api.results import TERMINATION_LOG, Env
from kubetune_api.schedule import SCHEDULE_KIND
from kubetune_api.status import Reason, now_rfc3339

from .builders import JOB_LABEL, TRAINER_UID

if TYPE_CHECKING:
    from .settings import Settings

SCHEDULE_LABEL = f"{GROUP}/schedule-name"
SCHEDULED_TIME = f"{GROUP}/scheduled-time"  # annotation: the scheduled time a job was created for
DATA_VERSION = f"{GROUP}/data-version"  # annotation: the data version the probe saw for that time
PROBE_COMMAND = ["kubetune", "data-version"]
# The probe lists objects and hashes nothing big: a small, CPU-only pod.
PROBE_RESOURCES = {"cpu": "250m", "memory": "256Mi"}
# A probe that neither finished nor failed by then (S3 unreachable, pod unschedulable) is given up.
PROBE_DEADLINE_SECONDS = 300


def stamp_of(when: datetime) -> int:
    return int(when.astimezone(timezone.utc).timestamp())


def job_name(schedule: str, when: datetime) -> str:
    """`<schedule>-<Unix seconds>`: the same for the same scheduled time, so a restart never duplicates."""
    return f"{schedule}-{stamp_of(when)}"


def probe_name(schedule: str, when: datetime) -> str:
    return f"{schedule}-probe-{stamp_of(when)}"


def probe_label(schedule: str) -> str:
    """The probe pods' job-name label (the operator's pod watch selects on it): with a dot, which no
    FineTuneJob name has, so no job ever takes a probe pod for its own."""
    return f"{schedule}.probe"


def owner_reference(body: dict[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": API_VERSION, "kind": SCHEDULE_KIND, "name": meta["name"], "uid": meta.get("uid") or "",
            "controller": True, "blockOwnerDeletion": True}


def build_job(body: dict[str, Any], when: datetime, data_version: str | None) -> dict[str, Any]:
    """The FineTuneJob for scheduled time `when`: the template's spec as written (so a runtimeRef merges as
    for any job), its labels and annotations, the schedule's label and the time and data version."""
    meta, template = body["metadata"], body["spec"]["jobTemplate"]
    tmeta = template.get("metadata") or {}
    annotations = {**(tmeta.get("annotations") or {}), SCHEDULED_TIME: now_rfc3339(when)}
    if data_version:
        annotations[DATA_VERSION] = data_version
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": job_name(meta["name"], when),
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), SCHEDULE_LABEL: meta["name"]},
            "annotations": annotations,
            "ownerReferences": [owner_reference(body)],
        },
        "spec": copy.deepcopy(template["spec"]),
    }


# What the probe reads of the template: the data URIs and how to reach them, plus the required fields.
# None of them is ever a runtime's (runtime.JOB_ONLY_FIELDS), so the probe needs no runtimeRef.
PROBE_FIELDS = ("model", "dataset", "evaluation", "output", "storage")


def probe_manifest(body: dict[str, Any]) -> dict[str, Any]:
    """The template as the FineTuneJob the probe lists the data of."""
    spec = {k: v for k, v in body["spec"]["jobTemplate"]["spec"].items() if k in PROBE_FIELDS}
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": body["metadata"]["name"], "namespace": body["metadata"]["namespace"]}, "spec": spec}


def _probe_env(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    env = [{"name": Env.MANIFEST, "value": json.dumps(manifest, sort_keys=True, separators=(",", ":"))},
           {"name": Env.TERMINATION_LOG, "value": TERMINATION_LOG}, {"name": "HOME", "value": "/tmp"}]
    secret = ((manifest["spec"].get("storage") or {}).get("s3") or {}).get("secretRef")
    if secret:  # credentials by reference, as for the trainer: the operator never reads a Secret
        for name, key, default in ((Env.AWS_ACCESS_KEY_ID, "accessKeyIdKey", "AWS_ACCESS_KEY_ID"),
                                   (Env.AWS_SECRET_ACCESS_KEY, "secretAccessKeyKey", "AWS_SECRET_ACCESS_KEY")):
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret["name"],
                                                                      "key": secret.get(key) or default}}})
    return env


def build_probe_pod(body: dict[str, Any], when: datetime, settings: Settings) -> dict[str, Any]:
    """A CPU-only pod that lists the template's data and reports its data version in its termination
    message (`kubetune data-version`): the check needs no GPU, so an unchanged tick holds none."""
    meta, manifest = body["metadata"], probe_manifest(body)
    container = {
        "name": "probe", "image": manifest["spec"].get("image") or settings.trainer_image,
        "imagePullPolicy": "IfNotPresent", "command": PROBE_COMMAND, "env": _probe_env(manifest),
        "resources": {"requests": dict(PROBE_RESOURCES), "limits": dict(PROBE_RESOURCES)},
        "terminationMessagePath": TERMINATION_LOG, "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True, "runAsNonRoot": True},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never", "automountServiceAccountToken": False, "enableServiceLinks": False,
        "activeDeadlineSeconds": PROBE_DEADLINE_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if settings.trainer_service_account:  # workload identity for S3, as the trainer pods get
        spec["serviceAccountName"] = settings.trainer_service_account
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": probe_name(meta["name"], when), "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/component": "data-probe",
                       "app.kubernetes.io/managed-by": "kubetune-operator", JOB_LABEL: probe_label(meta["name"]),
                       SCHEDULE_LABEL: meta["name"]},
            "annotations": {SCHEDULED_TIME: now_rfc3339(when)},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": spec,
    }


def build_schedule_event(body: dict[str, Any], due: datetime | None, event: Any, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about the schedule, named by its uid, generation, scheduled time and reason (and the
    pruned job: one Event each): planned again after a crash or a 409, it is the same Event (AlreadyExists),
    so each is posted once."""
    meta, stamp = body["metadata"], now_rfc3339(now)
    subject = event.message if event.reason == Reason.HISTORY_PRUNED else ""
    key = "/".join(str(x) for x in (meta.get("uid"), meta.get("generation"), stamp_of(due) if due else "-",
                                    event.reason, subject))
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{hashlib.sha256(key.encode()).hexdigest()[:16]}",
                     "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": API_VERSION, "kind": SCHEDULE_KIND, "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "type": event.type, "reason": event.reason, "message": event.message[:1024], "count": 1,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": "kubetune-operator"},
        "reportingComponent": "kubetune-operator",
    }
