"""Generation for the metrics: batched (sorted by prompt length, left-padded, KV cache, each sequence
stopping at its own end of turn) gives what one-at-a-time greedy decoding gives, so the scores do not
depend on the batching; the default maxNewTokens fits the longest reference."""

from __future__ import annotations

import pytest
import torch

from kubetune_api.spec import DatasetSpec, GenerationSpec
from kubetune_trainer.data import Example
from kubetune_trainer.evaluation import fitted_max_new_tokens, generate
from kubetune_trainer.metrics import generation_scores
from kubetune_trainer.prompting import PromptFormatter

from .conftest import COLOURS, PRODUCTS


@pytest.fixture
def model_and_formatter(tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    # A random model almost never ends its turn; a larger end-of-turn row makes it end at varied points.
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] *= 2.0
    return model, PromptFormatter(tokenizer, DatasetSpec(train={"uri": "/x"}))


def examples() -> list[Example]:
    padding = ["", "Please answer with the code only. ", "Quick one: ", "I am looking at the catalogue today. "]
    return [Example.single(f"{padding[i % 4]}SKU for a {c} {p}?", f"NV-{pc}-{cc}" + " (in stock)" * (i % 3))
            for i, ((p, pc), (c, cc)) in enumerate((p, c) for p in PRODUCTS.items() for c in COLOURS.items())]


def test_batched_generation_gives_the_one_at_a_time_greedy_outputs_and_scores(model_and_formatter):
    model, formatter = model_and_formatter
    data = examples()
    spec = GenerationSpec(maxNewTokens=24)
    one_by_one = [generate(model, formatter, [e], spec, batch_size=1, device="cpu")[0] for e in data]
    batched = generate(model, formatter, data, spec, batch_size=5, device="cpu")
    assert batched == one_by_one
    assert len({len(t) for t in batched}) > 3, "the sequences of a batch ended at different points"
    refs = [formatter.reference(e) for e in data]
    wanted = ["exactMatch", "rougeL", "chrf"]
    assert generation_scores(batched, refs, wanted) == generation_scores(one_by_one, refs, wanted)


def test_default_max_new_tokens_fits_the_longest_reference_without_changing_exact_match(model_and_formatter):
    model, formatter = model_and_formatter
    data = examples()
    longest = max(len(formatter.answer_ids(e)) for e in data)
    assert longest < fitted_max_new_tokens(formatter, data) < 48
    # Unset, generation stops where no reference could still match: the longer outputs cut short.
    default = generate(model, formatter, data, GenerationSpec(), batch_size=12, device="cpu")
    long = generate(model, formatter, data, GenerationSpec(maxNewTokens=48), batch_size=12, device="cpu")
    assert all(b.startswith(a) for a, b in zip(default, long, strict=True)) and default != long
    refs = [formatter.reference(e) for e in data]
    assert generation_scores(default, refs, ["exactMatch"]) == generation_scores(long, refs, ["exactMatch"])
