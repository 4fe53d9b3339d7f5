"""The GPU-fit preflight from the model's own config.json: the trainer runs it before loading weights, and
`kubetune estimate` prints it. The estimate and the verdict are the API's (kubetune_api.memory, .fit), the
same the operator's Fits condition uses; only reading config.json and the device's memory live here."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from kubetune_api.fit import Verdict, check_fit, gib, gpu_memory_bytes, verdict_of
from kubetune_api.memory import GIB, ModelShape, Workload
from kubetune_api.results import Env, ExitCode

from .errors import ConfigError, NotFound, TrainerError
from .storage import ArtifactStore, Storage


class InsufficientGPUMemory(TrainerError):
    """The estimated peak exceeds the device's memory: no retry can make it fit."""

    code = ExitCode.INSUFFICIENT_GPU_MEMORY


def shape_of(folder: Path) -> ModelShape:
    """The shape in a model folder's config.json."""
    return _shape(json.loads((Path(folder) / "config.json").read_text()), str(folder))


def _shape(config: dict, where: str) -> ModelShape:
    try:
        return ModelShape.from_config(config)
    except ValueError as err:
        raise ConfigError(f"model {where}: {err}") from None


def device_memory(device: str) -> int | None:
    """Bytes of one accelerator: KUBETUNE_DEVICE_MEMORY_GIB when set (tests, overrides), else what CUDA reports;
    None on CPU, where there is no limit to check."""
    override = os.environ.get(Env.DEVICE_MEMORY_GIB, "")
    if override:
        try:
            return int(float(override) * GIB)
        except ValueError:
            raise ConfigError(f"{Env.DEVICE_MEMORY_GIB}={override!r} is not a number of GiB") from None
    if device != "cuda":
        return None
    from .distributed import device_bytes

    return device_bytes(device)


def preflight(spec, model_path: Path, device: str, dtype_bytes: int, sharding: str = "ddp",
              world_size: int = 1) -> Verdict | None:
    """Raise InsufficientGPUMemory when the job cannot fit this device; the verdict otherwise (None on CPU)."""
    capacity = device_memory(device)
    if capacity is None:
        return None
    shape = shape_of(model_path)
    # as this process really runs: its device, precision and sharding (auto resolved), not the spec's guess
    work = replace(Workload.from_spec(spec), accelerator=device == "cuda", sharding=sharding, world_size=world_size,
                   precision="fp32" if dtype_bytes == 4 else "bf16")
    verdict = verdict_of(shape, work, capacity)
    if verdict.fits is False:
        raise InsufficientGPUMemory(f"{verdict.message} (from the model's config.json; docs/memory.md)")
    return verdict


def read_config(spec, storage: Storage) -> dict:
    """A model's config.json without downloading its weights (`kubetune estimate`)."""
    try:
        return _read_config(spec, storage)
    except (OSError, ValueError) as err:
        raise NotFound(f"model uri {spec.uri!r}: cannot read its config.json ({err}); give the shape in "
                       "spec.model.shape instead") from None


def _read_config(spec, storage: Storage) -> dict:
    uri = spec.uri
    if uri.startswith("bundled://"):
        from .bundled import bundled_model

        return json.loads((bundled_model(uri) / "config.json").read_text())
    if uri.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(uri.removeprefix("hf://"), "config.json", revision=spec.revision,
                               token=os.environ.get(Env.HF_TOKEN) or None)
        return json.loads(Path(path).read_text())
    return json.loads(ArtifactStore(uri, storage).read_text("config.json"))


def with_runtime(job_file: Path, job, runtime_file: Path):
    """The job with the defaults of the ClusterFineTuneRuntime its spec.runtimeRef names, from `runtime_file`
    (the operator's merge, kubetune_api.apply_runtime); the job as it is when the file has no such runtime."""
    import yaml

    from kubetune_api import apply_runtime, parse_job
    from kubetune_api.job import KIND

    docs = [d for d in yaml.safe_load_all(runtime_file.read_text()) if isinstance(d, dict)]
    runtime = next((d for d in docs if d.get("kind") == "ClusterFineTuneRuntime"
                    and (d.get("metadata") or {}).get("name") == job.spec.runtime_ref), None)
    if runtime is None:
        print(f"kubetune: warning: no ClusterFineTuneRuntime {job.spec.runtime_ref!r} in {runtime_file}; estimating "
              "with the job's own fields (pass --runtime FILE)", file=sys.stderr)
        return job
    raw = next(d for d in yaml.safe_load_all(job_file.read_text()) if isinstance(d, dict) and d.get("kind") == KIND)
    raw = {**raw, "spec": apply_runtime(raw.get("spec") or {}, runtime.get("spec") or {}, job.spec.runtime_ref)}
    return parse_job(raw, str(job_file))


def print_estimate(job, manifest_dir: Path, product: str | None, memory_gib: float | None,
                   answer_fraction: float, out=sys.stdout) -> Verdict:
    """`kubetune estimate`: the estimate per component, the GPU's memory and what would make it fit."""
    spec = job.spec
    shape = spec.model.shape or _shape(read_config(spec.model, Storage(spec.storage.s3, manifest_dir)),
                                       spec.model.uri)
    product = product or spec.resources.gpu_product
    capacity = int(memory_gib * GIB) if memory_gib else gpu_memory_bytes(product)
    verdict = check_fit(shape, spec, capacity, answer_fraction, product)
    w = verdict.workload
    print(f"{job.metadata.name}: {spec.method.type} r={w.rank} on {shape.params() / 1e9:.2f}B parameters "
          f"({shape.layers} layers, hidden {shape.hidden}), batch {w.batch_size} x {w.seq_len} tokens in passes of "
          f"{w.pass_tokens()}, "
          f"{w.precision}, {w.world_size} process(es), sharding {w.sharding}, gradient checkpointing "
          f"{'on' if w.gradient_checkpointing else 'off'}", file=out)
    for name, value in verdict.estimate.components.items():
        print(f"  {name:<12}{gib(value):>8} GiB", file=out)
    print(f"  {'peak':<12}{gib(verdict.estimate.total):>8} GiB per GPU", file=out)
    if capacity is None:
        print(f"GPU memory: unknown ({product or 'no resources.gpuProduct'}); pass --gpu-product or --gpu-memory",
              file=out)
    else:
        print(f"GPU memory: {gib(capacity)} GiB ({product or 'given'}): "
              + ("fits" if verdict.fits else "does NOT fit"), file=out)
    for option in verdict.options:
        print(f"  would fit with {option.change}: {gib(option.estimate.total)} GiB", file=out)
    if verdict.fits is False and not verdict.options:
        print("  no single change the estimate knows makes it fit; use a larger GPU", file=out)
    return verdict
