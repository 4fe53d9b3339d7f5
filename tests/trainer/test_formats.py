"""Every record layout of docs/data.md, from the shipped example files, through `kubetune run` on a tiny model
with no schema line: detected, rendered with the chat template, trained, evaluated."""

from __future__ import annotations

import json

import pytest

from .conftest import REPO, manifest, run_cli, tiny_spec, write_manifest

FORMATS = REPO / "examples" / "data" / "formats"
CASES = [  # file, the schema detected
    ("alpaca.json", "alpaca"),
    ("prompt-completion.jsonl", "promptCompletion"),
    ("messages.jsonl", "messages"),
    ("messages-parts.jsonl", "messages"),
    ("messages-tools.jsonl", "messages"),
    ("sharegpt.json", "sharegpt"),
]


def test_the_example_files_are_what_their_generator_writes(tmp_path):
    import runpy
    import shutil

    shutil.copytree(FORMATS, tmp_path / "formats")
    (tmp_path / "nordvik-tools").mkdir()
    runpy.run_path(str(tmp_path / "formats" / "generate.py"), run_name="__main__")
    for name, _ in CASES:
        assert (tmp_path / "formats" / name).read_text() == (FORMATS / name).read_text(), name
    for name in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "nordvik-tools" / name).read_text() == (FORMATS.parent / "nordvik-tools" / name).read_text()


@pytest.mark.parametrize("name, schema", CASES, ids=[c[0] for c in CASES])
def test_each_format_trains_end_to_end_without_a_schema_line(tmp_path, tiny_model, name, schema):
    spec = tiny_spec(f"file://{tiny_model}", str(FORMATS / name), "./out",
                     dataset={"maxSeqLength": 1024}, training={"maxSteps": 2},
                     evaluation={"metrics": ["evalLoss", "exactMatch"]})
    path = write_manifest(tmp_path / "job.yaml", manifest(spec, name="formats"))
    proc = run_cli(["run", str(path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (root,) = (tmp_path / "out" / "default" / "formats").iterdir()
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["data"]["schema"] == schema
    assert (metrics["data"]["train"], metrics["data"]["eval"]) == (12, 4)
    assert metrics["data"]["tokens"]["noAnswerTokens"] == 0  # (the tiny tokenizer needs ~1000 for a tool dialog)
    assert metrics["tuned"]["evalLoss"] > 0 and (root / "_SUCCESS").exists()
    predictions = [json.loads(line) for line in (root / "predictions.jsonl").read_text().splitlines()]
    assert all(p["reference"] and p["prompt"] for p in predictions)
