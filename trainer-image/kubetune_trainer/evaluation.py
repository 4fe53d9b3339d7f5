"""Running a model over held-out examples: eval loss (teacher forcing) and batched greedy generation."""

from __future__ import annotations

import contextlib
import math

from .batching import chunks, pad_batch
from .data import Example
from .loss import answer_loss
from .prompting import Encoded, PromptFormatter


def mean_loss(model, encoded: list[Encoded], pad_id: int, batch_size: int, device: str, dist=None,
              **options) -> float:
    """Mean cross-entropy per answer token over the examples (batched by length, so little padding). With a
    process group (distributed.py) each rank runs its share of the same batches and the sums are added up,
    so the result is the one-process one (up to the order of a float sum). `options`: answer_loss's
    share_prefix and chunked_head (loss.py)."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    groups = list(chunks(sorted(encoded, key=lambda e: len(e.input_ids)), batch_size))
    with torch.no_grad():
        for group in dist.shard(groups) if dist else groups:
            batch = pad_batch([e.input_ids for e in group], pad_id, [e.labels for e in group])
            loss, count = answer_loss(model, {k: v.to(device) for k, v in batch.items()}, **options)
            total += loss.item()
            tokens += count
    if dist:
        total, tokens = dist.sum_shards([total, tokens])
    return total / max(tokens, 1)


MAX_NEW_TOKENS = 8192  # generation.maxNewTokens' upper bound


def fitted_max_new_tokens(formatter: PromptFormatter, examples: list[Example]) -> int:
    """The default generation.maxNewTokens: the longest answer of `examples` in tokens (its end-of-turn marker
    included), plus a quarter and 8. A generation that runs past it is already longer than every reference."""
    longest = max((len(formatter.answer_ids(e)) for e in examples), default=0)
    return min(MAX_NEW_TOKENS, math.ceil(1.25 * longest) + 8)


def generate(model, formatter: PromptFormatter, examples: list[Example], generation, batch_size: int,
             device: str, on_batch=None, dist=None) -> list[str]:
    """Decoded answers for `examples`, in their order: greedy when temperature is 0. Prompts of similar
    length are batched together (sorted by length, left-padded), every sequence stops at its own end of
    turn and the batch when all have, with the KV cache on. With a process group each rank decodes its
    share of the same batches (so the same padding) and every rank gets all."""
    import torch

    tokenizer = formatter.tokenizer
    stop = {tokenizer.eos_token_id, *(_as_list(getattr(model.generation_config, "eos_token_id", None)))}
    stop.discard(None)
    sampling = generation.temperature > 0
    max_new = generation.max_new_tokens or fitted_max_new_tokens(formatter, examples)
    prompts = [formatter.prompt_ids(e) for e in examples]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    outputs: list[list[str]] = []
    model.eval()
    groups = list(chunks(order, batch_size))
    for group in dist.shard(groups) if dist else groups:
        batch = pad_batch([prompts[i] for i in group], tokenizer.pad_token_id, left=True)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            out = model.generate(
                **batch, max_new_tokens=max_new, do_sample=sampling, use_cache=True,
                temperature=generation.temperature if sampling else None, top_p=None, top_k=None,
                eos_token_id=sorted(stop), pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        outputs.append([t.strip() for t in texts])
        if on_batch:
            on_batch(sum(map(len, outputs)))
    decoded = [text for group in (dist.gather(outputs) if dist else outputs) for text in group]
    by_example = [""] * len(examples)
    for i, text in zip(order, decoded, strict=True):
        by_example[i] = text
    return by_example


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def base_model_context(model):
    """A context in which the PEFT model behaves as its base model (adapter off)."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else contextlib.nullcontext()
