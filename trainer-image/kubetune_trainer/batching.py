"""The one place examples become batches: the epoch order, micro-batches per optimizer step, padding.

The order of epoch e depends only on (seed, e), so a resumed run replays exactly the batches that an
uninterrupted run would have seen from the same step on.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    number: int  # 1-based optimizer step
    epoch: float  # fractional epoch at the end of this step
    micro_batches: list[list[int]]  # example indices, one list per forward/backward pass


class Schedule:
    """Optimizer steps over `n` examples: `batch_size` per micro-batch, `accumulation` per step."""

    def __init__(self, n: int, batch_size: int, accumulation: int, seed: int,
                 epochs: float | None = None, max_steps: int | None = None):
        self.n, self.batch_size, self.accumulation, self.seed = n, batch_size, accumulation, seed
        self.micro_per_epoch = math.ceil(n / batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / accumulation)
        self.total_steps = max_steps if max_steps is not None else max(1, math.ceil(epochs * self.steps_per_epoch))

    def epoch_order(self, epoch: int) -> list[list[int]]:
        indices = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(indices)
        return [indices[i: i + self.batch_size] for i in range(0, self.n, self.batch_size)]

    def steps(self, start: int = 0) -> Iterator[Step]:
        """Steps start+1 .. total_steps."""
        for number in range(start + 1, self.total_steps + 1):
            epoch, within = divmod(number - 1, self.steps_per_epoch)
            order = self.epoch_order(epoch)
            micro = order[within * self.accumulation: (within + 1) * self.accumulation]
            yield Step(number, epoch + (within + 1) / self.steps_per_epoch, micro)


def pad_batch(sequences: list[list[int]], pad_id: int, labels: list[list[int]] | None = None,
              left: bool = False) -> dict:
    """Tensors for a batch: input_ids, attention_mask and (when given) labels padded with -100."""
    import torch

    width = max(len(s) for s in sequences)

    def pad(seq: list[int], value: int) -> list[int]:
        fill = [value] * (width - len(seq))
        return fill + seq if left else seq + fill

    batch = {
        "input_ids": torch.tensor([pad(s, pad_id) for s in sequences]),
        "attention_mask": torch.tensor([pad([1] * len(s), 0) for s in sequences]),
    }
    if labels is not None:
        batch["labels"] = torch.tensor([pad(lab, -100) for lab in labels])
    return batch


def chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i: i + size]
