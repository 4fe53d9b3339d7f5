"""The committed CRD is exactly what the API models generate, documents every field, and is a
structural schema that accepts our examples and rejects what the model rejects."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from kubetune_api import load_manifest, parse_schedule
from kubetune_api.crd import CRD_DIR, all_crds, main, render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def _schema(name: str = "kubetune.io_finetunejobs.yaml") -> dict:
    crd = all_crds()[name]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(node: dict, path: str):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crds_match_the_models():
    for name, crd in all_crds().items():
        committed = CRD_DIR / name
        assert committed.exists(), f"{committed} missing: run kubetune-crd"
        assert committed.read_text() == render(crd), f"{committed} drifted: run kubetune-crd"


def test_check_mode_reports_drift(tmp_path, capsys):
    for name, crd in all_crds().items():
        (tmp_path / name).write_text(render(crd).replace("Peak learning rate", "Peak LR"))
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert "drifted" in capsys.readouterr().err
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0


@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_field_has_a_description(part):
    schema = _schema()["properties"][part]
    missing = [p for p, node in _walk(schema, part) if p != part and not node.get("description")
               and not p.endswith(("[]", "{}"))]
    assert not missing, f"fields without description: {missing}"


def test_schema_is_structural():
    text = yaml.safe_dump(_schema())
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "additionalProperties: false", "const:"):
        assert forbidden not in text
    for path, node in _walk(_schema(), "root"):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"


def test_crd_has_status_subresource_print_columns_and_short_name():
    crd = all_crds()["kubetune.io_finetunejobs.yaml"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Model", "Method", "Progress", "Eval", "Age"]
    assert "ftj" in crd["spec"]["names"]["shortNames"]
    assert "kubetune" in crd["spec"]["names"]["categories"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid_for_the_model_and_the_crd(example):
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    jobs = [d for d in docs if d.get("kind") == "FineTuneJob"]
    schedules = [d for d in docs if d.get("kind") == "FineTuneSchedule"]
    assert jobs or schedules, f"{example} holds no FineTuneJob or FineTuneSchedule"
    if jobs:
        load_manifest(example)
    for doc in jobs:
        jsonschema.Draft4Validator(_schema()).validate(doc)
    for doc in schedules:
        parse_schedule(doc)
        jsonschema.Draft4Validator(_schema("kubetune.io_finetuneschedules.yaml")).validate(doc)


@pytest.mark.parametrize(
    "patch",
    [
        {"method": {"type": "full"}},
        {"training": {"learningRate": 0}},
        {"dataset": {"train": {"uri": "s3://d/t.jsonl"}, "evalSplit": 0.9}},
        {"evaluation": {"metrics": ["accuracy"]}},
        {"resources": {"memory": "lots"}},
    ],
)
def test_crd_schema_rejects_what_the_api_server_can_check(patch):
    doc = {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "a"},
        "spec": {"model": {"uri": "s3://m/b/"}, "dataset": {"train": {"uri": "s3://d/t.jsonl"}},
                 "output": {"uri": "s3://o/"}, **patch},
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(_schema()).validate(doc)
