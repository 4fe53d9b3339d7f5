"""Handing the adapter to a serving engine: its base named as the user named it, and a check of what vLLM
and SGLang refuse or silently misread. The check only reports; it never changes what was trained."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from kubetune_api.status import Reason

# vLLM's --max-lora-rank accepts these values (vllm/config/lora.py); an adapter of rank r needs one >= r.
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Leaves of a transformer block's attention and MLP linear layers, across the families vLLM serves LoRA for
# (Llama/Mistral/Qwen, Phi, GPT-NeoX, Falcon, GPT-2, Gemma, ...).
SERVED_LEAVES = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj",
    "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "c_attn", "c_proj", "c_fc", "fc1", "fc2",
    "out_proj", "wqkv", "wo", "w1", "w2", "w3", "Wqkv", "query", "key", "value",
})
NEVER_SERVED = frozenset({"embed_tokens", "lm_head", "wte", "wpe", "embed_out", "word_embeddings"})


def base_model_name(spec) -> str:
    """The base as the user named it: an hf:// model by its hub id, anything else by its URI."""
    uri = spec.uri
    return uri.removeprefix("hf://") if uri.startswith("hf://") else uri


def name_the_base(adapter_dir: Path, spec, revision: str | None) -> None:
    """adapter_config.json names the base as the user did (PEFT writes the trainer's local cache folder,
    which vLLM's filesystem resolver and llama.cpp's converter would then look for)."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = base_model_name(spec)
    config["revision"] = revision
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass
class ServingVerdict:
    """Whether vLLM/SGLang serve the adapter as trained; `problems` say what to change, `notes` what to know."""

    compatible: bool
    reason: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        if not self.compatible:
            return "not servable as trained by vLLM/SGLang: " + "; ".join(self.problems + self.notes)
        return "; ".join(["vLLM and SGLang serve this adapter as trained", *self.notes])

    def as_dict(self) -> dict:
        return {"compatible": self.compatible, "reason": self.reason, "message": self.message}


def serving_fields(serving: dict | None) -> dict:
    """The serving check as TrainerResult fields (none for runs stored before the check existed)."""
    if not serving:
        return {}
    return {"serving_compatible": serving["compatible"], "serving_reason": serving["reason"],
            "serving_message": serving["message"]}


def check_serving(adapter_dir: Path, max_lora_rank: int) -> ServingVerdict:
    """Read what was written (adapter_config.json and the weight names) and judge it."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    problems: list[tuple[str, str]] = []  # (reason, what to do)
    if config.get("modules_to_save"):
        problems.append((Reason.UNSUPPORTED_ADAPTER_FEATURE,
                         f"modules_to_save {config['modules_to_save']} saves whole modules beside the adapter, "
                         "which vLLM refuses and SGLang ignores"))
    if config.get("use_dora"):
        problems.append((Reason.UNSUPPORTED_ADAPTER_FEATURE, "DoRA (use_dora) is not served by vLLM or SGLang"))
    if config.get("bias", "none") != "none":
        problems.append((Reason.UNSUPPORTED_ADAPTER_FEATURE,
                         f"bias {config['bias']!r} trains bias terms that vLLM and SGLang drop; train with bias none"))
    leaves = sorted(adapted_modules(adapter_dir))
    outside = [m for m in leaves if m in NEVER_SERVED or m not in SERVED_LEAVES]
    if outside:
        problems.append((Reason.UNSUPPORTED_TARGET_MODULES,
                         f"target modules {outside} are not attention/MLP linear layers that vLLM and SGLang "
                         "apply LoRA to; set method.lora.targetModules to those (or all-linear)"))
    rank = max([int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())])
    if rank > max_lora_rank:
        needed = vllm_max_lora_rank(rank)
        flag = (f"start vLLM with --max-lora-rank {needed}" if needed
                else f"vLLM serves ranks up to {VLLM_MAX_LORA_RANKS[-1]}")
        problems.append((Reason.RANK_ABOVE_SERVING_LIMIT,
                         f"rank {rank} is above output.serving.maxLoraRank {max_lora_rank}: {flag} (and raise "
                         f"output.serving.maxLoraRank), or train with method.lora.r <= {max_lora_rank}"))
    notes = []
    if config.get("use_rslora"):
        notes.append(f"rsLoRA scaling (lora_alpha/sqrt(r) = {config['lora_alpha']}/sqrt({config['r']})): vLLM "
                     "applies it; an engine that assumes lora_alpha/r would scale the update wrongly")
    if not problems:
        return ServingVerdict(True, Reason.SERVABLE, notes=notes)
    return ServingVerdict(False, problems[0][0], [p for _, p in problems], notes)


def vllm_max_lora_rank(rank: int) -> int | None:
    """The smallest --max-lora-rank vLLM accepts that serves `rank` (None above vLLM's largest)."""
    return next((v for v in VLLM_MAX_LORA_RANKS if v >= rank), None)


def adapted_modules(adapter_dir: Path) -> set[str]:
    """Leaf names of the modules the adapter's weights modify (q_proj, embed_tokens, ...)."""
    from safetensors import safe_open

    names = set()
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            match = re.search(r"([^.]+)\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\b", key)
            if match:
                names.add(match.group(1))
    return names
