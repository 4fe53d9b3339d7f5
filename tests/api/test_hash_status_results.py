"""Spec hash stability, condition bookkeeping and the trainer's termination message."""

from __future__ import annotations

import json

import pytest

from kubetune_api import (
    ConditionType,
    ExitCode,
    Reason,
    TrainerResult,
    derive_phase,
    parse_spec,
    set_condition,
    spec_hash,
)
from kubetune_api.job import HASH_NEUTRAL_AT_DEFAULT, _default_of
from kubetune_api.results import TERMINATION_LIMIT

BASE = {
    "model": {"uri": "s3://models/base/"},
    "dataset": {"train": {"uri": "s3://data/train.jsonl"}},
    "output": {"uri": "s3://out/"},
}


def h(spec):
    return spec_hash(parse_spec(spec))


def test_hash_ignores_key_order_and_spelled_out_defaults():
    reordered = {"output": BASE["output"], "dataset": BASE["dataset"], "model": BASE["model"]}
    explicit = {**BASE, "method": {"type": "lora", "lora": {"r": 16, "alpha": 32}},
                "training": {"epochs": 3, "learningRate": 2e-4}, "dataset": {**BASE["dataset"], "evalSplit": 0.1}}
    assert h(BASE) == h(reordered) == h(explicit)


def test_hash_changes_with_what_changes_the_result():
    assert h(BASE) != h({**BASE, "training": {"learningRate": 1e-4}})
    assert h(BASE) != h({**BASE, "method": {"type": "qlora"}})
    assert h(BASE) != h({**BASE, "output": {"uri": "s3://out/", "mergeAdapter": True}})


# Manifests written for 0.1.0 and the hashes 0.1.0 gave them: an upgrade that changes them would make every
# finished job train again (its artefacts live under the hash). New fields go in HASH_NEUTRAL_AT_DEFAULT.
PUBLISHED = [
    (BASE, "d08844ed01fcbe3a"),
    ({"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "secretRef": {"name": "hf-token"}},
      "dataset": {"train": {"uri": "s3://datasets/support/train.parquet"}, "schema": "alpaca"},
      "output": {"uri": "s3://finetunes/"}, "method": {"type": "qlora"},
      "training": {"maxSteps": 500, "learningRate": 1e-4}}, "1192a2daff4632a9"),
]


@pytest.mark.parametrize(("spec", "published"), PUBLISHED)
def test_an_unchanged_manifest_keeps_its_hash_across_upgrades(spec, published):
    assert h(spec) == published


def test_a_field_added_since_counts_once_set_away_from_its_default():
    for path in HASH_NEUTRAL_AT_DEFAULT:
        spec = json.loads(json.dumps(BASE))
        parent = spec
        for key in path[:-1]:
            parent = parent.setdefault(key, {})
        default = _default_of(path)
        parent[path[-1]] = {} if default is None else (not default) if isinstance(default, bool) else default + 1
        assert h(spec) != h(BASE), path


def test_defaults_changed_since_keep_the_hash_of_a_manifest_that_leaves_them_unset():
    # 0.1.0 trained 3 epochs at 2e-4 with adapter dropout 0.05 and generated 128 tokens when unset; now it stops early, takes the learning
    # rate from the model's width and fits the answers. A manifest that already trained must not train again:
    # unset still hashes as the old value did.
    assert parse_spec(BASE).training.epochs is None and parse_spec(BASE).training.learning_rate is None
    assert h(BASE) == h({**BASE, "training": {"epochs": 3, "learningRate": 2e-4},
                         "method": {"lora": {"dropout": 0.05}}, "evaluation": {"generation": {"maxNewTokens": 128}}})
    assert h(BASE) != h({**BASE, "training": {"learningRate": 1e-3}})
    assert h(BASE) != h({**BASE, "method": {"lora": {"dropout": 0.0}}})
    assert h(BASE) != h({**BASE, "training": {"epochs": 3, "earlyStopping": {}}})
    assert h(BASE) != h({**BASE, "training": {"earlyStopping": {"patience": 5}}})
    assert h(BASE) != h({**BASE, "evaluation": {"generation": {"maxNewTokens": 64}}})


def test_hash_ignores_how_and_where_it_runs():
    operational = {**BASE, "resources": {"gpus": 2, "memory": "80Gi"}, "suspend": True, "image": "x:1",
                   "training": {"sharding": "fsdp"},
                   "failurePolicy": {"maxRetries": 5}, "activeDeadlineSeconds": 60, "ttlSecondsAfterFinished": 1}
    assert h(BASE) == h(operational)


def test_transition_time_moves_only_when_status_flips():
    conds = set_condition([], ConditionType.RUNNING, True, Reason.TRAINING, "step 1", 1, now="2026-01-01T00:00:00Z")
    conds = set_condition(conds, ConditionType.RUNNING, True, Reason.TRAINING, "step 9", 1, now="2026-01-01T00:05:00Z")
    assert conds[0].last_transition_time == "2026-01-01T00:00:00Z" and conds[0].message == "step 9"
    conds = set_condition(conds, ConditionType.RUNNING, False, Reason.COMPLETED, "", 1, now="2026-01-01T00:09:00Z")
    assert conds[0].last_transition_time == "2026-01-01T00:09:00Z" and len(conds) == 1


def test_phase_is_derived_from_conditions():
    assert derive_phase([]) == "Pending"
    conds = set_condition([], ConditionType.RUNNING, True, Reason.TRAINING)
    assert derive_phase(conds) == "Running"
    # The node stopped reporting: not Pending (it was training and may still be), as a pod's phase Unknown.
    assert derive_phase(set_condition(conds, ConditionType.RUNNING, "Unknown", Reason.NODE_NOT_READY)) == "Unknown"
    conds = set_condition(conds, ConditionType.FAILED, True, Reason.OOM_KILLED)
    assert derive_phase(conds) == "Failed"


def test_exit_codes_map_to_reasons_and_retry_policy():
    assert ExitCode.DATA_INVALID.reason == Reason.DATA_INVALID and not ExitCode.DATA_INVALID.retryable
    assert ExitCode.OUT_OF_MEMORY.retryable and ExitCode.OUT_OF_MEMORY.reason == Reason.OOM_KILLED
    assert not ExitCode.ACCESS_DENIED.retryable and not ExitCode.INVALID_CONFIG.retryable


def test_termination_message_fits_in_4_kib_and_keeps_metrics():
    result = TrainerResult(ok=False, reason=Reason.DATA_INVALID, message="row 7: bad\n" * 2000,
                           metrics={"rougeL": 0.5}, artifacts={"root": "s3://o/x/"})
    text = result.to_termination_message()
    assert len(text.encode()) <= TERMINATION_LIMIT
    back = TrainerResult.from_termination_message(text)
    assert back.reason == Reason.DATA_INVALID and back.metrics == {"rougeL": 0.5}
    assert back.message.startswith("row 7: bad")
    assert json.loads(text)["ok"] is False


def test_garbage_termination_message_is_ignored():
    assert TrainerResult.from_termination_message("Traceback (most recent call last): ...") is None


def test_default_learning_rate_follows_the_model_width_and_the_adapter_alpha():
    training = parse_spec(BASE).training
    # tinker-cookbook's get_lr for LoRA: 5e-4 x (2000 / hidden)^0.781 at alpha 32
    assert training.peak_learning_rate(576, 32) == pytest.approx(1.32e-3, rel=0.01)  # SmolLM2-135M
    assert training.peak_learning_rate(4096, 32) == pytest.approx(2.86e-4, rel=0.01)  # Llama-3.1-8B
    assert training.peak_learning_rate(8192, 32) == pytest.approx(1.66e-4, rel=0.01)  # Llama-3.1-70B
    assert training.peak_learning_rate(4096, 64) == pytest.approx(1.43e-4, rel=0.01), "twice alpha, half the rate"
    assert training.peak_learning_rate(None, 32) == 2e-4, "no hidden_size in config.json: the 0.1.0 default"
    assert parse_spec({**BASE, "training": {"learningRate": 3e-5}}).training.peak_learning_rate(576, 32) == 3e-5
