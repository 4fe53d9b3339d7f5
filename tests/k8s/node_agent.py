"""NodeAgent: a tiny stand-in for the kubelet (and the scheduler) that runs pods as local processes.

    agent = NodeAgent(kubeconfig, node_name="test-node").start()     # background threads
    ...
    agent.stop()

or as a process:  python tests/k8s/node_agent.py --kubeconfig K --node test-node

What it does, against a real kube-apiserver (see cluster.py):
  * registers a Node (Ready, capacity cpu/memory/pods and nvidia.com/gpu) and heartbeats its conditions;
  * "schedules": binds Pending pods without a nodeName to its node through pods/binding, or marks them
    PodScheduled=False/Unschedulable (GPU request above the node's capacity, or nodeSelector / required node
    affinity not matching the node labels) with the message the real scheduler writes;
  * runs the first container of each pod bound to it as a local subprocess (init containers before it);
    ConfigMap/Secret/emptyDir/... volumes become temp directories, and every mountPath (and the
    terminationMessagePath) inside command, args, env values and workingDir is rewritten to the local
    directory; env/envFrom are resolved from the real Secrets/ConfigMaps;
  * writes pod status back through pods/status like a kubelet: Pending -> Running -> Succeeded/Failed with
    the container's exit code, reason (Completed / Error / OOMKilled) and termination message;
  * enforces resources.limits.memory (process-tree RSS polling, SIGKILL -> OOMKilled / 137) and
    activeDeadlineSeconds (-> Failed / DeadlineExceeded), and handles graceful deletion (SIGTERM, SIGKILL
    after the grace period capped at `max_grace_seconds`, then deletes the pod with grace period 0);
  * scripted behaviour for failure tests: the pod annotation `test.kubetune.io/script` (a JSON list of steps)
    or the `script_for(pod)` callable given to the agent replaces "just run the command":
        {"phase": "Pending", "reason": "ErrImagePull", "message": "...", "seconds": 5}   waiting state
        {"phase": "Running", "seconds": 3}          report Running without running anything
        {"run": true}                               run the real command to its end
        {"run": true, "seconds": 5}                 run it; after 5 s still running: go on to the next step
        {"terminate": {"exitCode": 137, "reason": "OOMKilled", "message": "..."}}   kill, report terminated
        {"evict": "The node was low on resource: memory."}                          Failed / Evicted
        {"sleep": 2}                                keep the current state for 2 s
    A step without "seconds" that does not end the pod holds its state until the pod is deleted; so does
    a script that ends without ending the pod.

Deviations from a real kubelet are commented where they happen; the main ones: no containers or images (the
command runs on this machine with the agent's environment, so `kubetune ...` resolves to the venv's console
script), only the first container runs (plus init containers), restartPolicy is treated as Never, no probes,
GPUs are counted against capacity only (not against other pods), a pod's `<hostname>.<subdomain>` DNS
names in env values become 127.0.0.1 (no cluster DNS; /etc/hosts is not touched), and files are plain files (the kubelet uses
symlinks into ..data). Mount paths are also rewritten inside text files written from ConfigMaps/Secrets
(rewrite_file_contents=True). A persistentVolumeClaim volume is one directory per claim, shared by the pods
using it for the agent's lifetime; a hostPath volume is that path on this machine. There is no kubelet API:
`kubectl logs` does not work, use `agent.logs(namespace, name)`. Python's in-cluster config reads
/var/run/secrets/... directly, which is not rewritten: give pods a kubeconfig (e.g. a Secret volume plus
KUBECONFIG) instead.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.utils import parse_quantity

log = logging.getLogger("node_agent")

SCRIPT_ANNOTATION = "test.kubetune.io/script"
GPU = "nvidia.com/gpu"
MAX_TERMINATION_MESSAGE = 4096
DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"
Pod = dict[str, Any]


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def meta(obj: dict) -> dict:
    return obj.get("metadata") or {}


# ------------------------------------------------------------------------------------------------- API access


class Kube:
    """JSON requests through a kubernetes.client.ApiClient (auth, TLS and connection pooling come from it).

    Raw dicts instead of the generated models: pods are read, patched and compared as JSON anyway."""

    def __init__(self, api_client: Any):
        self.api = api_client

    def _call(self, method: str, path: str, body: Any, query: list | None, content_type: str, timeout: Any):
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, h, b, _ = self.api.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        r = self.api.call_api(m, url, header_params=h, body=b, _request_timeout=timeout)
        if not 200 <= r.status < 300:
            r.read()
            raise ApiException(
                status=r.status, reason=r.reason, body=(r.data or b"").decode(errors="replace")
            )
        return r

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        r = self._call(method, path, body, query, content_type, timeout)
        data = r.read()
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        """GET, None on 404."""
        try:
            return self.request("GET", path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body, content_type="application/strategic-merge-patch+json")

    def watch(
        self, path: str, resource_version: str, timeout_seconds: int, on_open: Callable
    ) -> Iterator[dict]:
        """Yields watch events; raises ApiException(410) when the resourceVersion is too old."""
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(timeout_seconds)),
        ]
        r = self._call("GET", path, None, query, "application/json", (10, timeout_seconds + 30))
        resp = r.response  # urllib3 response, not preloaded
        on_open(resp)
        buf = b""
        try:
            for chunk in resp.stream(amt=None, decode_content=False):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiException(status=status.get("code"), reason=status.get("message"))
                    yield event
        finally:
            on_open(None)
            with contextlib.suppress(Exception):
                resp.release_conn()


def load_api_client(kubeconfig: str | os.PathLike | None) -> Any:
    client = k8s_config.new_client_from_config(config_file=str(kubeconfig) if kubeconfig else None)
    client.configuration.connection_pool_maxsize = 32
    client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
    return client


# ------------------------------------------------------------------------------------------------- helpers


def pod_gpu_request(pod: Pod) -> int:
    total = 0
    for c in pod["spec"].get("containers") or []:
        res = c.get("resources") or {}
        q = (res.get("limits") or {}).get(GPU) or (res.get("requests") or {}).get(GPU)
        total += int(parse_quantity(q)) if q else 0
    return total


def _match_expression(expr: dict, labels: dict[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt"):
        try:
            v, ref = int(labels[key]), int(values[0])
        except (KeyError, ValueError, IndexError):
            return False
        return v > ref if op == "Gt" else v < ref
    return False


def node_selector_matches(pod: Pod, labels: dict[str, str]) -> bool:
    """nodeSelector plus requiredDuringSchedulingIgnoredDuringExecution node affinity (label expressions)."""
    spec = pod["spec"]
    if any(labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms:  # terms are ORed, expressions within a term ANDed
        return any(
            all(_match_expression(e, labels) for e in (t.get("matchExpressions") or [])) for t in terms
        )
    return True


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants (bytes)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total
    # /proc fallback: the pod's processes share the session the agent created for them.
    total, page = 0, os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == pid:  # fields[3] is the session id (state is fields[0])
            total += int(fields[21]) * page
    return total


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion ($$ escapes; unknown references stay as they are)."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        text,
    )


class PathMap:
    """Rewrites container paths (mount paths, the termination message path) to local ones, at path boundaries:
    with /out mapped, "/out/x" and "--dir=/out" change, "/output" and "/mnt/out" do not."""

    def __init__(self, mapping: dict[str, str]):
        self.mapping = {k.rstrip("/"): v for k, v in mapping.items() if k.rstrip("/")}
        keys = sorted(self.mapping, key=len, reverse=True)
        self.regex = (
            re.compile(r"(?<![\w.\-])(" + "|".join(map(re.escape, keys)) + r")(?![\w.\-])") if keys else None
        )

    def __call__(self, text: str) -> str:
        if not self.regex or not isinstance(text, str):
            return text
        return self.regex.sub(lambda m: self.mapping[m.group(1)], text)


class _Stop(Exception):
    """Stop working on the pod: it is being deleted, or its final status has been written already."""


class _DeadlineExceeded(Exception):
    pass


class _NotReady(Exception):
    """A volume or env source is missing; the kubelet keeps the pod in ContainerCreating and retries."""


# ------------------------------------------------------------------------------------------------- the agent


class NodeAgent:
    watch_timeout_seconds = 60  # server-side watch timeout; the agent then re-watches from the last version

    def __init__(
        self,
        kubeconfig: str | os.PathLike | None = None,
        node_name: str = "test-node",
        *,
        api_client: Any = None,
        gpus: int = 8,
        cpu: str = "16",
        memory: str = "64Gi",
        max_pods: int = 110,
        labels: dict[str, str] | None = None,
        script_for: Callable[[Pod], list | None] | None = None,
        workdir: str | os.PathLike | None = None,
        heartbeat_seconds: float = 10,
        max_grace_seconds: float = 10,
        inherit_env: bool = True,
        extra_env: dict[str, str] | None = None,
        entrypoints: dict[str, list[str]] | None = None,
        rewrite_file_contents: bool = True,
    ):
        """kubeconfig / api_client: how to reach the apiserver (the agent needs node, pod, pod status and
        binding write access, and reads Secrets/ConfigMaps). script_for(pod) -> list of steps or None
        (settable later as `agent.script_for`). inherit_env: pods start from the agent's environment (minus
        KUBECONFIG), like a container would from its image's; extra_env is added to every pod. entrypoints:
        image -> argv used when a container has no `command`. rewrite_file_contents: also rewrite mount paths
        inside ConfigMap/Secret files written into volumes (text files only)."""
        self.kube = Kube(api_client or load_api_client(kubeconfig))
        self.node_name = node_name
        self.capacity = {"cpu": cpu, "memory": memory, "pods": str(max_pods), GPU: str(gpus)}
        self.labels = {
            "kubernetes.io/hostname": node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **(labels or {}),
        }
        self.script_for = script_for
        self.heartbeat_seconds = heartbeat_seconds
        self.max_grace_seconds = max_grace_seconds
        self.inherit_env = inherit_env
        self.extra_env = dict(extra_env or {})
        self.entrypoints = dict(entrypoints or {})
        self.rewrite_file_contents = rewrite_file_contents
        self._own_workdir = workdir is None
        self.workdir: Path = (
            Path(workdir) if workdir else Path()
        )  # without `workdir`, start() makes a temp dir
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._lock = threading.Lock()
        self._workers: dict[str, _PodWorker] = {}
        self._threads: list[threading.Thread] = []
        self._watch_resp: Any = None
        self._ready_since = now()
        self._not_ready: tuple[str, str] | None = None  # (reason, message) while set_ready(False) holds

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait: bool = True, timeout: float = 30) -> NodeAgent:
        if self._own_workdir:
            self.workdir = Path(tempfile.mkdtemp(prefix="kubetune-node-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._register_node()
        for target, name in ((self._watch_loop, "watch"), (self._heartbeat_loop, "heartbeat")):
            t = threading.Thread(target=target, name=f"node-agent-{self.node_name}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if wait and not self._synced.wait(timeout):
            raise TimeoutError("node agent: initial pod list did not complete")
        return self

    def stop(self, cleanup: bool = True) -> None:
        """Stops watching, kills every pod process (their pods are left as they are) and marks the node
        NotReady/Unknown as a vanished kubelet would look."""
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._watch_resp is not None:
                (getattr(self._watch_resp, "shutdown", None) or self._watch_resp.close)()
        with self._lock:
            workers = list(self._workers.values())
        for w in workers:
            w.abandon()
        for w in workers:
            w.join(self.max_grace_seconds + 5)
        for t in self._threads:
            t.join(5)
        with contextlib.suppress(Exception):
            self.kube.patch(
                f"/api/v1/nodes/{self.node_name}/status",
                {
                    "status": {
                        "conditions": [
                            self._node_condition(
                                "Ready",
                                "Unknown",
                                "NodeStatusUnknown",
                                "Kubelet stopped posting node status.",
                            )
                        ]
                    }
                },
            )
        if cleanup and self._own_workdir and self.workdir.name.startswith("kubetune-node-"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NodeAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def scripted(self, script_for: Callable[[Pod], list | None]) -> Iterator[NodeAgent]:
        """Temporarily sets `script_for` (for tests sharing one agent)."""
        old, self.script_for = self.script_for, script_for
        try:
            yield self
        finally:
            self.script_for = old

    def set_ready(self, ready: bool, message: str = "Kubelet stopped posting node status.") -> None:
        """Ready=Unknown (reason NodeStatusUnknown, as the node lifecycle controller writes when the kubelet
        goes silent) or back to Ready=True; the pods on the node keep running, as in a network partition."""
        self._not_ready = None if ready else ("NodeStatusUnknown", message)
        self._ready_since = now()
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})

    def wait_synced(self, timeout: float = 30) -> bool:
        return self._synced.wait(timeout)

    def pod_dir(self, namespace: str, name: str) -> Path | None:
        """The local directory of a pod this agent ran (volumes/, termination/, <container>.log)."""
        with self._lock:
            for w in self._workers.values():
                if (w.namespace, w.name) == (namespace, name):
                    return w.dir
        return None

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """stdout+stderr of a pod's container (first container by default); "" if unknown."""
        with self._lock:
            ws = [w for w in self._workers.values() if (w.namespace, w.name) == (namespace, name)]
        if not ws:
            return ""
        c = container or ws[-1].main["name"]
        path = ws[-1].dir / f"{c}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ node

    def _node_condition(self, type_: str, status: str, reason: str, message: str) -> dict:
        return {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now(),
            "lastTransitionTime": self._ready_since,
        }

    def _node_status(self) -> dict:
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                self._node_condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                self._node_condition(
                    "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"
                ),
                self._node_condition(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                self._node_condition("Ready", "True", "KubeletReady", "kubelet is posting ready status")
                if self._not_ready is None
                else self._node_condition("Ready", "Unknown", *self._not_ready),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {
                "kubeletEndpoint": {"Port": 0}
            },  # no kubelet API: `kubectl logs/exec` do not work
            "nodeInfo": {
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "kubetune test node agent",
                "containerRuntimeVersion": "local-process://0",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    def _register_node(self) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": self.labels},
        }
        try:
            self.kube.request("POST", "/api/v1/nodes", body)
        except ApiException as e:
            if e.status != 409:
                raise
            self.kube.patch(f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": self.labels}})
        self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})

    def _heartbeat_loop(self) -> None:
        # A real kubelet also renews a Lease in kube-node-lease; the node lifecycle controller that would read
        # it is disabled in LocalCluster, so the Ready condition heartbeat is enough.
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                self.kube.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
            except Exception as e:  # apiserver gone at the end of a test session, or a transient error
                if isinstance(e, ApiException) and e.status == 404:  # someone deleted the Node
                    with contextlib.suppress(Exception):
                        self._register_node()
                log.debug("node heartbeat failed: %s", e)

    # ------------------------------------------------------------------ pod watch

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                listing = self.kube.request("GET", "/api/v1/pods")
                rv = listing["metadata"]["resourceVersion"]
                present = set()
                for pod in listing.get("items") or []:
                    present.add(meta(pod)["uid"])
                    self._on_pod(pod)
                with self._lock:
                    vanished = [w for uid, w in self._workers.items() if uid not in present]
                for w in vanished:  # deleted while we were not watching
                    self._on_deleted(w.pod)
                self._synced.set()
                while not self._stop.is_set():
                    for event in self.kube.watch(
                        "/api/v1/pods", rv, self.watch_timeout_seconds, self._set_watch_resp
                    ):
                        obj = event["object"]
                        rv = meta(obj).get("resourceVersion", rv)
                        if event["type"] == "DELETED":
                            self._on_deleted(obj)
                        elif event["type"] in ("ADDED", "MODIFIED"):
                            self._on_pod(obj)
                        if self._stop.is_set():
                            break
            except Exception as e:
                if self._stop.is_set():
                    break
                if isinstance(e, ApiException) and e.status == 410:
                    log.debug("pod watch expired; relisting")
                else:
                    log.warning("pod watch failed (%s: %s); relisting", type(e).__name__, e)
                    self._stop.wait(1)

    def _set_watch_resp(self, resp: Any) -> None:
        self._watch_resp = resp

    def _on_pod(self, pod: Pod) -> None:
        spec, md = pod.get("spec") or {}, meta(pod)
        uid, deleting = md["uid"], bool(md.get("deletionTimestamp"))
        phase = (pod.get("status") or {}).get("phase")
        node = spec.get("nodeName")
        if not node:
            if (
                not deleting
                and phase == "Pending"
                and spec.get("schedulerName", "default-scheduler") == "default-scheduler"
            ):
                self._schedule(pod)
            return
        if node != self.node_name:
            return
        with self._lock:
            worker = self._workers.get(uid)
            if (
                worker is None
                and not deleting
                and phase not in ("Succeeded", "Failed")
                and not self._stop.is_set()
            ):
                worker = self._workers[uid] = _PodWorker(self, pod)
                worker.start()
                return
        if worker is not None:
            worker.update(pod)
        elif deleting:  # finished before we saw it (or an agent restart): nothing to stop, just let it go
            self.delete_pod_now(pod)

    def _on_deleted(self, pod: Pod) -> None:
        with self._lock:
            worker = self._workers.pop(meta(pod)["uid"], None)
        if worker is not None:
            worker.gone()

    def delete_pod_now(self, pod: Pod) -> None:
        """DELETE with gracePeriodSeconds=0 (what the kubelet does once the containers are gone)."""
        md = meta(pod)
        with contextlib.suppress(ApiException):
            self.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": md["uid"]},
                },
            )

    # ------------------------------------------------------------------ scheduling

    def unschedulable_reason(self, pod: Pod) -> str | None:
        """None if the pod fits this node, else the scheduler's message."""
        if pod_gpu_request(pod) > int(self.capacity[GPU]):
            # A real scheduler also subtracts GPUs held by other pods on the node; this one does not.
            return f"0/1 nodes are available: 1 Insufficient {GPU}."
        if not node_selector_matches(pod, self.labels):
            return "0/1 nodes are available: 1 node(s) didn't match node selector."
        return None

    def _schedule(self, pod: Pod) -> None:
        md = meta(pod)
        ns, name = md["namespace"], md["name"]
        message = self.unschedulable_reason(pod)
        try:
            if message is None:
                self.kube.request(
                    "POST",
                    f"/api/v1/namespaces/{ns}/pods/{name}/binding",
                    {
                        "apiVersion": "v1",
                        "kind": "Binding",
                        "metadata": {"name": name, "uid": md["uid"]},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
                    },
                )
                self.event(
                    pod,
                    "Normal",
                    "Scheduled",
                    f"Successfully assigned {ns}/{name} to {self.node_name}",
                    component="default-scheduler",
                )
                return
            current = next(
                (
                    c
                    for c in (pod.get("status") or {}).get("conditions") or []
                    if c.get("type") == "PodScheduled"
                ),
                {},
            )
            if current.get("status") == "False" and current.get("message") == message:
                return  # already marked; the scheduler only retries when something changes
            self.kube.patch(
                f"/api/v1/namespaces/{ns}/pods/{name}/status",
                {
                    "metadata": {"uid": md["uid"]},
                    "status": {
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "message": message,
                                "lastProbeTime": None,
                                "lastTransitionTime": now(),
                            }
                        ]
                    },
                },
            )
            self.event(pod, "Warning", "FailedScheduling", message, component="default-scheduler")
        except ApiException as e:
            if e.status not in (404, 409, 422):  # gone, already bound, or recreated under the same name
                raise

    def event(self, pod: Pod, type_: str, reason: str, message: str, component: str = "kubelet") -> None:
        md, t = meta(pod), now()
        with contextlib.suppress(Exception):
            self.kube.request(
                "POST",
                f"/api/v1/namespaces/{md['namespace']}/events",
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"generateName": f"{md['name']}."},
                    "involvedObject": {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "namespace": md["namespace"],
                        "name": md["name"],
                        "uid": md["uid"],
                    },
                    "type": type_,
                    "reason": reason,
                    "message": message,
                    "count": 1,
                    "firstTimestamp": t,
                    "lastTimestamp": t,
                    "source": {"component": component, "host": self.node_name},
                },
            )


# ------------------------------------------------------------------------------------------------- one pod


class _PodWorker(threading.Thread):
    """Runs one pod: volumes, init containers, the scripted steps / first container, status updates."""

    def __init__(self, agent: NodeAgent, pod: Pod):
        md = meta(pod)
        super().__init__(name=f"pod-{md['namespace']}-{md['name']}", daemon=True)
        self.agent, self.kube, self.pod = agent, agent.kube, pod
        self.namespace, self.name, self.uid = md["namespace"], md["name"], md["uid"]
        self.main = pod["spec"]["containers"][0]
        self.dir = agent.workdir / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.deleting = threading.Event()  # graceful deletion requested, pod removed, or agent stopping
        self.removed = False  # the pod object is gone: no more API writes
        self.abandoned = False  # agent stopping: kill, leave the pod object alone
        self.proc: subprocess.Popen | None = None
        self.start_time = (pod.get("status") or {}).get("startTime") or now()
        # activeDeadlineSeconds counts from startTime; keep sub-second precision when we set it ourselves.
        self._t0 = (
            time.time()
            if self.start_time == now()
            else datetime.strptime(self.start_time, "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=timezone.utc)
            .timestamp()
        )
        self.started_at: str | None = None
        self.terminated = False
        self._volumes: dict[str, Path] = {}

    # ------------------------------------------------------------------ events from the agent

    def update(self, pod: Pod) -> None:
        self.pod = pod
        if meta(pod).get("deletionTimestamp"):
            if self.terminated and not self.is_alive():
                self.agent.delete_pod_now(pod)
            self.deleting.set()

    def gone(self) -> None:
        self.removed = True
        self.deleting.set()

    def abandon(self) -> None:
        self.abandoned = True
        self.deleting.set()

    # ------------------------------------------------------------------ main flow

    def run(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._set_status("Pending", self._waiting("ContainerCreating"))
            self._prepare_volumes()
            self._run_init_containers()
            self._run_steps()
            if not self.terminated:  # the script left the pod as it was: hold until deleted
                self._sleep(None)
        except _Stop:
            pass
        except _DeadlineExceeded:
            self._kill(grace=0)
            self._finish(137, "Error", pod_reason="DeadlineExceeded", pod_message=DEADLINE_MESSAGE)
        except Exception as e:  # a bug here, or an API error: report it on the pod instead of hanging it
            log.exception("node agent: pod %s/%s failed", self.namespace, self.name)
            self._kill(grace=0)
            if not self.terminated:
                with contextlib.suppress(Exception):
                    self._finish(128, "StartError", message=f"node agent: {type(e).__name__}: {e}")
        finally:
            self._kill(grace=self._grace())
            if self.deleting.is_set() and not self.removed and not self.abandoned:
                # A kubelet reports the final container state, then removes the pod object.
                if self.proc is not None and not self.terminated:
                    self._finish(*self._exit_result(self.proc.returncode))
                self.agent.delete_pod_now(self.pod)
            if self.removed:  # emptyDir contents go with the pod, as on a real node
                shutil.rmtree(self.dir / "volumes", ignore_errors=True)

    def _grace(self) -> float:
        md, spec = meta(self.pod), self.pod["spec"]
        grace = md.get("deletionGracePeriodSeconds", spec.get("terminationGracePeriodSeconds", 30))
        return min(float(grace if grace is not None else 30), self.agent.max_grace_seconds)

    def _script(self) -> list[dict]:
        steps = self.agent.script_for(self.pod) if self.agent.script_for else None
        if steps is None:
            raw = (meta(self.pod).get("annotations") or {}).get(SCRIPT_ANNOTATION)
            steps = json.loads(raw) if raw else None
        return steps if steps is not None else [{"run": True}]

    def _run_steps(self) -> None:
        for step in self._script():
            if "run" in step:
                if self.proc is None:
                    if not self._start_container(self.main):
                        return
                    self._set_status("Running", {"running": {"startedAt": self.started_at}}, ready=True)
                    self.agent.event(self.pod, "Normal", "Started", f"Started container {self.main['name']}")
                result = self._supervise(self.proc, self.main, step.get("seconds"))
                if result is not None:
                    self._finish(*result)
                    return
            elif "terminate" in step:
                t = step["terminate"] or {}
                self._kill(grace=0)
                code = int(t.get("exitCode", 137))
                self._finish(
                    code, t.get("reason", "Completed" if code == 0 else "Error"), message=t.get("message", "")
                )
                return
            elif "evict" in step:
                self._kill(grace=0)
                # Evicted pods: phase Failed, reason Evicted; the killed container shows up as terminated.
                self._finish(137, "Error", pod_reason="Evicted", pod_message=str(step["evict"]))
                return
            elif step.get("phase") == "Pending":
                reason = step.get("reason", "ContainerCreating")
                self._set_status("Pending", self._waiting(reason, step.get("message")))
                self._sleep(step.get("seconds"), blink=reason == "ErrImagePull")
            elif step.get("phase") == "Running":
                self.started_at = self.started_at or now()
                self._set_status("Running", {"running": {"startedAt": self.started_at}}, ready=True)
                self._sleep(step.get("seconds"))
            elif "sleep" in step:
                self._sleep(step["sleep"])
            else:
                raise ValueError(f"unknown script step {step!r}")

    def _sleep(self, seconds: float | None, blink: bool = False) -> None:
        """Wait (None: until deleted), enforcing activeDeadlineSeconds. blink: alternate ErrImagePull and
        ImagePullBackOff every 2 s as the kubelet's image pull back-off does."""
        end = None if seconds is None else time.monotonic() + float(seconds)
        pull_error, next_blink = True, time.monotonic() + 2
        while end is None or time.monotonic() < end:
            if self.deleting.wait(0.2):
                raise _Stop
            self._check_deadline()
            if blink and time.monotonic() >= next_blink:
                pull_error, next_blink = not pull_error, time.monotonic() + 2
                image = self.main.get("image", "")
                self._set_status(
                    "Pending",
                    self._waiting("ErrImagePull", None)
                    if pull_error
                    else self._waiting("ImagePullBackOff", f'Back-off pulling image "{image}"'),
                )

    def _check_deadline(self) -> None:
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        if deadline is not None and time.time() - self._t0 > int(deadline):
            raise _DeadlineExceeded

    # ------------------------------------------------------------------ containers

    def _run_init_containers(self) -> None:
        inits = self.pod["spec"].get("initContainers") or []
        statuses: list[dict] = []
        for c in inits:
            if not self._start_container(c, init=True):
                raise _Stop  # _finish already reported the pod
            result = self._supervise(self.proc, c, None)
            assert result is not None
            code, reason, message = result[:3]
            statuses.append(
                self._container_status(c, {"terminated": self._terminated(code, reason, message)})
            )
            self.proc = None
            self._patch({"initContainerStatuses": statuses})
            if code != 0:  # restartPolicy Never: the pod fails
                self._finish(
                    code, reason, message=message, container_state={"waiting": {"reason": "PodInitializing"}}
                )
                raise _Stop

    def _start_container(self, c: dict, init: bool = False) -> bool:
        """Starts the container's command; False (pod already finished with StartError) if it cannot."""
        if self.deleting.is_set():
            raise _Stop
        inherited, declared = self._env_parts(c)
        env = {**inherited, **declared}
        paths = self._path_map(c)
        argv = [
            paths(_expand(a, env))
            for a in (c.get("command") or self.agent.entrypoints.get(c.get("image", ""), []))
        ]
        argv += [paths(_expand(a, env)) for a in c.get("args") or []]
        env = {**inherited, **{k: paths(v) for k, v in declared.items()}}
        exe = (
            argv[0]
            if argv and "/" in argv[0]
            else (shutil.which(argv[0], path=env.get("PATH")) if argv else None)
        )
        if not exe:
            what = (
                f'exec: "{argv[0]}": executable file not found in $PATH'
                if argv
                else "node agent: container has no command (give the agent an entrypoint for its image)"
            )
            self._finish(128, "StartError", message=what, container=c)
            return False
        cwd = Path(paths(c["workingDir"])) if c.get("workingDir") else self.dir / "work"
        cwd.mkdir(parents=True, exist_ok=True)
        prefix = []
        if shutil.which("setpriv"):  # the process dies with this worker thread (e.g. a SIGKILLed test run)
            prefix = [shutil.which("setpriv"), "--pdeathsig", "KILL", "--"]
        with open(self.dir / f"{c['name']}.log", "ab") as out:
            self.proc = subprocess.Popen(
                prefix + [exe, *argv[1:]],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.started_at = now()
        log.info("pod %s/%s: started %s (pid %d)", self.namespace, self.name, argv, self.proc.pid)
        return True

    def _supervise(self, proc: subprocess.Popen, c: dict, seconds: float | None) -> tuple | None:
        """Waits for the process; enforces the memory limit, the deadline and deletion. Returns
        (exitCode, reason, message) or None when `seconds` passed with the process still running."""
        limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
        limit_bytes = int(parse_quantity(limit)) if limit else None
        until = None if seconds is None else time.monotonic() + float(seconds)
        while True:
            code = proc.poll()
            if code is not None:
                return self._exit_result(code, c)
            if self.deleting.is_set():
                self._kill(grace=self._grace())
                raise _Stop
            if limit_bytes and tree_rss(proc.pid) > limit_bytes:
                # The kernel's cgroup OOM killer, approximated by polling (a short spike can slip through).
                self._kill(grace=0)
                self.agent.event(self.pod, "Warning", "OOMKilling", f"Memory limit {limit} exceeded")
                return 137, "OOMKilled", self._termination_message(c, 137)
            self._check_deadline()
            if until is not None and time.monotonic() >= until:
                return None
            time.sleep(0.2)

    def _exit_result(self, code: int | None, c: dict | None = None) -> tuple:
        code = 137 if code is None else (128 - code if code < 0 else code)  # killed by signal N -> 128+N
        return code, "Completed" if code == 0 else "Error", self._termination_message(c or self.main, code)

    def _kill(self, grace: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        if grace > 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
                return
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _termination_message(self, c: dict, code: int) -> str:
        path = self.dir / "termination" / c["name"]
        message = ""
        with contextlib.suppress(OSError), open(path, "rb") as f:
            message = f.read(MAX_TERMINATION_MESSAGE).decode(errors="replace")
        if not message and code != 0 and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                lines = (self.dir / f"{c['name']}.log").read_bytes()[-2048:].decode(errors="replace")
                message = "\n".join(lines.splitlines()[-80:])
        return message

    # ------------------------------------------------------------------ env and volumes

    def _read(self, kind: str, name: str) -> dict | None:
        return self.kube.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")

    def _source_data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        """Keys of a ConfigMap ("configmaps") or Secret ("secrets") as bytes; None if optional and missing."""
        obj = self._read(kind, name)
        if obj is None:
            if optional:
                return None
            raise _NotReady(f'{kind[:-1]} "{name}" not found')
        if kind == "secrets":
            return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
        data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        return data

    def _field(self, path: str) -> str:
        md = meta(self.pod)
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (md.get(m.group(1)) or {}).get(m.group(2), "")
        values = {
            "metadata.name": md.get("name"),
            "metadata.namespace": md.get("namespace"),
            "metadata.uid": md.get("uid"),
            "spec.nodeName": self.agent.node_name,
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
            "status.podIP": "127.0.0.1",
            "status.hostIP": "127.0.0.1",
        }
        return str(values.get(path, ""))

    def _env(self, c: dict) -> dict[str, str]:
        inherited, declared = self._env_parts(c)
        return {**inherited, **declared}

    def _env_parts(self, c: dict) -> tuple[dict[str, str], dict[str, str]]:
        """(what the agent's "image" provides, what the pod spec declares). Only the second kind has its
        mount paths rewritten: the agent's own PATH may well live under a path the pod mounts (e.g. /tmp)."""
        env: dict[str, str] = {}
        if self.agent.inherit_env:
            # Deviation: a container starts from its image's environment; here the agent's environment plays
            # that part (PATH, HF_* caches, ...), minus the agent's own kubeconfig.
            env.update(
                {k: v for k, v in os.environ.items() if k != "KUBECONFIG" and not k.startswith("KUBERNETES_")}
            )
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH") or os.defpath])
        env["HOSTNAME"] = self.name
        env.update(self.agent.extra_env)
        declared: dict[str, str] = {}  # what $(VAR) may refer to
        for src in c.get("envFrom") or []:
            ref = src.get("configMapRef") or src.get("secretRef") or {}
            data = self._source_data(
                "configmaps" if "configMapRef" in src else "secrets", ref["name"], bool(ref.get("optional"))
            )
            for k, v in (data or {}).items():
                declared[src.get("prefix", "") + k] = v.decode(errors="replace")
        for e in c.get("env") or []:
            value_from = e.get("valueFrom")
            if value_from is None:
                declared[e["name"]] = _expand(e.get("value", ""), declared)
                continue
            if "fieldRef" in value_from:
                declared[e["name"]] = self._field(value_from["fieldRef"]["fieldPath"])
                continue
            if "resourceFieldRef" in value_from:
                rf = value_from["resourceFieldRef"]
                kind, res = rf["resource"].split(".", 1)
                q = ((c.get("resources") or {}).get(kind) or {}).get(res)
                declared[e["name"]] = (
                    str(int(parse_quantity(q) / parse_quantity(rf.get("divisor", "1")))) if q else "0"
                )
                continue
            ref_key = "configMapKeyRef" if "configMapKeyRef" in value_from else "secretKeyRef"
            ref = value_from[ref_key]
            data = self._source_data(
                "configmaps" if ref_key == "configMapKeyRef" else "secrets",
                ref["name"],
                bool(ref.get("optional")),
            )
            if data is not None and ref["key"] in data:
                declared[e["name"]] = data[ref["key"]].decode(errors="replace")
            elif not ref.get("optional"):
                kind = "Secret" if ref_key == "secretKeyRef" else "ConfigMap"  # the kubelet's words
                raise _NotReady(f"couldn't find key {ref['key']} in {kind} {self.namespace}/{ref['name']}")
        subdomain = self.pod["spec"].get("subdomain")
        if subdomain:
            # Deviation: stands in for the cluster DNS, which resolves `<hostname>.<subdomain>` of a pod behind a
            # headless Service to that pod's IP. Every pod here runs on this machine at 127.0.0.1, so such names
            # in the env values (e.g. torchrun's PET_RDZV_ENDPOINT) become 127.0.0.1 for the process started.
            # /etc/hosts is not touched.
            name = re.compile(rf"\b[a-z0-9]([-a-z0-9]*[a-z0-9])?\.{re.escape(subdomain)}(?![-a-z0-9.])")
            declared = {k: name.sub("127.0.0.1", v) for k, v in declared.items()}
        return env, declared

    def _path_map(self, c: dict) -> PathMap:
        mapping = {m["mountPath"]: str(self._mount_source(m)) for m in c.get("volumeMounts") or []}
        term = self.dir / "termination" / c["name"]
        term.parent.mkdir(parents=True, exist_ok=True)
        term.touch()
        mapping[c.get("terminationMessagePath") or "/dev/termination-log"] = str(term)
        return PathMap(mapping)

    def _mount_source(self, mount: dict) -> Path:
        base = self._volumes[mount["name"]]
        return base / mount["subPath"] if mount.get("subPath") else base

    def _prepare_volumes(self) -> None:
        """Materialises every volume, then resolves every env source; retries while a ConfigMap/Secret (or a
        key) is missing, as the kubelet does, until the pod is deleted. A volume source missing keeps the pod
        in ContainerCreating (event FailedMount); an env source missing is the kubelet's
        CreateContainerConfigError waiting state with its message (event Failed, "Error: ...")."""
        reported = None
        while True:
            try:
                stage = "volumes"
                self._materialize_all()
                stage = "env"
                for c in [*(self.pod["spec"].get("initContainers") or []), self.main]:
                    self._env(c)
                return
            except _NotReady as e:
                if reported != (stage, str(e)):
                    reported = (stage, str(e))
                    if stage == "volumes":
                        self.agent.event(self.pod, "Warning", "FailedMount", str(e))
                        self._set_status("Pending", self._waiting("ContainerCreating", str(e)))
                    else:
                        self.agent.event(self.pod, "Warning", "Failed", f"Error: {e}")
                        self._set_status("Pending", self._waiting("CreateContainerConfigError", str(e)))
                self._sleep(1)

    def _materialize_all(self) -> None:
        mounts = [
            m
            for c in [*(self.pod["spec"].get("initContainers") or []), self.main]
            for m in c.get("volumeMounts") or []
        ]
        files: dict[str, dict[str, tuple[bytes, int]]] = {}
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            if "hostPath" in vol:  # the node is this machine: a hostPath is simply that path
                self._volumes[name] = Path(vol["hostPath"]["path"])
                if (vol["hostPath"].get("type") or "") in ("DirectoryOrCreate", ""):
                    self._volumes[name].mkdir(parents=True, exist_ok=True)
                continue
            if "persistentVolumeClaim" in vol:  # one directory per claim, kept for the agent's lifetime
                self._volumes[name] = (
                    self.agent.workdir / "pvc" / self.namespace / vol["persistentVolumeClaim"]["claimName"]
                )
            else:  # emptyDir (any medium) and everything below; unknown kinds become empty directories
                self._volumes[name] = self.dir / "volumes" / name
            self._volumes[name].mkdir(parents=True, exist_ok=True)
            files[name] = self._volume_files(vol)
        # Nested mounts (/data and /data/cache): make the inner one visible inside the outer directory.
        by_path = sorted(
            ((m["mountPath"].rstrip("/"), self._mount_source(m)) for m in mounts), key=lambda x: len(x[0])
        )
        for i, (outer, outer_dir) in enumerate(by_path):
            for inner, inner_dir in by_path[i + 1 :]:
                if inner.startswith(outer + "/") and outer_dir.is_dir():
                    link = outer_dir / inner[len(outer) + 1 :]
                    if not link.exists() and not link.is_symlink():
                        link.parent.mkdir(parents=True, exist_ok=True)
                        link.symlink_to(inner_dir)
        rewrite = PathMap({m["mountPath"]: str(self._mount_source(m)) for m in mounts})
        for name, entries in files.items():
            for rel, (data, mode) in entries.items():
                if self.agent.rewrite_file_contents:
                    # Deviation: config files that mention mount paths get the local paths.
                    with contextlib.suppress(UnicodeDecodeError):
                        data = rewrite(data.decode()).encode()
                path = self._volumes[name] / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                path.chmod(mode)

    def _volume_files(self, vol: dict) -> dict[str, tuple[bytes, int]]:
        """relative path -> (content, mode) for configMap / secret / projected / downwardAPI volumes."""
        out: dict[str, tuple[bytes, int]] = {}

        def add_source(kind: str, src: dict, default_mode: int) -> None:
            data = self._source_data(
                kind, src.get("name") or src.get("secretName"), bool(src.get("optional"))
            )
            if data is None:
                return
            items = src.get("items")
            for item in items or [{"key": k, "path": k} for k in data]:
                if item["key"] not in data:
                    if src.get("optional"):
                        continue
                    raise _NotReady(
                        f"key {item['key']} not found in {kind[:-1]} {src.get('name') or src.get('secretName')}"
                    )
                out[item["path"]] = (data[item["key"]], item.get("mode", default_mode))

        def add_downward(items: list, default_mode: int) -> None:
            for item in items:
                fp = (item.get("fieldRef") or {}).get("fieldPath", "")
                if fp in ("metadata.labels", "metadata.annotations"):
                    d = meta(self.pod).get(fp.split(".")[1]) or {}
                    value = "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
                else:
                    value = self._field(fp)
                out[item["path"]] = (value.encode(), item.get("mode", default_mode))

        if "configMap" in vol:
            add_source("configmaps", vol["configMap"], vol["configMap"].get("defaultMode", 0o644))
        elif "secret" in vol:
            add_source("secrets", vol["secret"], vol["secret"].get("defaultMode", 0o644))
        elif "downwardAPI" in vol:
            add_downward(vol["downwardAPI"].get("items") or [], vol["downwardAPI"].get("defaultMode", 0o644))
        elif "projected" in vol:
            mode = vol["projected"].get("defaultMode", 0o644)
            for src in vol["projected"].get("sources") or []:
                if "configMap" in src:
                    add_source("configmaps", src["configMap"], mode)
                elif "secret" in src:
                    add_source("secrets", src["secret"], mode)
                elif "downwardAPI" in src:
                    add_downward(src["downwardAPI"].get("items") or [], mode)
                # serviceAccountToken sources are not minted (no TokenRequest from this agent).
        return out

    # ------------------------------------------------------------------ status

    def _waiting(self, reason: str, message: str | None = None) -> dict:
        return {"waiting": {"reason": reason, **({"message": message} if message else {})}}

    def _terminated(self, code: int, reason: str, message: str = "") -> dict:
        t = {"exitCode": code, "reason": reason, "startedAt": self.started_at or now(), "finishedAt": now()}
        if message:
            t["message"] = message
        return t

    def _container_status(self, c: dict, state: dict, ready: bool = False) -> dict:
        return {
            "name": c["name"],
            "image": c.get("image", ""),
            "imageID": "",
            "containerID": f"local://{self.uid}/{c['name']}",
            "ready": ready,
            "started": "running" in state,
            "restartCount": 0,
            "state": state,
        }

    def _conditions(self, ready: bool, reason: str | None) -> list[dict]:
        t = now()

        def cond(type_: str, status: bool, why: str | None = None) -> dict:
            c = {
                "type": type_,
                "status": "True" if status else "False",
                "lastProbeTime": None,
                "lastTransitionTime": t,
            }
            if why and not status:
                c["reason"] = why
            return c

        return [
            cond("Initialized", True),
            cond("Ready", ready, reason),
            cond("ContainersReady", ready, reason),
            cond("PodScheduled", True),
        ]

    def _patch(self, status: dict) -> None:
        if self.removed or self.abandoned:
            return
        try:
            # metadata.uid makes the patch fail (instead of landing on a new pod with the same name).
            self.kube.patch(
                f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status",
                {"metadata": {"uid": self.uid}, "status": status},
            )
        except ApiException as e:
            if e.status not in (404, 409, 422):
                raise
            log.debug("status patch for %s/%s dropped: %s", self.namespace, self.name, e.status)

    def _set_status(self, phase: str, state: dict, ready: bool = False) -> None:
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "startTime": self.start_time,
            "conditions": self._conditions(ready, None if ready else "ContainersNotReady"),
            "containerStatuses": [self._container_status(self.main, state, ready)],
        }
        if phase == "Running":
            status.update(podIP="127.0.0.1", podIPs=[{"ip": "127.0.0.1"}])
        self._patch(status)

    def _finish(
        self,
        code: int,
        reason: str,
        message: str = "",
        *,
        pod_reason: str | None = None,
        pod_message: str | None = None,
        container: dict | None = None,
        container_state: dict | None = None,
    ) -> None:
        """Final status (restartPolicy is treated as Never: any non-zero exit fails the pod)."""
        self.terminated = True
        c = container or self.main
        state = container_state or {"terminated": self._terminated(code, reason, message)}
        if container is not None and container is not self.main:  # an init container could not start
            state = {"waiting": {"reason": "PodInitializing"}}
        phase = "Succeeded" if code == 0 and pod_reason is None else "Failed"
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "startTime": self.start_time,
            "conditions": self._conditions(False, "PodCompleted"),
            "containerStatuses": [self._container_status(self.main, state)],
        }
        if container is not None and container is not self.main:
            status["initContainerStatuses"] = [
                self._container_status(c, {"terminated": self._terminated(code, reason, message)})
            ]
        if pod_reason:
            status.update(reason=pod_reason, message=pod_message or "")
        self._patch(status)
        log.info("pod %s/%s: %s (exit %d, %s)", self.namespace, self.name, phase, code, pod_reason or reason)


# ------------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Stand-in kubelet + scheduler running pods as local processes")
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    p.add_argument("--node", default="test-node")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--workdir")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    agent = NodeAgent(args.kubeconfig, args.node, gpus=args.gpus, workdir=args.workdir).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    log.info("node %s registered; running pods until SIGTERM/SIGINT", args.node)
    done.wait()
    agent.stop()


if __name__ == "__main__":
    main()
