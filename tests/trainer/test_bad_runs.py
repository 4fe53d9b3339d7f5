"""Bad inputs that only show once a run starts, and storage faults, through the real trainer entry points
(`kubetune run` on a laptop, `kubetune train` as in the pod) on a tiny model and a real S3 server.

Each failure asserts the typed exit code the operator reads, a message naming the field or object and what
to do, no `_SUCCESS`, and inputs untouched; each fault that should be ridden out asserts the job succeeds.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml

from kubetune_api.job import load_manifest
from kubetune_api.results import ExitCode, TrainerResult

from .conftest import manifest, run_cli, sku_rows, tiny_spec, write_jsonl, write_manifest

BUCKET = "kt-bad-runs"


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def local_job(tmp_path: Path, model_dir: Path, name: str = "bad", **overrides) -> Path:
    write_jsonl(tmp_path / "data" / "train.jsonl", sku_rows())
    spec = tiny_spec(str(model_dir), "./data/train.jsonl", "./out", **overrides)
    return write_manifest(tmp_path / "job.yaml", manifest(spec, name=name))


def result_of(path: Path) -> TrainerResult:
    return TrainerResult.from_termination_message(path.read_text())


def test_max_seq_length_shorter_than_every_prompt_fails_before_training(tmp_path, tiny_alpaca_model):
    job = local_job(tmp_path, tiny_alpaca_model, dataset={"maxSeqLength": 16})
    data = digest(tmp_path / "data")
    proc = run_cli(["run", str(job)], env={"KUBETUNE_TERMINATION_LOG": str(tmp_path / "term")})
    assert proc.returncode == ExitCode.INVALID_CONFIG, proc.stderr[-2000:]
    result = result_of(tmp_path / "term")
    assert result.reason == "InvalidSpec" and not result.ok
    assert "dataset.maxSeqLength 16 leaves no answer tokens in any of the 9 training examples" in result.message
    assert "full example lengths seen: min" in result.message and "raise dataset.maxSeqLength" in result.message
    assert '"stage":"training"' not in proc.stdout and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("_SUCCESS"))
    assert digest(tmp_path / "data") == data


def test_a_multi_node_job_is_refused_by_a_local_run_before_anything_loads(tmp_path, tiny_model):
    job = local_job(tmp_path, tiny_model, resources={"gpus": 0, "nodes": 2})
    proc = run_cli(["run", str(job)], env={"KUBETUNE_TERMINATION_LOG": str(tmp_path / "term")})
    assert proc.returncode == ExitCode.INVALID_CONFIG, proc.stderr[-2000:]
    result = result_of(tmp_path / "term")
    assert result.reason == "InvalidSpec" and result.message.startswith("spec.resources.nodes: 2 pods need a cluster")
    assert not (tmp_path / "out").exists()


def test_an_eval_set_equal_to_the_train_set_trains_but_warns_of_the_leak(tmp_path, tiny_model):
    job = local_job(tmp_path, tiny_model, dataset={"eval": {"uri": "./data/train.jsonl"}, "evalSplit": None})
    proc = run_cli(["run", str(job)], env={"KUBETUNE_TERMINATION_LOG": str(tmp_path / "term")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    leak = "possible eval leak: 12 of 12 eval examples (dataset.eval) are also in the training data"
    assert leak in proc.stderr
    assert f"warning: {leak}" in result_of(tmp_path / "term").message, "the status message carries the warning"
    root = tmp_path / "out" / "default" / "bad" / load_manifest(job).spec_hash
    assert any(leak in w for w in json.loads((root / "metrics.json").read_text())["data"]["warnings"])
    assert leak in (root / "report.md").read_text() and leak in (root / "report.html").read_text()


@pytest.fixture(scope="module")
def pickle_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with its weights saved as a pickle (pytorch_model.bin) instead of safetensors."""
    import torch
    from safetensors.torch import load_file

    folder = tmp_path_factory.mktemp("pickle-model")
    for name in tiny_model.iterdir():
        if not name.name.endswith(".safetensors"):
            shutil.copy(name, folder / name.name)
    torch.save(load_file(tiny_model / "model.safetensors"), folder / "pytorch_model.bin")
    assert (folder / "pytorch_model.bin").exists() and not list(folder.glob("*.safetensors"))
    return folder


def test_pickle_weights_are_refused_unless_the_spec_allows_them(tmp_path, pickle_model):
    job = local_job(tmp_path, pickle_model)
    before = digest(pickle_model)
    proc = run_cli(["run", str(job)])
    assert proc.returncode == ExitCode.INVALID_CONFIG, proc.stderr[-2000:]
    assert "has only pickle weights (pytorch_model.bin)" in proc.stderr
    assert "spec.model.allowPickleWeights: true" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob("_SUCCESS"))
    doc = yaml.safe_load(job.read_text())
    doc["spec"]["model"]["allowPickleWeights"] = True
    proc = run_cli(["run", str(write_manifest(job, doc))])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert digest(pickle_model) == before


def test_latin1_data_fails_the_run_as_data_invalid_naming_row_and_offset(tmp_path, tiny_model):
    job = local_job(tmp_path, tiny_model)
    with open(tmp_path / "data" / "train.jsonl", "ab") as f:
        f.write('{"instruction": "Caf\u00e9?", "output": "x"}\n'.encode("latin-1"))
    proc = run_cli(["run", str(job)])
    assert proc.returncode == ExitCode.DATA_INVALID, proc.stderr[-2000:]
    assert "train.jsonl: row 13: byte" in proc.stderr and "is not valid UTF-8" in proc.stderr
    assert "UnicodeDecodeError" not in proc.stderr


def test_two_runs_of_one_spec_racing_keep_the_first_artefacts(tmp_path, tiny_model):
    """Run B trains while run A of the same spec and output finishes: B must not overwrite A's artefacts."""
    from kubetune_trainer.recipe import LoRARecipe

    job_path = local_job(tmp_path, tiny_model, name="race")
    job = load_manifest(job_path)
    racer = LoRARecipe(job, manifest_dir=tmp_path, work_dir=str(tmp_path))
    try:
        racer.setup()
        racer.train()
        racer.evaluate()
        first = run_cli(["run", str(job_path)])
        assert first.returncode == 0, first.stderr[-2000:]
        root = tmp_path / "out" / "default" / "race" / job.spec_hash
        stored = digest(root)
        assert "_SUCCESS" in stored
        result = racer.save()
    finally:
        racer.cleanup()
    assert result.ok and result.reason == "AlreadyComplete"
    assert digest(root) == stored, "the second run overwrote artefacts already stored"


class FlakyS3:
    """A loopback proxy in front of the S3 server that fails the requests `fail(n)` picks (n counts requests
    from 0) and forwards the rest unchanged (signatures stay valid: Host is kept). `mode` is how it fails:
    "503" answers 503 SlowDown, "drop" closes the connection without an answer, "stall" holds it unanswered
    for `stall_s` seconds."""

    def __init__(self, upstream: str, fail, mode: str = "503", stall_s: float = 20.0):
        self.upstream, self.stall_s = upstream.removeprefix("http://"), stall_s
        self.fail, self.mode, self.count, self.failed, self.lock = fail, mode, 0, 0, threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def handle(self, req) -> None:
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else None
        with self.lock:
            n, self.count = self.count, self.count + 1
            failing = self.fail(n)
            self.failed += failing
        if failing and self.mode == "stall":  # accept, never answer: only the client's read timeout ends it
            time.sleep(self.stall_s)
            req.close_connection = True
            return
        if failing and self.mode == "drop":
            req.close_connection = True
            req.connection.shutdown(2)
            return
        if failing:
            payload = b"" if req.command == "HEAD" else (
                b"<?xml version='1.0'?><Error><Code>SlowDown</Code><Message>Please reduce your request rate."
                b"</Message></Error>")
            req.send_response(503)
            req.send_header("Content-Type", "application/xml")
            req.send_header("Content-Length", str(len(payload)))
            req.end_headers()
            req.wfile.write(payload)
            return
        headers = {k: v for k, v in req.headers.items() if k.lower() != "expect"}
        conn = http.client.HTTPConnection(self.upstream, timeout=60)
        conn.request(req.command, req.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        req.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                req.send_header(key, value)
        req.send_header("Content-Length", resp.getheader("Content-Length") if req.command == "HEAD" else str(len(data)))
        req.end_headers()
        if req.command != "HEAD":
            req.wfile.write(data)
        conn.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def bucket(s3, tiny_model, tmp_path_factory):
    s3.make_bucket(BUCKET)
    s3.upload_dir(tiny_model, BUCKET, "models/tiny")
    data = tmp_path_factory.mktemp("bad-runs-data")
    s3.client().upload_file(str(write_jsonl(data / "train.jsonl", sku_rows())), BUCKET, "data/train.jsonl")
    return BUCKET


def s3_job(tmp_path: Path, endpoint: str, name: str) -> Path:
    spec = tiny_spec(f"s3://{BUCKET}/models/tiny", f"s3://{BUCKET}/data/train.jsonl", f"s3://{BUCKET}/runs")
    spec["storage"] = {"s3": {"endpoint": endpoint, "addressingStyle": "path"}}
    return write_manifest(tmp_path / "job.yaml", manifest(spec, name=name))


def pod_env(s3, tmp_path: Path, config: Path, cache_dir: Path) -> dict[str, str]:
    # A cache of its own, so the model really comes through the endpoint under test.
    return {**s3.env(), "KUBETUNE_CONFIG": str(config), "KUBETUNE_TERMINATION_LOG": str(tmp_path / "term"),
            "KUBETUNE_CACHE_DIR": str(tmp_path / "cache"), "KUBETUNE_WORK_DIR": str(tmp_path)}


def success_exists(s3, config: Path) -> bool:
    key = load_manifest(config).artifact_root().removeprefix(f"s3://{BUCKET}/")
    try:
        s3.client().head_object(Bucket=BUCKET, Key=key + "_SUCCESS")
        return True
    except s3.client().exceptions.ClientError:
        return False


@pytest.mark.parametrize("mode", ["503", "drop"])
def test_s3_failing_for_a_while_does_not_fail_the_job(s3, bucket, tmp_path, cache_dir, mode):
    # The first 3 requests fail, then every 4th of the next 40: reads, lists and writes all meet a fault.
    proxy = FlakyS3(s3.endpoint, lambda n: n < 3 or (n < 43 and n % 4 == 0), mode)
    try:
        config = s3_job(tmp_path, proxy.endpoint, f"flaky-{mode}")
        proc = run_cli(["train"], env=pod_env(s3, tmp_path, config, cache_dir))
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result_of(tmp_path / "term").reason == "Completed"
    assert proxy.failed >= 10, f"only {proxy.failed} of {proxy.count} requests failed"
    assert success_exists(s3, config)


def test_s3_not_answering_for_a_while_does_not_hang_the_job(s3, bucket, tmp_path, cache_dir):
    """Requests the server accepts and never answers (a hung gateway) time out and are retried."""
    # Held for an hour: without a read timeout each of these would hang the job (botocore waits 60 s).
    proxy = FlakyS3(s3.endpoint, lambda n: n in (0, 4, 9, 17), "stall", stall_s=3600)
    try:
        config = s3_job(tmp_path, proxy.endpoint, "stalled")
        env = {**pod_env(s3, tmp_path, config, cache_dir), "KUBETUNE_S3_READ_TIMEOUT_SECONDS": "3"}
        proc = run_cli(["train"], env=env, timeout=200)
    finally:
        proxy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result_of(tmp_path / "term").reason == "Completed"
    assert proxy.failed == 4 and success_exists(s3, config)


def test_s3_down_past_the_retry_budget_is_a_transient_failure(s3, bucket, tmp_path, cache_dir):
    from fixtures.s3 import free_port

    closed = f"http://127.0.0.1:{free_port()}"
    config = s3_job(tmp_path, closed, "s3-down")
    proc = run_cli(["train"], env={**pod_env(s3, tmp_path, config, cache_dir), "AWS_MAX_ATTEMPTS": "2"}, timeout=120)
    assert proc.returncode == ExitCode.TRANSIENT and ExitCode.TRANSIENT.retryable, proc.stderr[-2000:]
    result = result_of(tmp_path / "term")
    assert not result.ok and f"cannot reach S3 at {closed}" in result.message
    assert "internal error" not in result.message and "Traceback" not in proc.stderr
    assert not success_exists(s3, config)


@pytest.mark.parametrize("case,code,says", [
    ("missing-bucket", ExitCode.NOT_FOUND, "s3://kt-no-such-bucket/train.jsonl does not exist"),
    ("missing-object", ExitCode.NOT_FOUND, f"s3://{BUCKET}/data/absent.jsonl does not exist"),
    ("wrong-secret", ExitCode.ACCESS_DENIED, "AWS_SECRET_ACCESS_KEY"),
    ("pickle-model-in-s3", ExitCode.INVALID_CONFIG, "spec.model.allowPickleWeights: true"),
    ("s3-down", ExitCode.TRANSIENT, "cannot reach S3 at http://127.0.0.1:"),
    ("file-over-limit", ExitCode.DATA_INVALID, f"s3://{BUCKET}/data/big.jsonl: the file is 2.7 KiB as stored, "
                                               "more than 1.0 KiB (dataset.maxFileBytes = 1024); it was not downloaded"),
])
def test_storage_problems_are_caught_by_validate(s3, bucket, tmp_path, case, code, says):
    from fixtures.s3 import free_port

    if case == "pickle-model-in-s3":
        s3.client().put_object(Bucket=BUCKET, Key="models/pickled/config.json", Body=b"{}")
        s3.client().put_object(Bucket=BUCKET, Key="models/pickled/pytorch_model.bin", Body=b"not read")
    endpoint = f"http://127.0.0.1:{free_port()}" if case == "s3-down" else s3.endpoint
    config = s3_job(tmp_path, endpoint, f"v-{case}")
    doc = yaml.safe_load(config.read_text())
    spec = doc["spec"]
    if case == "missing-bucket":
        spec["dataset"]["train"]["uri"] = "s3://kt-no-such-bucket/train.jsonl"
    if case == "missing-object":
        spec["dataset"]["train"]["uri"] = f"s3://{BUCKET}/data/absent.jsonl"
    if case == "pickle-model-in-s3":
        spec["model"]["uri"] = f"s3://{BUCKET}/models/pickled"
    if case == "file-over-limit":
        big = "".join(json.dumps(r) + "\n" for r in sku_rows() * 3).encode()
        s3.client().put_object(Bucket=BUCKET, Key="data/big.jsonl", Body=big)
        spec["dataset"].update(train={"uri": f"s3://{BUCKET}/data/big.jsonl"}, maxFileBytes=1024)
    env = {**s3.env(), "AWS_MAX_ATTEMPTS": "2"}
    if case == "wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    proc = run_cli(["validate", str(write_manifest(config, doc))], env=env, timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert says in proc.stderr and "Traceback" not in proc.stderr and "not-the-secret" not in proc.stderr
    assert code.retryable == (case == "s3-down"), "only an unreachable store is worth retrying"
