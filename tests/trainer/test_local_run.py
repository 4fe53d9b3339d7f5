"""`kubetune run` on a laptop: relative paths, CSV data, the Alpaca template, merged weights, gate and
regression verdicts, and the summary a user reads at the end."""

from __future__ import annotations

import json

import pytest

from kubetune_api.job import load_manifest

from .conftest import PRODUCTS, manifest, run_cli, tiny_spec, write_jsonl, write_manifest


def test_local_run_resolves_paths_against_the_manifest_and_prints_the_summary(tmp_path, tiny_alpaca_model):
    jobs = tmp_path / "jobs"
    rows = [f"SKU for a {c} {p}?,NV-{code}-{c[:2].upper()}" for p, code in PRODUCTS.items()
            for c in ("red", "blue", "green", "black")]
    (jobs / "data").mkdir(parents=True)
    (jobs / "data" / "sku.csv").write_text("question,answer\n" + "\n".join(rows) + "\n")
    write_jsonl(jobs / "data" / "general.jsonl", [{"question": "Capital of France?", "answer": "Paris"}])
    spec = tiny_spec(f"file://{tiny_alpaca_model}", "./data/sku.csv", "./out",
                     # The Alpaca template's prompts are ~90 tokens: 64 (the default here) would leave no answer.
                     dataset={"schema": "alpaca", "columnMapping": {"instruction": "question", "output": "answer"},
                              "maxSeqLength": 128},
                     evaluation={"gate": {"metric": "evalLoss", "max": 1000.0},
                                 "regression": {"uri": "./data/general.jsonl", "metric": "chrf", "maxDrop": 1.0}})
    spec["output"]["mergeAdapter"] = True
    spec["training"]["gradientCheckpointing"] = True
    del spec["training"]["learningRate"]  # unset: worked out from the model's width
    path = write_manifest(jobs / "job.yaml", manifest(spec, name="local"))
    proc = run_cli(["run", str(path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = jobs / "out" / "default" / "local" / load_manifest(path).spec_hash
    assert "metric" in proc.stdout and "exactMatch" in proc.stdout and "base" in proc.stdout
    assert f"report:  {root}/report.html" in proc.stdout
    assert "PASSED: gate evalLoss" in proc.stdout and "regression chrf" in proc.stdout
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["gatePassed"] is True and metrics["regression"]["passed"] is True
    assert metrics["data"]["schema"] == "alpaca" and metrics["data"]["train"] + metrics["data"]["eval"] == 16
    config = json.loads((root / "config.json").read_text())
    assert config["resolved"]["template"] == "alpaca" and config["versions"]["torch"]
    assert config["spec"]["training"]["scheduler"] == "cosine", "the resolved spec carries the defaults"
    hidden = json.loads((tiny_alpaca_model / "config.json").read_text())["hidden_size"]
    expected = 5e-4 * (2000 / hidden) ** 0.781 * 32 / spec["method"]["lora"]["alpha"]
    assert config["resolved"]["learningRate"] == metrics["training"]["learningRate"] == pytest.approx(expected)
    steps = [e for e in map(json.loads, (root / "train-log.jsonl").read_text().splitlines()) if e["event"] == "step"]
    assert max(e["learningRate"] for e in steps) == pytest.approx(expected), "the peak of the schedule"
    assert (root / "merged" / "config.json").exists() and list((root / "merged").glob("*.safetensors"))
    assert 'src="loss-curve.png"' in (root / "report.html").read_text() and (root / "loss-curve.png").stat().st_size
    predictions = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert predictions and set(predictions[0]) == {"prompt", "reference", "base", "tuned"}


def test_invalid_manifest_names_the_field_and_exits_with_invalid_config(tmp_path):
    spec = tiny_spec("./model", "./train.jsonl", "./out", training={"learningrate": 0.1})
    path = write_manifest(tmp_path / "bad.yaml", manifest(spec))
    proc = run_cli(["run", str(path)])
    assert proc.returncode == 10
    assert "spec.training.learningrate: unknown field" in proc.stderr and "learningRate" in proc.stderr


def test_validate_checks_the_data_without_loading_weights(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"instruction": "q", "output": "a"}, {"instruction": "q2", "output": ""}])
    # validate lists the model's files (safetensors only by default) but never reads them
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"not read by validate")
    path = write_manifest(tmp_path / "job.yaml", manifest(tiny_spec("./model", "./train.jsonl", "./out")))
    proc = run_cli(["validate", str(path)])
    assert proc.returncode == 11
    assert "train.jsonl: row 2: field 'output' is missing or empty" in proc.stderr
    write_jsonl(tmp_path / "train.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(8)])
    proc = run_cli(["validate", str(path)])
    assert proc.returncode == 0, proc.stderr
    assert "valid; 8 rows (alpaca), 0 duplicates, 6 train / 2 eval" in proc.stdout


def test_hub_model_offline_fails_at_once_with_a_clear_message(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"instruction": f"q{i}", "output": "a"} for i in range(8)])
    path = write_manifest(tmp_path / "job.yaml", manifest(tiny_spec("hf://acme/model", "./train.jsonl", "./out")))
    proc = run_cli(["run", str(path)], env={"HF_ENDPOINT": "http://127.0.0.1:9"}, timeout=60)
    assert proc.returncode == 15
    assert "the Hugging Face hub (http://127.0.0.1:9) is unreachable" in proc.stderr
    assert "copy the model to S3 or a local folder" in proc.stderr
