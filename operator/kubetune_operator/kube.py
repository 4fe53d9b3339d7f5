"""A small async Kubernetes REST client on aiohttp (which kopf already brings), returning plain dicts.

Credentials come from the `kubernetes` package's loaders, as kopf's own login does: the in-cluster service
account (its rotating token is re-read when it expires) or the kubeconfig in $KUBECONFIG.
"""

from __future__ import annotations

import json
import ssl
from typing import Any
from urllib.parse import quote

import aiohttp
import kubernetes.client
import kubernetes.config

from kubetune_api import GROUP, PLURAL, SCHEDULE_PLURAL, VERSION

from .builders import JOB_LABEL

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"


class ApiError(Exception):
    """A non-2xx reply. `status` is the HTTP status, `reason` the Status reason (AlreadyExists, ...)."""

    def __init__(self, status: int, method: str, path: str, reason: str, message: str):
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def _load_configuration() -> kubernetes.client.Configuration:
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=config)
    return config


def _ssl_context(config: kubernetes.client.Configuration) -> ssl.SSLContext | bool:
    if not config.verify_ssl:
        return False
    context = ssl.create_default_context(cafile=config.ssl_ca_cert)
    if config.cert_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def job_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
    return path + (f"/{quote(name)}" if name else "") + (f"/{sub}" if sub else "")


def schedule_path(namespace: str, name: str = "", sub: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{SCHEDULE_PLURAL}"
    return path + (f"/{quote(name)}" if name else "") + (f"/{sub}" if sub else "")


def core_path(namespace: str, kind_plural: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/{kind_plural}" + (f"/{quote(name)}" if name else "")


def lease_path(namespace: str, name: str = "") -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases" + (f"/{quote(name)}" if name else "")


class Kube:
    """The handful of calls the operator makes (each needs its verb in the chart's RBAC, templates/rbac.yaml).
    Never logs request or response bodies (Secrets)."""

    def __init__(self, config: kubernetes.client.Configuration, timeout: float = 60):
        self._config = config
        self._server = config.host.rstrip("/")
        self._ssl = _ssl_context(config)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    @classmethod
    def connect(cls, timeout: float = 60) -> Kube:
        return cls(_load_configuration(), timeout)

    async def close(self) -> None:
        await self._session.close()

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": JSON, "User-Agent": "kubetune-operator"}
        auth = self._config.get_api_key_with_prefix("BearerToken") or self._config.get_api_key_with_prefix(
            "authorization"
        )
        if auth:
            headers["Authorization"] = auth if " " in auth else f"Bearer {auth}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    async def request(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None,
        content_type: str = JSON,
    ) -> Any:
        data = None if body is None else json.dumps(body)
        async with self._session.request(
            method, self._server + path, data=data, params=params, ssl=self._ssl,
            headers=self._headers(content_type if data is not None else None),
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                try:
                    status = json.loads(text)
                except ValueError:
                    status = {}
                raise ApiError(resp.status, method, path, status.get("reason", ""), status.get("message", text[:500]))
            return json.loads(text) if text else None

    async def _get_or_none(self, path: str) -> dict | None:
        try:
            return await self.request("GET", path)
        except ApiError as err:
            if err.not_found:
                return None
            raise

    # FineTuneJobs
    async def get_job(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(job_path(namespace, name))

    async def patch_job_status(self, namespace: str, name: str, patch: dict) -> dict:
        """A merge patch of the status subresource. Put metadata.resourceVersion in `patch` to make it
        conditional: the API server answers 409 when the job changed since it was read."""
        return await self.request("PATCH", job_path(namespace, name, "status"), patch, content_type=MERGE_PATCH)

    # FineTuneSchedules and the jobs they create
    async def get_schedule(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(schedule_path(namespace, name))

    async def patch_schedule_status(self, namespace: str, name: str, patch: dict) -> dict:
        """As patch_job_status, for a FineTuneSchedule."""
        return await self.request("PATCH", schedule_path(namespace, name, "status"), patch, content_type=MERGE_PATCH)

    async def list_jobs(self, namespace: str, selector: str) -> list[dict]:
        """FineTuneJobs by label, from the API server's watch cache (resourceVersion 0): the plan that acts
        on them only creates names derived from the scheduled time, so a slightly stale list is safe."""
        reply = await self.request("GET", job_path(namespace), params={"labelSelector": selector,
                                                                       "resourceVersion": "0"})
        return reply.get("items") or []

    async def create_job(self, job: dict) -> dict:
        return await self.request("POST", job_path(job["metadata"]["namespace"]), job)

    async def delete_job(self, namespace: str, name: str) -> bool:
        """Deletes a FineTuneJob; its pods follow (garbage collection). False when it was already gone."""
        try:
            await self.request("DELETE", job_path(namespace, name),
                               {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
        except ApiError as err:
            if err.not_found:
                return False
            raise
        return True

    async def list_pods_by(self, namespace: str, selector: str) -> list[dict]:
        reply = await self.request("GET", core_path(namespace, "pods"),
                                   params={"labelSelector": selector, "resourceVersion": "0"})
        return reply.get("items") or []

    # Children
    async def list_pods(self, namespace: str, job_name: str, not_older_than: str = "0") -> list[dict]:
        """The job's pods, from the API server's watch cache. With a resourceVersion, that cache first
        catches up to it (it is at once in the usual case: the cache feeds every watch, ours included), so
        pass the newest one the operator has seen for these pods: with several API servers behind a load
        balancer, the one answering may lag the one our watch is connected to. Without a resourceVersion
        the LIST would be a quorum read from etcd, which on API servers before 1.31 decodes every pod in
        the namespace to apply the label selector: O(pods) per reconcile, the ramp O(N^2) (8x slower per
        LIST at 500 jobs, docs/performance.md)."""
        reply = await self.request(
            "GET", core_path(namespace, "pods"),
            params={"labelSelector": f"{JOB_LABEL}={job_name}", "resourceVersion": not_older_than},
        )
        return reply.get("items") or []

    async def create(self, obj: dict) -> dict:
        meta = obj["metadata"]
        return await self.request("POST", core_path(meta["namespace"], _plural(obj)), obj)

    async def get(self, namespace: str, kind_plural: str, name: str) -> dict | None:
        return await self._get_or_none(core_path(namespace, kind_plural, name))

    async def patch(self, namespace: str, kind: str, name: str, patch: dict) -> dict:
        """A merge patch of a Pod, ConfigMap or Secret."""
        path = core_path(namespace, _plural({"kind": kind}), name)
        return await self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    async def delete(self, namespace: str, kind_plural: str, name: str) -> bool:
        """Deletes in the background; False when it was already gone."""
        try:
            await self.request(
                "DELETE", core_path(namespace, kind_plural, name),
                {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
            )
        except ApiError as err:
            if err.not_found:
                return False
            raise
        return True

    async def create_event(self, event: dict) -> bool:
        """POST an Event; False when one of that name exists (it was posted already: names are
        deterministic, events.py)."""
        try:
            await self.request("POST", core_path(event["metadata"]["namespace"], "events"), event)
        except ApiError as err:
            if err.reason == "AlreadyExists":
                return False
            raise
        return True

    # The leader-election Lease (leader.py)
    async def get_lease(self, namespace: str, name: str) -> dict | None:
        return await self._get_or_none(lease_path(namespace, name))

    async def create_lease(self, lease: dict) -> dict:
        return await self.request("POST", lease_path(lease["metadata"]["namespace"]), lease)

    async def replace_lease(self, lease: dict) -> dict:
        """PUT, conditional on the lease's metadata.resourceVersion (409 when someone else wrote it)."""
        meta = lease["metadata"]
        return await self.request("PUT", lease_path(meta["namespace"], meta["name"]), lease)


def _plural(obj: dict) -> str:
    return {"Pod": "pods", "ConfigMap": "configmaps", "Secret": "secrets", "Service": "services"}[obj["kind"]]
