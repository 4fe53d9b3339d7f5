"""The one place examples become batches: the epoch order, micro-batches per optimizer step, padding, packing.

The order of epoch e depends only on (seed, e) and the example lengths, so a resumed run replays exactly the
batches that an uninterrupted run would have seen from the same step on.

Examples reach the model in one of three layouts, none of which changes what a step learns (each step's
loss is the mean over the answer tokens of its examples):

* padded: one row per example, padded to the longest of its forward pass. The examples of a step come in
  random order; the step's passes are cut by length (`passes`), so little of each pass is padding.
* packed (`training.packing`): a micro-batch's examples laid end to end in a few rows, each example with
  its own position ids from 0, which transformers turns into a block-diagonal causal mask (no attention
  across examples). Almost no padding, whatever the lengths.
* padded to `max_len` (the naive layout, kept for benchmarks).

Targets are shifted per example before rows are built (`targets[t]` is the token to predict at position t,
-100 where there is none), so no example ever learns to predict the start of the next one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

IGNORE = -100  # the label of a position the loss skips (an unanswered or padded token), as in PyTorch
MEGA_BATCH = 50  # length grouping sorts at most this many micro-batches' examples together (as HF's sampler)


@dataclass(frozen=True)
class Step:
    number: int  # 1-based optimizer step
    epoch: float  # fractional epoch at the end of this step
    micro_batches: list[list[int]]  # example indices, one list per forward/backward pass


class Schedule:
    """Optimizer steps over `n` examples: `batch_size` per micro-batch, `accumulation` per step.

    With `lengths`, the step holding the most tokens in a micro-batch runs first in each epoch (as Hugging
    Face's LengthGroupedSampler does), so a job that does not fit in memory fails in its first step, not
    hours in. With `group_by_length` too, each epoch is length-grouped as that sampler does it: the
    shuffled examples are cut into mega-batches of up to 50 micro-batches (at least four mega-batches per
    epoch, so epochs still differ), each is sorted by length and cut into micro-batches, and the
    micro-batches are shuffled. The step count and the examples per step are the same either way.
    """

    def __init__(self, n: int, batch_size: int, accumulation: int, seed: int,
                 epochs: float | None = None, max_steps: int | None = None, lengths: Sequence[int] | None = None,
                 group_by_length: bool = False):
        self.n, self.batch_size, self.accumulation, self.seed = n, batch_size, accumulation, seed
        self.lengths = list(lengths) if lengths is not None else None
        self.group_by_length = group_by_length and lengths is not None
        self.micro_per_epoch = math.ceil(n / batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / accumulation)
        self.total_steps = max_steps if max_steps is not None else max(1, math.ceil(epochs * self.steps_per_epoch))

    def epoch_steps(self, epoch: int) -> list[list[list[int]]]:
        """The steps of `epoch`, each a list of micro-batches of example indices."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        indices = list(range(self.n))
        rng.shuffle(indices)
        size = self.batch_size
        if not self.group_by_length:
            micro = [indices[i: i + size] for i in range(0, self.n, size)]
        else:
            mega = size * max(1, min(MEGA_BATCH, self.n // (4 * size)))
            micro = []
            for start in range(0, self.n, mega):
                chunk = sorted(indices[start: start + mega], key=lambda i: self.lengths[i], reverse=True)
                micro += [chunk[i: i + size] for i in range(0, len(chunk), size)]
            rng.shuffle(micro)
        steps = [micro[i: i + self.accumulation] for i in range(0, len(micro), self.accumulation)]
        if self.lengths is not None:
            biggest = max(range(len(steps)), key=lambda s: max(self._padded(mb) for mb in steps[s]))
            steps[0], steps[biggest] = steps[biggest], steps[0]
        return steps

    def _padded(self, micro_batch: list[int]) -> int:
        return len(micro_batch) * max(self.lengths[i] for i in micro_batch)

    def steps(self, start: int = 0) -> Iterator[Step]:
        """Steps start+1 .. total_steps."""
        cached: tuple[int, list] | None = None
        for number in range(start + 1, self.total_steps + 1):
            epoch, within = divmod(number - 1, self.steps_per_epoch)
            if cached is None or cached[0] != epoch:
                cached = (epoch, self.epoch_steps(epoch))
            yield Step(number, epoch + (within + 1) / self.steps_per_epoch, cached[1][within])


def passes(lengths: list[int], budget: int, packed: bool, overhead: int | None = None) -> list[list[int]]:
    """A micro-batch (its examples' lengths) split into forward passes of at most `budget` tokens, padding
    included (`packed`: their sum, as packed rows carry almost no padding), longest first. An example longer
    than the budget gets a pass of its own. The step's loss does not depend on the split.

    With `overhead` (what starting one more pass costs, in tokens) padded passes are cut where that saves
    more padding than it costs: the split with the fewest padded tokens plus `overhead` per pass. A step of
    examples in random order then pads about as little as a length-grouped one. Without it (and for packed
    passes, or micro-batches of more than EXACT_SPLIT examples): as few passes as the budget allows."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    if overhead is not None and not packed and len(order) <= EXACT_SPLIT:
        return _least_padding(lengths, order, budget, overhead)
    out: list[list[int]] = []
    for i in order:
        if out:
            current = out[-1]  # its first example is its longest
            size = sum(lengths[j] for j in current) + lengths[i] if packed else (len(current) + 1) * lengths[current[0]]
            if size <= budget:
                current.append(i)
                continue
        out.append([i])
    return out


EXACT_SPLIT = 512  # examples; a larger micro-batch keeps the greedy split (the search is quadratic)


def _least_padding(lengths: list[int], order: list[int], budget: int, overhead: int) -> list[list[int]]:
    """`order` (example indices, longest first) cut into runs that minimise the padded tokens plus
    `overhead` per run, each run within `budget` unless it is one example. Runs of neighbours in length
    order are enough: a pass is as wide as its longest example."""
    n = len(order)
    cost, cut = [0] + [math.inf] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for first in range(end - 1, -1, -1):  # the run order[first:end], as wide as order[first]
            size = (end - first) * lengths[order[first]]
            if size > budget and end - first > 1:
                break  # wider and longer from here on
            if cost[first] + size + overhead < cost[end]:
                cost[end], cut[end] = cost[first] + size + overhead, first
    runs, end = [], n
    while end:
        runs.append(order[cut[end]:end])
        end = cut[end]
    return runs[::-1]


def shifted_targets(labels: list[int]) -> list[int]:
    """The token each position should predict: labels moved one to the left, -100 at the end."""
    return [*labels[1:], IGNORE]


def pad_batch(sequences: list[list[int]], pad_id: int, labels: list[list[int]] | None = None,
              left: bool = False, width: int | None = None) -> dict:
    """Tensors for a batch: input_ids, attention_mask and (when labels are given) `targets`, the shifted
    labels padded with -100. Rows are padded to the longest sequence, or to `width`."""
    import torch

    width = max(width or 0, max(len(s) for s in sequences))

    def pad(seq: list[int], value: int) -> list[int]:
        fill = [value] * (width - len(seq))
        return fill + seq if left else seq + fill

    batch = {
        "input_ids": torch.tensor([pad(s, pad_id) for s in sequences]),
        "attention_mask": torch.tensor([pad([1] * len(s), 0) for s in sequences]),
    }
    if labels is not None:
        batch["targets"] = torch.tensor([pad(shifted_targets(lab), IGNORE) for lab in labels])
    return batch


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` split into as few rows of at most `capacity` tokens as fit, balanced so that
    the longest row (the batch width) is as short as this greedy packing gets it."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    rows = max(1, math.ceil(sum(lengths) / capacity))
    while True:
        bins: list[list[int]] = [[] for _ in range(rows)]
        loads = [0] * rows
        for i in order:  # longest first into the emptiest row
            j = min(range(rows), key=loads.__getitem__)
            bins[j].append(i)
            loads[j] += lengths[i]
        if max(loads) <= capacity or rows >= len(lengths):
            return [b for b in bins if b]
        rows += 1


def pack_batch(sequences: list[list[int]], labels: list[list[int]], pad_id: int, capacity: int) -> dict:
    """Tensors for a packed batch: input_ids, position_ids (from 0 for every example and for the padding
    at a row's end) and targets; no attention_mask, so transformers derives the block-diagonal mask from
    the position ids."""
    import torch

    rows = pack_rows([len(s) for s in sequences], capacity)
    width = max(sum(len(sequences[i]) for i in row) for row in rows)
    ids, positions, targets = [], [], []
    for row in rows:
        r_ids, r_pos, r_tgt = [], [], []
        for i in row:
            r_ids += sequences[i]
            r_pos += range(len(sequences[i]))
            r_tgt += shifted_targets(labels[i])
        fill = width - len(r_ids)
        ids.append(r_ids + [pad_id] * fill)
        positions.append(r_pos + list(range(fill)))
        targets.append(r_tgt + [IGNORE] * fill)
    return {"input_ids": torch.tensor(ids), "position_ids": torch.tensor(positions), "targets": torch.tensor(targets)}


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i: i + size]
