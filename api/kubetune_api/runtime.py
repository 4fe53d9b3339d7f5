"""ClusterFineTuneRuntime: a cluster-scoped preset a platform team offers and a FineTuneJob names in
`spec.runtimeRef`.

A runtime holds defaults for how a job runs (image, method and LoRA target modules for a model family,
training hyperparameters, GPU shape and node placement), never what it trains on: model, dataset and
output always come from the job. Its blocks reuse the FineTuneJob's own sub-models (MethodSpec,
TrainingSpec, ResourcesSpec), so every rule and description lives once; their defaults only matter for
validation, because `apply_runtime` merges the raw manifests, not the models.

    merged = apply_runtime(job["spec"], runtime["spec"])   # the job's own fields win
    spec = parse_spec(merged)                               # then model defaults apply
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from .base import ApiModel
from .job import ObjectMeta, SpecError, format_errors
from .memory import ModelShape
from .spec import DNS1123_LABEL, FineTuneJobSpec, MethodSpec, ResourcesSpec, TrainingSpec

RUNTIME_KIND = "ClusterFineTuneRuntime"
RUNTIME_PLURAL = "clusterfinetuneruntimes"

# FineTuneJob fields a runtime may set (camelCase, as in manifests).
RUNTIME_FIELDS = ("image", "method", "training", "resources")
# Fields that say what a run trains on and where it writes: each job's own, never a preset's.
JOB_ONLY_FIELDS = ("model", "dataset", "output", "evaluation", "storage")
# Values replaced as a whole when the job sets them, never merged key by key (a half-merged affinity
# or a mixed list of tolerations would be a placement nobody wrote).
ATOMIC_PATHS = {("resources", "affinity"), ("resources", "tolerations"), ("method", "lora", "targetModules")}
# Alternatives: when the job sets one of a group, the runtime's members of that group are dropped.
EXCLUSIVE_GROUPS = {("training",): ("epochs", "maxSteps")}


class FineTuneRuntimeSpec(ApiModel):
    """Defaults for FineTuneJobs naming this runtime in spec.runtimeRef; fields set on the job win."""

    description: str | None = Field(
        default=None, max_length=1024, description="What this preset is for, shown to users choosing one."
    )
    model_family: str | None = Field(
        default=None, max_length=63, pattern=DNS1123_LABEL,
        description="Model family the LoRA target modules fit (e.g. llama, mistral, gemma); informational.",
    )
    model_shape: ModelShape | None = Field(
        default=None,
        description="Shape of the model this preset is sized for (as in its config.json), for the GPU memory "
        "estimate of jobs naming it (the Fits condition); a job's own spec.model.shape wins.",
    )
    image: str | None = Field(default=None, min_length=1, description="Trainer image for jobs using this runtime.")
    method: MethodSpec | None = Field(
        default=None,
        description="Default method and LoRA adapter shape, e.g. the target modules of this model family.",
    )
    training: TrainingSpec | None = Field(default=None, description="Default training hyperparameters.")
    resources: ResourcesSpec | None = Field(
        default=None, description="GPU shape (gpus, gpuProduct, cpu, memory) and node placement."
    )
    allow_remote_code: bool = Field(
        default=False,
        description="Platform policy: jobs naming this runtime may set model.trustRemoteCode: true and so run "
        "a model repository's own Python code in their pods. Default: false, and a job without a runtime "
        "never may; such jobs fail validation with InvalidSpec.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_job_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in JOB_ONLY_FIELDS:
                if name in data:
                    raise ValueError(
                        f"{name} cannot be set in a runtime: a runtime sets defaults for "
                        f"{', '.join(RUNTIME_FIELDS)}; {name} belongs to each FineTuneJob"
                    )
        return data


class ClusterFineTuneRuntime(ApiModel):
    """A ClusterFineTuneRuntime manifest."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["ClusterFineTuneRuntime"]
    metadata: ObjectMeta
    spec: FineTuneRuntimeSpec

    @model_validator(mode="before")
    @classmethod
    def _cluster_scoped(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("metadata"), dict) and "namespace" in data["metadata"]:
            raise ValueError("metadata.namespace is not allowed: ClusterFineTuneRuntime is cluster-scoped")
        return data


def parse_runtime_spec(data: Any, root: str = "spec") -> FineTuneRuntimeSpec:
    """Validate a runtime's spec; SpecError lines start with the field path under `root`."""
    try:
        return FineTuneRuntimeSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_errors(err, FineTuneRuntimeSpec, root), "runtime spec") from None


def parse_runtime(data: Any, source: str = "runtime") -> ClusterFineTuneRuntime:
    if not isinstance(data, dict):
        raise SpecError([f"expected a {RUNTIME_KIND} mapping, got {type(data).__name__}"], source)
    try:
        return ClusterFineTuneRuntime.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_errors(err, ClusterFineTuneRuntime, ""), source) from None


def _merge(base: dict[str, Any], override: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merge key by key, everything else (and ATOMIC_PATHS) is
    replaced."""
    out = copy.deepcopy(base)
    for members in (g for p, g in EXCLUSIVE_GROUPS.items() if p == path):
        if any(m in override for m in members):
            for m in members:
                out.pop(m, None)
    for key, value in override.items():
        sub = (*path, key)
        if isinstance(value, dict) and isinstance(out.get(key), dict) and sub not in ATOMIC_PATHS:
            out[key] = _merge(out[key], value, sub)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_runtime(job_spec: dict[str, Any], runtime_spec: dict[str, Any], runtime_name: str = "") -> dict[str, Any]:
    """The job's raw spec with the runtime's defaults filled in underneath it: a pure function of two
    manifests' `spec` mappings, applied before model defaults so only fields the user wrote win.

    Raises SpecError naming the runtime field when the runtime is invalid. The result still has to be
    validated with `parse_spec` (the job's own rules, e.g. quantization only with qlora, apply to it).
    """
    root = f"runtime {runtime_name}: spec" if runtime_name else "runtime spec"
    parse_runtime_spec(runtime_spec, root)
    defaults = {k: copy.deepcopy(v) for k, v in runtime_spec.items() if k in RUNTIME_FIELDS}
    merged = _merge(defaults, job_spec, ())
    method = merged.get("method")
    # A runtime's QLoRA quantization settings do not follow a job that chose plain LoRA.
    if (
        isinstance(method, dict) and method.get("type", "lora") != "qlora"
        and "quantization" not in (job_spec.get("method") or {})
    ):
        method.pop("quantization", None)
    model = merged.get("model")
    # The shape the preset is sized for stands in for a shape the job does not give (memory estimate only).
    if runtime_spec.get("modelShape") and isinstance(model, dict) and "shape" not in model:
        model["shape"] = copy.deepcopy(runtime_spec["modelShape"])
    resources = merged.get("resources")
    # Nor does its GPU model follow a job that trains on CPU.
    if (
        isinstance(resources, dict) and resources.get("gpus") == 0
        and "gpuProduct" not in (job_spec.get("resources") or {})
    ):
        resources.pop("gpuProduct", None)
    return merged


def remote_code_errors(spec: FineTuneJobSpec, runtime_spec: dict[str, Any] | None, runtime_name: str | None) -> list[str]:
    """The platform's remote-code policy for a job run in a cluster: model.trustRemoteCode needs a
    ClusterFineTuneRuntime (spec.runtimeRef) with allowRemoteCode: true. Local runs (`kubetune run`) are the
    user's own machine and only warn."""
    if not spec.model.trust_remote_code or (runtime_spec or {}).get("allowRemoteCode") is True:
        return []
    where = (f"ClusterFineTuneRuntime {runtime_name!r} does not set allowRemoteCode: true" if runtime_name
             else "the job names no spec.runtimeRef")
    return [f"spec.model.trustRemoteCode: running the model repository's own code is allowed in this cluster "
            f"only for jobs whose spec.runtimeRef names a ClusterFineTuneRuntime with allowRemoteCode: true, and "
            f"{where}; set trustRemoteCode: false or use a runtime your platform team allows it in"]
