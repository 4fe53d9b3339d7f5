"""The baselines of bench/gpu_lora.py: what a user runs instead of us, each as its docs lead one to write it.

* hf: transformers.Trainer with DataCollatorForSeq2Seq (each micro-batch padded to its longest example,
  labels -100) and group_by_length, bf16=True;
* trl: TRL's SFTTrainer on the same token ids as a prompt-completion dataset (input_ids and
  completion_mask), completion_only_loss and padding_free (each micro-batch flattened into one row with
  per-example position ids), bf16=True, gradient checkpointing off (as the other arms). TRL's docs pair
  padding_free with flash attention; without the flash-attn package (none on the machines we are lent)
  transformers builds a block-diagonal mask from the position ids for SDPA, so the attention runs over the
  whole flattened row, masked.

Each trains one epoch of the examples it is given and returns (its seconds, (length, answer positions) of
every example, in the order trained).
"""

from __future__ import annotations

import itertools
import tempfile
import time

from gpu_lora import device, synchronize  # this script's folder, bench/, is on sys.path when it runs


def run_hf(model, batch: int, examples: list, args) -> tuple[float, list, None]:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": e.labels}
            for e in examples]
    with tempfile.TemporaryDirectory(prefix="hf-out-") as out:
        targs = TrainingArguments(**common(out, batch, len(examples) // batch), remove_unused_columns=False,
                                  train_sampling_strategy="group_by_length")
        collator = DataCollatorForSeq2Seq(pad_tokenizer(), padding=True, label_pad_token_id=-100)
        return timed(Trainer(model=model, args=targs, train_dataset=rows, data_collator=collator))


def run_trl(model, batch: int, examples: list, args) -> tuple[float, list, None]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"input_ids": e.input_ids, "completion_mask": [int(t != -100) for t in e.labels]} for e in examples]
    with tempfile.TemporaryDirectory(prefix="trl-out-") as out:
        # max_length None: the ids are already at most --seq long (TRL refuses max_length with padding_free
        # and no packing); SFTConfig's defaults turn gradient checkpointing on, off here as in the other arms.
        config = SFTConfig(**common(out, batch, len(examples) // batch), completion_only_loss=True,
                           padding_free=True, max_length=None, gradient_checkpointing=False)
        return timed(SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                                processing_class=pad_tokenizer()))


def common(out: str, batch: int, steps: int) -> dict:
    return dict(output_dir=out, per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
                bf16=device() == "cuda", use_cpu=device() != "cuda", logging_steps=1000, save_strategy="no",
                report_to="none", dataloader_num_workers=0, disable_tqdm=True, seed=0)


def timed(trainer) -> tuple[float, list, None]:
    """Train, timing the whole run and noting (length, answer positions) of every example as its micro-batch
    is collated, on the CPU (counting the batch on the device would add a synchronisation per micro-batch)."""
    from transformers import TrainerCallback

    clock: dict[str, float] = {}
    trained: list[tuple[int, int]] = []
    collate = trainer.data_collator

    def counted(features):
        batch = collate(features)
        if "position_ids" in batch and "attention_mask" not in batch:  # padding-free: one flattened row
            positions, labels = batch["position_ids"][0], batch["labels"][0]
            starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
            trained.extend((end - begin, int((labels[begin + 1:end] != -100).sum()))
                           for begin, end in itertools.pairwise(starts))
        else:
            trained.extend((int(mask.sum()), int((labels[1:] != -100).sum()))
                           for mask, labels in zip(batch["attention_mask"], batch["labels"], strict=True))
        return batch

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **kw):
            synchronize()
            clock["begin"] = time.perf_counter()

        def on_train_end(self, *a, **kw):
            synchronize()
            clock["end"] = time.perf_counter()

    trainer.data_collator = counted
    trainer.add_callback(Clock())
    trainer.train()
    return clock["end"] - clock["begin"], trained, None


def pad_tokenizer():
    """The collators pad with a tokenizer: a one-token vocabulary is all they need of one."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0}, unk_token="<pad>")),
                                   pad_token="<pad>")
