"""Pods that cannot get going and never will by themselves: the kubelet retries an image pull, a container
config (a missing Secret or key) or a lost node forever. Pure functions turning such a pod into the words of
the job's status; plan.py decides when the job gives up (the image-pull grace period)."""

from __future__ import annotations

from typing import Any, NamedTuple

from kubetune_api import FineTuneJob, Reason

from .observe import PodView, missing_secret


class Stuck(NamedTuple):
    reason: str  # the condition reason while waiting, and the Failed reason after the grace period
    waiting: str  # Running=False message within the grace period
    failed: str  # Failed=True message after it (", after Ns" is added)


def image_pull(pod: PodView, grace: float) -> Stuck:
    detail = f"{pod.reason}: {pod.message}".rstrip(": ")
    # Not the kubelet's text while waiting: it alternates between ErrImagePull and ImagePullBackOff, and a
    # message that flips every few seconds would be a status patch every few seconds.
    return Stuck(Reason.IMAGE_PULL_FAILED,
                 f"pod {pod.name} cannot pull its image yet; the job fails after {grace:.0f}s of this",
                 f"pod {pod.name} could not pull its image: {detail}")


def _secret_fields(job: FineTuneJob) -> dict[str, str]:
    """Secret name -> the spec field that names it."""
    refs = (("spec.storage.s3.secretRef", job.spec.storage.s3.secret_ref), ("spec.model.secretRef", job.spec.model.secret_ref))
    return {ref.name: field for field, ref in refs if ref is not None}


def config_error(job: FineTuneJob, pod: PodView, grace: float) -> Stuck:
    """CreateContainerConfigError; the kubelet's message is stable, so it goes into the status as it is."""
    missing = missing_secret(pod.message)
    if missing is None:
        reason, what = Reason.CONTAINER_CONFIG_ERROR, pod.message or pod.reason
    else:
        secret, key = missing
        field = _secret_fields(job).get(secret)
        named = f" (named by {field})" if field else ""
        what = (f"Secret {secret}{named} has no key {key}" if key else
                f"Secret {secret}{named} does not exist in namespace {job.metadata.namespace}")
        what += f"; the kubelet says: {pod.message}"
        reason = Reason.SECRET_NOT_FOUND
    message = f"pod {pod.name} cannot start: {what}"
    return Stuck(reason, f"{message}; the job fails if this lasts {grace:.0f}s", message)


def node_not_ready(pod: PodView, ready: dict[str, Any]) -> str:
    """Running=Unknown message for a pod whose node's Ready condition is False or Unknown."""
    since = f" since {ready['lastTransitionTime']}" if ready.get("lastTransitionTime") else ""
    detail = ": ".join(x for x in (ready.get("reason"), ready.get("message")) if x) or f"Ready={ready.get('status')}"
    return (f"node {pod.node} of pod {pod.name} is not ready{since} ({detail}); the trainer's state is unknown "
            "until the node comes back or its pods are evicted")
