"""operator_scale.py's gang case: N FineTuneJobs of P pods each (`resources.nodes: P`), against Kubernetes'
own Job controller making the same N x P pods in the same run (N batch/v1 Jobs, `parallelism` =
`completions` = P; the controller-manager of tests/k8s runs the Job controller), as the baseline column.

Both are measured the same way: from the first create of a job (ours or theirs) to the API server storing
the last of the N x P pods, read from the audit log (every pod creation is logged, whoever makes it). The
node agent reports every pod Running at once, so nothing trains and nothing else competes. The absolute
times of this shared 2-CPU machine move a lot between runs; the ratio to the Job controller's time in the
same run is the figure to compare.
"""

from __future__ import annotations

import random
import string
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

BATCH_JOBS = "/apis/batch/v1/namespaces/{ns}/jobs"
GANG_SPEC_RESOURCES = {"gpus": 1, "nodes": 0}  # nodes filled in per run


@dataclass
class GangResult:
    jobs: int
    pods: int  # per job
    job_controller_s: float = 0.0  # Kubernetes' Job controller: first Job created -> last pod stored
    operator_s: float = 0.0  # the operator: first FineTuneJob created -> last pod stored

    @property
    def ratio(self) -> float:
        return self.operator_s / self.job_controller_s if self.job_controller_s else float("nan")


def batch_job(name: str, pods: int) -> dict[str, Any]:
    """A batch/v1 Job of `pods` pods at once, each as plain as the node agent needs (it never runs them)."""
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {
            "parallelism": pods, "completions": pods, "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": False,
                "containers": [{"name": "trainer", "image": "registry.example/kubetune/trainer:bench",
                                "command": ["kubetune", "train"]}],
            }},
        },
    }


def _namespace(bench, what: str) -> str:
    ns = f"gang-{what}-" + "".join(random.choices(string.ascii_lowercase, k=5))
    bench.cluster.create_namespace(ns)
    return ns


def _create_all(bench, path: str, docs: list[dict[str, Any]], creators: int) -> None:
    with ThreadPoolExecutor(creators) as pool:
        list(pool.map(lambda doc: bench.cluster.request("POST", path, doc, timeout=120), docs))


def _last_pod(bench, ns: str, t0: float, count: int, timeout: float) -> float:
    """When the API server stored the `count`-th pod in `ns` (any creator), from the audit log."""
    deadline = time.monotonic() + timeout
    while True:
        stored = [r.done for r in bench.audit.read() if r.verb == "create" and r.resource == "pods"
                  and r.namespace == ns and r.code == 201 and r.received >= t0]
        if len(stored) >= count:
            return max(stored)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(stored)} of {count} pods in {ns} after {timeout:.0f}s")
        time.sleep(0.5)


def run_gang_case(bench, jobs: int, pods: int, spec: dict[str, Any], creators: int, operator_cls) -> GangResult:
    """The Job controller first, then the operator (freshly started, as for each size), each in a fresh
    namespace that is deleted afterwards."""
    result = GangResult(jobs=jobs, pods=pods)
    timeout = 120 + 2 * jobs * pods

    ns = _namespace(bench, "jobs")
    t0 = time.time()
    _create_all(bench, BATCH_JOBS.format(ns=ns), [batch_job(f"job-{i:04d}", pods) for i in range(jobs)], creators)
    result.job_controller_s = _last_pod(bench, ns, t0, jobs * pods, timeout) - t0
    bench._clean(ns)

    ns = _namespace(bench, "ours")
    op = operator_cls(bench.cluster, bench.kubeconfig, bench.workdir / f"operator-gang-{jobs}x{pods}.log")
    op.start()
    try:
        time.sleep(3)  # the start-up lists and watches settle, as for the sizes
        gang = {**spec, "resources": {**GANG_SPEC_RESOURCES, "nodes": pods}}
        docs = [{"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"job-{i:04d}"},
                 "spec": gang} for i in range(jobs)]
        t0 = time.time()
        _create_all(bench, f"/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs", docs, creators)
        result.operator_s = _last_pod(bench, ns, t0, jobs * pods, timeout) - t0
    finally:
        op.stop(timeout=30)
    bench._clean(ns)
    return result


def gang_table(results: list[GangResult]) -> str:
    lines = ["| jobs x pods per job | Kubernetes Job controller: every pod exists (s) | kubetune operator (s) | "
             "operator / Job controller |",
             "|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.jobs} x {r.pods} = {r.jobs * r.pods} pods | {r.job_controller_s:.1f} | "
                     f"{r.operator_s:.1f} | {r.ratio:.2f} |")
    return "\n".join(lines)
