"""The FineTuneJob resource as a whole: parsing manifests, readable validation errors, the spec hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from .base import ApiModel
from .spec import DNS1123_LABEL, FineTuneJobSpec
from .status import FineTuneJobStatus

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
# Pod names are `<name>-<attempt>`; 52 leaves room for the attempt and stays a valid label value.
MAX_NAME_LENGTH = 52

# Spec fields that change what the run produces. The rest (resources, image, retries, deadlines, suspend,
# storage endpoint and credentials) only say how or where it runs, so editing them never retrains.
HASHED_FIELDS = ("model", "dataset", "method", "training", "evaluation")


class SpecError(ValueError):
    """An invalid manifest. `errors` holds one line per problem, each starting with the field path."""

    def __init__(self, errors: list[str], source: str = "manifest"):
        self.errors = errors
        self.source = source
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  - {e}" for e in errors))


class ObjectMeta(BaseModel):
    """The parts of metadata the API reads; everything else is kept as is."""

    model_config = {"extra": "allow"}

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS1123_LABEL)
    namespace: str = Field(default="default", pattern=DNS1123_LABEL)


class FineTuneJob(ApiModel):
    """A FineTuneJob manifest."""

    api_version: Literal["kubetune.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None

    @property
    def spec_hash(self) -> str:
        return spec_hash(self.spec)

    def in_cluster_errors(self) -> list[str]:
        """The spec's in-cluster rules, plus those on the name: a gang's headless Service is named after the job,
        and Service names must start with a letter (DNS-1035)."""
        errors = self.spec.in_cluster_errors()
        if self.spec.resources.nodes > 1 and not self.metadata.name[:1].isalpha():
            errors.append(f"metadata.name: {self.metadata.name!r} must start with a letter when "
                          f"spec.resources.nodes is more than 1 (the gang's headless Service is named after the job)")
        return errors

    def artifact_root(self) -> str:
        """{output.uri}/{namespace}/{name}/{specHash}/ — a run writes only below it."""
        base = self.spec.output.uri.rstrip("/")
        return f"{base}/{self.metadata.namespace}/{self.metadata.name}/{self.spec_hash}/"


# Hashed fields added after the hash was first published (0.1.0). At their default they are left out of
# the hash, so an unchanged manifest keeps its spec hash across an upgrade: its artefacts stay found and it
# never trains again; set to anything else they count like every other field. Every hashed field added from
# now on goes here (tests/api/test_hash_status_results.py pins the hashes of manifests written for 0.1.0).
HASH_NEUTRAL_AT_DEFAULT = (
    ("model", "allowPickleWeights"),
    ("dataset", "maskHistory"),
    ("dataset", "maxRowBytes"),
    ("dataset", "maxFileBytes"),
    ("training", "earlyStopping"),
)
# Fields whose default changed after 0.1.0 from a fixed value to one the trainer works out (unset: None).
# Left unset they hash as the value 0.1.0 filled in, so a manifest that already trained keeps its hash and
# never trains again after an upgrade (what a new run of it trains changes, as with any trainer upgrade).
# The price: spelling out the old value hashes the same as leaving the field unset (as it did in 0.1.0).
HASHED_AS_BEFORE_WHEN_UNSET = {
    ("training", "epochs"): 3.0,  # unset: early stopping, at most earlyStopping.maxEpochs
    ("method", "lora", "dropout"): 0.05,  # unset: 0 (a random mask per adapted layer costs ~10% of a CPU step)
    ("training", "learningRate"): 2e-4,  # unset: from the base model's width (TrainingSpec.peak_learning_rate)
    ("evaluation", "generation", "maxNewTokens"): 128,  # unset: fitted to the reference answers
}


def spec_hash(spec: FineTuneJobSpec) -> str:
    """A stable hash of the effective spec: defaults are filled in and keys sorted, so two manifests that
    mean the same run hash the same whatever they spell out or in which order."""
    effective = spec.model_dump(mode="json", by_alias=True, include=set(HASHED_FIELDS))
    effective["mergeAdapter"] = spec.output.merge_adapter
    # How the work is split across GPUs, like resources.gpus, changes how a run goes, not what it trains.
    effective["training"].pop("sharding", None)
    # The model's shape only informs the memory estimate; the trainer reads the model's own config.json.
    effective["model"].pop("shape", None)
    for path, before in HASHED_AS_BEFORE_WHEN_UNSET.items():
        parent = effective
        for key in path[:-1]:
            parent = parent[key]
        if parent[path[-1]] is None and not (path[-1] == "epochs" and parent["maxSteps"] is not None):
            parent[path[-1]] = before
    for path in HASH_NEUTRAL_AT_DEFAULT:
        parent = effective
        for key in path[:-1]:
            parent = parent.get(key) or {}
        if path[-1] in parent and parent[path[-1]] == _default_of(path):
            del parent[path[-1]]
    canonical = json.dumps(effective, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _default_of(path: tuple[str, ...]) -> Any:
    """The JSON default of the spec field at a camelCase path."""
    model: Any = FineTuneJobSpec
    for key in path:
        field = next(f for name, f in model.model_fields.items() if key in (name, f.alias))
        model = field.annotation
    default = field.get_default(call_default_factory=True)
    return default.model_dump(mode="json", by_alias=True) if isinstance(default, BaseModel) else default


def _loc_to_path(loc: tuple[Any, ...], root: str) -> str:
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("function-", "literal[")):
            continue
        else:
            path += f".{part}"
    return path.lstrip(".")


def _accepted_fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The camelCase fields accepted at `loc` (for unknown-field errors)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)), None
        )
        if field is None:
            return None
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(f.alias or n for n, f in current.model_fields.items())
    return None


def _model_in(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def format_errors(err: ValidationError, model: type[BaseModel], root: str) -> list[str]:
    """One readable line per pydantic error: the field path, what is wrong and what is accepted."""
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        path = _loc_to_path(loc, root)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            accepted = _accepted_fields(model, loc)
            msg = "unknown field" + (f"; accepted fields here: {', '.join(accepted)}" if accepted else "")
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("model_type", "dict_type") and not isinstance(e["input"], dict):
            msg += f" (got {e['input']!r})"
        lines.append(f"{path}: {msg}")
    return lines


def parse_spec(data: Any, root: str = "spec") -> FineTuneJobSpec:
    try:
        return FineTuneJobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_errors(err, FineTuneJobSpec, root), "spec") from None


def parse_job(data: Any, source: str = "manifest") -> FineTuneJob:
    if not isinstance(data, dict):
        raise SpecError([f"expected a FineTuneJob mapping, got {type(data).__name__}"], source)
    try:
        return FineTuneJob.model_validate(data)
    except ValidationError as err:
        raise SpecError(format_errors(err, FineTuneJob, ""), source) from None


def load_manifest(path: str | Path) -> FineTuneJob:
    """Read a FineTuneJob from a YAML file holding one document (or the first FineTuneJob of several)."""
    text = Path(path).read_text()
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as err:
        raise SpecError([f"not valid YAML: {err}"], str(path)) from None
    jobs = [d for d in docs if isinstance(d, dict) and d.get("kind") == KIND]
    if not jobs:
        raise SpecError([f"no document with kind: {KIND}"], str(path))
    return parse_job(jobs[0], str(path))
