"""Operator scale on the real API server (issue 6, item 3).

    .venv/bin/python bench/operator_scale.py [--sizes 50 200 500] [--steady 180] [--json out.json]
    .venv/bin/python bench/operator_scale.py --sizes --gang 100x4      # the gang case only

What runs, all on loopback: a LocalCluster (kube-apiserver v1.20 + controller-manager + etcd, tests/k8s)
with audit logging, the CRDs from crds/, the chart's ServiceAccount and RBAC (rendered with helm, so the
operator runs with exactly the permissions a user installs), a NodeAgent (tests/k8s) in its own process as
one big node whose pods all just report Running (no trainer process), and the operator as its real process,
started the way the chart starts it (`kopf run -m kubetune_operator --all-namespaces --standalone`) with
the chart's default settings (progress interval 10 s, image-pull grace 120 s; not the tests' short ones).

For each size N, in a fresh namespace and with a freshly started operator: N FineTuneJobs created at once
(POSTs over 16 connections; `--create kubectl` applies one N-document file with `kubectl apply` instead),
then

* per-job latency: from the API server storing the job to it storing the job's pod (both read from the
  audit log, microsecond timestamps), p50 / p99 / max; and from the start of the creation to the last pod;
* operator peak RSS: psutil over the operator's process tree, sampled every 0.2 s for its whole life;
* API requests per job: every request the operator's identity (the chart's ServiceAccount) made between
  the start of the creation and the moment all jobs are Running and the operator has gone quiet, counted by
  the API server's audit log (exact; watches are counted once, when they start);
* steady state: operator requests per running job per minute over `--steady` seconds with all N jobs
  Running. No trainer runs, so there are no progress reports and none of these requests is a progress
  status patch (which the target excludes).

`--gang NxP` adds the gang case (bench/gang_case.py): N FineTuneJobs of `resources.nodes: P`, and in the same
run N batch/v1 Jobs of P pods made by Kubernetes' own Job controller as the baseline; the time until every
one of the N x P pods exists, and the operator's time as a ratio to the Job controller's.

The targets of issue 6 at 500 jobs are the baseline column. The operator has no settings flag that turns
its work queue or batching off, so there is no "naive" run to compare against (a second operator written
for the benchmark would measure nothing real).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import string
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from gang_case import GangResult, gang_table, run_gang_case  # noqa: E402

from k8s.cluster import LocalCluster, free_port, missing_tools  # noqa: E402
from k8s.process import LoggedProcess  # noqa: E402

BIN = Path(sys.executable).parent
GROUP = "kubetune.io"
JOBS = "/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"
OPERATOR_NS, RELEASE = "kubetune-system", "kt"
NODE = "scale-node"
CREATORS = 16  # connections creating FineTuneJobs at once
TARGETS = {"all_pods_s": 30.0, "rss_mb": 200.0, "steady_per_job_min": 2.0}
SPEC = {  # examples/minimal.yaml: every other field takes its default (1 GPU, LoRA, 3 epochs)
    "model": {"uri": "s3://models/llama-3.1-8b-instruct/"},
    "dataset": {"train": {"uri": "s3://datasets/support/train.jsonl"}},
    "output": {"uri": "s3://finetunes/"},
}


# ----------------------------------------------------------------------------------------------- audit log


def audit_policy(operator_user: str) -> str:
    """Everything the operator does (Metadata: verb, resource, name, timestamps) and the creation of
    FineTuneJobs by anyone (the latency's start). The API server writes nothing else to the log."""
    return yaml.safe_dump({
        "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
        "rules": [
            {"level": "Metadata", "users": [operator_user]},
            {"level": "Metadata", "verbs": ["create"], "resources": [{"group": GROUP, "resources": ["finetunejobs"]}]},
            # Pod creations by anyone: the gang case times Kubernetes' Job controller the same way.
            {"level": "Metadata", "verbs": ["create"], "resources": [{"group": "", "resources": ["pods"]}]},
            {"level": "None"},
        ],
    })


@dataclass(frozen=True)
class Request:
    received: float  # epoch seconds
    done: float
    user: str
    verb: str
    resource: str  # "pods", "finetunejobs/status", ...
    namespace: str
    name: str
    code: int


class AuditLog:
    """The API server's audit log, read incrementally. One Request per API request: a watch is counted at
    ResponseStarted (its ResponseComplete comes when it closes), everything else at ResponseComplete."""

    def __init__(self, path: Path):
        self.path, self._offset, self.requests = path, 0, []

    def read(self) -> list[Request]:
        if not self.path.exists():
            return self.requests
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written stays for the next read
        self._offset += end
        for line in data[:end].splitlines():
            request = _parse(json.loads(line))
            if request is not None:
                self.requests.append(request)
        return self.requests

    def by(self, user: str, start: float, end: float = float("inf")) -> list[Request]:
        return [r for r in self.read() if r.user == user and start <= r.received < end]


def _stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _parse(event: dict[str, Any]) -> Request | None:
    verb, stage = event.get("verb", ""), event.get("stage")
    if stage != ("ResponseStarted" if verb == "watch" else "ResponseComplete"):
        return None
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return Request(
        received=_stamp(event["requestReceivedTimestamp"]), done=_stamp(event["stageTimestamp"]),
        user=(event.get("user") or {}).get("username", ""), verb=verb, resource=resource or event["requestURI"],
        namespace=ref.get("namespace", ""), name=ref.get("name", ""),
        code=(event.get("responseStatus") or {}).get("code", 0),
    )


# ----------------------------------------------------------------------------------------------- processes


class RssSampler(threading.Thread):
    """Peak RSS of a process tree, sampled every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.interval, self.peak, self._done = psutil.Process(pid), interval, 0, threading.Event()

    def rss(self) -> int:
        total = 0
        with contextlib.suppress(psutil.Error):
            for proc in [self.root, *self.root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += proc.memory_info().rss
        return total

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def stop(self) -> int:
        self._done.set()
        self.join(5)
        return self.peak


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return 0.0


class Operator(LoggedProcess):
    """The operator process, started as the chart starts it, with the chart's default settings."""

    def __init__(self, cluster: LocalCluster, kubeconfig: Path, log_path: Path):
        super().__init__(log_path)
        self.progress_port, self.metrics_port, self.liveness_port = free_port(), free_port(), free_port()
        self.env = cluster.env(
            KUBECONFIG=str(kubeconfig),
            KUBETUNE_PROGRESS_URL=f"http://127.0.0.1:{self.progress_port}",
            KUBETUNE_PROGRESS_PORT=str(self.progress_port),
            KUBETUNE_PROGRESS_KEY="operator-scale-benchmark-key",
            KUBETUNE_METRICS_PORT=str(self.metrics_port),
        )

    def start(self, timeout: float = 120) -> None:
        argv = [str(BIN / "kopf"), "run", "-m", "kubetune_operator", "--all-namespaces", "--standalone",
                f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz"]
        self.launch(argv, self.env, f"http://127.0.0.1:{self.progress_port}/healthz", timeout)


def node_agent_main(kubeconfig: str) -> None:
    """The stand-in kubelet, in its own process so its threads never share a GIL with the measuring.
    Every pod reports Running and holds until deleted; the node has room for all of them."""
    from k8s.node_agent import NodeAgent

    agent = NodeAgent(kubeconfig, NODE, gpus=1000, max_pods=1000, cpu="1000", memory="8Ti",
                      script_for=lambda pod: [{"phase": "Running"}]).start(timeout=60)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    agent.stop()


# ----------------------------------------------------------------------------------------------- set-up


def operator_identity(cluster: LocalCluster, workdir: Path) -> tuple[str, Path]:
    """The chart's ServiceAccount, ClusterRole and binding (helm template), and a kubeconfig with its
    token. Without helm: the same ServiceAccount bound to cluster-admin (requests are counted the same)."""
    from chart.helm import find_helm, render, service_account_name

    cluster.create_namespace(OPERATOR_NS)
    sa = service_account_name(RELEASE)
    helm = find_helm()
    if helm is not None:
        values = {"runtimes": {"enabled": False}}
        docs = [d for d in render(helm, values, OPERATOR_NS, RELEASE)
                if d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    else:
        print("no helm: the operator's ServiceAccount gets cluster-admin instead of the chart's RBAC")
        docs = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": OPERATOR_NS}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": f"{sa}-bench"},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                 "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": OPERATOR_NS}]}]
    cluster.apply(docs, namespace=OPERATOR_NS)
    token = cluster.service_account_token(OPERATOR_NS, sa)
    kubeconfig = cluster.make_token_kubeconfig(token, workdir / "operator.kubeconfig", user=sa)
    return f"system:serviceaccount:{OPERATOR_NS}:{sa}", kubeconfig


def start_cluster(workdir: Path, operator_user: str) -> tuple[LocalCluster, AuditLog]:
    policy, audit = workdir / "audit-policy.yaml", workdir / "audit.log"
    policy.write_text(audit_policy(operator_user))
    cluster = LocalCluster(apiserver_args=[f"--audit-policy-file={policy}", f"--audit-log-path={audit}",
                                           "--audit-log-maxsize=0"]).start()
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunejobs.kubetune.io", "crd/clusterfinetuneruntimes.kubetune.io")
    return cluster, AuditLog(audit)


def start_node_agent(cluster: LocalCluster, workdir: Path) -> subprocess.Popen:
    log = open(workdir / "node-agent.log", "ab")  # noqa: SIM115 (the child holds it)
    proc = subprocess.Popen([sys.executable, __file__, "--as-node-agent", str(cluster.kubeconfig)],
                            env=cluster.env(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    cluster.wait_for(lambda: cluster.get(f"/api/v1/nodes/{NODE}"), 60, f"node {NODE}")
    return proc


# ----------------------------------------------------------------------------------------------- one size


@dataclass
class Result:
    size: int
    load: float = 0.0  # 1-minute load average when the creation started (2 CPUs)
    apply_s: float = 0.0  # creating the N jobs
    all_pods_s: float = 0.0  # start of the creation -> last pod stored
    per_job: list[float] = field(default_factory=list)  # job stored -> its pod stored, per job
    settle_s: float = 0.0  # start of the creation -> all Running and the operator quiet
    running: int = 0  # jobs whose status says Running once the operator went quiet
    running_after_steady: int = 0
    rss_idle_mb: float = 0.0
    rss_peak_mb: float = 0.0
    requests: dict[str, int] = field(default_factory=dict)  # "verb resource" -> count (ramp)
    request_ms: dict[str, float] = field(default_factory=dict)  # "verb resource" -> mean time in the API server
    steady_s: float = 0.0
    steady_requests: dict[str, int] = field(default_factory=dict)
    cpu_ramp: dict[str, float] = field(default_factory=dict)  # CPU seconds during the ramp, by process
    cpu_steady_s: float = 0.0
    agent_cpu_steady_s: float = 0.0

    @property
    def requests_per_job(self) -> float:
        return sum(self.requests.values()) / self.size

    @property
    def steady_per_job_min(self) -> float:
        return sum(self.steady_requests.values()) / self.size / (self.steady_s / 60)

    def pct(self, q: float) -> float:
        values = sorted(self.per_job)
        return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))] if values else float("nan")


class Bench:
    def __init__(self, cluster: LocalCluster, audit: AuditLog, user: str, kubeconfig: Path, agent: subprocess.Popen,
                 workdir: Path, create: str):
        self.cluster, self.audit, self.user, self.kubeconfig = cluster, audit, user, kubeconfig
        self.agent, self.workdir, self.create = agent, workdir, create

    def run(self, n: int, steady: float) -> Result:
        ns = f"scale-{n}-" + "".join(random.choices(string.ascii_lowercase, k=5))
        self.cluster.create_namespace(ns)
        op = Operator(self.cluster, self.kubeconfig, self.workdir / f"operator-{n}.log")
        op.start()
        sampler = RssSampler(op.proc.pid)
        sampler.start()
        try:
            time.sleep(3)  # let the start-up lists and watches settle
            result = Result(size=n, rss_idle_mb=sampler.rss() / 2**20)
            self._ramp(ns, n, op, result)
            self._steady(ns, n, op, steady, result)
        finally:
            op.stop(timeout=30)
            peak = sampler.stop()
        result.rss_peak_mb = peak / 2**20
        self._clean(ns)
        return result

    def _create(self, ns: str, n: int) -> None:
        """N FineTuneJobs at once: over `CREATORS` connections (as a GitOps controller or a script
        would), or as one multi-document file given to `kubectl apply` (one GET and one POST per job, in
        sequence)."""
        jobs = [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                 "metadata": {"name": f"job-{i:04d}", "namespace": ns}, "spec": SPEC} for i in range(n)]
        if self.create == "kubectl":
            manifest = self.workdir / f"jobs-{n}.yaml"
            manifest.write_text(yaml.safe_dump_all(jobs))
            self.cluster.kubectl("apply", "-f", str(manifest), timeout=600)
            return
        with ThreadPoolExecutor(CREATORS) as pool:
            list(pool.map(lambda job: self.cluster.request("POST", JOBS.format(ns=ns), job, timeout=120), jobs))

    def _cpu(self, op: Operator) -> dict[str, float]:
        """CPU seconds so far of the operator and of what shares the machine with it."""
        pids = {"operator": op.proc.pid, "node agent": self.agent.pid,
                **{name: p.popen.pid for name, p in self.cluster.processes.items()}}
        return {name: cpu_seconds(pid) for name, pid in pids.items()}

    def _ramp(self, ns: str, n: int, op: Operator, result: Result) -> None:
        result.load = os.getloadavg()[0]
        cpu0, t0 = self._cpu(op), time.time()
        self._create(ns, n)
        result.apply_s = time.time() - t0
        deadline = time.monotonic() + 120 + 2 * n
        pods = self._wait(lambda: self._pods_created(ns, t0, n), deadline, f"{n} pods", op)
        jobs = {r.name: r.done for r in self.audit.read() if r.verb == "create" and r.resource == "finetunejobs"
                and r.namespace == ns and r.code == 201}
        result.per_job = [pods[name] - jobs[name] for name in pods if name in jobs]
        result.all_pods_s = max(pods.values()) - t0
        # A job whose pod runs but whose status never says so is a bug a user would see: counted, not fatal.
        with contextlib.suppress(TimeoutError):
            self._wait(lambda: self._running(ns) == n, min(deadline, time.monotonic() + 120), f"{n} jobs Running", op)
        result.running = self._running(ns)
        self._wait(lambda: self._quiet(t0), deadline, "the operator to go quiet", op)
        result.settle_s = time.time() - t0
        result.cpu_ramp = {name: seconds - cpu0[name] for name, seconds in self._cpu(op).items()}
        ramp = self.audit.by(self.user, t0)
        result.requests = dict(Counter(f"{r.verb} {r.resource}" for r in ramp))
        seconds: Counter[str] = Counter()
        for r in ramp:
            seconds[f"{r.verb} {r.resource}"] += (r.done - r.received) if r.verb != "watch" else 0.0
        result.request_ms = {k: 1000 * v / result.requests[k] for k, v in seconds.items()}

    def _steady(self, ns: str, n: int, op: Operator, steady: float, result: Result) -> None:
        cpu0, agent0, t0 = cpu_seconds(op.proc.pid), cpu_seconds(self.agent.pid), time.time()
        end = time.monotonic() + steady
        while time.monotonic() < end:
            if not op.alive():
                raise RuntimeError(f"the operator exited during the steady state; log: {op.log_path}")
            time.sleep(min(5.0, max(0.0, end - time.monotonic())))
        t1 = time.time()
        time.sleep(1)  # the audit log's last lines
        result.steady_s, result.cpu_steady_s = t1 - t0, cpu_seconds(op.proc.pid) - cpu0
        result.agent_cpu_steady_s = cpu_seconds(self.agent.pid) - agent0
        result.steady_requests = dict(Counter(f"{r.verb} {r.resource}" for r in self.audit.by(self.user, t0, t1)))
        result.running_after_steady = self._running(ns)

    def _pods_created(self, ns: str, t0: float, n: int) -> dict[str, float] | None:
        """job name -> when its first pod was stored, once every job has one."""
        pods = {r.name.rsplit("-", 1)[0]: r.done for r in self.audit.by(self.user, t0)
                if r.verb == "create" and r.resource == "pods" and r.namespace == ns and r.code == 201}
        return pods if len(pods) >= n else None

    def _running(self, ns: str) -> int:
        items = (self.cluster.get(JOBS.format(ns=ns), timeout=60) or {}).get("items") or []
        return sum((j.get("status") or {}).get("phase") == "Running" for j in items)

    def _quiet(self, t0: float, seconds: float = 5.0) -> bool:
        last = max((r.received for r in self.audit.by(self.user, t0) if r.verb != "watch"), default=t0)
        return time.time() - last >= seconds

    @staticmethod
    def _wait(predicate, deadline: float, what: str, op: Operator) -> Any:
        while True:
            value = predicate()
            if value:
                return value
            if not op.alive():
                raise RuntimeError(f"the operator exited while waiting for {what}; log: {op.log_path}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(1)

    def _clean(self, ns: str) -> None:
        self.cluster.delete_namespace(ns, wait=True, timeout=600)


# ----------------------------------------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    sizes = [r.size for r in results]
    rows: list[tuple[str, str, list[str]]] = [
        ("load average at the start (1 min)", "", [f"{r.load:.2f}" for r in results]),
        ("creating the N jobs (s)", "", [f"{r.apply_s:.1f}" for r in results]),
        ("first create -> every pod exists (s)", f"<= {TARGETS['all_pods_s']:.0f}",
         [f"{r.all_pods_s:.1f}" for r in results]),
        ("per job: job -> pod, p50 (s)", "", [f"{r.pct(0.5):.2f}" for r in results]),
        ("per job: job -> pod, p99 (s)", "", [f"{r.pct(0.99):.2f}" for r in results]),
        ("per job: job -> pod, max (s)", f"<= {TARGETS['all_pods_s']:.0f}", [f"{r.pct(1.0):.2f}" for r in results]),
        ("jobs Running after the ramp", "all", [f"{r.running}/{r.size}" for r in results]),
        ("first create -> all Running, quiet (s)", "", [f"{r.settle_s:.1f}" for r in results]),
        ("operator RSS idle (MB)", "", [f"{r.rss_idle_mb:.0f}" for r in results]),
        ("operator RSS peak (MB)", f"<= {TARGETS['rss_mb']:.0f}", [f"{r.rss_peak_mb:.0f}" for r in results]),
        ("operator API requests per job (ramp)", "", [f"{r.requests_per_job:.1f}" for r in results]),
        ("CPU s in the ramp: operator", "", [f"{r.cpu_ramp.get('operator', 0):.1f}" for r in results]),
        ("  kube-apiserver + etcd", "",
         [f"{r.cpu_ramp.get('kube-apiserver', 0) + r.cpu_ramp.get('etcd', 0):.1f}" for r in results]),
        ("  node agent + controller-manager", "",
         [f"{r.cpu_ramp.get('node agent', 0) + r.cpu_ramp.get('kube-controller-manager', 0):.1f}"
          for r in results]),
        ("steady: requests / running job / min", f"<= {TARGETS['steady_per_job_min']:.0f}",
         [f"{r.steady_per_job_min:.3f}" for r in results]),
        ("steady: operator CPU (% of a core)", "",
         [f"{100 * r.cpu_steady_s / r.steady_s:.1f}" for r in results]),
    ]
    head = ["", "target (at 500)", *[f"N={s}" for s in sizes]]
    widths = [max(len(head[0]), *(len(r[0]) for r in rows)), 15, *[max(8, len(h)) for h in head[2:]]]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for name, target, values in rows:
        cells = [name, target, *values]
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |")
    return "\n".join(lines)


def breakdown(result: Result) -> str:
    total = sum(result.requests.values())
    lines = [f"operator requests during the ramp at N={result.size} ({total}, {result.requests_per_job:.2f} per job):"]
    for key, count in sorted(result.requests.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {key:<28} {count:>6}  {count / result.size:5.2f} per job, "
                     f"{result.request_ms.get(key, 0):6.1f} ms each in the API server")
    steady = ", ".join(f"{k}: {v}" for k, v in sorted(result.steady_requests.items())) or "none"
    lines.append(f"steady state ({result.steady_s:.0f} s): {steady}")
    return "\n".join(lines)


def verdict(results: list[Result]) -> str:
    at = max(results, key=lambda r: r.size)
    checks = [("every pod within 30 s", max(at.all_pods_s, at.pct(1.0)) <= TARGETS["all_pods_s"]),
              ("RSS <= 200 MB", at.rss_peak_mb <= TARGETS["rss_mb"]),
              ("<= 2 requests per running job per minute", at.steady_per_job_min <= TARGETS["steady_per_job_min"])]
    return f"targets at N={at.size}: " + "; ".join(f"{name}: {'PASS' if ok else 'FAIL'}" for name, ok in checks)


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[50, 200, 500])
    p.add_argument("--gang", metavar="NxP", help="also N FineTuneJobs of P pods each (resources.nodes) against "
                   "N batch/v1 Jobs of P pods (Kubernetes' Job controller), e.g. 100x4")
    p.add_argument("--steady", type=float, default=180, help="seconds of steady state per size")
    p.add_argument("--create", choices=["parallel", "kubectl"], default="parallel",
                   help=f"how the N jobs are created: POSTs over {CREATORS} connections, or one `kubectl apply -f`")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, audit log)")
    p.add_argument("--as-node-agent", metavar="KUBECONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.as_node_agent:
        node_agent_main(args.as_node_agent)
        return
    missing = missing_tools()
    if missing:
        sys.exit(f"missing {', '.join(missing)}: run tests/k8s/build-kube.sh")
    # Our own temporary directory (the cluster's certificates and logs, the audit log, the node agent's pod
    # directories): never one that a sweep of /tmp/kubetune-* by a neighbouring test run could remove.
    private = Path.home() / ".cache" / "kubetune" / "bench-tmp"
    private.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = tempfile.tempdir = str(private)
    workdir = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; work directory {workdir}", flush=True)
    from chart.helm import service_account_name

    user = f"system:serviceaccount:{OPERATOR_NS}:{service_account_name(RELEASE)}"
    cluster, audit = start_cluster(workdir, user)
    agent = None
    results: list[Result] = []
    gangs: list[GangResult] = []
    try:
        _, kubeconfig = operator_identity(cluster, workdir)
        agent = start_node_agent(cluster, workdir)
        bench = Bench(cluster, audit, user, kubeconfig, agent, workdir, args.create)
        for n in args.sizes:
            print(f"N={n}: applying...", flush=True)
            results.append(bench.run(n, args.steady))
            r = results[-1]
            print(f"N={n}: every pod after {r.all_pods_s:.1f} s, peak RSS {r.rss_peak_mb:.0f} MB, "
                  f"{r.requests_per_job:.1f} requests/job, steady {r.steady_per_job_min:.3f}/job/min", flush=True)
        if args.gang:
            jobs, pods = (int(x) for x in args.gang.lower().split("x"))
            print(f"gang {jobs}x{pods}: Kubernetes' Job controller, then the operator...", flush=True)
            gangs.append(run_gang_case(bench, jobs, pods, SPEC, CREATORS, Operator))
            print(gang_table(gangs), flush=True)
    finally:
        if agent is not None:
            agent.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(30)
        cluster.keep_dir = args.keep
        cluster.stop()
    if results:
        print()
        print(table(results))
        print()
        for r in results:
            print(breakdown(r))
        print()
        print(verdict(results))
    if gangs:
        print()
        print(gang_table(gangs))
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "requests_per_job": r.requests_per_job,
                                          "steady_per_job_min": r.steady_per_job_min,
                                          "p50": r.pct(0.5), "p99": r.pct(0.99), "max": r.pct(1.0)}
                                         for r in results] + [{**g.__dict__, "ratio": g.ratio} for g in gangs], indent=1))
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
