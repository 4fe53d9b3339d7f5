"""Early stopping: the mean held-out loss of a fixed subset every `evalSteps` optimizer steps; training stops
after `patience` evaluations in a row that did not beat the best by more than `minDelta`, and the adapter
of the best evaluation is the one saved. This is Hugging Face's EarlyStoppingCallback with
load_best_model_at_end and metric_for_best_model "eval_loss": the best is the lowest loss seen, the
patience counter only resets on an improvement larger than the threshold. One addition: once the best
loss is at most `minDelta`, no later evaluation can beat it by more (a loss is never negative), so the
counter could only run out; training stops there instead of `patience` evaluations later.

Pure bookkeeping: the recipe computes the loss and hands over a way to copy the adapter's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kubetune_api.spec import LOWER_IS_BETTER
from kubetune_api.status import StopReason

EVALS_PER_EPOCH = 4  # the default evalSteps: a quarter of an epoch


class EarlyStopping:
    def __init__(self, spec, steps_per_epoch: int, eval_encoded: list, gate=None):
        self.every = spec.eval_steps or max(1, round(steps_per_epoch / EVALS_PER_EPOCH))
        self.patience, self.min_delta = spec.patience, spec.min_delta
        # The first examples of the held-out set, which is already a seeded shuffle (or the user's eval file).
        self.subset = eval_encoded[: spec.eval_samples]
        self.gate = gate
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.bad = 0  # evaluations in a row without an improvement of more than min_delta
        self.gate_step: int | None = None
        self.best_state: dict | None = None  # the best step's trainable tensors, when not the current ones

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    @property
    def stop(self) -> bool:
        return self.bad >= self.patience or self.floored

    @property
    def floored(self) -> bool:
        """Whether the best loss is within minDelta of zero, where no improvement can count any more."""
        return self.min_delta > 0 and self.best_loss is not None and self.best_loss <= self.min_delta

    def record(self, step: int, loss: float, snapshot: Callable[[], dict]) -> dict:
        """Take the evaluation at `step`; `snapshot()` copies the adapter when this is the best so far.
        Returns the train-log event."""
        enough = self.best_loss is None or loss < self.best_loss - self.min_delta
        best = self.best_loss is None or loss < self.best_loss
        if best:
            self.best_loss, self.best_step, self.best_state = loss, step, snapshot()
        self.bad = 0 if enough else self.bad + 1
        if self.gate_step is None and self.gate is not None and _meets(self.gate, loss):
            self.gate_step = step
        return {"event": "eval", "step": step, "evalLoss": round(loss, 6), "subset": len(self.subset),
                "best": best, "sinceImprovement": self.bad}

    def gate_note(self) -> dict | None:
        """At which step the gate metric was first met during training, or why that is not known."""
        if self.gate is None:
            return None
        if self.gate.metric not in LOWER_IS_BETTER:
            return {"step": None, "message": f"{self.gate.metric} is scored by generation after training only "
                    "(generating at every evaluation would cost more than the training steps between them)"}
        if self.gate_step is None:
            return {"step": None, "message": f"{self.gate.metric} did not meet the gate at any evaluation during "
                    f"training (on {len(self.subset)} held-out examples)"}
        return {"step": self.gate_step, "message": f"{self.gate.metric} first met the gate at step {self.gate_step} "
                f"(on {len(self.subset)} held-out examples, evaluated every {self.every} steps)"}

    # ---- checkpoints ---------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"bestLoss": self.best_loss, "bestStep": self.best_step, "bad": self.bad, "gateStep": self.gate_step}

    def restore(self, state: dict, best_state: dict | None) -> None:
        self.best_loss, self.best_step = state.get("bestLoss"), state.get("bestStep")
        self.bad, self.gate_step = state.get("bad", 0), state.get("gateStep")
        self.best_state = best_state


def no_watch_note(gate) -> dict | None:
    """The gate note of a run without early stopping (nothing evaluated during training)."""
    if gate is None:
        return None
    return {"step": None, "message": "not measured: no evaluation during training (set training.earlyStopping "
            "to evaluate the held-out loss every evalSteps steps)"}


def stop_summary(recipe) -> str:
    """Why training stopped and which step's adapter was kept, in words (the result message, the report)."""
    reason, watch = recipe.stop_reason, recipe.watch
    if reason == StopReason.EARLY_STOPPED and watch.floored:
        reason += (f": held-out loss {watch.best_loss:.4g} within minDelta {watch.min_delta:g} of zero, "
                   "no later evaluation could improve on it by more")
    text = f"stopped after step {recipe.last_step} of {recipe.schedule.total_steps} ({reason})"
    return text + (f", adapter of step {recipe.best_step} kept (lowest held-out loss)"
                   if recipe.best_step != recipe.last_step else "")


def _meets(gate, loss: float) -> bool:
    value = math.exp(min(loss, 50.0)) if gate.metric == "perplexity" else loss
    return value <= gate.max
