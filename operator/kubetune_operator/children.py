"""The children a reconcile creates for an attempt, and removes after ttlSecondsAfterFinished: the job's
ConfigMap and progress Secret, a gang's headless Service, and the attempt's pods (all of the gang at once,
or only those the plan names). Idempotent: AlreadyExists is success, an existing pod is adopted if the job
owns it."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from . import metrics
from .builders import (
    build_config_map,
    build_gang,
    build_gang_service,
    build_progress_secret,
    config_map_name,
    gang_service_name,
    gang_size,
    progress_secret_name,
)
from .conditions import parse_time
from .kube import ApiError, Kube
from .plan import Plan
from .progress import progress_token
from .settings import Settings


class StaleChild(ApiError):
    """A pod of that name belongs to an earlier FineTuneJob of the same name (the garbage collector, or
    our next plan, removes it)."""


class PodRejected(ApiError):
    """The API server refused the trainer pod as invalid (422): no retry can make it valid."""


class PodRefused(ApiError):
    """The API server refused the trainer pod for now (403: a ResourceQuota, a missing PriorityClass, an
    admission webhook): said in the status, tried again."""


class Children:
    def __init__(self, kube: Kube, settings: Settings):
        self.kube, self.settings = kube, settings

    async def remove(self, namespace: str, name: str) -> None:
        """The job's ConfigMap, Secret and Service (its pods are the plan's to delete)."""
        await self.kube.delete(namespace, "configmaps", config_map_name(name))
        await self.kube.delete(namespace, "secrets", progress_secret_name(name))
        await self.kube.delete(namespace, "services", gang_service_name(name))

    async def create_attempt(self, body: dict[str, Any], now: datetime, p: Plan) -> None:
        job, attempt = p.job, p.create_attempt
        assert job is not None and attempt is not None
        await self.ensure(build_config_map(job))
        if self.settings.progress_url:
            meta = body["metadata"]
            token = progress_token(self.settings.progress_key, meta["namespace"], meta["name"], meta["uid"])
            await self.ensure(build_progress_secret(job, token))
        if gang_size(job) > 1:
            await self.ensure(build_gang_service(job))
        pods = build_gang(job, attempt, self.settings, p.deadline_left, p.run, p.image_id)
        if p.create_indices is not None:
            pods = [pods[i] for i in p.create_indices if i < len(pods)]
        # The gang's pods at once; one refused fails the call, and the next plan adopts those created.
        results = await asyncio.gather(*(self._ensure_pod(pod) for pod in pods), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        if any(results) and attempt == 1 and p.create_indices is None:
            start = parse_time(p.run_start or body["metadata"]["creationTimestamp"])
            metrics.CREATION_TO_POD.observe(max(0.0, (now - start).total_seconds()))

    async def _ensure_pod(self, pod: dict[str, Any]) -> bool:
        try:
            return await self.ensure(pod)
        except ApiError as err:
            if err.status in (403, 422):
                kind = PodRejected if err.status == 422 else PodRefused
                raise kind(err.status, "POST", pod["metadata"]["name"], err.reason, err.message) from err
            raise

    async def ensure(self, obj: dict[str, Any]) -> bool:
        """Create `obj`; True if this call created it. AlreadyExists is success: a ConfigMap or Secret is
        brought up to date (and taken over from an earlier job of the same name) with a merge patch, never
        read; an existing pod is adopted if it is ours."""
        meta = obj["metadata"]
        try:
            await self.kube.create(obj)
            return True
        except ApiError as err:
            if err.reason != "AlreadyExists":
                raise
        if obj["kind"] != "Pod":
            patch = {"metadata": {k: meta[k] for k in ("labels", "ownerReferences")}}
            if "data" in obj:
                patch["data"] = obj["data"]
            await self.kube.patch(meta["namespace"], obj["kind"], meta["name"], patch)
            return False
        existing = await self.kube.get(meta["namespace"], "pods", meta["name"])
        owners = {ref.get("uid") for ref in ((existing or {}).get("metadata") or {}).get("ownerReferences") or []}
        if meta["ownerReferences"][0]["uid"] not in owners:
            raise StaleChild(409, "POST", meta["name"], "AlreadyExists",
                             f"pod {meta['name']} belongs to an earlier FineTuneJob of this name; waiting for it to go")
        return False
