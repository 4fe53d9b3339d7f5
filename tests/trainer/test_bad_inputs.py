"""A catalogue of bad specs, bad data and bad models, each fed to `kubetune validate` as a user would.

Every case asserts what the user sees: the exit code (the typed reason the operator reads back), a message
that names the field, file or row at fault and what is accepted, no `_SUCCESS` anywhere, and every input
file byte for byte as it was. Storage faults against a real S3 server and the cases that need training
(`kubetune run` on a tiny model) are in test_bad_runs.py.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubetune_api.results import ExitCode
from kubetune_trainer.cli import main

from .conftest import manifest, sku_rows, tiny_spec, write_jsonl, write_manifest

LATIN1 = "Caf\u00e9 cr\u00e8me?".encode("latin-1")


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], dict]  # writes any files it needs below the folder, returns the spec
    code: ExitCode
    says: tuple[str, ...]


def fake_model(root: Path, weights: str = "model.safetensors") -> Path:
    """A model folder as validate sees it: it lists the files and reads none of them."""
    folder = root / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / weights).write_bytes(b"weights are never read by validate")
    return folder


def base(root: Path, train: str | None = None, **overrides) -> dict:
    fake_model(root)
    if train is None:
        train = str(write_jsonl(root / "data" / "train.jsonl", sku_rows()))
    return tiny_spec(str(root / "model"), train, str(root / "out"), **overrides)


def resources(**values) -> Callable[[Path], dict]:
    return lambda root: {**base(root), "resources": {"gpus": 0, **values}}


def with_data(name: str, content: bytes, **dataset) -> Callable[[Path], dict]:
    def make(root: Path) -> dict:
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        spec = base(root, str(path))
        spec["dataset"].update(dataset)
        return spec
    return make


def jsonl_bytes(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def spec_patch(fn: Callable[[dict, Path], None]) -> Callable[[Path], dict]:
    def make(root: Path) -> dict:
        spec = base(root)
        fn(spec, root)
        return spec
    return make


def _set(path: str, value) -> Callable[[dict, Path], None]:
    def apply(spec: dict, root: Path) -> None:
        node = spec
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value(root) if callable(value) else value
    return apply


SKU = sku_rows()
LATIN1_ROW = b'{"instruction": "' + LATIN1 + b'", "output": "x"}\n'

SPEC_CASES = [
    Case("gpu-product-with-spaces", resources(gpus=1, gpuProduct="NVIDIA A100 80GB"), ExitCode.INVALID_CONFIG,
         ("spec.resources.gpuProduct", "not a Kubernetes label value", "NVIDIA-A100-SXM4-80GB")),
    Case("gpu-product-too-long", resources(gpus=1, gpuProduct="A" * 64), ExitCode.INVALID_CONFIG,
         ("spec.resources.gpuProduct", "at most 63 characters")),
    Case("gpu-product-trailing-dash", resources(gpus=1, gpuProduct="H100-"), ExitCode.INVALID_CONFIG,
         ("spec.resources.gpuProduct", "starting and ending with a letter or digit")),
    Case("node-selector-bad-key", resources(nodeSelector={"pool name": "gpu"}), ExitCode.INVALID_CONFIG,
         ("spec.resources.nodeSelector", "'pool name'", "label key")),
    Case("node-selector-bad-value", resources(nodeSelector={"pool": "a/b"}), ExitCode.INVALID_CONFIG,
         ("spec.resources.nodeSelector", "entry 'pool'", "label value")),
    Case("toleration-bad-value", resources(tolerations=[{"key": "gpu", "value": "yes please"}]),
         ExitCode.INVALID_CONFIG, ("spec.resources.tolerations[0].value", "label value")),
    Case("toleration-bad-key", resources(tolerations=[{"key": "-gpu", "operator": "Exists"}]),
         ExitCode.INVALID_CONFIG, ("spec.resources.tolerations[0].key", "label key")),
    Case("output-equals-train-file", spec_patch(_set("output.uri", lambda r: str(r / "data" / "train.jsonl"))),
         ExitCode.INVALID_CONFIG, ("spec.output.uri", "spec.dataset.train.uri", "among the inputs")),
    Case("output-inside-data-folder",
         lambda r: {**base(r, str(write_jsonl(r / "data" / "train.jsonl", SKU).parent)),
                    "output": {"uri": f"file://{r}/data/out"}},
         ExitCode.INVALID_CONFIG, ("spec.output.uri", "the same as or inside", "spec.dataset.train.uri")),
    Case("output-equals-model-folder", spec_patch(_set("output.uri", lambda r: str(r / "model"))),
         ExitCode.INVALID_CONFIG, ("spec.output.uri", "spec.model.uri")),
    Case("train-inside-output", spec_patch(_set("output.uri", lambda r: str(r))),
         ExitCode.INVALID_CONFIG, ("spec.dataset.train.uri", "is inside spec.output.uri")),
    Case("s3-output-equals-data-prefix",
         lambda r: {**base(r, "s3://datasets/support/"), "output": {"uri": "s3://datasets/support"}},
         ExitCode.INVALID_CONFIG, ("spec.output.uri 's3://datasets/support'", "spec.dataset.train.uri")),
    Case("s3-eval-inside-output",
         lambda r: {**base(r, "s3://data/train.jsonl"), "output": {"uri": "s3://data/runs"},
                    "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "eval": {"uri": "s3://data/runs/x.jsonl"}}},
         ExitCode.INVALID_CONFIG, ("spec.dataset.eval.uri", "is inside spec.output.uri 's3://data/runs'")),
    Case("regression-inside-output",
         spec_patch(_set("evaluation.regression", lambda r: {"uri": f"{r}/out/general.jsonl"})),
         ExitCode.INVALID_CONFIG, ("spec.evaluation.regression.uri", "is inside spec.output.uri")),
    Case("relative-output-is-the-data-folder", spec_patch(_set("output.uri", "./data")),
         ExitCode.INVALID_CONFIG, ("spec.output.uri './data'", "spec.dataset.train.uri")),
    Case("output-is-an-existing-file", spec_patch(_set("output.uri", lambda r: _file(r / "notes.txt"))),
         ExitCode.INVALID_CONFIG, ("spec.output.uri", "is a file, not a folder")),
    Case("unknown-field", spec_patch(_set("training.learningrate", 0.1)), ExitCode.INVALID_CONFIG,
         ("spec.training.learningrate: unknown field", "learningRate")),
    Case("negative-learning-rate", spec_patch(_set("training.learningRate", -1)), ExitCode.INVALID_CONFIG,
         ("spec.training.learningRate", "greater than 0")),
    Case("eval-split-too-big", spec_patch(_set("dataset.evalSplit", 0.9)), ExitCode.INVALID_CONFIG,
         ("spec.dataset.evalSplit", "0.5")),
    Case("eval-and-eval-split", spec_patch(_set("dataset.eval", {"uri": "/x.jsonl"})), ExitCode.INVALID_CONFIG,
         ("dataset.eval or dataset.evalSplit",)),
    Case("epochs-and-max-steps", spec_patch(_set("training.epochs", 2)), ExitCode.INVALID_CONFIG,
         ("training.epochs or training.maxSteps",)),
    Case("max-row-bytes-too-small", spec_patch(_set("dataset.maxRowBytes", 10)), ExitCode.INVALID_CONFIG,
         ("spec.dataset.maxRowBytes", "1024")),
    Case("http-uri", spec_patch(_set("model.uri", "http://example.com/model")), ExitCode.INVALID_CONFIG,
         ("spec.model.uri", "s3://bucket/prefix")),
    Case("bad-bucket-name", spec_patch(_set("dataset.train.uri", "s3://My_Bucket/x.jsonl")), ExitCode.INVALID_CONFIG,
         ("spec.dataset.train.uri", "DNS-style bucket name")),
    Case("quantization-with-lora", spec_patch(_set("method.quantization", {"quantType": "nf4"})),
         ExitCode.INVALID_CONFIG, ("method.quantization is only used with method.type qlora",)),
    Case("gate-on-missing-metric",
         spec_patch(lambda s, r: s["evaluation"].update(metrics=["evalLoss"], gate={"metric": "rougeL", "min": 0.5})),
         ExitCode.INVALID_CONFIG, ("evaluation.gate.metric 'rougeL' is not computed",)),
    Case("secret-in-other-namespace", spec_patch(_set("model.secretRef", {"name": "hf", "namespace": "x"})),
         ExitCode.INVALID_CONFIG, ("secretRef.namespace is not allowed",)),
    Case("column-mapping-unknown-key", spec_patch(_set("dataset.columnMapping", {"answer": "output"})),
         ExitCode.INVALID_CONFIG, ("dataset.columnMapping key 'answer'", "accepted keys")),
    Case("bad-custom-template",
         spec_patch(lambda s, r: s["dataset"].update(template="custom", customTemplate="{{ instruction ")),
         ExitCode.INVALID_CONFIG, ("dataset.customTemplate is not a valid Jinja template",)),
]

DATA_CASES = [
    Case("latin1-jsonl", with_data("train.jsonl", jsonl_bytes(SKU[:3]) + LATIN1_ROW), ExitCode.DATA_INVALID,
         ("train.jsonl: row 4: byte", "(0xe9) is not valid UTF-8", "must be UTF-8")),
    Case("latin1-csv", with_data("train.csv", b"instruction,output\nok,fine\n" + LATIN1 + b",x\n"),
         ExitCode.DATA_INVALID, ("train.csv: line 3: byte 30 (0xe9)", "UTF-8")),
    Case("latin1-json", with_data("train.json", b'[{"instruction": "' + LATIN1 + b'", "output": "x"}]'),
         ExitCode.DATA_INVALID, ("train.json: line 1: byte 21 (0xe9)", "UTF-8")),
    Case("latin1-inside-gzip", with_data("train.jsonl.gz", gzip.compress(jsonl_bytes(SKU[:2]) + LATIN1_ROW)),
         ExitCode.DATA_INVALID, ("train.jsonl.gz: row 3: byte", "not valid UTF-8")),
    Case("truncated-gzip", with_data("train.jsonl.gz", gzip.compress(jsonl_bytes(SKU))[:60]),
         ExitCode.DATA_INVALID, ("train.jsonl.gz: not a readable gzip file", "damaged or truncated")),
    Case("zstd-file", with_data("train.jsonl.zst", b"\x28\xb5\x2f\xfd" + b"\0" * 32), ExitCode.DATA_INVALID,
         ("train.jsonl.zst: the file is zstd-compressed", "accepted: uncompressed, gzip")),
    Case("zip-file", with_data("train.jsonl", b"PK\x03\x04" + b"\0" * 32), ExitCode.DATA_INVALID,
         ("train.jsonl: the file is zip-compressed",)),
    Case("row-over-limit", with_data("train.jsonl", jsonl_bytes(SKU[:2]) + jsonl_bytes(
        [{"instruction": "x" * 5000, "output": "y"}]), maxRowBytes=4096), ExitCode.DATA_INVALID,
         ("train.jsonl: row 3 is longer than 4.0 KiB", "dataset.maxRowBytes")),
    Case("csv-field-over-limit", with_data("train.csv", b"instruction,output\nok,fine\n\"" + b"x" * 5000 + b"\",y\n",
                                           maxRowBytes=4096),
         ExitCode.DATA_INVALID, ("train.csv: line 3 is longer than 4.0 KiB", "dataset.maxRowBytes")),
    Case("json-record-over-limit", with_data("train.json", json.dumps([{"instruction": "x" * 5000, "output": "y"}])
                                             .encode(), maxRowBytes=4096),
         ExitCode.DATA_INVALID, ("train.json: row 1 is longer than 4.0 KiB",)),
    Case("file-over-limit", with_data("train.jsonl", jsonl_bytes(SKU * 20), maxFileBytes=2048), ExitCode.DATA_INVALID,
         ("train.jsonl: the file is 18.1 KiB as stored, more than 2.0 KiB", "dataset.maxFileBytes")),
    Case("gzip-bomb", with_data("train.jsonl.gz", gzip.compress(jsonl_bytes(SKU[:1]) + b" " * 10_000_000 + b"\n"),
                                maxFileBytes=1 << 20),
         ExitCode.DATA_INVALID, ("train.jsonl.gz: the file holds more than 1.0 MiB",)),
    Case("not-json-line", with_data("train.jsonl", jsonl_bytes(SKU[:2]) + b"{oops\n"), ExitCode.DATA_INVALID,
         ("train.jsonl: row 3: not valid JSON",)),
    Case("missing-answer", with_data("train.jsonl", jsonl_bytes([*SKU[:3], {"instruction": "q"}])),
         ExitCode.DATA_INVALID, ("train.jsonl: row 4: field 'output' is missing or empty",)),
    Case("answer-is-a-list", with_data("train.jsonl", jsonl_bytes([*SKU[:3], {"instruction": "q", "output": [1]}])),
         ExitCode.DATA_INVALID, ("row 4: field 'output' is a list; expected a string",)),
    Case("empty-file", with_data("train.jsonl", b""), ExitCode.DATA_INVALID, ("the dataset has no records",)),
    Case("unknown-extension", with_data("train.txt", jsonl_bytes(SKU)), ExitCode.DATA_INVALID,
         ("cannot tell the format from the extension .txt", "dataset.format")),
    Case("json-not-an-array", with_data("train.json", b'{"instruction": "q", "output": "a"}'), ExitCode.DATA_INVALID,
         ("train.json: expected a JSON array of records",)),
    Case("corrupt-parquet", with_data("train.parquet", b"PAR1 definitely not parquet"), ExitCode.DATA_INVALID,
         ("train.parquet: not a readable Parquet file",)),
    Case("undetectable-schema", with_data("train.jsonl", jsonl_bytes([{"q": "a", "a": "b"}] * 4)),
         ExitCode.DATA_INVALID, ("cannot detect the schema from the columns (a, q)", "dataset.schema")),
    Case("too-few-rows-to-split", with_data("train.jsonl", jsonl_bytes(SKU[:1])), ExitCode.DATA_INVALID,
         ("too few to hold out", "dataset.eval")),
    Case("messages-without-answer", with_data("train.jsonl", jsonl_bytes(
        [{"messages": [{"role": "user", "content": "hi"}]}] * 4)), ExitCode.DATA_INVALID,
         ("row 1", "assistant")),
]

MODEL_CASES = [
    Case("pickle-only-model", spec_patch(lambda s, r: fake_model(r / "p", "pytorch_model.bin")
                                         and _set("model.uri", str(r / "p" / "model"))(s, r)),
         ExitCode.INVALID_CONFIG, ("pytorch_model.bin", "pickle", "spec.model.allowPickleWeights: true")),
    Case("model-without-weights", spec_patch(lambda s, r: fake_model(r / "e", "")
                                             and _set("model.uri", str(r / "e" / "model"))(s, r)),
         ExitCode.NOT_FOUND, ("no weight files", "safetensors")),
    Case("model-missing", spec_patch(_set("model.uri", "/no/such/model")), ExitCode.NOT_FOUND,
         ("/no/such/model does not exist",)),
    Case("train-file-missing", spec_patch(_set("dataset.train.uri", "./data/nope.jsonl")), ExitCode.NOT_FOUND,
         ("./data/nope.jsonl does not exist",)),
]


def _file(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a file, not a folder\n")
    return str(path)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "job.yaml"}


def validate(root: Path, spec: dict, capsys) -> tuple[int, str]:
    path = write_manifest(root / "job.yaml", manifest(spec, name="bad"))
    code = main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


@pytest.mark.parametrize("case", SPEC_CASES + DATA_CASES + MODEL_CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_naming_what_is_wrong(case, tmp_path, capsys):
    spec = case.make(tmp_path)
    before = snapshot(tmp_path)
    code, text = validate(tmp_path, spec, capsys)
    assert code == case.code, text
    assert not case.code.retryable, "a bad input is a permanent failure: the operator must not retry it"
    for expected in case.says:
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert "Traceback" not in text
    assert snapshot(tmp_path) == before, "an input file was changed"
    assert not list(tmp_path.rglob("_SUCCESS"))


def test_a_50_mb_row_is_refused_by_row_number_without_reading_it(tmp_path, capsys):
    path = tmp_path / "data" / "train.jsonl"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.write(jsonl_bytes(SKU))
        f.write(b'{"instruction": "' + b"x" * (50 << 20) + b'", "output": "y"}\n')
    spec = base(tmp_path, str(path))
    tracemalloc.start()
    began = time.monotonic()
    code, text = validate(tmp_path, spec, capsys)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert code == ExitCode.DATA_INVALID
    assert f"train.jsonl: row {len(SKU) + 1} is longer than 4.0 MiB" in text and "dataset.maxRowBytes" in text
    assert peak < 16 << 20, f"validate allocated {peak >> 20} MiB for a row it refuses"
    assert time.monotonic() - began < 10


@pytest.mark.parametrize("name,encode", [
    ("train.jsonl.gz", lambda b: gzip.compress(b)),
    ("train.jsonl.bz2", lambda b: bz2.compress(b)),
    ("train.jsonl", lambda b: b"\xef\xbb\xbf" + b),  # a UTF-8 byte-order mark, as Excel and Notepad write
    ("train-no-suffix.jsonl", lambda b: gzip.compress(b)),  # gzip recognised by its bytes, not its name
])
def test_compressed_and_bom_files_read_like_plain_utf8(tmp_path, capsys, name, encode):
    rows = [*SKU, {"instruction": "Caf\u00e9 cr\u00e8me?", "output": "NV-CAF-\u00c9"}]
    spec = with_data(name, encode(jsonl_bytes(rows)))(tmp_path)
    code, text = validate(tmp_path, spec, capsys)
    assert code == 0, text
    assert f"valid; {len(rows)} rows (alpaca)" in text


def test_an_eval_set_equal_to_the_train_set_is_reported_as_a_leak(tmp_path, capsys):
    spec = base(tmp_path)
    spec["dataset"] = {"train": {"uri": str(tmp_path / "data" / "train.jsonl")},
                       "eval": {"uri": str(tmp_path / "data" / "train.jsonl")}, "maxSeqLength": 64}
    code, text = validate(tmp_path, spec, capsys)
    assert code == 0, text
    assert f"possible eval leak: {len(SKU)} of {len(SKU)} eval examples (dataset.eval) are also in the training" in text
