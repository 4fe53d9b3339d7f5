"""The training loss: summed cross-entropy over the answer tokens of a batch, computing vocabulary logits
only where there is an answer token to predict.

A causal LM's output layer is `hidden -> vocab` at every position (SmolLM2: 576 x 49,152), and most
positions of instruction data are prompt tokens whose labels are -100: computing and backpropagating their
logits is wasted work and the largest activation of the step. Transformers models take
`logits_to_keep` as a boolean (batch, sequence) mask and apply the output layer (and any final soft-capping
or scaling the model does) only at those positions; models that do not (remote code) get full logits,
from which the same positions are selected. Both give the same loss.

Instruction data also repeats itself at the start of every example: the chat template and the system
prompt. With `share_prefix`, the tokens that every row of a padded batch has in common (and predicts
nothing from) run once, as one row: their keys and values, expanded to the batch, serve every row's
remaining tokens, and their gradients flow back through the expansion. Causal attention makes that the
same computation: a prefix token never sees what follows it.

With `chunked_head`, the output layer and the cross-entropy run together over chunks of answer positions
(Liger's fused linear cross-entropy, written in torch so that it runs on every device): the model's forward
stops at the final hidden states, and each chunk's logits exist only while its loss and its gradient with
respect to the hidden states are computed, so no (answer tokens x vocabulary) tensor is ever whole.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode without gradients (the start-up checks' passes), its mode put back after."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def has_answer(example) -> bool:
    """Whether an encoded example has an answer token to predict (one after its first position)."""
    return any(t != -100 for t in example.labels[1:])


def answer_loss(model, batch: dict, answer_logits_only: bool = True, share_prefix: bool = False,
                chunked_head: bool = False):
    """(sum of the cross-entropy over the answer tokens, their number) for a batch from `batching`.

    `batch["targets"]` holds the token each position predicts (-100 where none); the other entries are
    the model's inputs (input_ids with attention_mask or position_ids)."""
    import torch

    targets = batch["targets"]
    keep = targets != -100
    if chunked_head and answer_logits_only and (head := output_layer(model)) is not None:
        with _without(model, head):  # the forward's "logits" are then the final hidden states
            hidden = _kept_logits(model, batch, share_prefix=share_prefix, fp32=False)
        return head_cross_entropy(hidden, head.weight, targets[keep]), int(keep.sum())
    logits = _kept_logits(model, batch, logits_mask=answer_logits_only, share_prefix=share_prefix)
    loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
    return loss, int(keep.sum())


# ---- the output layer and the cross-entropy in chunks ----------------------------------------------------
CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MB in fp32 (SmolLM2: 341 positions; a 128k vocabulary: 128)


def output_layer(model):
    """The model's output layer when the chunked loss can stand in for it: a plain, frozen `Linear` without
    bias (not one with an adapter on it, whose weight is not the whole layer); else None."""
    import torch

    head = _causal_lm(model).get_output_embeddings()
    usable = type(head) is torch.nn.Linear and head.bias is None and not head.weight.requires_grad
    return head if usable else None


@contextlib.contextmanager
def _without(model, head):
    """The model with its output layer replaced by the identity for the length of the context."""
    import torch

    lm = _causal_lm(model)
    name = next(n for n, m in lm.named_children() if m is head)
    setattr(lm, name, torch.nn.Identity())
    try:
        yield
    finally:
        setattr(lm, name, head)


def head_cross_entropy(hidden, weight, targets):
    """sum(cross_entropy(hidden @ weight.T, targets)), the logits made and dropped a chunk at a time. When a
    gradient is wanted, each chunk's gradient with respect to `hidden` (softmax - one-hot, times the
    weight) is taken in the same pass, so the backward only scales it; `weight` gets none (frozen)."""
    import torch

    rows = max(1, CHUNK_ELEMENTS // weight.shape[0])
    if torch.is_grad_enabled() and hidden.requires_grad:
        return _head_function().apply(hidden, weight, targets, rows)
    return sum((_chunk(hidden[i:i + rows], weight, targets[i:i + rows], False)[0]
                for i in range(0, hidden.shape[0], rows)), hidden.new_zeros((), dtype=torch.float32))


def _chunk(hidden, weight, targets, grad: bool):
    """(summed loss, d loss / d hidden or None) of one chunk; the logits in fp32, as the plain path's."""
    import torch

    logits = torch.nn.functional.linear(hidden.to(weight.dtype), weight).float()
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    if not grad:
        return loss, None
    probs = logits.sub_(lse[:, None]).exp_()  # softmax, in the logits' memory
    probs[torch.arange(len(targets), device=targets.device), targets] -= 1.0
    return loss, (probs.to(weight.dtype) @ weight).to(hidden.dtype)


def check_chunked_head(model, encoded: list, pad_id: int, device: str, dtype=None) -> bool:
    """Whether the chunked loss stands in for this model's output layer: a plain frozen one (output_layer),
    and the same loss both ways on the two shortest examples. A model that scales or soft-caps its logits
    after the output layer (Gemma 2, Cohere) gives another loss and keeps the plain path, as does one whose
    forward fails without its output layer."""
    import torch

    from .batching import pad_batch

    pair = sorted((e for e in encoded if has_answer(e)), key=lambda e: len(e.input_ids))[:2]
    if not pair or output_layer(model) is None or not supports_logits_mask(model):
        return False
    batch = {k: v.to(device) for k, v in pad_batch([e.input_ids for e in pair], pad_id, [e.labels for e in pair]).items()}
    try:
        with evaluating(model):
            plain, chunked = (answer_loss(model, batch, chunked_head=c)[0] for c in (False, True))
    except (AttributeError, TypeError, ValueError, RuntimeError):  # a forward that uses its output layer's weight
        return False
    tolerance = 1e-4 if dtype in (None, torch.float32) else 1e-2  # relative; bf16 rounds at 1e-2
    return bool((plain - chunked).abs() <= tolerance * plain.abs())


@functools.cache
def _head_function():
    """The autograd function of head_cross_entropy (made on first use, so that importing needs no torch)."""
    import torch

    class HeadCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, targets, rows):
            loss, grad = hidden.new_zeros((), dtype=torch.float32), torch.empty_like(hidden)
            for i in range(0, hidden.shape[0], rows):
                part, grad[i:i + rows] = _chunk(hidden[i:i + rows], weight, targets[i:i + rows], True)
                loss = loss + part
            ctx.save_for_backward(grad)
            return loss

        @staticmethod
        def backward(ctx, grad_output):
            (grad,) = ctx.saved_tensors
            return grad * grad_output.to(grad.dtype), None, None, None

    return HeadCrossEntropy


def check_packing(model, encoded: list, pad_id: int, device: str) -> None:
    """Fail fast when the model would attend across packed examples: the answer logits of two short
    examples packed into one row must match theirs as separate rows (two forward passes of a few dozen
    tokens). Numerical noise is far below a quarter of the logits' spread (1e-5 of it in fp32, a tenth in
    bf16); attending across examples moves them by several times the spread."""
    from .batching import pack_batch, pad_batch
    from .errors import ConfigError

    usable = [e for e in encoded if has_answer(e)]
    pair = sorted(sorted(usable, key=lambda e: len(e.input_ids))[:2], key=lambda e: -len(e.input_ids))
    if len(pair) < 2:
        return
    ids, labels = [e.input_ids for e in pair], [e.labels for e in pair]
    # longest first in both layouts, so the kept logits come out in the same order
    layouts = [pack_batch(ids, labels, pad_id, capacity=sum(map(len, ids))), pad_batch(ids, pad_id, labels)]
    with evaluating(model):
        packed, separate = (_kept_logits(model, {k: v.to(device) for k, v in b.items()}) for b in layouts)
    if (packed - separate).abs().max() > 0.25 * separate.std():
        name = type(_causal_lm(model)).__name__
        raise ConfigError(f"training.packing: {name} attends across packed examples in this version of "
                          "transformers; set training.packing to false")


MIN_SHARED_PREFIX = 16  # tokens; a shorter common prefix is not worth an extra forward call


def shared_prefix_length(batch: dict) -> int:
    """How many leading positions every row of a padded batch has in common and predicts nothing from
    (targets -100), leaving each row at least one token: 0 with one row, for packed rows, or when that is
    shorter than MIN_SHARED_PREFIX."""
    ids, targets, mask = batch["input_ids"], batch["targets"], batch.get("attention_mask")
    if mask is None or ids.shape[0] < 2:
        return 0
    same = ((ids == ids[:1]).all(dim=0) & (targets == -100).all(dim=0)).int()
    length = min(int(same.cumprod(0).sum()), int(mask.sum(dim=1).min()) - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def _kept_logits(model, batch: dict, logits_mask: bool = True, share_prefix: bool = False, fp32: bool = True):
    """fp32 logits at the answer positions (`fp32` False: as the model gives them); with `logits_mask`,
    computed only there when the model can; with `share_prefix`, the rows' common prefix computed once."""
    keep = batch["targets"] != -100
    inputs = {k: v for k, v in batch.items() if k != "targets"}
    prefix = shared_prefix_length(batch) if share_prefix else 0
    if prefix:
        inputs, keep = _after_prefix(model, inputs, prefix), keep[:, prefix:]
    cache = {"use_cache": bool(prefix)}  # the suffix pass extends the prefix's cache
    if logits_mask and supports_logits_mask(model):
        logits = model(**inputs, **cache, logits_to_keep=keep).logits
    else:
        logits = model(**inputs, **cache).logits[keep]
    return logits.float() if fp32 else logits


def _after_prefix(model, inputs: dict, prefix: int) -> dict:
    """The model inputs for the tokens after `prefix`: the prefix runs once, as the first row, through the
    unwrapped transformers backbone (under DDP its gradients still reach the wrapper's hooks, as they
    accumulate into the same parameters), and its key/value cache is expanded to every row."""
    import torch

    ids, rows = inputs["input_ids"], inputs["input_ids"].shape[0]
    lm = _causal_lm(model)
    name = _cache_argument(type(lm))
    cache = getattr(lm.base_model(input_ids=ids[:1, :prefix], use_cache=True), name)
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1)
    positions = torch.arange(prefix, ids.shape[1], device=ids.device).expand(rows, -1)
    return {"input_ids": ids[:, prefix:], "attention_mask": inputs["attention_mask"], "position_ids": positions,
            name: cache}


@functools.cache
def _cache_argument(cls: type) -> str:
    """What transformers calls the key/value cache, in and out: `cache` since 5.2x, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def check_shared_prefix(model, encoded: list, pad_id: int, device: str, dtype=None) -> bool:
    """Whether sharing a common prefix can be used with this model and data: two examples that share one
    give the same answer logits both ways (as check_packing: two short forward passes). False when no two
    examples share MIN_SHARED_PREFIX tokens, or the model's cache cannot be shared (remote code, state-space
    layers), or the logits differ beyond numerical noise."""
    import torch

    from .batching import pad_batch

    by_start: dict[tuple, list] = {}
    for e in sorted(encoded, key=lambda e: len(e.input_ids)):
        if has_answer(e):
            by_start.setdefault(tuple(e.input_ids[:MIN_SHARED_PREFIX]), []).append(e)
    pair = max(by_start.values(), key=len, default=[])[:2]
    if len(pair) < 2 or not supports_logits_mask(model):
        return False
    batch = {k: v.to(device) for k, v in pad_batch([e.input_ids for e in pair], pad_id, [e.labels for e in pair]).items()}
    if not shared_prefix_length(batch):
        return False
    try:
        with evaluating(model):
            separate, shared = (_kept_logits(model, batch, share_prefix=s) for s in (False, True))
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return False
    noise = 1e-3 if dtype in (None, torch.float32) else 0.1  # of the logits' spread; bf16 rounds at 1e-2
    return bool((shared - separate).abs().max() <= noise * separate.std())
