"""The FineTuneJob spec: the one typed definition of what a user may ask for.

The operator validates manifests with it, the trainer reads its config from it and the CRD in `crds/` is
generated from it (`kubetune-crd`). Every rule lives here once. Field descriptions are user documentation:
they become `kubectl explain` text.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .base import ApiModel
from .memory import ModelShape

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
# A Kubernetes label value (also a toleration value): at most 63 characters, alphanumeric at both ends,
# `-`, `_` and `.` inside; empty is allowed. A label key is an optional DNS subdomain prefix and `/`, then
# a name of that same form (not empty).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_VALUE_HELP = ("a Kubernetes label value: at most 63 characters, letters, digits, '-', '_' and '.', "
                    "starting and ending with a letter or digit")
LABEL_KEY_HELP = ("a Kubernetes label key: an optional DNS subdomain prefix and '/', then a name of at most "
                  "63 characters (letters, digits, '-', '_', '.'), starting and ending with a letter or digit")


def label_value_error(value: object) -> str | None:
    """Why `value` cannot be a label value, or None when it can."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if len(value) > 63 or not re.match(LABEL_VALUE, value):
        return f"{value!r} is not {LABEL_VALUE_HELP}"
    return None


def label_key_error(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not re.match(DNS1123_SUBDOMAIN, prefix)):
        return f"{key!r} is not {LABEL_KEY_HELP}"
    if not name or len(name) > 63 or not re.match(LABEL_VALUE, name):
        return f"{key!r} is not {LABEL_KEY_HELP}"
    return None
URI_SCHEMES = ("s3://", "hf://", "file://", "bundled://", "/", "./", "../")
# Relative paths are resolved against the manifest's folder; they only mean something to `kubetune run`.
LOCAL_ONLY_PREFIXES = ("./", "../")
URI_HELP = (
    "s3://bucket/prefix, hf://org/name, file:///path, an absolute path on a mounted volume, bundled://name, "
    "or a path relative to the manifest (local runs only)"
)

METRICS = ("evalLoss", "perplexity", "rouge1", "rouge2", "rougeL", "exactMatch", "bleu", "chrf")
# Metrics where a smaller value is better; a gate on them uses `max`, on the rest `min`.
LOWER_IS_BETTER = ("evalLoss", "perplexity")
GENERATION_METRICS = tuple(m for m in METRICS if m not in LOWER_IS_BETTER)
# The columns of each record layout (dataset.schema), as columnMapping keys; OPTIONAL_FIELDS may be absent.
SCHEMA_FIELDS = {
    "alpaca": ("instruction", "input", "output"),
    "promptCompletion": ("prompt", "completion"),
    "messages": ("messages", "tools", "system"),
    "sharegpt": ("conversations", "tools", "system"),
}
OPTIONAL_FIELDS = ("input", "tools", "system")
# Keys inside the messages of a conversation (messages, sharegpt): columnMapping accepts these too.
# `<role>Role` names the role as your files spell it (it replaces the defaults for that role).
MESSAGE_KEYS = ("roleKey", "contentKey", "systemRole", "userRole", "assistantRole", "toolRole", "toolCallRole")
CONVERSATION_SCHEMAS = ("messages", "sharegpt")

MetricName = Literal["evalLoss", "perplexity", "rouge1", "rouge2", "rougeL", "exactMatch", "bleu", "chrf"]


def _check_uri(value: str, what: str) -> str:
    if not value.startswith(URI_SCHEMES):
        raise ValueError(f"{what} {value!r} is not supported; use {URI_HELP}")
    if value.startswith("s3://") and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", value):
        raise ValueError(f"{value!r} is not a valid S3 URI; expected s3://bucket/prefix with a DNS-style bucket name")
    if value.startswith("hf://") and not re.match(r"^hf://[\w.\-]+(/[\w.\-]+)?$", value):
        raise ValueError(f"{value!r} is not a valid Hugging Face URI; expected hf://org/name")
    return value


class SecretRef(ApiModel):
    """A Secret in the FineTuneJob's own namespace. Its values are passed to the trainer as environment
    variables by reference; they are never copied into ConfigMaps, status or events."""

    name: str = Field(
        description="Name of the Secret in the job's namespace.", min_length=1, max_length=253,
        pattern=DNS1123_SUBDOMAIN,
    )

    @model_validator(mode="before")
    @classmethod
    def _same_namespace(cls, data: Any) -> Any:
        if isinstance(data, dict) and "namespace" in data:
            raise ValueError(
                "secretRef.namespace is not allowed: a job may only reference Secrets in its own namespace"
            )
        return data


class ModelSecretRef(SecretRef):
    """A Secret holding a model-hub token (for gated or private models)."""

    key: str = Field(default="HF_TOKEN", description="Key in the Secret that holds the token. Default: HF_TOKEN.")


class S3SecretRef(SecretRef):
    """A Secret holding S3 credentials."""

    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID", description="Key in the Secret holding the access key id. Default: AWS_ACCESS_KEY_ID."
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY",
        description="Key in the Secret holding the secret access key. Default: AWS_SECRET_ACCESS_KEY.",
    )


class ModelSpec(ApiModel):
    """The base model to fine-tune."""

    uri: str = Field(
        description=f"Where the base model is: {URI_HELP}. A folder in Hugging Face layout (config.json, "
        "safetensors weights, tokenizer files). bundled://smollm2-135m-instruct is the small model shipped "
        "with the trainer for local runs and tests.",
        min_length=1,
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) for hf:// models.")
    secret_ref: ModelSecretRef | None = Field(default=None, description="Secret with a hub token for gated models.")
    trust_remote_code: bool = Field(
        default=False,
        description="Allow the model repository's own Python code to run. Default: false; enable only for "
        "models you trust. In a cluster the job must also name (spec.runtimeRef) a ClusterFineTuneRuntime "
        "with allowRemoteCode: true; `kubetune run` allows it with a warning.",
    )
    shape: ModelShape | None = Field(
        default=None,
        description="The model's shape, as in its config.json, for the GPU memory estimate the operator makes "
        "before it starts a pod (the Fits condition; docs/memory.md). Unset: the shape of the runtime named "
        "by spec.runtimeRef, if it has one; without either, the trainer checks from config.json before "
        "loading weights. Not part of the spec hash.",
    )
    allow_pickle_weights: bool = Field(
        default=False,
        description="Also load weights stored as Python pickles (pytorch_model.bin, *.pt, *.pth, *.ckpt), "
        "which can run code when loaded. Default: false: only *.safetensors weights are loaded, and a model "
        "folder with pickle weights only fails before training.",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value, "model uri")


class DataSource(ApiModel):
    """One data file, or a folder/prefix of files of the same format."""

    uri: str = Field(description=f"Location of the data: {URI_HELP}.", min_length=1)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value, "dataset uri")


class DatasetSpec(ApiModel):
    """Instruction data: what to train on, how to read it and how to turn records into prompts."""

    train: DataSource = Field(description="Training data.")
    eval: DataSource | None = Field(
        default=None, description="Held-out evaluation data. Mutually exclusive with evalSplit."
    )
    eval_split: float | None = Field(
        default=None, gt=0, le=0.5,
        description="Fraction of the training data held out for evaluation (0 < x <= 0.5), split "
        "deterministically by training.seed. Used when eval is not set; default 0.1.",
    )
    format: Literal["auto", "jsonl", "json", "csv", "parquet"] = Field(
        default="auto", description="File format; auto picks it from the file extension. Default: auto."
    )
    data_schema: Literal["auto", "alpaca", "promptCompletion", "messages", "sharegpt"] = Field(
        default="auto", alias="schema",
        description="Record layout: alpaca (instruction, input, output), promptCompletion (prompt, "
        "completion), messages (OpenAI-style chat messages with role and content, tool calls and tool "
        "results) or sharegpt (conversations of from/value turns: human, gpt, system, function_call, "
        "observation); both chat layouts take an optional tools column. auto detects it from the columns. "
        "See docs/data.md.",
    )
    column_mapping: dict[str, str] = Field(
        default_factory=dict,
        description="Maps a schema field (instruction, input, output, prompt, completion, messages, "
        "conversations, tools, system) to the column name used in your files, e.g. {output: answer}; for "
        "messages and sharegpt also the keys inside each message (roleKey, contentKey) and the role names "
        "your files use (systemRole, userRole, assistantRole, toolRole, toolCallRole), e.g. "
        "{roleKey: speaker, userRole: customer}.",
    )
    mask_history: bool = Field(
        default=False,
        description="Train only the last assistant message of each conversation; earlier assistant messages "
        "become context, as LLaMA-Factory's mask_history. Default: false: every assistant message is "
        "trained (TRL's assistant-only loss), except those with loss_weight 0.",
    )
    template: Literal["auto", "chat", "alpaca", "custom"] = Field(
        default="auto",
        description="How prompts are rendered: chat uses the model's chat template, alpaca the Alpaca "
        "instruction template, custom the Jinja template in customTemplate; auto uses the chat template "
        "when the model has one, else alpaca. Only chat renders whole conversations; alpaca and custom "
        "render one prompt and one answer (a conversation's last trained assistant message). Default: auto.",
    )
    custom_template: str | None = Field(
        default=None,
        description="Jinja template that renders a record's fields into the prompt (the response is "
        "appended after it). Required when template is custom.",
    )
    system_prompt: str | None = Field(
        default=None,
        description="Optional system message for chat templates, added to every record that has none of its "
        "own; custom templates get it as system_prompt.",
    )
    max_seq_length: int = Field(
        default=1024, ge=16, le=131072,
        description="Maximum tokens per example (prompt + response); longer examples are truncated and "
        "counted in the data report. Default: 1024.",
    )
    max_row_bytes: int = Field(
        default=4 << 20, ge=1024, le=1 << 30,
        description="Largest row (a JSON Lines line, a CSV record, a JSON or Parquet record) accepted, in "
        "bytes after decompression; a longer row fails the job with its file and row before anything is "
        "tokenised. Default: 4194304 (4 MiB).",
    )
    max_file_bytes: int = Field(
        default=4 << 30, ge=1024, le=1 << 40,
        description="Largest data file accepted, in bytes after decompression (gzip, bzip2 and xz files "
        "are decoded); split bigger data into several files in one folder. Default: 4294967296 (4 GiB).",
    )

    @model_validator(mode="after")
    def _rules(self) -> DatasetSpec:
        if self.eval is not None and self.eval_split is not None:
            raise ValueError("set either dataset.eval or dataset.evalSplit, not both")
        if self.eval is None and self.eval_split is None:
            self.eval_split = 0.1
        if self.template == "custom" and not self.custom_template:
            raise ValueError("dataset.customTemplate is required when dataset.template is custom")
        if self.custom_template and self.template != "custom":
            raise ValueError("dataset.customTemplate is only used when dataset.template is custom")
        allowed = sorted({f for fields in SCHEMA_FIELDS.values() for f in fields}) + list(MESSAGE_KEYS)
        if self.data_schema != "auto":
            allowed = list(SCHEMA_FIELDS[self.data_schema])
            allowed += list(MESSAGE_KEYS) if self.data_schema in CONVERSATION_SCHEMAS else []
        for key in self.column_mapping:
            if key not in allowed:
                raise ValueError(
                    f"dataset.columnMapping key {key!r} is not a field of schema {self.data_schema}; "
                    f"accepted keys: {', '.join(allowed)}"
                )
        return self


class LoraSpec(ApiModel):
    """LoRA adapter shape (PEFT LoraConfig)."""

    r: int = Field(default=16, ge=1, le=1024, description="Adapter rank. Default: 16.")
    alpha: int = Field(default=32, ge=1, le=4096, description="Scaling numerator (lora_alpha). Default: 32.")
    dropout: float | None = Field(
        default=None, ge=0, lt=1,
        description="Dropout on the adapter input. Default: 0 (PEFT's default; 0.1.0 used 0.05, which costs a "
        "random mask per adapted layer, about a tenth of a CPU training step).",
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"], min_length=1,
        description="Module names to adapt (e.g. q_proj, v_proj), or [all-linear] for every linear layer "
        "except the output head. Default: [all-linear].",
    )

    @property
    def dropout_rate(self) -> float:
        """The dropout trained with: the field, or 0 when unset."""
        return self.dropout if self.dropout is not None else 0.0

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if "all-linear" in value and len(value) > 1:
            raise ValueError("all-linear cannot be combined with other module names")
        for name in value:
            if not re.match(r"^[A-Za-z0-9_.\-]+$", name):
                raise ValueError(f"target module {name!r} is not a module name (letters, digits, _ . -)")
        return value


class QuantizationSpec(ApiModel):
    """4-bit base-model quantization for QLoRA (bitsandbytes)."""

    bits: Literal[4] = Field(default=4, description="Bits per base weight. Only 4 is supported.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type. Default: nf4.")
    double_quant: bool = Field(default=True, description="Also quantize the quantization constants. Default: true.")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Dtype of the matrix multiplies. Default: bfloat16."
    )


class MethodSpec(ApiModel):
    """The fine-tuning method."""

    type: Literal["lora", "qlora"] = Field(
        default="lora", description="lora trains adapters on a full-precision base; qlora on a 4-bit base. Default: lora."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="Adapter shape.")
    quantization: QuantizationSpec | None = Field(
        default=None, description="Quantization of the base model; qlora only (defaults to nf4 with double quant)."
    )

    @model_validator(mode="after")
    def _rules(self) -> MethodSpec:
        if self.type == "lora" and self.quantization is not None:
            raise ValueError("method.quantization is only used with method.type qlora; remove it or set type: qlora")
        if self.type == "qlora" and self.quantization is None:
            self.quantization = QuantizationSpec()
        return self


class EarlyStoppingSpec(ApiModel):
    """Stop when the held-out loss stops improving and keep the best adapter, as Hugging Face's
    EarlyStoppingCallback with load_best_model_at_end and metric_for_best_model eval_loss."""

    eval_steps: int | None = Field(
        default=None, ge=1,
        description="Evaluate every N optimizer steps (eval_steps). Default: a quarter of an epoch.",
    )
    eval_samples: int = Field(
        default=64, ge=1, le=100000,
        description="Held-out examples whose mean loss per answer token is watched: the same ones at every "
        "evaluation. Default: 64.",
    )
    patience: int = Field(
        default=2, ge=1, le=1000,
        description="Evaluations in a row without improvement before training stops (early_stopping_patience). "
        "Default: 2.",
    )
    min_delta: float = Field(
        default=0.01, ge=0,
        description="How much the eval loss must fall below the best so far to count as an improvement "
        "(early_stopping_threshold), in nats per answer token; once the best is at most minDelta, nothing can "
        "count, and training stops there. Default: 0.01.",
    )
    max_epochs: float = Field(
        default=3.0, gt=0, le=1000,
        description="The most epochs trained when training.epochs and maxSteps are unset (the learning-rate "
        "schedule spans them). Default: 3.",
    )


# The default learning rate: tinker-cookbook's LoRA calibration (hyperparam_utils.get_lr, from "LoRA Without
# Regret", 2025): 10x a full fine-tune's 5e-5 at hidden size 2000, scaled by (2000 / hidden_size)^0.781 (their
# Llama-family exponent; applied to every family here), for adapters with alpha 32 under the 1/r scaling, whose
# best rate they found not to depend on the rank. A different alpha scales the rate the other way, so that the
# adapter's update per step stays the one calibrated.
LORA_BASE_LEARNING_RATE = 5e-4
LORA_WIDTH_EXPONENT = 0.781
FALLBACK_LEARNING_RATE = 2e-4  # the 0.1.0 default, for a model whose config.json gives no hidden_size


class TrainingSpec(ApiModel):
    """Optimisation settings; names follow Hugging Face TrainingArguments."""

    epochs: float | None = Field(
        default=None, gt=0, le=1000,
        description="Passes over the training data. Mutually exclusive with maxSteps. When neither is set, "
        "training stops once the held-out loss stops improving (earlyStopping's defaults), after at most "
        "earlyStopping.maxEpochs epochs, and keeps the best adapter.",
    )
    max_steps: int | None = Field(default=None, ge=1, description="Optimizer steps to run. Mutually exclusive with epochs.")
    learning_rate: float | None = Field(
        default=None, gt=0, le=1,
        description="Peak learning rate. Default: worked out from the base model's width, "
        "5e-4 x (2000 / hidden_size)^0.781 x 32 / method.lora.alpha (the LoRA learning rates Thinking Machines "
        "calibrated in 'LoRA Without Regret'): 1.3e-3 for SmolLM2-135M, 2.9e-4 for Llama-3.1-8B, 1.7e-4 for "
        "a 70B; 2e-4 when the model's config.json gives no hidden_size.",
    )
    batch_size: int = Field(default=8, ge=1, le=4096, description="Examples per device per step. Default: 8.")
    gradient_accumulation: int = Field(
        default=1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step. Default: 1."
    )
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1, description="Fraction of steps spent warming up. Default: 0.03.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial"] = Field(
        default="cosine", description="Learning-rate schedule (Hugging Face lr_scheduler_type). Default: cosine."
    )
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay. Default: 0.")
    max_grad_norm: float = Field(default=1.0, gt=0, description="Gradient clipping norm. Default: 1.0.")
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed for data split, shuffling and init. Default: 42.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in backward to save memory. Default: false."
    )
    packing: bool = Field(
        default=False,
        description="Pack several short examples into one sequence (without attention across examples). "
        "Default: false.",
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description="Training precision; auto uses bf16 where the device multiplies bf16 in hardware (GPUs that "
        "support it; CPUs with AVX512-BF16 or AMX), else fp32.",
    )
    sharding: Literal["auto", "ddp", "fsdp"] = Field(
        default="auto",
        description="How several GPUs (resources.gpus > 1) share the work: ddp keeps the whole base on every GPU "
        "and all-reduces the adapter's gradients; fsdp (FSDP2) splits the base and the adapter across the GPUs, "
        "for bases that do not fit one (with qlora, the 4-bit base is stored in the compute dtype so FSDP can "
        "shard it). auto picks ddp when the base fits one GPU, else fsdp. Default: auto.",
    )

    early_stopping: EarlyStoppingSpec | None = Field(
        default=None,
        description="Evaluate the held-out loss during training, stop when it stops improving and keep the best "
        "adapter. On by default when neither epochs nor maxSteps is set; with either, only when set here.",
    )

    @model_validator(mode="after")
    def _rules(self) -> TrainingSpec:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set either training.epochs or training.maxSteps, not both")
        explicit = self.epochs is not None or self.max_steps is not None
        if explicit and self.early_stopping is not None and "max_epochs" in self.early_stopping.model_fields_set:
            raise ValueError("training.earlyStopping.maxEpochs caps training only when training.epochs and "
                             "training.maxSteps are unset; remove it, or remove training.epochs/maxSteps")
        return self

    def stopping(self) -> EarlyStoppingSpec | None:
        """The early stopping this run uses: the spec's, or the default one when no length is set."""
        if self.early_stopping is None and self.epochs is None and self.max_steps is None:
            return EarlyStoppingSpec()
        return self.early_stopping

    def peak_learning_rate(self, hidden_size: int | None, lora_alpha: int) -> float:
        """learningRate, or the default for a base of this width (see the field's description)."""
        if self.learning_rate is not None:
            return self.learning_rate
        if not hidden_size:
            return FALLBACK_LEARNING_RATE
        return LORA_BASE_LEARNING_RATE * (2000 / hidden_size) ** LORA_WIDTH_EXPONENT * 32 / lora_alpha

    def planned_epochs(self) -> float | None:
        """Epochs to plan the schedule for (None when maxSteps is set)."""
        if self.max_steps is not None:
            return None
        return self.epochs if self.epochs is not None else self.stopping().max_epochs


class GenerationSpec(ApiModel):
    """Decoding settings for the generation metrics."""

    max_new_tokens: int | None = Field(
        default=None, ge=1, le=8192,
        description="Most tokens generated per prompt. Default: the longest reference answer of the scored "
        "examples in tokens, plus a quarter and 8 (a longer generation cannot match it).",
    )
    temperature: float = Field(default=0.0, ge=0, le=5, description="0 means greedy decoding. Default: 0.")


class GateSpec(ApiModel):
    """A promotion gate: the EvaluationPassed condition is True only when the metric meets the bound."""

    metric: MetricName = Field(description="Metric the gate reads; must be listed in evaluation.metrics.")
    min: float | None = Field(default=None, description="Pass when metric >= min (for scores such as rougeL).")
    max: float | None = Field(default=None, description="Pass when metric <= max (for evalLoss, perplexity).")

    @model_validator(mode="after")
    def _bound(self) -> GateSpec:
        if (self.min is None) == (self.max is None):
            raise ValueError("evaluation.gate needs exactly one of min or max")
        if self.metric in LOWER_IS_BETTER and self.min is not None:
            raise ValueError(f"lower {self.metric} is better: gate it with max, not min")
        if self.metric not in LOWER_IS_BETTER and self.max is not None:
            raise ValueError(f"higher {self.metric} is better: gate it with min, not max")
        return self


class RegressionSpec(ApiModel):
    """A general-ability check: generation on prompts outside the tuning domain, base vs tuned."""

    uri: str = Field(description=f"Regression prompts with references, same schemas as the dataset: {URI_HELP}.")
    metric: MetricName = Field(default="rougeL", description="Metric compared between base and tuned. Default: rougeL.")
    max_drop: float = Field(
        default=0.05, ge=0, le=1, description="Largest allowed drop of the metric versus the base model. Default: 0.05."
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        return _check_uri(value, "regression uri")

    @field_validator("metric")
    @classmethod
    def _generation_metric(cls, value: str) -> str:
        if value in LOWER_IS_BETTER:
            raise ValueError(f"regression.metric must be a generation metric: {', '.join(GENERATION_METRICS)}")
        return value


class EvaluationSpec(ApiModel):
    """Held-out evaluation of the tuned model, and of the base model for comparison."""

    metrics: list[MetricName] = Field(
        default_factory=lambda: list(METRICS), min_length=1,
        description=f"Metrics to compute: {', '.join(METRICS)}. Default: all.",
    )
    max_samples: int = Field(
        default=200, ge=1, le=100000, description="Held-out examples used for generation metrics. Default: 200."
    )
    generation: GenerationSpec = Field(default_factory=GenerationSpec, description="Decoding settings.")
    compare_base: bool = Field(
        default=True, description="Also score the base model, so the report shows the gain. Default: true."
    )
    gate: GateSpec | None = Field(default=None, description="Optional promotion gate.")
    regression: RegressionSpec | None = Field(default=None, description="Optional general-ability regression check.")

    @model_validator(mode="after")
    def _rules(self) -> EvaluationSpec:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("evaluation.metrics lists a metric twice")
        if self.gate is not None and self.gate.metric not in self.metrics:
            raise ValueError(
                f"evaluation.gate.metric {self.gate.metric!r} is not computed; add it to evaluation.metrics "
                f"({', '.join(self.metrics)})"
            )
        return self


class ServingSpec(ApiModel):
    """What the adapter is checked against at save time (the ServingCompatible condition)."""

    max_lora_rank: int = Field(
        default=16, ge=1, le=1024,
        description="The highest adapter rank your serving engine is started for (vLLM's --max-lora-rank, "
        "SGLang's --max-lora-rank). A larger method.lora.r sets ServingCompatible False with the flag to use; "
        "training is not changed. Default: 16 (vLLM's default).",
    )


class OutputSpec(ApiModel):
    """Where artefacts go: {uri}/{namespace}/{name}/{specHash}/."""

    uri: str = Field(description="Output root: s3://bucket/prefix, file:///path or an absolute path.")
    merge_adapter: bool = Field(
        default=False, description="Also write the base model with the adapter merged in (merged/). Default: false."
    )
    serving: ServingSpec = Field(default_factory=ServingSpec, description="The serving engine's limits.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if value.startswith(("hf://", "bundled://")):
            raise ValueError("output.uri must be s3://bucket/prefix, file:///path or an absolute path")
        return _check_uri(value, "output uri")


class S3Spec(ApiModel):
    """An S3-compatible object store used for s3:// URIs."""

    endpoint: str | None = Field(
        default=None, pattern=r"^https?://[^\s/]+(/.*)?$",
        description="Endpoint URL for S3-compatible stores (MinIO, SeaweedFS, Ceph); AWS when unset.",
    )
    region: str = Field(default="us-east-1", description="Region. Default: us-east-1.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        default="auto", description="Bucket addressing; most self-hosted stores need path. Default: auto."
    )
    secret_ref: S3SecretRef | None = Field(
        default=None, description="Secret with credentials; without it the pod's ambient credentials are used."
    )


class StorageSpec(ApiModel):
    """Object storage settings shared by the model, dataset and output URIs."""

    s3: S3Spec = Field(default_factory=S3Spec, description="S3 settings.")


class MlflowSecretRef(SecretRef):
    """A Secret with MLflow credentials: basic auth (username and password) or a bearer token; keys the
    Secret does not have are left unset."""

    username_key: str = Field(default="MLFLOW_TRACKING_USERNAME",
                              description="Key holding the username. Default: MLFLOW_TRACKING_USERNAME.")
    password_key: str = Field(default="MLFLOW_TRACKING_PASSWORD",
                              description="Key holding the password. Default: MLFLOW_TRACKING_PASSWORD.")
    token_key: str = Field(default="MLFLOW_TRACKING_TOKEN",
                           description="Key holding a bearer token. Default: MLFLOW_TRACKING_TOKEN.")


class MlflowSpec(ApiModel):
    """An MLflow tracking server that receives the run: parameters, per-step loss and learning rate, the
    held-out metrics of base and tuned, the artefact URIs and the lineage as tags."""

    tracking_uri: str = Field(description="The tracking server, e.g. http://mlflow.mlflow.svc:5000.",
                              pattern=r"^https?://[^\s/]+(/.*)?$")
    experiment: str = Field(default="kubetune", min_length=1, max_length=500,
                            description="Experiment name (created when missing). Default: kubetune.")
    secret_ref: MlflowSecretRef | None = Field(default=None, description="Credentials for the server, if it needs them.")


class TrackingSpec(ApiModel):
    """Experiment tracking. Off unless configured; a tracker that cannot be reached never fails training
    (the Tracked condition says what happened)."""

    mlflow: MlflowSpec | None = Field(default=None, description="Log the run to an MLflow tracking server.")


class Toleration(ApiModel):
    """A Kubernetes toleration for the trainer pod."""

    key: str | None = Field(default=None, description="Taint key; empty with operator Exists matches all taints.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal. Default: Equal.")
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE,
                              description="Taint value for operator Equal (a label value).")

    @field_validator("key", "value", mode="before")
    @classmethod
    def _label(cls, value: Any, info) -> Any:
        if value is None or value == "":
            return value
        problem = label_key_error(str(value)) if info.field_name == "key" else label_value_error(value)
        if problem:
            raise ValueError(problem)
        return value
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


# Pods of one multi-node gang: far beyond what a LoRA run needs, and small enough that every pod's name in run 1
# stays a DNS label (`<pod name>-<index>`; later runs: the operator's builders.gang_name_error).
MAX_NODES = 64


class ResourcesSpec(ApiModel):
    """Compute resources and placement of the trainer pod."""

    gpus: int = Field(default=1, ge=0, le=16, description="nvidia.com/gpu count; 0 trains on CPU. Default: 1.")
    nodes: int = Field(
        default=1, ge=1, le=MAX_NODES,
        description="Pods (one per node) that train together as one gang, each with `gpus` GPUs and one "
        "training process per GPU, joined by torchrun's c10d rendezvous; world size = nodes x gpus. Any pod "
        "failing ends the whole attempt. Default: 1 (one pod).",
    )
    gpu_product: str | None = Field(
        default=None, max_length=63, pattern=LABEL_VALUE,
        description="Required GPU model, matched against the node label nvidia.com/gpu.product, so it must "
        "be a label value, e.g. NVIDIA-A100-SXM4-80GB.",
    )
    cpu: str = Field(default="4", pattern=QUANTITY, description="CPU request and limit (Kubernetes quantity). Default: 4.")
    memory: str = Field(
        default="32Gi", pattern=QUANTITY, description="Memory request and limit (Kubernetes quantity). Default: 32Gi."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pod requires.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pod tolerates.")
    affinity: dict[str, Any] | None = Field(
        default=None, description="A Kubernetes Affinity object, copied to the pod unchanged."
    )
    priority_class_name: str | None = Field(
        default=None, pattern=DNS1123_SUBDOMAIN, description="PriorityClass of the pod."
    )

    @field_validator("gpu_product", mode="before")
    @classmethod
    def _gpu_product(cls, value: Any) -> Any:
        problem = None if value is None else label_value_error(value)
        if problem:
            raise ValueError(f"{problem} (it is matched against the node label nvidia.com/gpu.product), "
                             "e.g. NVIDIA-A100-SXM4-80GB")
        return value

    @field_validator("node_selector", mode="before")
    @classmethod
    def _node_selector(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key, label in value.items():
                problem = label_key_error(str(key)) or label_value_error(label)
                if problem:
                    raise ValueError(f"entry {key!r}: {problem}")
        return value


class CheckpointSpec(ApiModel):
    """Checkpoints written under the job's output prefix; retries resume from the newest."""

    every_steps: int = Field(default=100, ge=1, description="Save a checkpoint every N optimizer steps. Default: 100.")
    keep: int = Field(default=2, ge=1, le=100, description="Checkpoints kept; older ones are deleted. Default: 2.")


class FailurePolicy(ApiModel):
    """Retries of transient failures (preemption, OOM, node loss). Invalid specs and data are never retried."""

    max_retries: int = Field(default=2, ge=0, le=20, description="Retries after the first attempt. Default: 2.")
    backoff_seconds: int = Field(
        default=30, ge=0, le=3600, description="Wait before a retry, doubled each time. Default: 30."
    )


class FineTuneJobSpec(ApiModel):
    """A LoRA/QLoRA fine-tuning run: base model + instruction data -> evaluated adapter in object storage."""

    model: ModelSpec = Field(description="The base model.")
    dataset: DatasetSpec = Field(description="Instruction data.")
    output: OutputSpec = Field(description="Where artefacts are written.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="LoRA or QLoRA and the adapter shape.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation settings.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Held-out evaluation.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Object storage settings for s3:// URIs.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking (MLflow); off by default.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute and placement.")
    image: str | None = Field(
        default=None, min_length=1, description="Trainer image; the operator's default when unset."
    )
    runtime_ref: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS1123_SUBDOMAIN,
        description="Name of a ClusterFineTuneRuntime whose image, method, training and resources settings "
        "this job inherits; fields set on the job override the runtime's.",
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Retries of transient failures.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job (DeadlineExceeded) when it has run this long."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0,
        description="Delete the job's pods and ConfigMaps this long after it finishes; the FineTuneJob and its "
        "status are kept.",
    )
    suspend: bool = Field(
        default=False, description="Stop the running pod and hold; set back to false to resume from a checkpoint."
    )

    @model_validator(mode="after")
    def _rules(self) -> FineTuneJobSpec:
        if self.storage.s3.secret_ref is not None and not self._uses_s3():
            raise ValueError("storage.s3.secretRef is set but no model, dataset or output uri uses s3://")
        problems = overlap_errors(self.uris())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _uses_s3(self) -> bool:
        return any(u.startswith("s3://") for u in self.uris().values())

    def uris(self) -> dict[str, str]:
        """Every URI of the spec by its field path, e.g. {"spec.model.uri": "s3://..."}."""
        uris = {"spec.model.uri": self.model.uri, "spec.dataset.train.uri": self.dataset.train.uri}
        if self.dataset.eval:
            uris["spec.dataset.eval.uri"] = self.dataset.eval.uri
        if self.evaluation.regression:
            uris["spec.evaluation.regression.uri"] = self.evaluation.regression.uri
        uris["spec.output.uri"] = self.output.uri
        return uris

    def local_errors(self) -> list[str]:
        """Rules for `kubetune run` (one machine, no operator): what only a cluster can do. One line per
        problem, starting with the field path."""
        if self.resources.nodes > 1:
            return [f"spec.resources.nodes: {self.resources.nodes} pods need a cluster (the operator builds the "
                    "gang); `kubetune run` trains on this machine only: use nodes 1 here, or apply the manifest "
                    "with kubectl"]
        return []

    def in_cluster_errors(self) -> list[str]:
        """Rules for a job run by the operator rather than `kubetune run`: a path relative to the manifest
        file means nothing in a pod. One line per problem, starting with the field path."""
        return [
            f"{path}: {uri!r} is relative to a manifest file, which only local runs have; in a cluster use "
            "s3://bucket/prefix, hf://org/name, bundled://name or an absolute path on a mounted volume"
            for path, uri in self.uris().items()
            if uri.startswith(LOCAL_ONLY_PREFIXES)
        ]


def _location(uri: str) -> tuple[str, tuple[str, ...]] | None:
    """(store, path parts) of a URI an overlap can happen in; None for hub and bundled models."""
    if uri.startswith(("hf://", "bundled://")):
        return None
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return "s3", (bucket, *(p for p in key.split("/") if p))
    path = posixpath.normpath(uri.removeprefix("file://"))
    return ("local" if path.startswith("/") else "relative"), tuple(p for p in path.split("/") if p and p != ".")


def overlap_errors(uris: dict[str, str], resolve: Callable[[str], str] = lambda uri: uri) -> list[str]:
    """Outputs among inputs: spec.output.uri equal to or inside an input's location (artefacts would be
    written among the data or the model, and read back as data by the next run), or an input inside the
    output prefix (a run's artefacts and checkpoint clean-up would share its prefix). `uris` is
    FineTuneJobSpec.uris(); `resolve` maps relative paths to absolute ones where a manifest folder is known."""
    out_uri = uris["spec.output.uri"]
    out = _location(resolve(out_uri))
    problems = []
    for path, uri in uris.items():
        where = _location(resolve(uri))
        if path == "spec.output.uri" or out is None or where is None or where[0] != out[0]:
            continue
        if out[1][: len(where[1])] == where[1]:
            problems.append(f"spec.output.uri {out_uri!r} is the same as or inside {path} {uri!r}: artefacts "
                            "would be written among the inputs; use an output location outside every input")
        elif where[1][: len(out[1])] == out[1]:
            problems.append(f"{path} {uri!r} is inside spec.output.uri {out_uri!r}: inputs must not live "
                            "under the output prefix, where runs write and delete; move the input or use "
                            "another output location")
    return problems
