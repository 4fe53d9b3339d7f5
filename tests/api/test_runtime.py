"""ClusterFineTuneRuntime: what a runtime may set, how a job's own fields win over it, and that its CRD is
generated from the same models as the FineTuneJob's."""

from __future__ import annotations

import jsonschema
import pytest

from kubetune_api import SpecError, apply_runtime, parse_runtime, parse_runtime_spec, parse_spec, spec_hash
from kubetune_api.crd import all_crds

JOB = {
    "model": {"uri": "hf://meta-llama/Llama-3.1-8B"},
    "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
    "output": {"uri": "s3://out/"},
    "runtimeRef": "llama",
}
RUNTIME = {
    "modelFamily": "llama",
    "image": "registry.example/kubetune-trainer:1",
    "method": {"type": "qlora", "lora": {"r": 32, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
               "quantization": {"quantType": "nf4"}},
    "training": {"learningRate": 1e-4, "epochs": 2, "batchSize": 4, "gradientCheckpointing": True},
    "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB", "memory": "80Gi",
                  "nodeSelector": {"pool": "gpu", "zone": "a"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  "priorityClassName": "batch-low"},
}


def _job(**overrides):
    spec = {**JOB}
    spec.update(overrides)
    return spec


def test_runtime_fills_in_what_the_job_leaves_out():
    spec = parse_spec(apply_runtime(_job(), RUNTIME))
    assert spec.image == RUNTIME["image"]
    assert spec.method.type == "qlora" and spec.method.lora.r == 32
    assert spec.method.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert spec.training.learning_rate == 1e-4 and spec.training.epochs == 2
    assert spec.resources.gpu_product == "NVIDIA-A100-SXM4-80GB"
    assert spec.resources.tolerations[0].key == "nvidia.com/gpu"
    assert spec.resources.priority_class_name == "batch-low"
    assert spec.runtime_ref == "llama"
    # Fields neither sets get the model defaults afterwards.
    assert spec.training.warmup_ratio == 0.03 and spec.resources.cpu == "4"


def test_fields_the_job_sets_win_key_by_key():
    job = _job(
        image="mine:2",
        method={"lora": {"r": 8}},
        training={"learningRate": 5e-5},
        resources={"memory": "40Gi", "nodeSelector": {"zone": "b"}},
    )
    spec = parse_spec(apply_runtime(job, RUNTIME))
    assert spec.image == "mine:2"
    assert spec.method.lora.r == 8
    assert spec.method.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]  # from the runtime
    assert spec.method.type == "qlora"
    assert spec.training.learning_rate == 5e-5 and spec.training.batch_size == 4
    assert spec.resources.memory == "40Gi" and spec.resources.gpus == 1
    assert spec.resources.node_selector == {"pool": "gpu", "zone": "b"}


def test_lists_and_affinity_are_replaced_not_merged():
    runtime = {**RUNTIME, "resources": {**RUNTIME["resources"], "affinity": {"nodeAffinity": {"a": 1}}}}
    job = _job(method={"lora": {"targetModules": ["all-linear"]}},
               resources={"tolerations": [], "affinity": {"podAffinity": {"b": 2}}})
    merged = apply_runtime(job, runtime)
    assert merged["method"]["lora"]["targetModules"] == ["all-linear"]
    assert merged["resources"]["tolerations"] == []
    assert merged["resources"]["affinity"] == {"podAffinity": {"b": 2}}
    parse_spec(merged)


def test_a_job_choosing_max_steps_drops_the_runtime_epochs():
    spec = parse_spec(apply_runtime(_job(training={"maxSteps": 50}), RUNTIME))
    assert spec.training.max_steps == 50 and spec.training.epochs is None


def test_a_job_choosing_plain_lora_drops_the_runtime_quantization():
    spec = parse_spec(apply_runtime(_job(method={"type": "lora"}), RUNTIME))
    assert spec.method.type == "lora" and spec.method.quantization is None


def test_a_cpu_job_drops_the_runtime_gpu_model():
    spec = parse_spec(apply_runtime(_job(resources={"gpus": 0}), RUNTIME))
    assert spec.resources.gpus == 0 and spec.resources.gpu_product is None


def test_inputs_are_not_modified():
    job, runtime = _job(resources={"nodeSelector": {"zone": "b"}}), {**RUNTIME}
    before = (repr(job), repr(runtime))
    apply_runtime(job, runtime)
    assert (repr(job), repr(runtime)) == before


def test_spelling_the_runtime_out_hashes_the_same():
    via_runtime = parse_spec(apply_runtime(_job(), RUNTIME))
    spelled = {k: v for k, v in JOB.items() if k != "runtimeRef"}
    spelled.update({k: RUNTIME[k] for k in ("image", "method", "training", "resources")})
    assert spec_hash(via_runtime) == spec_hash(parse_spec(spelled))
    assert spec_hash(via_runtime) != spec_hash(parse_spec(_job()))


@pytest.mark.parametrize("field", ["model", "dataset", "output", "evaluation", "storage"])
def test_a_runtime_cannot_set_what_the_job_trains_on(field):
    with pytest.raises(SpecError) as err:
        parse_runtime_spec({**RUNTIME, field: {"uri": "s3://x/"}})
    assert f"{field} cannot be set in a runtime" in str(err.value)


@pytest.mark.parametrize(
    "patch,expected",
    [
        ({"training": {"learningRate": 0}}, "spec.training.learningRate"),
        ({"training": {"epochs": 1, "maxSteps": 3}}, "either training.epochs or training.maxSteps"),
        ({"method": {"lora": {"targetModules": ["q proj"]}}}, "spec.method.lora.targetModules"),
        ({"method": {"type": "full"}}, "spec.method.type"),
        ({"resources": {"memory": "lots"}}, "spec.resources.memory"),
        ({"resources": {"gpu": 1}}, "spec.resources.gpu: unknown field; accepted fields here: affinity, cpu"),
        ({"modelFamily": "Llama 3"}, "spec.modelFamily"),
    ],
)
def test_invalid_runtime_errors_name_the_field(patch, expected):
    with pytest.raises(SpecError) as err:
        parse_runtime_spec({**RUNTIME, **patch})
    assert expected in str(err.value)


def test_apply_runtime_names_the_runtime_in_errors():
    with pytest.raises(SpecError) as err:
        apply_runtime(_job(), {"training": {"batchSize": 0}}, runtime_name="llama")
    assert "runtime llama: spec.training.batchSize" in str(err.value)


def test_a_merged_spec_is_still_checked_by_the_job_rules():
    with pytest.raises(SpecError) as err:
        parse_spec(apply_runtime(_job(method={"type": "lora", "quantization": {"bits": 4}}), RUNTIME))
    assert "quantization is only used with method.type qlora" in str(err.value)


def test_runtime_manifest_is_cluster_scoped():
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ClusterFineTuneRuntime",
           "metadata": {"name": "llama"}, "spec": RUNTIME}
    assert parse_runtime(doc).spec.model_family == "llama"
    with pytest.raises(SpecError) as err:
        parse_runtime({**doc, "metadata": {"name": "llama", "namespace": "team-a"}})
    assert "cluster-scoped" in str(err.value)


def test_job_runtime_ref_must_be_a_resource_name():
    with pytest.raises(SpecError) as err:
        parse_spec(_job(runtimeRef="Not A Name"))
    assert "spec.runtimeRef" in str(err.value)


def _runtime_schema() -> dict:
    crd = all_crds()["kubetune.io_clusterfinetuneruntimes.yaml"]
    assert crd["spec"]["scope"] == "Cluster"
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_runtime_crd_reuses_the_job_schema_blocks():
    job = all_crds()["kubetune.io_finetunejobs.yaml"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    runtime = _runtime_schema()["properties"]["spec"]["properties"]
    for block in ("method", "training", "resources"):
        assert runtime[block]["properties"] == job["properties"]["spec"]["properties"][block]["properties"]
    assert "runtimeRef" in job["properties"]["spec"]["properties"]


def test_runtime_crd_accepts_a_runtime_and_rejects_a_bad_one():
    doc = {"apiVersion": "kubetune.io/v1alpha1", "kind": "ClusterFineTuneRuntime",
           "metadata": {"name": "llama"}, "spec": RUNTIME}
    jsonschema.Draft4Validator(_runtime_schema()).validate(doc)
    with pytest.raises(jsonschema.ValidationError):
        bad = {**doc, "spec": {**RUNTIME, "training": {"learningRate": 0}}}
        jsonschema.Draft4Validator(_runtime_schema()).validate(bad)
