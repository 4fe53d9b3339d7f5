"""Writing a finished run's artefacts below its root, `_SUCCESS` last; and reading them back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kubetune_api.dataversion import data_version

from .claims import OutputClaim
from .early_stopping import stop_summary
from .handoff import check_serving, name_the_base
from .lineage import lineage_document, resolved_revision
from .modelcard import model_card
from .models import library_versions
from .report import loss_curve, render

SUCCESS = "_SUCCESS"


def _dumps(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"


def artifact_uris(store, merged: bool) -> dict[str, str]:
    uris = {
        "root": store.uri(), "adapter": store.uri("adapter/"), "report": store.uri("report.html"),
        "metrics": store.uri("metrics.json"), "predictions": store.uri("predictions.jsonl"),
        "lineage": store.uri("lineage.json"),
    }
    if merged:
        uris["merged"] = store.uri("merged/")
    return uris


def store_once(recipe) -> dict[str, str] | None:
    """write_artifacts under the output claim (claims.py); None when another run of this spec hash stored
    its artefacts first, which are then kept as they are."""
    job = recipe.job
    claim = OutputClaim(recipe.store, f"FineTuneJob {job.metadata.namespace}/{job.metadata.name}", success=SUCCESS)
    if not claim.acquire():
        return None
    try:
        artifacts = write_artifacts(recipe)
    except BaseException:
        _release_quietly(claim)  # another run waiting on this spec hash may write it instead
        raise
    claim.release()
    return artifacts


def _release_quietly(claim: OutputClaim) -> None:
    try:
        claim.release()
    except Exception as err:  # the store may be what failed; the claim then goes stale in an hour
        print(f"kubetune: could not release the output claim: {err}", file=sys.stderr)


def write_artifacts(recipe) -> dict[str, str]:
    """Everything a user needs to trust and load the adapter; returns the URIs by name."""
    store, out = recipe.store, recipe.work / "out"
    out.mkdir(parents=True, exist_ok=True)
    recipe.model.save_pretrained(out / "adapter", state_dict=recipe.adapter_state)  # whole tensors under FSDP
    recipe.tokenizer.save_pretrained(out / "adapter")
    lineage = _hand_off(recipe, out)
    store.put_tree("adapter", out / "adapter")
    if recipe.spec.output.merge_adapter:
        _merge(recipe, out / "adapter", out / "merged")
        store.put_tree("merged", out / "merged")
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in recipe.predictions))
    (out / "metrics.json").write_text(_dumps(metrics_document(recipe)))
    (out / "train-log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in recipe.log))
    (out / "config.json").write_text(_dumps(config_document(recipe)))
    (out / "data-manifest.json").write_text(_dumps(data_manifest(recipe)))
    (out / "lineage.json").write_text(_dumps(lineage))
    loss_curve(recipe.log, out / "loss-curve.png")
    render(report_context(recipe), out)
    for name in ("predictions.jsonl", "metrics.json", "train-log.jsonl", "config.json", "data-manifest.json",
                 "lineage.json", "loss-curve.png", "report.md", "report.html"):
        store.put_file(name, out / name)
    store.write_text(SUCCESS, "")
    return artifact_uris(store, recipe.spec.output.merge_adapter)


def _hand_off(recipe, out: Path) -> dict:
    """The adapter made ready for serving engines and registries: its base named as the user named it, the
    serving check (recipe.serving), a model card; returns the lineage document."""
    spec = recipe.spec
    revision = resolved_revision(spec.model, recipe.model_path)
    name_the_base(out / "adapter", spec.model, revision)
    recipe.serving = check_serving(out / "adapter", spec.output.serving.max_lora_rank).as_dict()
    lineage = lineage_document(recipe, recipe.weights.result(), revision)
    (out / "adapter" / "README.md").write_text(model_card(recipe, lineage, recipe.serving))
    return lineage


def _merge(recipe, adapter_dir: Path, target: Path) -> None:
    """The base model reloaded in full precision with the adapter merged in (also for QLoRA runs)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(recipe.model_path, dtype=recipe.dtype,
                                                trust_remote_code=recipe.spec.model.trust_remote_code)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(target)
    recipe.tokenizer.save_pretrained(target)


def metrics_document(recipe) -> dict:
    steps = [e for e in recipe.log if e.get("event") == "step"]
    return {
        **recipe.results,
        "training": {
            "steps": recipe.last_step, "plannedSteps": recipe.schedule.total_steps,
            "stopReason": recipe.stop_reason, "bestStep": recipe.best_step, "learningRate": recipe.learning_rate,
            "seconds": round(recipe.train_seconds, 1),
            "finalLoss": steps[-1]["loss"] if steps else None, "resumedFrom": recipe.resumed_from,
        },
        "data": {**vars(recipe.data_report), "tokens": recipe.token_stats},
        "serving": recipe.serving,
    }


def config_document(recipe) -> dict:
    job = recipe.job
    return {
        "apiVersion": job.api_version, "kind": job.kind,
        "metadata": {"name": job.metadata.name, "namespace": job.metadata.namespace},
        "spec": job.spec.model_dump(mode="json", by_alias=True),
        "specHash": job.spec_hash, "artifactRoot": recipe.store.uri(),
        "resolved": {"modelPath": str(recipe.model_path), "template": recipe.formatter.mode,
                     "device": recipe.device, "dtype": str(recipe.dtype).removeprefix("torch."),
                     "attention": getattr(recipe.model.config, "_attn_implementation", None),
                     "learningRate": recipe.learning_rate, "sharding": recipe.sharding},
        "versions": library_versions(),
    }


def data_manifest(recipe) -> dict:
    return {
        "inputs": recipe.inputs, "dataVersion": data_version(recipe.inputs), "schema": recipe.data_report.schema, "rowsRead": recipe.data_report.rows,
        "duplicatesRemoved": recipe.data_report.duplicates,
        "split": {"train": recipe.data_report.train, "eval": recipe.data_report.eval,
                  "evalSplit": recipe.spec.dataset.eval_split, "seed": recipe.spec.training.seed},
        "tokens": recipe.token_stats,
    }


def report_context(recipe) -> dict:
    checks = [v for v in (recipe.results.get("gate"), recipe.results.get("regression")) if v]
    return {
        "name": f"{recipe.job.metadata.namespace}/{recipe.job.metadata.name}", "model": recipe.spec.model.uri,
        "method": f"{recipe.spec.method.type.upper()} r {recipe.spec.method.lora.r} at learning rate {recipe.learning_rate:.2g}", "spec_hash": recipe.job.spec_hash,
        "data": vars(recipe.data_report), "steps": recipe.last_step, "stop": stop_summary(recipe),
        "gate_first_reached": recipe.results.get("gateFirstReached"),
        "train_seconds": round(recipe.train_seconds, 1), "base": recipe.results["base"],
        "tuned": recipe.results["tuned"], "verdicts": [{"ok": c["passed"], "message": c["message"]} for c in checks],
        "tokens": recipe.token_stats, "max_seq": recipe.spec.dataset.max_seq_length,
        "samples": recipe.predictions[:20],
    }


def read_completed(store) -> dict:
    """metrics.json of a finished run (empty when unreadable)."""
    try:
        return json.loads(store.read_text("metrics.json"))
    except (OSError, ValueError):
        return {}
