"""One optimizer step of the LoRA recipe: each rank's share of the step's micro-batches, split into forward
passes of at most the pass budget (Levers.pass_tokens), padded or packed, the gradients all-reduced, clipped
and applied. Functions of the recipe (as artifacts.py's are); `LoRARecipe._train_step` calls `train_step`."""

from __future__ import annotations

from .batching import pack_batch, pad_batch, passes
from .distributed import balanced_shards
from .loss import answer_loss, check_chunked_head, check_shared_prefix, has_answer
from .preflight import answer_tokens
from .prompting import Encoded


def pass_budget(fraction: float | None, batch_size: int, max_len: int) -> int | None:
    """The most tokens one forward pass holds: `fraction` (Levers.pass_tokens) of batchSize x maxSeqLength,
    but always one whole example. None: one pass per micro-batch."""
    return max(max_len, int(fraction * batch_size * max_len)) if fraction else None


# What one more forward pass costs, in tokens, on each device (Levers.pass_overhead "device")
PASS_OVERHEAD = {"cpu": 32, "cuda": 128}


def pass_overhead(recipe) -> int | None:
    value = recipe.levers.pass_overhead
    return PASS_OVERHEAD[recipe.device] if value == "device" else value


def filler(encoded: list[Encoded]) -> Encoded:
    """The shortest example with an answer token: a rank's zero-weight pass when it has none."""
    usable = [e for e in encoded if has_answer(e)] or encoded
    return min(usable, key=lambda e: len(e.input_ids))


def shares_prefix(recipe) -> bool:
    """Whether passes run their rows' common prefix once (Levers.shared_prefix, loss.py): not for packed
    rows (one row holds several examples), nor with gradient checkpointing (transformers drops the cache
    there), nor under FSDP (the prefix pass runs outside the sharded wrapper); and only when the start-up
    check finds that this model and data give the same logits both ways."""
    t = recipe.spec.training
    if not recipe.levers.shared_prefix or t.packing or t.gradient_checkpointing or recipe.levers.pad_to_max_length:
        return False
    if _fsdp(recipe):
        return False
    return check_shared_prefix(recipe.model, recipe.train_encoded, recipe.tokenizer.pad_token_id, recipe.device,
                               recipe.dtype)


def chunks_head(recipe) -> bool:
    """Whether the output layer and the loss run in chunks (Levers.chunked_head, loss.py): with answer-only
    logits, not under FSDP (the output layer's weight is sharded there), and only where the start-up check
    finds the same loss both ways."""
    if not (recipe.levers.chunked_head and recipe.levers.answer_logits_only):
        return False
    if _fsdp(recipe):
        return False
    return check_chunked_head(recipe.model, recipe.train_encoded, recipe.tokenizer.pad_token_id, recipe.device,
                              recipe.dtype)


def _fsdp(recipe) -> bool:
    return recipe.dist.distributed and recipe.sharding == "fsdp"


def train_step(recipe, micro_batches: list[list[int]]) -> tuple[float, bool]:
    """One optimizer step: this rank's share of each micro-batch, then the gradients all-reduced. Returns
    the step's loss (the mean over every answer token of the step, all ranks together) and whether any
    rank got SIGTERM, so that every rank stops after the same step."""
    import torch

    dist = recipe.dist
    world, enc = dist.world_size, recipe.train_encoded
    answers = {i: answer_tokens(enc[i]) for mb in micro_batches for i in mb}
    total_tokens = max(sum(answers.values()), 1)  # the step's, so each rank knows it without asking
    shares: list[list] = [[] for _ in range(world)]  # every rank's passes, so all know how many there are
    for mb in micro_batches:
        for share, ids in zip(shares, balanced_shards([len(enc[i].input_ids) for i in mb], world), strict=True):
            if sum(answers[mb[j]] for j in ids):  # else every answer truncated away: nothing to learn
                share += forward_passes(recipe, [enc[mb[j]] for j in ids])
    parts, step_loss, tokens = shares[dist.rank], torch.zeros((), device=recipe.device), 0
    # Every rank runs as many passes as the busiest (FSDP's forwards are collectives; DDP needs a backward
    # on every rank); a rank's extra passes have weight 0.
    count = max(1, *map(len, shares)) if dist.distributed else len(parts)
    for n in range(count):
        part = parts[n] if n < len(parts) else None
        batch = {k: v.to(recipe.device) for k, v in collate(recipe, part or [recipe.filler]).items()}
        with dist.accumulating(recipe.train_model, last=n == count - 1):
            with torch.autocast(recipe.device, dtype=recipe.dtype, enabled=recipe.dtype != torch.float32):
                loss_sum, _ = answer_loss(recipe.train_model, batch, recipe.levers.answer_logits_only,
                                          **recipe.loss_options)
            # DDP and FSDP average the ranks' gradients: x world makes that their sum, the step's gradient
            recipe.scaler.scale(loss_sum * (world / total_tokens if part else 0.0)).backward()
        if part:  # kept on the device: reading it here would make the host wait for every pass
            step_loss += loss_sum.detach().float() / total_tokens
            tokens += sum(len(e.input_ids) for e in part)
    step_loss, tokens, stops = dist.sum([step_loss.item(), tokens, float(recipe.stop.requested)])
    recipe.last_step_tokens = int(tokens)
    recipe.train_tokens += recipe.last_step_tokens
    recipe.scaler.unscale_(recipe.optimizer)
    recipe.last_grad_norm = float(torch.nn.utils.clip_grad_norm_(  # before clipping, as HF logs grad_norm
        [p for p in recipe.model.parameters() if p.requires_grad], recipe.spec.training.max_grad_norm))
    recipe.scaler.step(recipe.optimizer)
    recipe.scaler.update()
    recipe.scheduler.step()
    recipe.optimizer.zero_grad(set_to_none=True)
    return step_loss, stops > 0


def forward_passes(recipe, group: list[Encoded]) -> list[list[Encoded]]:
    """A rank's share of one micro-batch as forward passes within the pass budget (batching.passes)."""
    if recipe.pass_budget is None or recipe.levers.pad_to_max_length:
        return [group]
    split = passes([len(e.input_ids) for e in group], recipe.pass_budget, recipe.spec.training.packing,
                   pass_overhead(recipe))
    return [[group[i] for i in part] for part in split]


def collate(recipe, group: list[Encoded]) -> dict:
    """One forward pass's tensors: packed rows with training.packing, else padded to the longest example
    (to maxSeqLength with the pad_to_max_length lever)."""
    ids, labels = [e.input_ids for e in group], [e.labels for e in group]
    pad_id, max_len = recipe.tokenizer.pad_token_id, recipe.spec.dataset.max_seq_length
    if recipe.spec.training.packing:
        return pack_batch(ids, labels, pad_id, capacity=max_len)
    return pad_batch(ids, pad_id, labels, width=max_len if recipe.levers.pad_to_max_length else None)
