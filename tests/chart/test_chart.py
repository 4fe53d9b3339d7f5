"""The Helm chart with a real helm: lint, render, Kubernetes schema validation, CRDs identical to crds/, the
operator's command line and security, least-privilege RBAC, presets and the values schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune_api import apply_runtime, parse_runtime, parse_spec
from kubetune_api.crd import CRD_DIR, all_crds
from kubetune_api.fit import GPU_MEMORY_GIB, check_fit, gpu_memory_bytes

from .conftest import VALUE_SETS
from .helm import CHART, NAMESPACE, helm_run, render, render_text

IDS = list(VALUE_SETS)
# Kinds defined by CRDs (ours, the Prometheus Operator's): kubernetes-validate has no schema for them; ours
# are checked against our CRD schema and API models below.
CUSTOM_KINDS = {"ClusterFineTuneRuntime", "ServiceMonitor"}
# The oldest and the newest Kubernetes that kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())


def _kinds(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def _one(docs: list[dict], kind: str) -> dict:
    found = _kinds(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rendered(helm) -> dict[str, list[dict]]:
    """Every value set as Argo CD renders it: the crds/ folder included."""
    return {name: render(helm, values, include_crds=True) for name, values in VALUE_SETS.items()}


@pytest.mark.parametrize("name", IDS)
def test_helm_lint_strict(helm, name):
    r = helm_run(helm, "lint", "--strict", str(CHART), values=VALUE_SETS[name])
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", IDS)
def test_rendered_manifests_pass_kubernetes_validate_strict(rendered, name):
    for doc in rendered[name]:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} invalid for Kubernetes {version}: {err}")


def test_chart_reads_the_generated_crds():
    """The chart's crds/ is a symlink to the repository's crds/ (helm follows it and packages the files), so
    it cannot drift; the test below checks what helm actually makes of it."""
    link = CHART / "crds"
    assert link.is_symlink() and link.resolve() == CRD_DIR.resolve()
    assert sorted(p.name for p in link.glob("*.yaml")) == sorted(all_crds())


def test_crds_are_installed_verbatim_from_the_crds_folder(helm, rendered):
    """`helm show crds` and `helm template --include-crds` give the generated CRDs byte for byte; plain
    `helm template` renders none (helm installs crds/ itself, before the templates, and never deletes them)."""
    shown = helm_run(helm, "show", "crds", str(CHART))
    assert shown.returncode == 0, shown.stderr
    text = render_text(helm, include_crds=True)
    for name in all_crds():
        original = (CRD_DIR / name).read_text()
        assert original.strip() in shown.stdout and original.strip() in text, f"{name} is not rendered verbatim"
    assert not [d for d in yaml.safe_load_all(render_text(helm)) if d and d["kind"] == "CustomResourceDefinition"]
    # More replicas elect a leader through a Lease (a built-in kind): no other CRDs, no kopf peering.
    for name in ("default", "replicas"):
        assert {d["metadata"]["name"] for d in _kinds(rendered[name], "CustomResourceDefinition")} == {
            "finetunejobs.kubetune.io", "clusterfinetuneruntimes.kubetune.io", "finetuneschedules.kubetune.io"}


def _operator(docs: list[dict]) -> dict:
    return _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    "name,namespaces,election",
    [("default", ["--all-namespaces"], False),
     ("namespaced", ["--namespace=team-a", "--namespace=team-b"], False),
     ("replicas", ["--all-namespaces"], True),
     ("replicas-namespaced", ["--namespace=team-a"], True)],
)
def test_operator_command_line_and_leader_election(rendered, name, namespaces, election):
    deployment = _one(rendered[name], "Deployment")
    container = _operator(rendered[name])
    command = container["command"]
    assert command[:4] == ["kopf", "run", "-m", "kubetune_operator"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in command
    assert [a for a in command if a.startswith(("--namespace", "--all-namespaces"))] == namespaces
    # Always kopf standalone: kopf peering pauses every replica of an equal priority (all of a Deployment).
    assert "--standalone" in command and not [a for a in command if a.startswith(("--peering", "--priority"))]
    env = {e["name"]: e for e in container["env"]}
    if election:
        assert env["KUBETUNE_LEADER_ELECTION_LEASE"]["value"] == f"{NAMESPACE}/kt-kubetune"
        assert env["KUBETUNE_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    else:
        assert "KUBETUNE_LEADER_ELECTION_LEASE" not in env
    # One replica never overlaps with its successor; elected replicas hand over, so they may roll.
    assert deployment["spec"]["strategy"]["type"] == ("RollingUpdate" if election else "Recreate")
    assert not [d for d in rendered[name] if d["apiVersion"].startswith("kopf.dev/")]


def test_probes_point_at_kopf_liveness(rendered):
    container = _operator(rendered["default"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ports == {"health": 8081, "metrics": 9090, "progress": 8080}


@pytest.mark.parametrize("name", IDS)
def test_operator_runs_restricted(rendered, name):
    pod = _one(rendered[name], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = pod["containers"][0]["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["containers"][0]["resources"]["limits"]["memory"]


def test_operator_env_matches_its_settings(rendered):
    docs = rendered["default"]
    env = {e["name"]: e for e in _operator(docs)["env"]}
    assert env["KUBETUNE_TRAINER_IMAGE"]["value"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert env["KUBETUNE_PROGRESS_URL"]["value"] == f"http://kt-kubetune.{NAMESPACE}.svc:8080"
    assert env["KUBETUNE_PROGRESS_PORT"]["value"] == "8080" and env["KUBETUNE_METRICS_PORT"]["value"] == "9090"
    assert env["KUBETUNE_NAMESPACES"]["value"] == ""
    # the GPU table of the Fits condition: the chart's default is the API's
    assert json.loads(env["KUBETUNE_GPU_MEMORY_GIB"]["value"]) == GPU_MEMORY_GIB
    secret = _one(docs, "Secret")
    assert env["KUBETUNE_PROGRESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "progress-key"}
    service = _one(docs, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"metrics": 9090, "progress": 8080}
    assert "KUBETUNE_NAMESPACES" in {e["name"] for e in _operator(rendered["namespaced"])["env"]}
    namespaced_env = {e["name"]: e.get("value") for e in _operator(rendered["namespaced"])["env"]}
    assert namespaced_env["KUBETUNE_NAMESPACES"] == "team-a,team-b"
    # An existing Secret replaces the generated one.
    pinned = rendered["pinned-digest"]
    assert not _kinds(pinned, "Secret")
    assert {e["name"]: e for e in _operator(pinned)["env"]}["KUBETUNE_PROGRESS_KEY"]["valueFrom"][
        "secretKeyRef"]["name"] == "my-progress-key"
    assert _operator(pinned)["image"] == "ghcr.io/kubetune/operator@sha256:" + "a" * 64


def test_gpu_memory_values_add_and_override_entries_of_the_table(helm):
    docs = render(helm, {"gpuMemory": {"NVIDIA-L4": 20, "Acme-X1-64GB": 64}})
    table = json.loads({e["name"]: e for e in _operator(docs)["env"]}["KUBETUNE_GPU_MEMORY_GIB"]["value"])
    assert table == {**GPU_MEMORY_GIB, "NVIDIA-L4": 20, "Acme-X1-64GB": 64}


def test_generated_progress_key_is_random_per_install(helm):
    keys = {_one(render(helm), "Secret")["data"]["progress-key"] for _ in range(2)}
    assert len(keys) == 2


def _rules(doc: dict) -> dict[tuple[str, str, tuple[str, ...]], set[str]]:
    """(apiGroup, resource, resourceNames) -> verbs."""
    rules: dict[tuple[str, str, tuple[str, ...]], set[str]] = {}
    for rule in doc.get("rules") or []:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                rules.setdefault((group, res, tuple(rule.get("resourceNames") or ())), set()).update(rule["verbs"])
    return rules


# Exactly the requests the operator makes (operator/kubetune_operator/kube.py, and kopf's watches and Event
# posts); test_operator_k8s.py runs the operator on a real API server with this RBAC and no 403.
NAMESPACED_RULES = {
    # kopf never patches a job: the operator has only on-event handlers and no finalizer (settings.py).
    # Schedules create their jobs and delete them beyond the history limits.
    ("kubetune.io", "finetunejobs", ()): {"get", "list", "watch", "create", "delete"},
    ("kubetune.io", "finetunejobs/status", ()): {"patch"},
    ("kubetune.io", "finetuneschedules", ()): {"get", "list", "watch"},
    ("kubetune.io", "finetuneschedules/status", ()): {"patch"},
    ("", "pods", ()): {"create", "get", "list", "watch", "delete"},
    # Written blind (create, or merge-patch if it exists) and deleted after the TTL; never read.
    ("", "configmaps", ()): {"create", "patch", "delete"},
    ("", "secrets", ()): {"create", "patch", "delete"},
    ("", "services", ()): {"create", "patch", "delete"},  # a gang's headless Service (nodes > 1)
    ("", "events", ()): {"create"},  # the operator (and kopf) only ever POST Events
}
CLUSTER_READS = {
    ("kubetune.io", "clusterfinetuneruntimes", ()): {"list", "watch"},  # kopf's watch; never a GET
    ("", "nodes", ()): {"list", "watch"},  # their Ready condition (NodeNotReady); kopf's watch
    ("apiextensions.k8s.io", "customresourcedefinitions", ()): {"list", "watch"},
}
NAMESPACES = {("", "namespaces", ()): {"list", "watch"}}  # kopf, only when given --namespace
LEADER_ELECTION = {
    ("coordination.k8s.io", "leases", ()): {"create"},
    ("coordination.k8s.io", "leases", ("kt-kubetune",)): {"get", "update"},
}


def test_cluster_rbac_is_exactly_what_the_operator_uses(rendered):
    assert _rules(_one(rendered["default"], "ClusterRole")) == {**CLUSTER_READS, **NAMESPACED_RULES}
    assert not _kinds(rendered["default"], "Role")


def test_more_replicas_add_only_their_lease_in_the_release_namespace(rendered):
    for name, cluster in (("replicas", {**CLUSTER_READS, **NAMESPACED_RULES}),
                          ("replicas-namespaced", {**CLUSTER_READS, **NAMESPACES, **NAMESPACED_RULES})):
        docs = rendered[name]
        assert _rules(_one(docs, "ClusterRole")) == cluster
        role, binding = _one(docs, "Role"), _one(docs, "RoleBinding")
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
        assert _rules(role) == LEADER_ELECTION
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kt-kubetune", "namespace": NAMESPACE}]


@pytest.mark.parametrize("name", IDS)
def test_the_operator_can_read_no_secret(rendered, name):
    for doc in rendered[name]:
        for (_, res, _), verbs in _rules(doc).items():
            if res == "secrets":
                assert not verbs & {"get", "list", "watch"}, f"{doc['kind']} {doc['metadata']['name']}"


def test_namespaced_rbac_keeps_only_cluster_scoped_reads_cluster_wide(rendered):
    docs = rendered["namespaced"]
    assert _rules(_one(docs, "ClusterRole")) == {**CLUSTER_READS, **NAMESPACES}
    roles = _kinds(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert _rules(role) == NAMESPACED_RULES
    bindings = _kinds(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kt-kubetune", "namespace": NAMESPACE}]


@pytest.mark.parametrize("name", IDS)
def test_rbac_has_no_wildcards_or_escalation(rendered, name):
    for doc in rendered[name]:
        for rule in doc.get("rules") or []:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_every_rbac_rule_is_commented_by_purpose():
    lines = (CHART / "templates" / "rbac.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("- apiGroups:"):
            above = lines[i - 1].strip()
            assert above.startswith("#"), f"rbac.yaml:{i + 1}: rule without a comment saying what it is for"


def test_presets_are_valid_runtimes_for_each_model_family(rendered):
    runtimes = {d["metadata"]["name"]: d for d in _kinds(rendered["default"], "ClusterFineTuneRuntime")}
    assert set(runtimes) == {"llama", "mistral", "gemma", "llama-13b", "llama-70b", "smollm2-cpu"}
    schema = all_crds()["kubetune.io_clusterfinetuneruntimes.yaml"]["spec"]["versions"][0]["schema"]
    for doc in runtimes.values():
        parse_runtime(doc)
        jsonschema.Draft4Validator(schema["openAPIV3Schema"]).validate(doc)
        assert doc["spec"]["image"] == "ghcr.io/kubetune/trainer:0.1.0"
    families = {name: d["spec"]["modelFamily"] for name, d in runtimes.items()}
    assert families == {"llama": "llama", "mistral": "mistral", "gemma": "gemma", "llama-13b": "llama",
                        "llama-70b": "llama", "smollm2-cpu": "smollm2"}
    job = {"model": {"uri": "bundled://smollm2-135m-instruct"}, "dataset": {"train": {"uri": "/data/t.jsonl"}},
           "output": {"uri": "/out"}, "runtimeRef": "smollm2-cpu"}
    spec = parse_spec(apply_runtime(job, runtimes["smollm2-cpu"]["spec"], "smollm2-cpu"))
    assert spec.resources.gpus == 0 and spec.method.lora.target_modules == ["q_proj", "v_proj"]
    big = parse_spec(apply_runtime({**job, "runtimeRef": "llama-70b"}, runtimes["llama-70b"]["spec"], "llama-70b"))
    assert (big.resources.gpus, big.training.sharding, big.method.type) == (8, "fsdp", "lora")
    # the presets with a model shape fit the 80 GB GPUs their descriptions promise (the Fits estimate)
    for name in ("llama", "llama-13b", "llama-70b"):
        spec = parse_spec(apply_runtime({**job, "runtimeRef": name}, runtimes[name]["spec"], name))
        assert check_fit(spec.model.shape, spec, gpu_memory_bytes("NVIDIA-A100-SXM4-80GB")).fits is True, name
    assert not _kinds(rendered["monitoring-no-runtimes"], "ClusterFineTuneRuntime")


def test_service_monitor_selects_the_metrics_port(rendered):
    monitor = _one(rendered["monitoring-no-runtimes"], "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = _one(rendered["monitoring-no-runtimes"], "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert not _kinds(rendered["default"], "ServiceMonitor")


@pytest.mark.parametrize(
    "values,message",
    [
        ({"replicas": 0}, "replicas: Must be greater than or equal to 1"),
        ({"replica": 2}, "Additional property replica is not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
        ({"service": {"metricsPort": 70000}}, "service.metricsPort"),
        ({"watchNamespaces": ["Team_A"]}, "watchNamespaces.0"),
        ({"rbac": {"namespaced": True}}, "then"),
        ({"runtimes": {"presets": {"x": {"model": {"uri": "s3://m/"}}}}}, "runtimes.presets.x"),
        ({"runtimes": {"presets": {"Bad Name": {}}}}, "runtimes.presets"),
        ({"image": {"digest": "latest"}}, "image.digest"),
        ({"resources": {"limits": {"memory": "lots"}}}, "resources.limits.memory"),
        ({"probes": {"port": 9090}}, "three different ports"),
        ({"gpuMemory": {"NVIDIA-L4": 0}}, "gpuMemory.NVIDIA-L4"),
    ],
)
def test_bad_values_are_rejected(helm, values, message):
    r = helm_run(helm, "template", "kt", str(CHART), values=values)
    assert r.returncode != 0, f"helm template accepted {values}"
    assert message in r.stderr, r.stderr
    # helm lint fails on schema violations; a template's `fail` (the ports rule) it only reports as INFO.
    r = helm_run(helm, "lint", "--strict", str(CHART), values=values)
    assert message in r.stdout + r.stderr, r.stdout + r.stderr
    assert r.returncode != 0 or "[INFO] Fail: " in r.stdout + r.stderr


def _schema_leaves(schema: dict, path: tuple[str, ...] = ()):
    for key, node in (schema.get("properties") or {}).items():
        if key == "global":
            continue
        yield (*path, key), "properties" in node


def test_every_value_is_documented():
    """Each key in values.yaml that the schema describes has a `# --` comment right above it (a comment
    block may span lines), or is a group whose members all have one."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()

    def check(node: dict, path: tuple[str, ...], start: int, indent: int) -> None:
        for key, child in (node.get("properties") or {}).items():
            if key == "global":
                continue
            pattern = re.compile(rf"^{' ' * indent}{re.escape(key)}:")
            index = next((i for i in range(start, len(lines)) if pattern.match(lines[i])), None)
            assert index is not None, f"value {'.'.join((*path, key))} is missing from values.yaml"
            j = index - 1
            while j >= 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
                j -= 1
            documented = j >= 0 and lines[j].strip().startswith("# --")
            if not documented and "properties" in child:
                check(child, (*path, key), index + 1, indent + 2)  # a group: its members carry the docs
                continue
            assert documented, f"value {'.'.join((*path, key))} (values.yaml:{index + 1}) has no `# --` description"

    check(schema, (), 0, 0)


def test_values_yaml_itself_passes_the_schema():
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert Path(CHART / "values.schema.json").read_text().endswith("\n")
