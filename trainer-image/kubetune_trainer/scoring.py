"""The evaluation stage of a run: held-out loss and generation metrics of the tuned model (and of the base
model, the adapter switched off), the sample predictions, and the gate and regression verdicts.

The base model's passes run first, then the tuned generations with the adapter merged into the base weights
(evaluation.adapter_merged), which leaves float rounding in those weights when it is taken out again."""

from __future__ import annotations

from .evaluation import adapter_merged, base_model_context, generate, mean_loss
from .metrics import gate_verdict, generation_scores, loss_scores, regression_verdict


def score_held_out(recipe, batch: int) -> tuple[dict, list[dict]]:
    """(results, predictions) for a trained recipe: {"tuned", "base", "gate", "regression", "gatePassed",
    "gateMessage"} and one {"prompt", "reference", "base", "tuned"} per scored example."""
    ev = recipe.spec.evaluation
    tuned = loss_scores(_loss(recipe, batch), ev.metrics)
    recipe.log.append({"event": "eval", "step": recipe.best_step, **tuned})
    samples = recipe.eval_set[: ev.max_samples]
    refs = [recipe.formatter.reference(e) for e in samples]
    regression = recipe.regression  # [] unless evaluation.regression is set
    base, base_out, base_reg = {}, [None] * len(samples), []
    if ev.compare_base or regression:
        with base_model_context(recipe.model):
            if ev.compare_base:
                base = loss_scores(_loss(recipe, batch), ev.metrics)
                base_out = _generate(recipe, samples, batch)
                base.update(generation_scores(base_out, refs, ev.metrics))
            base_reg = _generate(recipe, regression, batch) if regression else []
    with adapter_merged(recipe.model, merges_for_generation(recipe)):
        tuned_out = _generate(recipe, samples, batch)
        tuned_reg = _generate(recipe, regression, batch) if regression else []
    tuned.update(generation_scores(tuned_out, refs, ev.metrics))
    predictions = [{"prompt": e.user_text, "reference": r, "base": b, "tuned": t}
                   for e, r, b, t in zip(samples, refs, base_out, tuned_out, strict=True)]
    return {"tuned": tuned, "base": base, **_verdicts(recipe, tuned, base_reg, tuned_reg)}, predictions


def merges_for_generation(recipe) -> bool:
    """Whether the tuned generations run with the adapter merged (Levers.merged_generation): not into a
    4-bit base (QLoRA: the merge re-quantizes, so the merged model is not the tuned one), nor into FSDP's
    sharded weights."""
    return recipe.levers.merged_generation and recipe.spec.method.type != "qlora" and not recipe.dist.sharded


def _loss(recipe, batch: int) -> float:
    return mean_loss(recipe.model, recipe.eval_encoded, recipe.tokenizer.pad_token_id, batch, recipe.device,
                     recipe.dist, **recipe.loss_options)


def _generate(recipe, examples: list, batch: int) -> list[str]:
    return generate(recipe.model, recipe.formatter, examples, recipe.spec.evaluation.generation, batch,
                    recipe.device, dist=recipe.dist)


def _verdicts(recipe, tuned: dict, base_reg: list[str], tuned_reg: list[str]) -> dict:
    ev = recipe.spec.evaluation
    out: dict = {"gate": None, "regression": None}
    if ev.gate is not None:
        ok, message = gate_verdict(ev.gate, tuned)
        out["gate"] = {"passed": ok, "message": message}
    if ev.regression is not None:
        refs = [recipe.formatter.reference(e) for e in recipe.regression]
        wanted = [ev.regression.metric]
        base_scores = generation_scores(base_reg, refs, wanted)
        tuned_scores = generation_scores(tuned_reg, refs, wanted)
        ok, message = regression_verdict(ev.regression, base_scores, tuned_scores)
        out["regression"] = {"passed": ok, "message": message, "base": base_scores, "tuned": tuned_scores}
    checks = [v for v in out.values() if v is not None]
    out["gatePassed"] = all(c["passed"] for c in checks) if checks else None
    out["gateMessage"] = "; ".join(c["message"] for c in checks) or None
    return out
