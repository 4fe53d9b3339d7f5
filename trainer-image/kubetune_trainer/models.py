"""Base models: where the weights come from, how they load (full precision or 4-bit), and the adapter."""

from __future__ import annotations

import math
import os
import socket
import sys
from pathlib import Path
from urllib.parse import urlparse

from .bundled import bundled_model, cache_root
from .errors import AccessDenied, ConfigError, NotFound, Transient
from .preflight import check_weights
from .storage import Storage


def fetch_model(spec, storage: Storage) -> Path:
    """A local Hugging Face folder for `model.uri` (downloaded or converted into the cache when needed)."""
    uri = spec.uri
    if uri.startswith("bundled://"):
        return bundled_model(uri)
    if uri.startswith("hf://"):
        path = _fetch_hub(spec)
        check_weights([str(p) for p in path.rglob("*") if p.is_file()], uri, spec.allow_pickle_weights)
        return path
    where = storage.resolve(uri)
    if where.startswith("s3://"):
        bucket_key = where.removeprefix("s3://").rstrip("/")
        path = storage.fetch_tree(where.rstrip("/") + "/", cache_root() / "s3" / bucket_key)
    else:
        path = Path(where)
    if not (path / "config.json").exists():
        raise NotFound(f"model uri {uri!r}: no config.json in {path}; expected a Hugging Face model folder "
                       "(config.json, *.safetensors, tokenizer files)")
    check_weights([str(p) for p in path.rglob("*") if p.is_file()], uri, spec.allow_pickle_weights)
    return path


def _fetch_hub(spec) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = spec.uri.removeprefix("hf://")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urlparse(endpoint)
    try:
        socket.create_connection((host.hostname, host.port or 443), timeout=5).close()
    except OSError as err:
        raise Transient(f"model uri {spec.uri!r}: the Hugging Face hub ({endpoint}) is unreachable from here "
                        f"({err}); copy the model to S3 or a local folder and point model.uri there") from None
    try:
        return Path(snapshot_download(repo, revision=spec.revision, token=os.environ.get("HF_TOKEN") or None,
                                      cache_dir=str(cache_root() / "hf")))
    except GatedRepoError:
        raise AccessDenied(f"model uri {spec.uri!r} is gated: set model.secretRef to a Secret with an HF_TOKEN "
                           "that has accepted the model's terms") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise NotFound(f"model uri {spec.uri!r}" + (f" revision {spec.revision!r}" if spec.revision else "")
                       + " does not exist on the hub, or is private (set model.secretRef to a Secret with an "
                       "HF_TOKEN)") from None
    except HfHubHTTPError as err:
        raise Transient(f"model uri {spec.uri!r}: download from the hub failed: {err}") from None


def load_tokenizer(path: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def device_and_dtype(precision: str):
    """(device, torch dtype of the weights); auto means bf16 where the device multiplies bf16 natively
    (native_bf16), else fp32."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and available_cpus() < torch.get_num_threads():
        torch.set_num_threads(available_cpus())
    if precision == "auto":
        precision = "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("training.precision fp16 needs a GPU; use fp32, bf16 or auto on CPU")
    return device, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def native_bf16(device: str) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a GPU that supports bf16, or an x86 CPU with
    AVX512-BF16 or AMX (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later), where a bf16
    matrix multiply runs several times faster than fp32. Elsewhere bf16 is emulated and slower than fp32."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a pod's CPU limit).

    Torch starts one thread per core of the node; in a pod limited to 2 CPUs on a 64-core node those
    threads spend the quota spinning and waiting for each other."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2: "max 100000"
    except (OSError, ValueError):
        try:  # cgroup v1
            quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text().strip()
            period = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().strip()
        except OSError:
            return cpus
    if quota in ("max", "-1"):
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def load_model(path: Path, method, device: str, dtype, trust_remote_code: bool = False, allow_pickle: bool = False,
               sharded: bool = False):
    """The base model on `device`: full precision for LoRA, 4-bit bitsandbytes for QLoRA. A 4-bit base that
    FSDP will shard (`sharded`) packs its 4-bit values in the compute dtype instead of uint8, as bitsandbytes
    and PEFT's FSDP-QLoRA recipe require: FSDP then handles frozen 4-bit and trainable weights alike."""
    import torch
    from transformers import AutoModelForCausalLM

    # Safetensors only unless the spec allows pickles (checked by name in fetch_model; enforced here too).
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code, "use_safetensors": not allow_pickle or None}
    if method.type == "qlora":
        from transformers import BitsAndBytesConfig

        q = method.quantization
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
            bnb_4bit_quant_storage=getattr(torch, q.compute_dtype) if sharded else torch.uint8,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if method.type != "qlora":
        model.to(device)
    fix_bnb_cpu(model)
    return model


FP32_ATTENTION = "kubetune_sdpa_fp32"  # the name our attention function is registered under in transformers


def attention_in_fp32(model) -> bool:
    """Run a bf16 model's attention in fp32 on CPU: PyTorch's CPU flash attention is slower in bf16 than in
    fp32 at instruction data's lengths (forward and backward of 3 rows of 150 tokens: 11.7 ms against 6.9 ms
    on a Zen 5 core), so a bf16 training step of SmolLM2-135M takes 0.89x the CPU time this way; the
    attention is computed more precisely, not less. Only for a model on transformers' SDPA attention (not
    remote code, not eager); returns whether it was switched."""
    from transformers import AttentionInterface

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(FP32_ATTENTION, _sdpa_in_fp32)
    model.set_attn_implementation(FP32_ATTENTION)
    return True


def _sdpa_in_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on fp32 copies of its inputs (autocast off, which would cast them back),
    its output in the queries' dtype."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(query.dtype), weights


def fix_bnb_cpu(model) -> int:
    """bitsandbytes on CPUs with AVX512-BF16 repacks 4-bit weights during an eval-mode forward, after which
    backward passes are silently wrong; turning the repack off on every Linear4bit prevents it."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for layer in layers:
        layer.support_avx512bf16_for_cpu = False
    return len(layers)


def attach_adapter(model, method, gradient_checkpointing: bool, cheap_dropout: bool = False,
                   fused_branch: bool = False, fused_norm: bool = False):
    """Wrap the base in a PEFT LoRA model; only the adapter's weights are trainable. `cheap_dropout`: the
    adapter's dropout masks come from dropout.swap_dropouts; `fused_branch`: the adapter branch of each
    LoRA linear layer runs as lora_branch.fuse_branches makes it; `fused_norm`: the frozen RMSNorm layers run
    as norms.fuse_norms makes them (all three for CPUs, where they cost less)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = method.lora
    targets = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout_rate, target_modules=targets,
                        task_type="CAUSAL_LM", bias="none")
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:
        raise ConfigError(f"method.lora.targetModules {lora.target_modules}: {err}") from None
    if cheap_dropout:
        from .dropout import swap_dropouts

        swap_dropouts(peft_model)
    if fused_branch:
        from .lora_branch import fuse_branches

        fuse_branches(peft_model)
    if fused_norm:
        from .norms import fuse_norms

        fuse_norms(peft_model)
    fix_bnb_cpu(peft_model)
    return peft_model


def hidden_size(model) -> int | None:
    """The base model's width from its config (a multimodal model's text config), when it gives one."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    size = getattr(config, "hidden_size", None)
    return size if isinstance(size, int) else None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "boto3"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def import_training_libraries() -> None:
    """Import what loading and training need (seconds of CPU), e.g. while a download runs."""
    import peft  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
