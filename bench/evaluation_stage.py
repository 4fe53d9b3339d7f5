"""The evaluation stage after training (issue 15, item 3): the tuned generations with the adapter merged
into the base weights against the adapter run apart (PEFT's default, and this stage before), in one process.

    .venv/bin/python bench/evaluation_stage.py                       # sku, 27 training steps
    .venv/bin/python bench/evaluation_stage.py --task support --steps 44 --json out.json

The task's minimal manifest (bench/time_to_quality.py's: SmolLM2-135M-Instruct, fp32 on CPU, every knob at
its default) trains a fixed number of steps through LoRARecipe. Then the recipe's evaluation stage
(scoring.score_held_out: held-out loss, greedy generation of every held-out answer by the base model and by
the tuned model, the default maxNewTokens) runs `--repeats` times each way, alternating: `apart`
(Levers.merged_generation off) and `merged` (the default). Prints each arm's fastest wall and CPU seconds,
the ratio, and whether every score and every prediction is the same both ways.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import time_to_quality as ttq  # noqa: E402


def trained_recipe(task: str, steps: int, work: Path):
    from kubetune_api.job import parse_job
    from kubetune_trainer.recipe import LoRARecipe

    manifest = ttq.minimal_manifest(ttq.TASKS[task], work / "out")
    manifest["spec"]["training"] = {"maxSteps": steps}
    recipe = LoRARecipe(parse_job(manifest), work_dir=str(work))
    recipe.setup()
    recipe.train()
    return recipe


def timed_stage(recipe, merged: bool) -> dict:
    from kubetune_trainer.scoring import score_held_out

    recipe.levers = dataclasses.replace(recipe.levers, merged_generation=merged)
    wall, cpu = time.monotonic(), time.process_time()
    results, predictions = score_held_out(recipe, recipe._eval_batch())
    return {"seconds": time.monotonic() - wall, "cpu_seconds": time.process_time() - cpu,
            "tuned": results["tuned"], "base": results["base"], "predictions": predictions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=ttq.TASKS, default="sku")
    parser.add_argument("--steps", type=int, default=27, help="training steps before the stage (default 27)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; {os.cpu_count()} CPUs; "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.task}, {args.steps} steps", flush=True)
    with tempfile.TemporaryDirectory(prefix="evalstage-") as tmp:
        recipe = trained_recipe(args.task, args.steps, Path(tmp))
        runs: dict[str, list[dict]] = {"apart": [], "merged": []}
        for _ in range(args.repeats):
            for arm in runs:
                runs[arm].append(timed_stage(recipe, merged=arm == "merged"))
                print(f"  {arm}: {runs[arm][-1]['seconds']:.1f} s", flush=True)
        recipe.cleanup()
    report(args, runs)


def report(args, runs: dict[str, list[dict]]) -> None:
    best = {arm: min(r, key=lambda x: x["seconds"]) for arm, r in runs.items()}
    every = [r for rs in runs.values() for r in rs]
    same_predictions = all(r["predictions"] == every[0]["predictions"] for r in every)
    same_tuned = all(r["tuned"] == every[0]["tuned"] for r in every)
    print(f"\n| arm | wall s | CPU s | tuned {ttq.TASKS[args.task]['metric']} |")
    print("|---|---|---|---|")
    for arm, r in best.items():
        print(f"| {arm} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['tuned'].get(ttq.TASKS[args.task]['metric'])} |")
    ratio = best["merged"]["seconds"] / best["apart"]["seconds"]
    print(f"\nmerged / apart: {ratio:.2f} (fastest of {args.repeats} each); same tuned scores in every run: "
          f"{same_tuned}; same predictions (base and tuned) in every run: {same_predictions}")
    if args.json:
        Path(args.json).write_text(json.dumps({"task": args.task, "steps": args.steps, "ratio": ratio,
                                               "same_predictions": same_predictions, "same_tuned": same_tuned,
                                               "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
