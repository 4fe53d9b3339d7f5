"""From a FineTuneJob object as stored to the parsed job the operator runs, or the reasons it cannot.

Every rule is the API's: the runtime merge (`apply_runtime`), the spec model (`parse_job`) and the
in-cluster rules (`FineTuneJob.in_cluster_errors`). This module only puts them in order.
"""

from __future__ import annotations

from typing import Any

from kubetune_api import API_VERSION, KIND, FineTuneJob, Reason, SpecError, apply_runtime, parse_job
from kubetune_api.runtime import remote_code_errors

# The metadata the trainer manifest and the children's owner references need; the rest (managedFields,
# annotations such as kubectl's last-applied-configuration) is no business of the trainer's.
KEPT_METADATA = ("name", "namespace", "uid", "labels")


def resolve(body: dict[str, Any], runtime: dict[str, Any] | None) -> tuple[FineTuneJob | None, str, list[str]]:
    """(job, Reason.VALID, []) or (None, reason, one line per problem naming its field)."""
    meta = body.get("metadata") or {}
    spec = body.get("spec") or {}
    ref = spec.get("runtimeRef") if isinstance(spec, dict) else None
    try:
        if ref:
            if runtime is None:
                return None, Reason.RUNTIME_NOT_FOUND, [
                    f"spec.runtimeRef: ClusterFineTuneRuntime {ref!r} does not exist; create it or remove "
                    "spec.runtimeRef"
                ]
            spec = apply_runtime(spec, runtime, ref)
        job = parse_job({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {k: meta[k] for k in KEPT_METADATA if k in meta},
            "spec": spec,
        }, source=f"FineTuneJob {meta.get('namespace')}/{meta.get('name')}")
    except SpecError as err:
        return None, Reason.INVALID_SPEC, err.errors
    errors = job.in_cluster_errors() + remote_code_errors(job.spec, runtime, ref)
    if errors:
        return None, Reason.INVALID_SPEC, errors
    return job, Reason.VALID, []
