"""The training loss: summed cross-entropy over the answer tokens of a batch, computing vocabulary logits
only where there is an answer token to predict.

A causal LM's output layer is `hidden -> vocab` at every position (SmolLM2: 576 x 49,152), and most
positions of instruction data are prompt tokens whose labels are -100: computing and backpropagating their
logits is wasted work and the largest activation of the step. Transformers models take
`logits_to_keep` as a boolean (batch, sequence) mask and apply the output layer (and any final soft-capping
or scaling the model does) only at those positions; models that do not (remote code) get full logits,
from which the same positions are selected. Both give the same loss.
"""

from __future__ import annotations

import functools
import inspect


def _causal_lm(model):
    """The transformers model under DDP and PEFT wrappers (or the model itself)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_logits_mask(model) -> bool:
    """Whether the model's forward applies its output layer only at a boolean `logits_to_keep` mask."""
    return _supports(type(_causal_lm(model)))


@functools.cache
def _supports(cls: type) -> bool:
    # Transformers' own models slice with `slice_logits_to_keep`, which takes the mask; remote code may not.
    return cls.__module__.startswith("transformers.models.") and "logits_to_keep" in inspect.signature(cls.forward).parameters


def answer_loss(model, batch: dict, answer_logits_only: bool = True):
    """(sum of the cross-entropy over the answer tokens, their number) for a batch from `batching`.

    `batch["targets"]` holds the token each position predicts (-100 where none); the other entries are
    the model's inputs (input_ids with attention_mask or position_ids)."""
    import torch

    targets = batch["targets"]
    keep = targets != -100
    logits = _kept_logits(model, batch, logits_mask=answer_logits_only)
    loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    return loss, int(keep.sum())


def check_packing(model, encoded: list, pad_id: int, device: str) -> None:
    """Fail fast when the model would attend across packed examples: the answer logits of two short
    examples packed into one row must match theirs as separate rows (two forward passes of a few dozen
    tokens). Numerical noise is far below a quarter of the logits' spread (1e-5 of it in fp32, a tenth in
    bf16); attending across examples moves them by several times the spread."""
    import torch

    from .batching import pack_batch, pad_batch
    from .errors import ConfigError

    usable = [e for e in encoded if any(t != -100 for t in e.labels[1:])]
    pair = sorted(sorted(usable, key=lambda e: len(e.input_ids))[:2], key=lambda e: -len(e.input_ids))
    if len(pair) < 2:
        return
    ids, labels = [e.input_ids for e in pair], [e.labels for e in pair]
    # longest first in both layouts, so the kept logits come out in the same order
    layouts = [pack_batch(ids, labels, pad_id, capacity=sum(map(len, ids))), pad_batch(ids, pad_id, labels)]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        packed, separate = (_kept_logits(model, {k: v.to(device) for k, v in b.items()}) for b in layouts)
    model.train(was_training)
    if (packed - separate).abs().max() > 0.25 * separate.std():
        name = type(_causal_lm(model)).__name__
        raise ConfigError(f"training.packing: {name} attends across packed examples in this version of "
                          "transformers; set training.packing to false")


def _kept_logits(model, batch: dict, logits_mask: bool = True):
    """fp32 logits at the answer positions; with `logits_mask`, computed only there when the model can."""
    keep = batch["targets"] != -100
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    if logits_mask and supports_logits_mask(model):
        return model(**inputs, use_cache=False, logits_to_keep=keep).logits.float()
    return model(**inputs, use_cache=False).logits[keep].float()
