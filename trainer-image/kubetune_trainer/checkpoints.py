"""Checkpoints under `{artifact_root}checkpoints/step-N/`: the adapter's trainable weights, optimizer and
scheduler state, RNG state and the training log so far. A checkpoint counts only once its COMPLETE marker
is written (after every other file), so one cut short by a kill is never resumed from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .storage import ArtifactStore

PREFIX = "checkpoints"
MARKER = "COMPLETE"


def _step_of(name: str) -> int | None:
    number = name.removeprefix("step-")
    return int(number) if name.startswith("step-") and number.isdigit() else None


class Checkpoints:
    def __init__(self, store: ArtifactStore, every_steps: int, keep: int, scratch: Path):
        self.store, self.every_steps, self.keep, self.scratch = store, every_steps, keep, scratch

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.every_steps == 0 and step < total_steps

    def _steps(self) -> list[tuple[int, bool]]:
        """(step, complete) for every checkpoint folder, oldest first."""
        found = []
        for name in self.store.list_dirs(PREFIX):
            step = _step_of(name)
            if step is not None:
                found.append((step, self.store.exists(f"{PREFIX}/{name}/{MARKER}")))
        return sorted(found)

    def latest(self) -> int | None:
        complete = [step for step, ok in self._steps() if ok]
        return complete[-1] if complete else None

    def state(self, step: int) -> dict:
        """The training state a checkpoint was saved with (its state.json), without downloading the rest."""
        return json.loads(self.store.read_text(f"{PREFIX}/step-{step}/state.json"))

    def save(self, step: int, trainable: dict, optimizer_state: dict, scheduler, state: dict,
             best: dict | None = None) -> str:
        """`trainable` and `optimizer_state` hold whole tensors keyed by parameter name (distributed.py), so
        any number of processes, sharded or not, can resume from them. `best`: the adapter early stopping
        keeps (early_stopping.py), when there is one."""
        import torch

        local = self.scratch / f"step-{step}"
        shutil.rmtree(local, ignore_errors=True)
        local.mkdir(parents=True)
        torch.save(trainable, local / "adapter.pt")
        torch.save(optimizer_state, local / "optimizer.pt")
        torch.save(scheduler.state_dict(), local / "scheduler.pt")
        torch.save(_rng_state(), local / "rng.pt")
        if best is not None:
            torch.save(best, local / "best.pt")
        (local / "state.json").write_text(json.dumps({**state, "step": step}))
        uri = self.store.put_tree(f"{PREFIX}/step-{step}", local)
        self.store.write_text(f"{PREFIX}/step-{step}/{MARKER}", f"{step}\n")
        shutil.rmtree(local, ignore_errors=True)
        self._prune()
        return uri

    def _prune(self) -> None:
        steps = self._steps()
        complete = [s for s, ok in steps if ok]
        keep = set(complete[-self.keep:])
        newest = complete[-1] if complete else -1
        for step, ok in steps:
            # Incomplete folders older than the newest complete one are leftovers of a killed attempt.
            if step not in keep and (ok or step < newest):
                self.store.delete_tree(f"{PREFIX}/step-{step}")

    def load(self, step: int, scheduler) -> tuple[dict, dict, dict]:
        """(trainable tensors, optimizer state, state.json) of a checkpoint; the scheduler and the RNGs are
        restored here, the tensors by the caller (distributed.ProcessGroup.load_state). The best adapter
        early stopping kept, if saved, is in the state as "bestAdapter"."""
        import torch

        local = self.store.get_tree(f"{PREFIX}/step-{step}", self.scratch / f"resume-{step}")
        trainable = torch.load(local / "adapter.pt", map_location="cpu")
        optimizer_state = torch.load(local / "optimizer.pt", map_location="cpu")
        scheduler.load_state_dict(torch.load(local / "scheduler.pt", map_location="cpu"))
        _set_rng_state(torch.load(local / "rng.pt", map_location="cpu", weights_only=False))
        state = json.loads((local / "state.json").read_text())
        if (local / "best.pt").exists():
            state["bestAdapter"] = torch.load(local / "best.pt", map_location="cpu")
        return trainable, optimizer_state, state


def _rng_state() -> dict:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
