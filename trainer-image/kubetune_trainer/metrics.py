"""Scoring generations against references, and the gate and regression verdicts. Pure functions.

ROUGE-1/2/L are rouge-score F-measures (0-1), exact match is the fraction equal after collapsing
whitespace (0-1), BLEU and chrF are sacrebleu corpus scores on sacrebleu's usual 0-100 scale. BLEU uses
effective order, so short answers without 4-grams (codes, labels) still score; for longer text it is the
standard corpus BLEU.
"""

from __future__ import annotations

import math

from kubetune_api.spec import LOWER_IS_BETTER


def normalise(text: str) -> str:
    return " ".join(text.split())


def generation_scores(predictions: list[str], references: list[str], wanted: list[str]) -> dict[str, float]:
    scores: dict[str, float] = {}
    if not predictions:
        return scores
    rouge = [m for m in ("rouge1", "rouge2", "rougeL") if m in wanted]
    if rouge:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(rouge, use_stemmer=False)
        totals = dict.fromkeys(rouge, 0.0)
        for pred, ref in zip(predictions, references, strict=True):
            for name, score in scorer.score(ref, pred).items():
                totals[name] += score.fmeasure
        scores.update({name: round(total / len(predictions), 4) for name, total in totals.items()})
    if "exactMatch" in wanted:
        hits = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True))
        scores["exactMatch"] = round(hits / len(predictions), 4)
    if "bleu" in wanted or "chrf" in wanted:
        import sacrebleu

        if "bleu" in wanted:
            bleu = sacrebleu.BLEU(effective_order=True)
            scores["bleu"] = round(bleu.corpus_score(predictions, [references]).score, 2)
        if "chrf" in wanted:
            scores["chrf"] = round(sacrebleu.corpus_chrf(predictions, [references]).score, 2)
    return scores


def loss_scores(mean_loss: float, wanted: list[str]) -> dict[str, float]:
    scores = {}
    if "evalLoss" in wanted:
        scores["evalLoss"] = round(mean_loss, 4)
    if "perplexity" in wanted:
        scores["perplexity"] = round(math.exp(min(mean_loss, 50.0)), 4)
    return scores


def gate_verdict(gate, metrics: dict[str, float]) -> tuple[bool, str]:
    value = metrics.get(gate.metric)
    if value is None:
        return False, f"gate: {gate.metric} was not computed"
    if gate.metric in LOWER_IS_BETTER or gate.max is not None:
        ok = value <= gate.max
        return ok, f"gate {gate.metric} {value:g} {'<=' if ok else '>'} max {gate.max:g}"
    ok = value >= gate.min
    return ok, f"gate {gate.metric} {value:g} {'>=' if ok else '<'} min {gate.min:g}"


def regression_verdict(spec, base: dict[str, float], tuned: dict[str, float]) -> tuple[bool, str]:
    drop = base.get(spec.metric, 0.0) - tuned.get(spec.metric, 0.0)
    scale = 100.0 if spec.metric in ("bleu", "chrf") else 1.0
    ok = drop <= spec.max_drop * scale
    return ok, (f"regression {spec.metric}: base {base.get(spec.metric, 0):g}, tuned {tuned.get(spec.metric, 0):g} "
                f"(drop {drop:g}, allowed {spec.max_drop * scale:g})")
