"""The `kubetune` command.

    kubetune run examples/smollm2-local.yaml    # a manifest, locally, with a progress bar and a summary
    kubetune train                             # in the trainer pod: the manifest at $KUBETUNE_CONFIG
    kubetune validate examples/smollm2-local.yaml  # check the spec and the data, load no weights
    kubetune data-version [MANIFEST]           # the data version of its data (a schedule's probe pod)
    kubetune estimate examples/smollm2-local.yaml  # peak GPU memory per component, and what would make it fit
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kubetune_api import __version__
from kubetune_api.job import FineTuneJob, SpecError, load_manifest
from kubetune_api.results import DEFAULT_CONFIG_PATH, TERMINATION_LOG, Env, ExitCode, TrainerResult


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune", description="LoRA/QLoRA fine-tuning of open LLMs.")
    parser.add_argument("--version", action="version", version=f"kubetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a FineTuneJob manifest on this machine")
    run.add_argument("manifest", help="path of a FineTuneJob YAML file")
    run.add_argument("--json", action="store_true", help="also print progress events as JSON lines on stdout")
    train = sub.add_parser("train", help="run the job in a trainer pod (reads $KUBETUNE_CONFIG)")
    train.add_argument("--config", default=None, help=f"manifest path (default ${Env.CONFIG} or {DEFAULT_CONFIG_PATH})")
    check = sub.add_parser("validate", help="check a manifest and its data without loading weights")
    check.add_argument("manifest")
    probe = sub.add_parser("data-version", help="print the data version of a manifest's data (listing only)")
    probe.add_argument("manifest", nargs="?", help=f"FineTuneJob YAML (default: the JSON in ${Env.MANIFEST})")
    est = sub.add_parser("estimate", help="estimate peak GPU memory per component and what would make it fit "
                                          "(reads the model's config.json, or spec.model.shape; no weights)")
    est.add_argument("manifest")
    est.add_argument("--gpu-product", help="a nvidia.com/gpu.product value (default: spec.resources.gpuProduct)")
    est.add_argument("--gpu-memory", type=float, metavar="GIB", help="one GPU's memory in GiB (overrides the table)")
    est.add_argument("--runtime", metavar="FILE", help="a ClusterFineTuneRuntime manifest for spec.runtimeRef (default: "
                                                       "one of that name in the job's own file)")
    est.add_argument("--answer-fraction", type=float, default=1.0, metavar="F",
                     help="share of a pass's tokens that are answer tokens (default 1.0, the worst case)")
    args = parser.parse_args(argv)
    if args.command == "data-version":
        return _data_version(args.manifest)
    _quiet_libraries()
    if args.command == "run":
        return _run_local(Path(args.manifest), args.json)
    if args.command == "validate":
        return _validate(Path(args.manifest))
    if args.command == "estimate":
        return _estimate(args)
    from .launch import launch, wanted

    if wanted():  # several GPUs: become torchrun's agent, one `kubetune train` worker per GPU
        return launch(["--config", args.config] if args.config else [],
                      os.environ.get(Env.TERMINATION_LOG) or TERMINATION_LOG)
    return _train(args.config or os.environ.get(Env.CONFIG) or DEFAULT_CONFIG_PATH)


def _data_version(path: str | None) -> int:
    """A FineTuneSchedule's probe: list the data (no download, no torch), print the data version and write
    it as the TrainerResult of the termination message. Failures are typed as the trainer's."""
    import json

    from kubetune_api.job import parse_job

    from .dataversion import probe
    from .runner import write_termination

    # In the probe pod (no manifest path) the result goes to the termination message; locally only if asked.
    termination = os.environ.get(Env.TERMINATION_LOG) or (None if path else TERMINATION_LOG)
    try:
        job = load_manifest(path) if path else parse_job(json.loads(os.environ.get(Env.MANIFEST) or "null"),
                                                         Env.MANIFEST)
    except (SpecError, OSError, ValueError) as err:
        print(f"kubetune: {err}", file=sys.stderr)
        write_termination(termination, TrainerResult(ok=False, reason=ExitCode.INVALID_CONFIG.reason, message=str(err)))
        return ExitCode.INVALID_CONFIG
    code, result = probe(job, Path(path).resolve().parent if path else None)
    print(result.data_version or result.message, file=sys.stdout if result.ok else sys.stderr)
    write_termination(termination, result)
    return code


def _load(path: Path, termination: str | None):
    from .runner import write_termination

    try:
        return load_manifest(path)
    except (SpecError, OSError) as err:
        message = str(err) if isinstance(err, SpecError) else f"cannot read the manifest {path}: {err}"
        print(f"kubetune: {message}", file=sys.stderr)
        write_termination(termination, TrainerResult(ok=False, reason=ExitCode.INVALID_CONFIG.reason, message=message))
        return None


def _train(config: str) -> int:
    from .distributed import ProcessGroup
    from .launch import worker_result_path
    from .progress import HttpSink, JsonLinesSink, ProgressReporter
    from .runner import run_job, write_termination
    from .stopping import GracefulStop

    group = ProcessGroup.from_env()  # one process, or one of torchrun's; only the writer reports
    termination = worker_result_path(group.rank) or (
        (os.environ.get(Env.TERMINATION_LOG) or TERMINATION_LOG) if group.is_writer else None)
    job = _load(Path(config), termination)
    if job is None:
        return ExitCode.INVALID_CONFIG
    _skip_unused_libraries(job)
    sinks = [JsonLinesSink(sys.stdout)] if group.is_writer else []
    if os.environ.get(Env.PROGRESS_URL) and group.is_writer:
        sinks.append(HttpSink(os.environ[Env.PROGRESS_URL], os.environ.get(Env.PROGRESS_TOKEN, ""),
                              job.metadata.namespace, job.metadata.name))
    print(f"kubetune: {job.metadata.namespace}/{job.metadata.name} attempt {os.environ.get(Env.ATTEMPT, '1')}, "
          f"spec hash {job.spec_hash}", file=sys.stderr)
    with GracefulStop().installed() as stop:
        code, result = run_job(job, reporter=ProgressReporter(sinks), work_dir=os.environ.get(Env.WORK_DIR), stop=stop,
                               dist=group)
    write_termination(termination, result)
    return int(code)


def _run_local(path: Path, json_lines: bool) -> int:
    from .progress import JsonLinesSink, ProgressReporter, TqdmSink
    from .report import console_table
    from .runner import run_job, write_termination

    termination = os.environ.get(Env.TERMINATION_LOG)
    job = _load(path, termination)
    if job is None:
        return ExitCode.INVALID_CONFIG
    if job.spec.local_errors():
        message = "; ".join(job.spec.local_errors())
        print(f"kubetune: {message}", file=sys.stderr)
        write_termination(termination, TrainerResult(ok=False, reason=ExitCode.INVALID_CONFIG.reason, message=message))
        return ExitCode.INVALID_CONFIG
    _skip_unused_libraries(job)
    sinks = [TqdmSink()] + ([JsonLinesSink(sys.stdout)] if json_lines else [])
    print(f"kubetune: running {path} ({job.spec.model.uri}, {job.spec.method.type}) -> spec hash {job.spec_hash}",
          file=sys.stderr)
    code, result = run_job(job, manifest_dir=path.resolve().parent, reporter=ProgressReporter(sinks),
                           work_dir=os.environ.get(Env.WORK_DIR))
    write_termination(termination, result)
    if not result.ok:
        print(f"\nFAILED ({result.reason}): {result.message}", file=sys.stderr)
        return int(code)
    print(f"\n{result.message}\n")
    print(console_table(result.base_metrics, result.metrics))
    if result.gate_message:
        print(f"\n{'PASSED' if result.gate_passed else 'FAILED'}: {result.gate_message}")
    print(f"\nreport:  {result.artifacts.get('report')}\nadapter: {result.artifacts.get('adapter')}")
    return int(code)


def _validate(path: Path) -> int:
    from .errors import TrainerError
    from .recipe import LoRARecipe

    job = _load(path, None)
    if job is None:
        return ExitCode.INVALID_CONFIG
    recipe = None
    try:
        recipe = LoRARecipe(job, manifest_dir=path.resolve().parent, work_dir=os.environ.get(Env.WORK_DIR))
        recipe.check_data()
    except TrainerError as err:
        print(f"kubetune: {err.code.reason}: {err.message}", file=sys.stderr)
        return int(err.code)
    finally:
        if recipe is not None:
            recipe.cleanup()
    r = recipe.data_report
    print(f"{path}: valid; {r.rows} rows ({r.schema}), {r.duplicates} duplicates, {r.train} train / {r.eval} eval")
    return 0


def _estimate(args) -> int:
    """Exit 0 when the job fits or the GPU's memory is unknown, InsufficientGPUMemory's code when it does not."""
    from .errors import TrainerError
    from .fitcheck import print_estimate, with_runtime

    path = Path(args.manifest)
    job = _load(path, None)
    if job is None:
        return ExitCode.INVALID_CONFIG
    if job.spec.runtime_ref:
        try:
            job = with_runtime(path, job, Path(args.runtime) if args.runtime else path)
        except (SpecError, OSError) as err:
            print(f"kubetune: {err}", file=sys.stderr)
            return ExitCode.INVALID_CONFIG
    if not 0 < args.answer_fraction <= 1:
        print(f"kubetune: --answer-fraction {args.answer_fraction} must be in (0, 1]", file=sys.stderr)
        return ExitCode.INVALID_CONFIG
    try:
        verdict = print_estimate(job, path.resolve().parent, args.gpu_product, args.gpu_memory, args.answer_fraction)
    except TrainerError as err:
        print(f"kubetune: {err.code.reason}: {err.message}", file=sys.stderr)
        return int(err.code)
    return int(ExitCode.INSUFFICIENT_GPU_MEMORY) if verdict.fits is False else 0


def _skip_unused_libraries(job: FineTuneJob) -> None:
    """A LoRA job never touches bitsandbytes, but peft imports it whenever it is installed (peft.helpers),
    and bitsandbytes' op registrations pull in torch._inductor: 1.0 s of every start-up (docs/performance.md).
    This process runs exactly one job, so for LoRA it is marked absent before anything imports it, which
    makes peft and transformers see it as not installed. QLoRA jobs import it as usual."""
    if job.spec.method.type == "lora" and "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # type: ignore[assignment]  # import raises ImportError; find_spec -> None


def _quiet_libraries() -> None:
    # Environment variables rather than transformers' logging API: importing transformers here would put
    # its import time before the model download starts instead of beside it (recipe.setup).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
