"""The spec model accepts what users write and rejects mistakes with the field path and what is accepted."""

from __future__ import annotations

import copy

import pytest

from kubetune_api import SpecError, parse_job, parse_spec

MINIMAL = {
    "model": {"uri": "s3://models/base/"},
    "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
    "output": {"uri": "s3://out/"},
}


def with_(path: str, value):
    """MINIMAL with the dotted `path` set to `value` (created as needed)."""
    spec = copy.deepcopy(MINIMAL)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def test_minimal_spec_gets_sensible_defaults():
    spec = parse_spec(MINIMAL)
    assert spec.method.type == "lora"
    assert spec.method.lora.target_modules == ["all-linear"]
    assert spec.training.epochs is None and spec.training.max_steps is None
    # no length set: train until the held-out loss stops improving, at most 3 epochs
    assert spec.training.stopping().max_epochs == 3.0 and spec.training.planned_epochs() == 3.0
    assert spec.dataset.eval_split == 0.1
    assert spec.evaluation.compare_base is True
    assert spec.resources.gpus == 1
    assert spec.method.quantization is None


def test_qlora_without_quantization_gets_nf4_defaults():
    spec = parse_spec(with_("method", {"type": "qlora"}))
    assert spec.method.quantization.quant_type == "nf4"
    assert spec.method.quantization.double_quant is True


def test_camel_case_fields_map_to_hugging_face_names():
    spec = parse_spec(with_("training", {"learningRate": 1e-4, "gradientAccumulation": 4, "maxSteps": 10}))
    assert spec.training.learning_rate == 1e-4
    assert spec.training.gradient_accumulation == 4
    assert spec.training.max_steps == 10 and spec.training.epochs is None
    assert spec.training.stopping() is None, "an explicit length is honoured: no early stopping unless asked"


def test_early_stopping_with_an_explicit_length_only_when_asked_for():
    assert parse_spec(with_("training", {"epochs": 2})).training.stopping() is None
    spec = parse_spec(with_("training", {"epochs": 2, "earlyStopping": {"patience": 4}}))
    assert spec.training.stopping().patience == 4 and spec.training.planned_epochs() == 2


INVALID = [
    # (id, spec, field path named in the error, words that say what is accepted)
    ("model missing", {k: v for k, v in MINIMAL.items() if k != "model"}, "spec.model", "required"),
    ("dataset missing", {k: v for k, v in MINIMAL.items() if k != "dataset"}, "spec.dataset", "required"),
    ("output missing", {k: v for k, v in MINIMAL.items() if k != "output"}, "spec.output", "required"),
    ("unknown top-level field", with_("learningRate", 1e-4), "spec.learningRate", "accepted fields here"),
    ("typo in training", with_("training.learningrate", 1e-4), "spec.training.learningrate", "learningRate"),
    ("max epochs with epochs", with_("training", {"epochs": 2, "earlyStopping": {"maxEpochs": 5}}),
     "spec.training", "only when training.epochs and training.maxSteps are unset"),
    ("ftp model uri", with_("model.uri", "ftp://host/model"), "spec.model.uri", "s3://bucket/prefix"),
    ("bad s3 bucket", with_("model.uri", "s3://B/x"), "spec.model.uri", "s3://bucket/prefix"),
    ("bad hf uri", with_("model.uri", "hf://org/name/extra/x"), "spec.model.uri", "hf://org/name"),
    ("dataset uri scheme", with_("dataset.train.uri", "http://x/y.jsonl"), "spec.dataset.train.uri", "s3://"),
    ("hf output", with_("output.uri", "hf://org/out"), "spec.output.uri", "s3://bucket/prefix"),
    ("unknown method", with_("method.type", "full"), "spec.method.type", "'lora' or 'qlora'"),
    ("lora with quantization", with_("method", {"type": "lora", "quantization": {"bits": 4}}), "spec.method", "qlora"),
    ("8-bit quantization", with_("method", {"type": "qlora", "quantization": {"bits": 8}}), "spec.method.quantization.bits", "4"),
    ("quant type", with_("method", {"type": "qlora", "quantization": {"quantType": "int4"}}), "spec.method.quantization.quantType", "'nf4' or 'fp4'"),
    ("compute dtype", with_("method", {"type": "qlora", "quantization": {"computeDtype": "int8"}}), "spec.method.quantization.computeDtype", "bfloat16"),
    ("rank zero", with_("method.lora", {"r": 0}), "spec.method.lora.r", "greater than or equal to 1"),
    ("dropout one", with_("method.lora", {"dropout": 1.0}), "spec.method.lora.dropout", "less than 1"),
    ("all-linear mixed", with_("method.lora", {"targetModules": ["all-linear", "q_proj"]}), "spec.method.lora.targetModules", "all-linear cannot be combined"),
    ("empty targets", with_("method.lora", {"targetModules": []}), "spec.method.lora.targetModules", "at least 1"),
    ("epochs and maxSteps", with_("training", {"epochs": 1, "maxSteps": 5}), "spec.training", "not both"),
    ("negative lr", with_("training.learningRate", -1), "spec.training.learningRate", "greater than 0"),
    ("zero batch", with_("training.batchSize", 0), "spec.training.batchSize", "greater than or equal to 1"),
    ("scheduler", with_("training.scheduler", "step"), "spec.training.scheduler", "'cosine'"),
    ("eval and evalSplit", with_("dataset", {"train": {"uri": "/d/t.jsonl"}, "eval": {"uri": "/d/e.jsonl"}, "evalSplit": 0.1}), "spec.dataset", "not both"),
    ("evalSplit too big", with_("dataset.evalSplit", 0.9), "spec.dataset.evalSplit", "less than or equal to 0.5"),
    ("format", with_("dataset.format", "xlsx"), "spec.dataset.format", "'jsonl'"),
    ("schema", with_("dataset.schema", "vicuna"), "spec.dataset.schema", "'sharegpt'"),
    ("mapping key", with_("dataset", {"train": {"uri": "/t.jsonl"}, "schema": "alpaca", "columnMapping": {"answer": "a"}}), "spec.dataset", "accepted keys: instruction, input, output"),
    ("custom without template", with_("dataset.template", "custom"), "spec.dataset", "customTemplate is required"),
    ("seq length", with_("dataset.maxSeqLength", 8), "spec.dataset.maxSeqLength", "greater than or equal to 16"),
    ("unknown metric", with_("evaluation.metrics", ["accuracy"]), "spec.evaluation.metrics[0]", "'rougeL'"),
    ("gate metric not computed", with_("evaluation", {"metrics": ["rougeL"], "gate": {"metric": "bleu", "min": 10}}), "spec.evaluation", "add it to evaluation.metrics"),
    ("gate without bound", with_("evaluation.gate", {"metric": "rougeL"}), "spec.evaluation.gate", "exactly one of min or max"),
    ("gate min on loss", with_("evaluation.gate", {"metric": "evalLoss", "min": 1.0}), "spec.evaluation.gate", "gate it with max"),
    ("regression metric", with_("evaluation.regression", {"uri": "/r.jsonl", "metric": "perplexity"}), "spec.evaluation.regression.metric", "generation metric"),
    ("secret namespace", with_("storage.s3.secretRef", {"name": "creds", "namespace": "other"}), "spec.storage.s3.secretRef", "its own namespace"),
    ("secret name", with_("model.secretRef", {"name": "Bad_Name"}), "spec.model.secretRef.name", "pattern"),
    ("s3 endpoint", with_("storage.s3.endpoint", "minio:9000"), "spec.storage.s3.endpoint", "https?://"),
    ("memory quantity", with_("resources.memory", "lots"), "spec.resources.memory", "pattern"),
    ("gpus negative", with_("resources.gpus", -1), "spec.resources.gpus", "greater than or equal to 0"),
    ("no nodes", with_("resources.nodes", 0), "spec.resources.nodes", "greater than or equal to 1"),
    ("too many nodes", with_("resources.nodes", 65), "spec.resources.nodes", "less than or equal to 64"),
    ("toleration operator", with_("resources.tolerations", [{"key": "k", "operator": "In"}]), "spec.resources.tolerations[0].operator", "'Exists' or 'Equal'"),
    ("deadline zero", with_("activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds", "greater than or equal to 1"),
    ("retries", with_("failurePolicy.maxRetries", 100), "spec.failurePolicy.maxRetries", "less than or equal to 20"),
    ("checkpoint", with_("checkpoint.everySteps", 0), "spec.checkpoint.everySteps", "greater than or equal to 1"),
    ("s3 secret without s3", {**with_("storage.s3.secretRef", {"name": "creds"}), "model": {"uri": "/m"}, "dataset": {"train": {"uri": "/t.jsonl"}}, "output": {"uri": "/o"}}, "spec", "no model, dataset or output uri uses s3://"),
    ("string for bool", with_("suspend", "maybe"), "spec.suspend", "valid boolean"),
]


@pytest.mark.parametrize("spec,path,accepted", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_spec_names_the_field_and_what_is_accepted(spec, path, accepted):
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    lines = info.value.errors
    matching = [line for line in lines if line.startswith(path + ":")]
    assert matching, f"no error names {path}: {lines}"
    assert any(accepted in line for line in matching), f"{accepted!r} not in {matching}"


def test_there_are_at_least_25_invalid_cases():
    assert len(INVALID) >= 25


def test_every_problem_is_reported_at_once():
    spec = with_("training", {"learningRate": -1, "batchSize": 0})
    spec["method"] = {"type": "full"}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    assert len(info.value.errors) == 3


@pytest.mark.parametrize(
    "metadata,accepted",
    [({"name": "Has_Caps"}, "pattern"), ({"name": "x" * 60}, "at most 52"), ({}, "required")],
)
def test_job_name_must_fit_pod_names(metadata, accepted):
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": metadata, "spec": MINIMAL}
    with pytest.raises(SpecError) as info:
        parse_job(doc)
    assert any(line.startswith("metadata.name") and accepted in line for line in info.value.errors)


def test_wrong_api_version_is_named():
    doc = {"apiVersion": "kubetune.io/v2", "kind": "FineTuneJob", "metadata": {"name": "a"}, "spec": MINIMAL}
    with pytest.raises(SpecError) as info:
        parse_job(doc)
    assert any(line.startswith("apiVersion:") and "kubetune.io/v1alpha1" in line for line in info.value.errors)


def test_a_gang_needs_a_cluster_and_a_service_name():
    spec = parse_spec({**MINIMAL, "resources": {"nodes": 2}})
    assert spec.resources.nodes == 2 and parse_spec(MINIMAL).resources.nodes == 1
    assert [e.split(":")[0] for e in spec.local_errors()] == ["spec.resources.nodes"]
    assert "kubectl" in spec.local_errors()[0] and parse_spec(MINIMAL).local_errors() == []
    job = parse_job({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "7b-sft"},
                     "spec": {**MINIMAL, "resources": {"nodes": 2}}})
    assert [e.split(":")[0] for e in job.in_cluster_errors()] == ["metadata.name"]
