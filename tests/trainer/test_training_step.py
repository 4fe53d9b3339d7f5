"""The training step's speed levers change how examples reach the model, never what a step learns."""

from __future__ import annotations

import random

import pytest
import torch

from kubetune_api.job import parse_job
from kubetune_trainer import loss as loss_module
from kubetune_trainer.batching import Schedule, pack_batch, pack_rows, pad_batch, passes
from kubetune_trainer.errors import ConfigError
from kubetune_trainer.loss import (
    MIN_SHARED_PREFIX,
    answer_loss,
    check_chunked_head,
    check_packing,
    check_shared_prefix,
    shared_prefix_length,
)
from kubetune_trainer.prompting import Encoded
from kubetune_trainer.recipe import Levers, LoRARecipe

from .conftest import manifest, sku_rows, tiny_spec, write_jsonl


@pytest.fixture
def lora_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM",
                        init_lora_weights=False)  # non-zero B, so the adapter changes the logits
    return get_peft_model(model, config).train()


def examples(n: int = 5, seed: int = 1) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and labels: a prompt (label -100) then an answer, of uneven lengths."""
    rng = random.Random(seed)
    ids, labels = [], []
    for _ in range(n):
        prompt, answer = rng.randint(3, 20), rng.randint(1, 15)
        seq = [rng.randrange(4, 300) for _ in range(prompt + answer)]
        ids.append(seq)
        labels.append([-100] * prompt + seq[prompt:])
    return ids, labels


def loss_and_grads(model, batch: dict, answer_only: bool = True, share_prefix: bool = False,
                   chunked_head: bool = False) -> tuple[float, int, dict]:
    model.zero_grad()
    loss, count = answer_loss(model, batch, answer_only, share_prefix, chunked_head)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), count, grads


def assert_same(a: tuple, b: tuple) -> None:
    assert a[1] == b[1], "the same answer tokens are counted"
    assert a[0] == pytest.approx(b[0], rel=1e-5)
    for name, grad in a[2].items():
        torch.testing.assert_close(grad, b[2][name], rtol=1e-4, atol=1e-6, msg=name)


def test_answer_only_logits_give_the_full_logits_loss_and_gradients(lora_model):
    ids, labels = examples()
    batch = pad_batch(ids, 0, labels)
    answer_only = loss_and_grads(lora_model, batch, answer_only=True)
    full = loss_and_grads(lora_model, batch, answer_only=False)
    assert_same(answer_only, full)
    # and both equal the model's own (Hugging Face) loss, which is the mean over the same tokens
    width = batch["input_ids"].shape[1]
    hf_labels = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    with torch.no_grad():
        hf = lora_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=hf_labels).loss
    assert answer_only[0] / answer_only[1] == pytest.approx(hf.item(), rel=1e-5)


def test_packed_rows_give_the_unpacked_loss_and_gradients(lora_model):
    ids, labels = examples(6)
    packed = pack_batch(ids, labels, 0, capacity=40)
    assert packed["input_ids"].shape[0] < len(ids), "several examples share a row"
    assert_same(loss_and_grads(lora_model, packed), loss_and_grads(lora_model, pad_batch(ids, 0, labels)))


def test_a_model_that_attends_across_packed_examples_is_refused(lora_model):
    class Leaky(torch.nn.Module):  # an attention mask of ones defeats the per-example position ids
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, **kwargs):
            kwargs.setdefault("attention_mask", torch.ones_like(input_ids))
            return self.inner(input_ids=input_ids, **kwargs)

    ids, labels = examples(4)
    encoded = [Encoded(i, lab, False, len(i)) for i, lab in zip(ids, labels, strict=True)]
    check_packing(lora_model, encoded, 0, "cpu")
    with pytest.raises(ConfigError, match="training.packing"):
        check_packing(Leaky(lora_model), encoded, 0, "cpu")


def with_prefix(n: int = 5, prefix: int = 24, seed: int = 1) -> tuple[list[list[int]], list[list[int]]]:
    """examples() behind one common prompt prefix (a system prompt and chat template): labels -100 there."""
    head = [random.Random(seed).randrange(4, 300) for _ in range(prefix)]
    ids, labels = examples(n, seed)
    return [head + i for i in ids], [[-100] * prefix + lab for lab in labels]


def backbone_rows(model, run) -> list[tuple[int, int]]:
    """The (rows, tokens) of every call of the embedding layer while `run()` runs."""
    seen: list[tuple[int, int]] = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("answer_only", [True, False])
def test_a_shared_prefix_runs_once_and_gives_the_same_loss_and_gradients(lora_model, answer_only):
    ids, labels = with_prefix(5, prefix=24)
    batch = pad_batch(ids, 0, labels)
    assert shared_prefix_length(batch) >= 24
    prefix, width = shared_prefix_length(batch), batch["input_ids"].shape[1]
    shared: list = []
    calls = backbone_rows(lora_model, lambda: shared.append(loss_and_grads(lora_model, batch, answer_only, True)))
    assert calls == [(1, prefix), (5, width - prefix)], "the prefix runs as one row, the rest after it"
    assert_same(shared[0], loss_and_grads(lora_model, batch, answer_only, share_prefix=False))


def test_the_shared_prefix_stops_before_any_answer_and_leaves_every_row_a_token():
    ids, labels = with_prefix(3, prefix=30)
    assert shared_prefix_length(pad_batch(ids[:1], 0, labels[:1])) == 0, "one row: nothing to share"
    labels[1] = [-100] * 20 + ids[1][20:]  # row 1 is taught from position 20 on
    assert shared_prefix_length(pad_batch(ids, 0, labels)) == 19, "position 19 predicts an answer token"
    short = [ids[0][:MIN_SHARED_PREFIX + 3]] + ids[1:]
    short_labels = [[-100] * len(short[0])] + labels[1:]
    assert shared_prefix_length(pad_batch(short, 0, short_labels)) == MIN_SHARED_PREFIX + 2
    ids, labels = with_prefix(3, prefix=MIN_SHARED_PREFIX - 4)
    assert shared_prefix_length(pad_batch(ids, 0, labels)) == 0, "too short to be worth a forward call"


def test_prefix_sharing_is_used_only_where_the_start_up_check_finds_the_same_logits(lora_model):
    def encoded(ids, labels):
        return [Encoded(i, lab, False, len(i)) for i, lab in zip(ids, labels, strict=True)]

    assert check_shared_prefix(lora_model, encoded(*with_prefix(4)), 0, "cpu")
    assert not check_shared_prefix(lora_model, encoded(*examples(4)), 0, "cpu"), "no common prefix in the data"

    class Forgetful(torch.nn.Module):  # a model whose cache does not carry the prefix to the next call
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_base_model(self):
            return self.inner.get_base_model()

        def forward(self, input_ids, cache=None, past_key_values=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    assert not check_shared_prefix(Forgetful(lora_model), encoded(*with_prefix(4)), 0, "cpu")


@pytest.mark.parametrize("share_prefix", [False, True])
def test_the_chunked_output_layer_gives_the_same_loss_and_gradients_without_whole_logits(lora_model, monkeypatch,
                                                                                        share_prefix):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", 7 * lora_model.config.vocab_size)  # chunks of 7 positions
    ids, labels = with_prefix(5, prefix=24)
    batch = pad_batch(ids, 0, labels)
    head = lora_model.get_output_embeddings()
    widths: list[int] = []
    handle = head.register_forward_hook(lambda m, args, out: widths.append(out.shape[-1]))
    try:
        chunked = loss_and_grads(lora_model, batch, share_prefix=share_prefix, chunked_head=True)
    finally:
        handle.remove()
    assert widths == [], "the output layer module never ran: no logits tensor of the whole pass"
    assert chunked[1] > 14, "several chunks"
    assert_same(chunked, loss_and_grads(lora_model, batch, share_prefix=share_prefix))
    assert lora_model.get_output_embeddings() is head, "the output layer is put back"
    with torch.no_grad():  # the held-out loss takes the same path without computing a gradient
        assert answer_loss(lora_model, batch, chunked_head=True)[0].item() == pytest.approx(chunked[0], rel=1e-5)


def test_the_chunked_loss_is_used_only_where_the_start_up_check_finds_the_same_loss(lora_model, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM

    ids, labels = examples(4)
    encoded = [Encoded(i, lab, False, len(i)) for i, lab in zip(ids, labels, strict=True)]
    assert check_chunked_head(lora_model, encoded, 0, "cpu")
    # Gemma 2 soft-caps its logits after the output layer: the chunked loss would be another loss.
    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                           final_logit_softcapping=1.0))
    assert not check_chunked_head(get_peft_model(gemma, LoraConfig(r=4, target_modules="all-linear")), encoded, 0, "cpu")
    # An adapter on the output layer itself: its weight alone is not the layer.
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    on_head = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert not check_chunked_head(on_head, encoded, 0, "cpu")


def test_length_grouping_keeps_every_example_once_per_epoch_with_less_padding():
    rng = random.Random(0)
    lengths = [min(500, int(rng.lognormvariate(4.5, 0.6))) for _ in range(403)]
    plain = Schedule(403, 4, 2, seed=5, epochs=2, lengths=lengths)
    grouped = Schedule(403, 4, 2, seed=5, epochs=2, lengths=lengths, group_by_length=True)
    assert grouped.total_steps == plain.total_steps == 2 * 51

    def padded(schedule, epoch):
        return sum(len(mb) * max(lengths[i] for i in mb) for step in schedule.epoch_steps(epoch) for mb in step)

    for epoch in (0, 1):
        steps = grouped.epoch_steps(epoch)
        seen = sorted(i for step in steps for mb in step for i in mb)
        assert seen == list(range(403)), "every example exactly once per epoch"
        assert sum(len(mb) for mb in steps[1]) == 8, "a step holds batchSize x accumulation examples"
        assert padded(grouped, epoch) < 0.8 * padded(plain, epoch)
        biggest = max(len(mb) * max(lengths[i] for i in mb) for step in steps for mb in step)
        assert max(len(mb) * max(lengths[i] for i in mb) for mb in steps[0]) == biggest, "the largest step is first"
    assert grouped.epoch_steps(0) != grouped.epoch_steps(1)
    assert grouped.epoch_steps(1) == Schedule(403, 4, 2, 5, epochs=2, lengths=lengths, group_by_length=True).epoch_steps(1)


@pytest.mark.parametrize("packed", [False, True])
def test_forward_passes_stay_within_the_token_budget(packed):
    lengths = [500, 30, 480, 90, 120, 64, 20, 300]
    split = passes(lengths, 1024, packed)
    assert sorted(i for part in split for i in part) == list(range(len(lengths)))
    for part in split:
        size = sum(lengths[i] for i in part) if packed else len(part) * max(lengths[i] for i in part)
        assert size <= 1024 or len(part) == 1
    rows = pack_rows(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 512 for row in rows)


def partitions(items: list) -> list[list[list]]:
    """Every way to split `items` into non-empty groups."""
    if not items:
        return [[]]
    first, rest = items[0], items[1:]
    out = []
    for part in partitions(rest):
        out.append([[first], *part])
        out += [[*part[:k], [first, *part[k]], *part[k + 1:]] for k in range(len(part))]
    return out


def split_cost(split: list[list[int]], lengths: list[int], overhead: int) -> int:
    return sum(len(p) * max(lengths[i] for i in p) + overhead for p in split)


def fits(split: list[list[int]], lengths: list[int], budget: int) -> bool:
    return all(len(p) == 1 or len(p) * max(lengths[i] for i in p) <= budget for p in split)


@pytest.mark.parametrize("seed", range(4))
def test_passes_cut_by_length_are_the_cheapest_split_within_the_budget(seed):
    """With a per-pass overhead the split is the cheapest of every possible one (padded tokens plus the
    overhead per pass), within the budget, longest first; and never dearer than as few passes as fit."""
    rng = random.Random(seed)
    for _ in range(15):
        lengths = [rng.randint(5, 500) for _ in range(rng.randint(1, 7))]
        budget, overhead = rng.choice([600, 1024, 4000]), rng.choice([0, 16, 128, 100_000])
        split = passes(lengths, budget, False, overhead)
        assert sorted(i for p in split for i in p) == list(range(len(lengths))) and fits(split, lengths, budget)
        assert [lengths[p[0]] for p in split] == sorted((lengths[p[0]] for p in split), reverse=True)
        every = [s for s in partitions(list(range(len(lengths)))) if fits(s, lengths, budget)]
        assert split_cost(split, lengths, overhead) == min(split_cost(s, lengths, overhead) for s in every)
        assert split_cost(split, lengths, overhead) <= split_cost(passes(lengths, budget, False), lengths, overhead)


def test_a_random_micro_batch_cut_by_length_pads_less():
    lengths = [494, 60, 75, 310, 88, 52, 190, 70]  # a random draw of support-like lengths
    greedy, cut = passes(lengths, 2048, False), passes(lengths, 2048, False, overhead=64)
    # as few passes as fit: 4 rows as wide as 494, then 4 of 75
    assert split_cost(greedy, lengths, 0) == 4 * 494 + 4 * 75
    assert split_cost(cut, lengths, 0) <= 1.1 * sum(lengths) < 0.7 * split_cost(greedy, lengths, 0) and len(cut) == 4


def run_steps(tiny_model, tmp_path, name: str, levers: Levers, dataset: dict | None = None,
              shares: bool | None = None, chunks: bool | None = None, method: dict | None = None,
              **training) -> list[float]:
    train = write_jsonl(tmp_path / "train.jsonl", sku_rows())
    spec = tiny_spec(str(tiny_model), str(train), str(tmp_path / name), training={"maxSteps": 4, **training})
    spec["dataset"].update(dataset or {})
    spec["method"] = method or spec["method"]
    recipe = LoRARecipe(parse_job(manifest(spec, name=name)), levers=levers, work_dir=str(tmp_path))
    try:
        recipe.setup()
        assert shares is None or recipe.share_prefix == shares
        assert chunks is None or recipe.chunked_head == chunks
        recipe.train()
    finally:
        recipe.cleanup()
    return [e["loss"] for e in recipe.log if e["event"] == "step"]


def test_a_job_runs_the_shared_system_prompt_once_and_trains_the_same(tiny_model, tmp_path):
    system = "You are the order assistant of a shop that sells outdoor clothing. Reply with the code only."
    dataset = {"systemPrompt": system, "maxSeqLength": 160}  # the tiny tokenizer spells most words out
    shared = run_steps(tiny_model, tmp_path, "shared", Levers(), dataset=dataset, shares=True)
    plain = run_steps(tiny_model, tmp_path, "plain", Levers(shared_prefix=False), dataset=dataset, shares=False)
    assert len(shared) == 4 and shared[-1] < shared[0]
    assert shared == pytest.approx(plain, rel=1e-4)


def test_a_job_with_the_chunked_output_layer_trains_the_same(tiny_model, tmp_path):
    chunked = run_steps(tiny_model, tmp_path, "chunked", Levers(), chunks=True)
    plain = run_steps(tiny_model, tmp_path, "plain", Levers(chunked_head=False), chunks=False)
    assert len(chunked) == 4 and chunked[-1] < chunked[0]
    assert chunked == pytest.approx(plain, rel=1e-4)


def test_packing_and_split_passes_train_like_one_padded_pass_per_micro_batch(tiny_model, tmp_path):
    reference = run_steps(tiny_model, tmp_path, "padded", Levers(pass_tokens=None))
    packed = run_steps(tiny_model, tmp_path, "packed", Levers(pass_tokens=None), shares=False, packing=True)
    split = run_steps(tiny_model, tmp_path, "split", Levers(pass_tokens=0.01, pass_overhead=None))
    cut = run_steps(tiny_model, tmp_path, "cut", Levers(pass_tokens=0.5, pass_overhead=0))  # a pass per length
    assert len(reference) == 4 and reference[-1] < reference[0]
    assert packed == pytest.approx(reference, rel=1e-4)
    assert split == pytest.approx(reference, rel=1e-4)
    assert cut == pytest.approx(reference, rel=1e-4)

