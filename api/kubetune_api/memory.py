"""Peak accelerator memory of one training process, from the model's shape and the job's settings.

A pure function (no torch), so the operator, `kubetune estimate` and the trainer's preflight share it:

    shape = ModelShape.from_config(json.load(open("config.json")))
    est = estimate(shape, Workload.from_spec(spec))
    est.total, est.components   # bytes; weights, adapter, activations, logits, overhead

What it counts, per process (one per GPU), and why (docs/memory.md has the derivation and the measured
error):

* weights: the frozen base at the compute precision (LoRA), or 4-bit linear layers (bitsandbytes NF4/FP4:
  half a byte per weight plus its block constants) with every other weight in fp32, because PEFT's
  `prepare_model_for_kbit_training` upcasts them (QLoRA). FSDP splits the base across the processes and
  gathers one layer at a time.
* adapter: LoRA's A and B matrices of the targeted linear layers, trained in fp32 (PEFT's default):
  weights, gradients and AdamW's two moments, 16 bytes per trainable weight.
* activations: what the backward pass keeps of the largest forward pass the trainer runs. The trainer
  splits a micro-batch into passes of at most half `batchSize x maxSeqLength` tokens (always at least one
  whole example), so that, not the whole batch, is what a pass holds. Per token and layer a Llama-type block
  keeps its two RMSNorm inputs in fp32, the attention inputs and output (keys and values repeated to every
  head), the MLP's intermediate tensors and, per LoRA-adapted layer, the dropout mask and output. With
  gradient checkpointing only each layer's input is kept, and one layer is recomputed at a time.
* logits: vocabulary logits only where an answer token is predicted (loss.py), in fp32, with the
  log-softmax kept for the backward pass and its gradient: 12 bytes per answer token and vocabulary entry.
  `answer_fraction` is the share of a pass's tokens that are answers; 1.0 (the default) is the worst case,
  which the trainer's schedule runs first, so a job that does not fit fails in its first step anyway.
* overhead: the CUDA context and kernels' workspaces (not counted by torch's allocator), communication
  buffers with several GPUs, and the caching allocator's fragmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import Field

from .base import ApiModel

GIB = 1 << 30
# Linear layers of a Llama-type decoder block, by PEFT target name: (in, out) as functions of the shape.
BLOCK_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Bytes per element at each training precision; "auto" trains in bf16 on a GPU. On CPU it is estimated in fp32,
# the larger: the trainer uses bf16 where the node's CPU multiplies it natively, which the estimate cannot know.
PRECISION_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
# The CUDA context, cuBLAS/cuDNN workspaces and kernel images: memory the allocator never sees.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
# NCCL's buffers and DDP's gradient buckets with more than one process.
COLLECTIVE_BYTES = int(0.5 * GIB)
# The caching allocator holds some memory in blocks it cannot reuse for a request of another size.
FRAGMENTATION = 0.05


class ModelShape(ApiModel):
    """The shape of a decoder-only transformer (Llama, Mistral, Qwen, Gemma and alike), as in its config.json.
    Only used to estimate training memory (the Fits condition); the trainer reads the real config.json."""

    layers: int = Field(ge=1, le=1024, description="Decoder layers (num_hidden_layers).")
    hidden: int = Field(ge=1, le=1 << 20, description="Hidden size (hidden_size).")
    intermediate: int = Field(ge=1, le=1 << 22, description="MLP intermediate size (intermediate_size).")
    heads: int = Field(ge=1, le=4096, description="Attention heads (num_attention_heads).")
    kv_heads: int | None = Field(
        default=None, ge=1, le=4096,
        description="Key/value heads (num_key_value_heads) for grouped-query attention; heads when unset.",
    )
    head_dim: int | None = Field(default=None, ge=1, le=4096, description="Per-head size; hidden / heads when unset.")
    vocab: int = Field(ge=1, le=1 << 24, description="Vocabulary size (vocab_size).")
    tied_embeddings: bool = Field(
        default=False, description="The output layer shares the input embedding (tie_word_embeddings)."
    )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a Hugging Face config.json (its text_config for multimodal models)."""
        config = config.get("text_config") or config
        names = {"layers": "num_hidden_layers", "hidden": "hidden_size", "intermediate": "intermediate_size",
                 "heads": "num_attention_heads", "vocab": "vocab_size"}
        missing = [key for key in names.values() if not isinstance(config.get(key), int)]
        if missing:
            raise ValueError(f"config.json has no {', '.join(missing)}: not a decoder-only transformer the memory "
                             "estimate knows")
        return cls(**{k: config[v] for k, v in names.items()}, kv_heads=config.get("num_key_value_heads"),
                   head_dim=config.get("head_dim"), tied_embeddings=bool(config.get("tie_word_embeddings", False)))

    @property
    def q_dim(self) -> int:
        return (self.head_dim or self.hidden // self.heads) * self.heads

    @property
    def kv_dim(self) -> int:
        return (self.head_dim or self.hidden // self.heads) * (self.kv_heads or self.heads)

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one block."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def block_linear_params(self) -> int:
        return sum(a * b for a, b in self.linears().values())

    def other_params(self) -> int:
        """Embeddings, output layer and norms: the weights QLoRA does not quantize."""
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + (2 * self.layers + 1) * self.hidden

    def params(self) -> int:
        return self.layers * self.block_linear_params() + self.other_params()


@dataclass(frozen=True)
class Workload:
    """What one training process does, in the terms the estimate needs; `from_spec` reads a job's spec."""

    method: Literal["lora", "qlora"] = "lora"
    double_quant: bool = True
    rank: int = 16
    targets: tuple[str, ...] = BLOCK_LINEARS
    dropout: bool = True  # lora dropout > 0: a mask and a copy of the input per adapted layer
    batch_size: int = 8
    seq_len: int = 1024
    gradient_checkpointing: bool = False
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    world_size: int = 1
    sharding: Literal["auto", "ddp", "fsdp"] = "auto"  # auto counts as ddp until `resolve_sharding`
    answer_fraction: float = 1.0
    pass_fraction: float | None = 0.5  # the trainer's Levers.pass_tokens; None: the whole micro-batch
    packing: bool = False  # training.packing: a pass fills its token budget exactly, not in whole rows
    accelerator: bool = True  # False: training on CPU, no CUDA context

    @classmethod
    def from_spec(cls, spec: Any, answer_fraction: float = 1.0) -> Workload:
        """From a FineTuneJobSpec. training.sharding auto is resolved by `resolve_sharding` (it needs the
        device's memory)."""
        t, lora, gpus = spec.training, spec.method.lora, spec.resources.gpus
        precision = t.precision if t.precision != "auto" else ("bf16" if gpus else "fp32")
        targets = BLOCK_LINEARS if lora.target_modules == ["all-linear"] else tuple(lora.target_modules)
        quant = spec.method.quantization
        return cls(method=spec.method.type, double_quant=quant.double_quant if quant else True, rank=lora.r,
                   targets=targets, dropout=lora.dropout_rate > 0, batch_size=t.batch_size,
                   seq_len=spec.dataset.max_seq_length, gradient_checkpointing=t.gradient_checkpointing,
                   precision=precision, world_size=max(1, gpus),
                   sharding=t.sharding, answer_fraction=answer_fraction, packing=t.packing,
                   accelerator=gpus > 0)

    def pass_tokens(self) -> int:
        """Tokens of the largest forward pass: the trainer's pass budget (batching.passes), whole examples."""
        if self.pass_fraction is None:
            return self.batch_size * self.seq_len
        budget = max(self.seq_len, int(self.pass_fraction * self.batch_size * self.seq_len))
        if self.packing:
            return min(budget, self.batch_size * self.seq_len)
        rows = budget // self.seq_len
        return min(rows, self.batch_size) * self.seq_len


@dataclass(frozen=True)
class Stack:
    """How the training code spends memory where frameworks differ; KUBETUNE is this trainer. bench/ and the
    tests use another instance to compare with figures published for torchtune."""

    upcast_unquantized: bool = True  # QLoRA: PEFT casts non-4-bit weights to fp32
    logit_bytes: float = 12.0  # per answer token and vocabulary entry (fp32 logits, log-softmax, gradient)
    logits_on_answers_only: bool = True


KUBETUNE = Stack()


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of one process by component, in the order they are printed."""

    components: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def allocated(self) -> int:
        """What torch's allocator would report (torch.cuda.max_memory_allocated): the total less overhead."""
        return self.total - self.components.get("overhead", 0)

    def gib(self) -> dict[str, float]:
        return {k: round(v / GIB, 2) for k, v in self.components.items()}


def adapted(work: Workload) -> set[str]:
    """The block's linear layers LoRA adapts. A target name outside a Llama-type block counts as all-linear
    (the largest adapter the estimate can know of)."""
    targets = set(work.targets)
    return targets if targets <= set(BLOCK_LINEARS) else set(BLOCK_LINEARS)


def adapter_params(shape: ModelShape, work: Workload) -> int:
    """Trainable LoRA weights: r x (in + out) per adapted linear layer."""
    linears = shape.linears()
    return shape.layers * sum(work.rank * sum(linears[n]) for n in adapted(work))


def weight_bytes(shape: ModelShape, work: Workload, stack: Stack = KUBETUNE) -> int:
    e = PRECISION_BYTES[work.precision]
    if work.method == "qlora":
        per_weight = 0.5 + (1 / 64 + 4 / (64 * 256) if work.double_quant else 4 / 64)
        other = 4 if stack.upcast_unquantized else e
        full = shape.layers * shape.block_linear_params() * per_weight + shape.other_params() * other
    else:
        full = shape.params() * e
    if work.sharding == "fsdp" and work.world_size > 1:
        # each process keeps its shard, and gathers a layer (and prefetches the next) when it runs it
        return int(full / work.world_size + 2 * shape.block_linear_params() * e)
    return int(full)


def _layer_activation_bytes(shape: ModelShape, work: Workload, stack: Stack = KUBETUNE) -> float:
    """Bytes a decoder block keeps per token for its backward pass (no checkpointing)."""
    e, h, i = PRECISION_BYTES[work.precision], shape.hidden, shape.intermediate
    layers = adapted(work)
    norms = 2 * 4 * h  # RMSNorm upcasts its input to fp32 and keeps it
    attention = e * (2 * shape.q_dim + 2 * shape.q_dim)  # q, k and v repeated to every head, the output
    # gate output (SiLU input), SiLU output and up output (the product's inputs). With QLoRA's upcast the
    # residual stream is fp32 (PEFT casts the embeddings and norms), and bitsandbytes returns a 4-bit layer's
    # output in its input's dtype: these three are fp32 (measured on an H200: docs/memory.md).
    mlp = 3 * (4 if work.method == "qlora" and stack.upcast_unquantized else e) * i
    lora = 0.0
    inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": shape.q_dim, "gate_proj": h, "up_proj": h,
              "down_proj": i}
    mask = 1 if work.accelerator else e  # CUDA's dropout keeps a bool mask, the CPU's one of the input's dtype
    for name in layers:
        # dropout keeps its mask and lora_A keeps the dropped-out input; without dropout lora_A keeps the
        # layer input itself, which one tensor per input serves (q, k, v share it; gate and up too)
        lora += (mask + e) * inputs[name] if work.dropout else 0
    if not work.dropout:
        shared = {("q_proj", "k_proj", "v_proj"): h, ("o_proj",): shape.q_dim, ("gate_proj", "up_proj"): h,
                  ("down_proj",): i}
        lora += sum(e * width for names, width in shared.items() if layers & set(names))
    return norms + attention + mlp + lora


def activation_bytes(shape: ModelShape, work: Workload, stack: Stack = KUBETUNE) -> int:
    """The largest forward pass's saved activations, plus one layer's backward temporaries."""
    tokens, e = work.pass_tokens(), PRECISION_BYTES[work.precision]
    layer = _layer_activation_bytes(shape, work, stack)
    # the backward pass of one layer holds gradients of its largest tensors while the next is computed
    backward = 2 * e * shape.intermediate + 4 * e * shape.hidden
    # embedding output, final norm (fp32) and the hidden states the output layer reads
    outside = (2 * e + 4) * shape.hidden
    # with checkpointing each layer keeps its input, and one layer is recomputed at a time
    kept = shape.layers * e * shape.hidden + layer if work.gradient_checkpointing else shape.layers * layer
    dequant = 0
    if work.method == "qlora":  # bitsandbytes dequantizes one weight at a time to the compute dtype
        dequant = max(a * b for a, b in shape.linears().values()) * e
    return int(tokens * (kept + backward + outside) + dequant)


def logit_bytes(shape: ModelShape, work: Workload, stack: Stack = KUBETUNE) -> int:
    fraction = work.answer_fraction if stack.logits_on_answers_only else 1.0
    return int(math.ceil(work.pass_tokens() * fraction) * shape.vocab * stack.logit_bytes)


def estimate(shape: ModelShape, work: Workload, stack: Stack = KUBETUNE) -> Estimate:
    """Peak memory of one training process (one GPU), by component."""
    adapter = adapter_params(shape, work) * 16  # fp32 weight, gradient, AdamW's two moments
    if work.sharding == "fsdp" and work.world_size > 1:
        adapter //= work.world_size
    parts = {
        "weights": weight_bytes(shape, work, stack),
        "adapter": adapter,
        "activations": activation_bytes(shape, work, stack),
        "logits": logit_bytes(shape, work, stack),
    }
    overhead = int(FRAGMENTATION * sum(parts.values()))
    if work.accelerator:
        overhead += CUDA_CONTEXT_BYTES + (COLLECTIVE_BYTES if work.world_size > 1 else 0)
    return Estimate({**parts, "overhead": overhead})


def auto_sharding(method: str, weights_bytes: int, device_bytes: int) -> str:
    """training.sharding auto, for the trainer (from the weight files) and the estimate (from the shape):
    DDP when the base fits one device with room to train (at most half its memory, which leaves the rest for
    activations, the adapter and its optimizer state), FSDP when it does not. A QLoRA base takes about a
    quarter of its 16-bit weights in memory (4 bits a weight, plus small quantization constants)."""
    in_memory = weights_bytes // 4 if method == "qlora" else weights_bytes
    return "ddp" if in_memory <= device_bytes // 2 else "fsdp"


def resolve_sharding(shape: ModelShape, work: Workload, device_bytes: int | None) -> Workload:
    """training.sharding auto as the trainer resolves it (`auto_sharding`)."""
    if work.sharding != "auto":
        return work
    if work.world_size < 2 or not device_bytes:
        return replace(work, sharding="ddp")
    weights = shape.params() * (2 if work.method == "qlora" else PRECISION_BYTES[work.precision])
    return replace(work, sharding=auto_sharding(work.method, int(weights), device_bytes))
