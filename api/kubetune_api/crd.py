"""Generate the CustomResourceDefinition from the pydantic models.

`kubetune-crd` rewrites `crds/`; `kubetune-crd --check` fails when the committed files drift from the
models. The output is a structural schema (no $ref, no anyOf, no additionalProperties: false), as
apiextensions.k8s.io/v1 requires, with every field's description for `kubectl explain`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .job import GROUP, KIND, PLURAL, VERSION
from .runtime import RUNTIME_KIND, RUNTIME_PLURAL, FineTuneRuntimeSpec
from .schedule import SCHEDULE_KIND, SCHEDULE_PLURAL, FineTuneScheduleSpec, FineTuneScheduleStatus
from .spec import FineTuneJobSpec
from .status import FineTuneJobStatus

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
_DROP = {"title", "default", "additionalProperties", "$defs", "discriminator"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve $ref, collapse Optional (anyOf with null) and turn JSON-Schema-2020 forms into OpenAPI v3.0."""
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        target.update({k: v for k, v in node.items() if k == "description"})
        node = target
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"union types cannot be expressed in a structural schema: {options}")
        merged = dict(options[0])
        merged.update({k: v for k, v in node.items() if k == "description"})
        node = merged
        return _inline(node, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = dict(node.pop("allOf")[0])
        merged.update(node)
        return _inline(merged, defs)
    out: dict[str, Any] = {}
    extra = node.get("additionalProperties")
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "properties":
            out["properties"] = {k: _inline(v, defs) for k, v in value.items()}
        elif key == "items":
            out["items"] = _inline(value, defs)
        else:
            out[key] = value
    if node.get("type") == "object" and "properties" not in node:
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _inline(extra, defs)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    if out.get("type") == "number" and isinstance(out.get("minimum"), int):
        out["minimum"] = float(out["minimum"])
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation", ref_template="#/$defs/{model}")
    defs = raw.get("$defs", {})
    return _inline(raw, defs)


def _columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri"},
        {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
        {"name": "Progress", "type": "integer", "jsonPath": ".status.progress.percent",
         "description": "Percent of training steps done"},
        {"name": "Eval", "type": "string", "jsonPath": ".status.evalSummary"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def _runtime_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Family", "type": "string", "jsonPath": ".spec.modelFamily"},
        {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.resources.gpus"},
        {"name": "GPU", "type": "string", "jsonPath": ".spec.resources.gpuProduct"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def _schedule_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "Suspend", "type": "boolean", "jsonPath": ".spec.suspend"},
        {"name": "Active", "type": "string", "jsonPath": ".status.active[*]", "priority": 1},
        {"name": "Last Schedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
        {"name": "Outcome", "type": "string", "jsonPath": ".status.lastOutcome",
         "description": "What the last scheduled time did"},
        {"name": "Last Passing", "type": "string", "jsonPath": ".status.lastPassingRun.name",
         "description": "The newest job that succeeded and passed its gate"},
        {"name": "Adapter", "type": "string", "jsonPath": ".status.latestAdapter", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def build_crd(
    kind: str = KIND,
    plural: str = PLURAL,
    spec_model: type[BaseModel] = FineTuneJobSpec,
    status_model: type[BaseModel] | None = FineTuneJobStatus,
    scope: str = "Namespaced",
    short_names: tuple[str, ...] = ("ftj",),
    columns: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": "kubetune.io/v1alpha1"},
        "kind": {"type": "string", "description": kind},
        "metadata": {"type": "object"},
        "spec": openapi_schema(spec_model),
    }
    version: dict[str, Any] = {"name": VERSION, "served": True, "storage": True}
    if status_model is not None:
        properties["status"] = openapi_schema(status_model)
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns if columns is not None else _columns()
    version["schema"] = {
        "openAPIV3Schema": {
            "type": "object",
            "description": (spec_model.__doc__ or kind).strip(),
            "required": ["spec"],
            "properties": properties,
        }
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": list(short_names),
                "categories": ["kubetune", "ml"],
            },
            "scope": scope,
            "versions": [version],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD, for every resource the API defines."""
    return {
        f"{GROUP}_{PLURAL}.yaml": build_crd(),
        f"{GROUP}_{RUNTIME_PLURAL}.yaml": build_crd(
            kind=RUNTIME_KIND, plural=RUNTIME_PLURAL, spec_model=FineTuneRuntimeSpec, status_model=None,
            scope="Cluster", short_names=("ftrt",), columns=_runtime_columns(),
        ),
        f"{GROUP}_{SCHEDULE_PLURAL}.yaml": build_crd(
            kind=SCHEDULE_KIND, plural=SCHEDULE_PLURAL, spec_model=FineTuneScheduleSpec,
            status_model=FineTuneScheduleStatus, short_names=("ftsched",), columns=_schedule_columns(),
        ),
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `kubetune-crd` from api/kubetune_api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the kubetune CRDs from the API models.")
    parser.add_argument("--out", type=Path, default=CRD_DIR, help="directory to write (default: crds/)")
    parser.add_argument("--check", action="store_true", help="fail if the files differ instead of writing")
    args = parser.parse_args(argv)
    drift = []
    for name, crd in all_crds().items():
        path = args.out / name
        text = render(crd)
        if args.check:
            if not path.exists() or path.read_text() != text:
                drift.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if drift:
        print("CRDs drifted from the API models; run `kubetune-crd`: " + ", ".join(drift), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
