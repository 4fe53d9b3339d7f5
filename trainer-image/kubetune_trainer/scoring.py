"""The evaluation stage of a run: held-out loss and generation metrics of the tuned model (and of the base
model, the adapter switched off), the sample predictions, and the gate and regression verdicts."""

from __future__ import annotations

from .evaluation import base_model_context, generate, mean_loss
from .metrics import gate_verdict, generation_scores, loss_scores, regression_verdict


def score_held_out(recipe, batch: int) -> tuple[dict, list[dict]]:
    """(results, predictions) for a trained recipe: {"tuned", "base", "gate", "regression", "gatePassed",
    "gateMessage"} and one {"prompt", "reference", "base", "tuned"} per scored example."""
    ev = recipe.spec.evaluation
    tuned = loss_scores(_tuned_loss(recipe, batch), ev.metrics)
    recipe.log.append({"event": "eval", "step": recipe.best_step, **tuned})
    samples = recipe.eval_set[: ev.max_samples]
    refs = [recipe.formatter.reference(e) for e in samples]
    tuned_out = _generate(recipe, samples, batch)
    tuned.update(generation_scores(tuned_out, refs, ev.metrics))
    base, base_out = {}, [None] * len(samples)
    if ev.compare_base:
        with base_model_context(recipe.model):
            base = loss_scores(_loss(recipe, batch), ev.metrics)
            base_out = _generate(recipe, samples, batch)
        base.update(generation_scores(base_out, refs, ev.metrics))
    predictions = [{"prompt": e.user_text, "reference": r, "base": b, "tuned": t}
                   for e, r, b, t in zip(samples, refs, base_out, tuned_out, strict=True)]
    return {"tuned": tuned, "base": base, **_verdicts(recipe, tuned, batch)}, predictions


def _tuned_loss(recipe, batch: int) -> float:
    """The kept adapter's held-out loss: early stopping's when it watched every held-out example (it evaluated
    this very adapter, with the same batches), else computed now."""
    watch = recipe.watch
    if watch is not None and watch.best_step == recipe.best_step and len(watch.subset) == len(recipe.eval_encoded):
        return watch.best_loss
    return _loss(recipe, batch)


def _loss(recipe, batch: int) -> float:
    return mean_loss(recipe.model, recipe.eval_encoded, recipe.tokenizer.pad_token_id, batch, recipe.device,
                     recipe.dist, **recipe.loss_options)


def _generate(recipe, examples: list, batch: int) -> list[str]:
    return generate(recipe.model, recipe.formatter, examples, recipe.spec.evaluation.generation, batch,
                    recipe.device, dist=recipe.dist)


def _verdicts(recipe, tuned: dict, batch: int) -> dict:
    ev = recipe.spec.evaluation
    out: dict = {"gate": None, "regression": None}
    if ev.gate is not None:
        ok, message = gate_verdict(ev.gate, tuned)
        out["gate"] = {"passed": ok, "message": message}
    if ev.regression is not None:
        refs = [recipe.formatter.reference(e) for e in recipe.regression]
        wanted = [ev.regression.metric]
        tuned_reg = generation_scores(_generate(recipe, recipe.regression, batch), refs, wanted)
        with base_model_context(recipe.model):
            base_reg = generation_scores(_generate(recipe, recipe.regression, batch), refs, wanted)
        ok, message = regression_verdict(ev.regression, base_reg, tuned_reg)
        out["regression"] = {"passed": ok, "message": message, "base": base_reg, "tuned": tuned_reg}
    checks = [v for v in out.values() if v is not None]
    out["gatePassed"] = all(c["passed"] for c in checks) if checks else None
    out["gateMessage"] = "; ".join(c["message"] for c in checks) or None
    return out
