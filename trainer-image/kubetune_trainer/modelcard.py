"""The adapter's README.md: a Hugging Face model card (metadata the hub, vLLM users and registries read),
a short summary, the held-out results base vs tuned, the gate, and how to load it."""

from __future__ import annotations

import yaml

from kubetune_api.spec import METRICS

from .handoff import VLLM_MAX_LORA_RANKS, base_model_name, vllm_max_lora_rank

# How each of our metrics is named in model-index (Papers with Code / hub conventions).
METRIC_TYPES = {"evalLoss": "loss", "perplexity": "perplexity", "rouge1": "rouge", "rouge2": "rouge",
                "rougeL": "rouge", "exactMatch": "exact_match", "bleu": "bleu", "chrf": "chrf"}


def model_card(recipe, lineage: dict, serving: dict) -> str:
    spec, job = recipe.spec, recipe.job
    base = base_model_name(spec.model)
    tuned, base_scores = recipe.results["tuned"], recipe.results["base"]
    datasets = sorted({f["uri"] for files in recipe.inputs.values() for f in files})
    metadata = {
        "base_model": base,
        "library_name": "peft",
        "pipeline_tag": "text-generation",
        "tags": ["kubetune", "lora" if spec.method.type == "lora" else "qlora", "peft"],
        "datasets": datasets,
        "model-index": [{
            "name": job.metadata.name,
            "results": [{
                "task": {"type": "text-generation"},
                "dataset": {"name": "held-out split", "type": datasets[0] if datasets else "unknown",
                            "split": "eval"},
                "metrics": [{"type": METRIC_TYPES.get(m, m), "name": f"{m} (tuned)", "value": tuned[m]}
                            for m in METRICS if m in tuned]
                + [{"type": METRIC_TYPES.get(m, m), "name": f"{m} (base)", "value": base_scores[m]}
                   for m in METRICS if m in base_scores],
            }],
        }],
    }
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\n" + _body(recipe, lineage, serving, base)


def _body(recipe, lineage: dict, serving: dict, base: str) -> str:
    spec, job = recipe.spec, recipe.job
    lora = spec.method.lora
    tuned, base_scores = recipe.results["tuned"], recipe.results["base"]
    rows = [f"| {m} | {_fmt(base_scores.get(m))} | {_fmt(tuned[m])} |" for m in METRICS if m in tuned]
    gate = recipe.results.get("gateMessage") or "no evaluation gate was set"
    verdict = {True: "passed", False: "failed", None: "not set"}[recipe.results.get("gatePassed")]
    name = job.metadata.name
    return "\n".join([
        f"# {name}",
        "",
        f"A {spec.method.type.upper()} adapter (rank {lora.r}, alpha {lora.alpha}, targets "
        f"{', '.join(lora.target_modules)}) for `{base}`, trained by kubetune {lineage['trainer']['version']} "
        f"on {recipe.data_report.train} examples for {recipe.last_step} steps (adapter of step {recipe.best_step}, "
        f"{recipe.stop_reason}) and evaluated on "
        f"{recipe.data_report.eval} held-out examples. Spec hash `{job.spec_hash}`; every input, the base's "
        "weight digest and the trainer image are in `lineage.json` next to this folder.",
        "",
        "## Held-out results", "", "| metric | base | tuned |", "| --- | ---: | ---: |", *rows, "",
        f"Gate: {verdict} ({gate}).", "",
        "## Serving", "", f"ServingCompatible: {serving['compatible']} ({serving['reason']}): {serving['message']}.",
        "",
        "## Load it", "",
        "With PEFT:", "", "```python", "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'base = AutoModelForCausalLM.from_pretrained("{_local(base)}")',
        'model = PeftModel.from_pretrained(base, "path/to/adapter")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/adapter")', "```", "",
        "With vLLM (OpenAI-compatible server; the adapter is the model name `" + name + "`):", "", "```bash",
        f"vllm serve {_local(base)} --enable-lora --max-lora-rank "
        f"{vllm_max_lora_rank(lora.r) or VLLM_MAX_LORA_RANKS[-1]} --lora-modules {name}=path/to/adapter", "```", "",
        "See docs/serving.md in the kubetune repository for KServe and vLLM-on-Kubernetes forms.", "",
    ])


def _local(base: str) -> str:
    return base if "://" not in base else "path/to/base-model"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"
