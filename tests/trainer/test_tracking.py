"""spec.tracking.mlflow against a real MLflow tracking server (its own venv, from requirements/mlflow.txt),
read back through MLflow's client; and a tracker that is down never costs the training."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from fixtures.servers import free_port, serving
from fixtures.venvs import locked_venv
from kubetune_api.job import load_manifest

from .conftest import manifest, run_cli, tiny_spec, write_manifest

pytestmark = pytest.mark.timeout(1800)  # the first run builds the server's venv


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    venv = locked_venv("mlflow.txt")
    folder, port = tmp_path_factory.mktemp("mlflow"), free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(venv / "bin" / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--default-artifact-root", str(folder / "art")]
    with serving(command, f"{url}/health", folder / "server.log", startup_seconds=300):
        yield url


def _run(tmp_path, model, train, uri: str, name: str):
    spec = tiny_spec(f"file://{model}", str(train), str(tmp_path / "out"),
                     tracking={"mlflow": {"trackingUri": uri, "experiment": "kubetune-tests"}})
    path = write_manifest(tmp_path / "job.yaml", manifest(spec, name=name))
    termination = tmp_path / "termination.json"
    proc = run_cli(["run", str(path)], env={"KUBETUNE_TERMINATION_LOG": str(termination)})
    return proc, load_manifest(path), json.loads(termination.read_text())


def test_the_run_is_tracked_in_mlflow_and_reads_back(tmp_path, tiny_model, sku_file, mlflow_server):
    proc, job, result = _run(tmp_path, tiny_model, sku_file, mlflow_server, "tracked")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["tracked"] is True and "MLflow run" in result["trackingMessage"]

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("kubetune-tests")
    [run] = client.search_runs([experiment.experiment_id], filter_string="tags.`kubetune.name` = 'tracked'")
    assert run.info.status == "FINISHED" and run.info.run_name == "default/tracked"
    assert run.data.params["training.learningRate"] == "0.01" and run.data.params["method.lora.r"] == "4"
    assert run.data.tags["kubetune.specHash"] == job.spec_hash
    root = tmp_path / "out" / "default" / "tracked" / job.spec_hash
    metrics = json.loads((root / "metrics.json").read_text())
    assert run.data.metrics["tuned.evalLoss"] == pytest.approx(metrics["tuned"]["evalLoss"])
    assert run.data.metrics["base.evalLoss"] == pytest.approx(metrics["base"]["evalLoss"])
    losses = client.get_metric_history(run.info.run_id, "train.loss")
    logged = [json.loads(line) for line in (root / "train-log.jsonl").read_text().splitlines()]
    assert sorted(m.step for m in losses) == [e["step"] for e in logged if e["event"] == "step"]
    lineage = json.loads((root / "lineage.json").read_text())
    assert run.data.tags["kubetune.lineage.baseWeightsSha256"] == lineage["baseModel"]["weights"]["sha256"]
    assert run.data.tags["kubetune.artifact.adapter"] == result["artifacts"]["adapter"]
    inputs = json.loads(run.data.tags["kubetune.lineage.inputs"])
    assert inputs[0]["uri"] == str(sku_file) and inputs[0]["sha256"]


def test_a_tracker_that_is_down_never_fails_the_training(tmp_path, tiny_model, sku_file):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc, job, result = _run(tmp_path, tiny_model, sku_file, down, "untracked")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["ok"] is True and result["tracked"] is False
    assert down in result["trackingMessage"] and "training goes on" in result["trackingMessage"]
    assert (tmp_path / "out" / "default" / "untracked" / job.spec_hash / "_SUCCESS").exists()
