"""The LoRA/QLoRA fine-tuning recipe: `__init__` checks the config, `setup()` reads data, model and adapter,
then `train()` (the loop, early stopping, checkpoints and resuming), `evaluate()` and `save()`; and `Levers`,
how the training step runs. One optimizer step's mechanics are in trainstep.py. `runner.run_job` drives the
recipe and turns failures into exit codes."""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kubetune_api.job import FineTuneJob
from kubetune_api.results import Env, TrainerResult
from kubetune_api.status import StopReason

from . import data as datamod
from . import fitcheck, preflight, trainstep
from .artifacts import SUCCESS, store_once
from .batching import Schedule
from .checkpoints import Checkpoints
from .datafiles import Limits, check_stored_size
from .dataversion import RunRoot
from .distributed import ProcessGroup, choose_sharding, device_bytes, weights_bytes
from .early_stopping import EarlyStopping, no_watch_note, stop_summary
from .errors import ConfigError
from .evaluation import mean_loss
from .handoff import serving_fields
from .lineage import weights_digest
from .loss import check_packing
from .models import (
    attach_adapter,
    attention_in_fp32,
    device_and_dtype,
    fetch_model,
    hidden_size,
    import_training_libraries,
    load_model,
    load_tokenizer,
)
from .preflight import check_output, check_weights
from .progress import ProgressReporter
from .prompting import PromptFormatter, compile_custom, length_stats
from .scoring import score_held_out
from .stopping import GracefulStop, Interrupted
from .storage import ArtifactStore, Background, Storage


@dataclass(frozen=True)
class Levers:
    """How the training step runs, beyond what the spec says. The defaults are what every job gets; the
    benchmark (bench/trainer_throughput.py) turns them off one at a time to measure each.

    group_by_length: micro-batches hold examples of similar length, so padded batches are mostly real
        tokens (not with training.packing, which needs no grouping). Off by default: where length goes
        with the kind of example, each step then sees one kind, and the held-out loss after an epoch is
        worse (docs/performance.md, seventh session); `pass_overhead` keeps the padding down instead.
    answer_logits_only: vocabulary logits only where an answer token is predicted (see loss.py).
    pass_tokens: a forward pass holds at most this fraction of batchSize x maxSeqLength tokens (but always
        one whole example); longer micro-batches are split, which bounds the activation memory at that
        fraction of what the same batch padded to maxSeqLength needs. The loss does not change. None: one
        pass per micro-batch.
    pass_overhead: what one more forward pass costs, in tokens: a micro-batch's padded passes are cut by
        length where that saves more padding than this (batching.passes), so a step of examples in random
        order pads about as little as a length-grouped one. "device": trainstep.PASS_OVERHEAD's value for
        the device (CPU 32: over an epoch of SmolLM2-135M on a Zen 5 core 1.06-1.09x the tokens per CPU s of
        128, docs/performance.md, tenth session; GPU 128: a pass's weight reads and kernel launches estimated
        at about as many of a 7B's tokens, not measured). None: as few passes as the budget allows.
    pad_to_max_length: pad every batch to dataset.maxSeqLength, as a naive loop does (benchmarks only).
    shared_prefix: the tokens every row of a pass has in common (chat template, system prompt) run once
        for the pass (see loss.py), in training and in the held-out loss; only where a check at start-up
        finds the same logits both ways (trainstep.shares_prefix).
    chunked_head: the output layer and the cross-entropy over answer positions run a chunk of positions at
        a time, never holding the whole logits tensor (see loss.py); where a start-up check finds the same
        loss both ways (trainstep.chunks_head).
    fp32_attention: on CPU in bf16, attention runs in fp32, where PyTorch's CPU kernel is faster
        (models.attention_in_fp32).
    cheap_dropout: on CPU the adapter's dropout draws its mask with 16 random bits per element instead of
        torch's two 32-bit draws, with dropout's own arithmetic (dropout.py); only jobs that set
        method.lora.dropout pay for a mask at all.
    fused_branch: on CPU in training, a LoRA linear layer's adapter branch (dropout, A, B, scaling) runs as
        one autograd function with PEFT's arithmetic (lora_branch.py): fewer operations and casts per layer.
    fused_norm: on CPU in training, the frozen RMSNorm layers run as one autograd function each, the same
        forward and the input gradient in closed form (norms.py): 1.06x the tokens per CPU s over an epoch,
        but off by default: over eight seeds of the SKU task it ended at exact match 1.000 for four where
        transformers' RMSNorm does for seven (different examples missed, not shown to be more than
        rounding; docs/performance.md, thirteenth session).
    """

    group_by_length: bool = False
    answer_logits_only: bool = True
    pass_tokens: float | None = 0.5
    pass_overhead: int | str | None = "device"
    pad_to_max_length: bool = False
    shared_prefix: bool = True
    chunked_head: bool = True
    fp32_attention: bool = True
    cheap_dropout: bool = True
    fused_branch: bool = True
    fused_norm: bool = False


class LoRARecipe:
    """One fine-tuning run of a FineTuneJob, writing only below the job's artefact root."""

    def __init__(self, job: FineTuneJob, *, manifest_dir: Path | None = None,
                 reporter: ProgressReporter | None = None, work_dir: str | None = None,
                 levers: Levers | None = None, stop: GracefulStop | None = None, dist: ProcessGroup | None = None,
                 root: RunRoot | None = None):
        self.job, self.spec = job, job.spec
        self.dist = dist or ProcessGroup.from_env()  # torchrun's rank and world size; one process without it
        self.reporter = reporter or ProgressReporter()
        self.stop = stop or GracefulStop()  # not installed: SIGTERM keeps Python's default
        self.levers = levers or Levers()
        if self.spec.dataset.template == "custom":
            compile_custom(self.spec.dataset.custom_template)
        if self.spec.method.type == "qlora":
            _require_bitsandbytes()
        self.storage = Storage(self.spec.storage.s3, manifest_dir)
        # The run's folder by spec hash and data version (dataversion.py); the spec hash's own without one.
        self.store = root.store if root else ArtifactStore(job.artifact_root(), self.storage)
        self.data_version = root.data_version if root else None
        check_output(self.spec, self.storage, self.store.root)
        if self.spec.model.trust_remote_code:
            warn("spec.model.trustRemoteCode is true: the model repository's own Python code runs in this process")
        self.work = Path(tempfile.mkdtemp(prefix="kubetune-", dir=work_dir))
        self.checkpoints = Checkpoints(self.store, self.spec.checkpoint.every_steps, self.spec.checkpoint.keep,
                                       self.work / "checkpoints")
        self.log: list[dict] = []
        self.data_report = datamod.DataReport()
        self.inputs: dict[str, list[dict]] = {}
        self.results: dict = {}
        self.serving: dict | None = None  # the serving check of the saved adapter (handoff.py)
        self.resumed_from: int | None = None
        self.train_seconds = 0.0
        self.train_tokens = self.last_step_tokens = 0  # non-padding tokens trained on, this attempt / step

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.reporter.stage("loading")
        # The model download (or conversion) runs while torch and the training libraries are imported and
        # the data is read and validated; a bad record still fails at once (the download thread is a daemon).
        # Under torchrun each pod's first process fills the pod's model cache; its other processes read it.
        fetch = Background(fetch_model, self.spec.model, self.storage) if self.dist.is_node_leader else None
        self.device, self.dtype = device_and_dtype(self.spec.training.precision)  # imports torch
        self.dist.start(self.device)
        self._setup_data()
        import_training_libraries()
        with self.dist.node_leaders_first():
            self.model_path = fetch.result() if fetch else fetch_model(self.spec.model, self.storage)
        self.weights = Background(weights_digest, self.model_path)  # for lineage.json, while training runs
        self._setup_model()
        self._setup_adapter()

    def check_data(self) -> datamod.DataReport:
        """Only read and validate the data (`kubetune validate`)."""
        self._setup_data()
        self._check_model_files()
        return self.data_report

    def _check_model_files(self) -> None:
        """The model's weight files by name (listed, not downloaded); hub and bundled models at fetch time."""
        uri = self.spec.model.uri
        if uri.startswith(("hf://", "bundled://")):
            return
        names = [info.uri for info in self.storage.list_files(uri)]
        check_weights(names, uri, self.spec.model.allow_pickle_weights)

    def _read(self, role: str, uri: str) -> list[datamod.Example]:
        files, infos = [], []
        limits = Limits(self.spec.dataset.max_row_bytes, self.spec.dataset.max_file_bytes)
        for i, info in enumerate(self.storage.list_files(uri)):
            check_stored_size(info.uri, info.size, limits)  # before downloading a file that would be refused
            local, info = self.storage.fetch(info, self.work / "data" / role / f"{i}-{Path(info.uri).name}")
            files.append((local, info.uri))
            infos.append({k: v for k, v in vars(info).items() if v is not None})
        report = datamod.DataReport()
        examples = datamod.load_examples(files, self.spec.dataset, report)
        for entry, counted in zip(infos, report.files, strict=True):
            entry["rows"], entry["format"] = counted["rows"], counted["format"]
        self.inputs[role] = infos
        if role == "train":
            self.data_report.schema = report.schema
        self.data_report.rows += report.rows
        self.data_report.files += [{**f, "role": role} for f in report.files]
        return examples

    def _setup_data(self) -> None:
        """Read and validate every record before any weights load."""
        ds = self.spec.dataset
        train, dropped = datamod.deduplicate(self._read("train", ds.train.uri))
        if ds.eval is not None:
            train_set, eval_set = train, datamod.deduplicate(self._read("eval", ds.eval.uri))[0]
        else:
            train_set, eval_set = datamod.split(train, ds.eval_split, self.spec.training.seed)
        self.regression = []
        if self.spec.evaluation.regression is not None:
            self.regression = self._read("regression", self.spec.evaluation.regression.uri)
        self.train_set, self.eval_set = train_set, eval_set
        leak = preflight.leak_warning(train_set, eval_set, "dataset.eval" if ds.eval else "dataset.evalSplit")
        if leak:
            self.data_report.warnings.append(leak)
            warn(leak)
        self.data_report.duplicates = dropped
        self.data_report.train, self.data_report.eval = len(train_set), len(eval_set)

    def _setup_model(self) -> None:
        import torch

        spec = self.spec
        self.tokenizer = load_tokenizer(self.model_path, spec.model.trust_remote_code)
        self.formatter = PromptFormatter(self.tokenizer, spec.dataset)
        self.train_encoded = self.formatter.encode_all(self.train_set)
        self.eval_encoded = self.formatter.encode_all(self.eval_set)
        self.token_stats = length_stats(self.train_encoded + self.eval_encoded)
        for message in preflight.check_answers(self.train_encoded, self.eval_encoded, spec.dataset.max_seq_length):
            self.data_report.warnings.append(message)
            warn(message)
        self.sharding = choose_sharding(spec.training.sharding, spec.method.type, self.device,
                                        weights_bytes(self.model_path), device_bytes(self.device))
        # a job that cannot fit this GPU fails here, from config.json, before any weights load
        fitcheck.preflight(spec, self.model_path, self.device, self.dtype.itemsize, self.sharding,
                           self.dist.world_size)
        # Under FSDP the base loads into host memory and fully_shard moves each rank's shard to its GPU.
        on = "cpu" if self.sharding == "fsdp" and self.dist.distributed else self.dist.device_name(self.device)
        self.model = load_model(self.model_path, spec.method, on, self.dtype, spec.model.trust_remote_code,
                                spec.model.allow_pickle_weights, sharded=self.sharding == "fsdp")
        if self.levers.fp32_attention and self.device == "cpu" and self.dtype == torch.bfloat16:
            attention_in_fp32(self.model)

    def _setup_adapter(self) -> None:
        import torch
        from transformers import get_scheduler, set_seed

        t = self.spec.training
        set_seed(t.seed)
        self.learning_rate = t.peak_learning_rate(hidden_size(self.model), self.spec.method.lora.alpha)
        cpu = self.device == "cpu"
        self.model = attach_adapter(self.model, self.spec.method, t.gradient_checkpointing,
                                    cheap_dropout=self.levers.cheap_dropout and cpu,
                                    fused_branch=self.levers.fused_branch and cpu,
                                    fused_norm=self.levers.fused_norm and cpu)
        self.train_model = self.dist.wrap(self.model, self.sharding)  # DDP or FSDP under torchrun
        if t.packing:  # after wrap: under FSDP the weights reach the GPU there (every rank checks the same)
            check_packing(self.model, self.train_encoded, self.tokenizer.pad_token_id, self.device)
        self.filler = trainstep.filler(self.train_encoded)  # a rank's zero-weight pass when it has none
        self.share_prefix = trainstep.shares_prefix(self)
        self.chunked_head = trainstep.chunks_head(self)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=t.weight_decay)
        grouped = self.levers.group_by_length and not t.packing and not self.levers.pad_to_max_length
        # batchSize is per device: a micro-batch is batchSize x world size examples, which the ranks split.
        # A resumed run keeps the micro-batch its checkpoint was trained with, whatever the world size now,
        # so the steps, the learning-rate schedule and the examples of each step stay those of the first run.
        self.resume_step = self.dist.broadcast(self.checkpoints.latest())
        self.micro_batch = t.batch_size * self.dist.world_size
        if self.resume_step is not None:
            self.micro_batch = self.checkpoints.state(self.resume_step).get("microBatch", self.micro_batch)
        self.schedule = Schedule(len(self.train_encoded), self.micro_batch, t.gradient_accumulation, t.seed,
                                 epochs=t.planned_epochs(), max_steps=t.max_steps,
                                 lengths=[len(e.input_ids) for e in self.train_encoded], group_by_length=grouped)
        self.pass_budget = trainstep.pass_budget(self.levers.pass_tokens, t.batch_size,
                                                 self.spec.dataset.max_seq_length)
        total = self.schedule.total_steps
        self.scheduler = get_scheduler(t.scheduler, self.optimizer, num_warmup_steps=math.ceil(t.warmup_ratio * total),
                                       num_training_steps=total)
        self.scaler = torch.amp.GradScaler(self.device, enabled=self.dtype == torch.float16)
        stopping = t.stopping()
        self.watch = EarlyStopping(stopping, self.schedule.steps_per_epoch, self.eval_encoded,
                                   self.spec.evaluation.gate) if stopping and self.eval_encoded else None

    # ---- train -------------------------------------------------------------------------------------
    def train(self) -> None:
        start = self._resume()
        total = self.schedule.total_steps
        self.log.append({"event": "start", "step": start, "attempt": int(os.environ.get(Env.ATTEMPT) or 1),
                         "worldSize": self.dist.world_size, "sharding": self.sharding,
                         "learningRate": self.learning_rate, "time": round(time.time(), 3)})
        self.last_step, plateau = start, self.watch is not None and self.watch.stop
        with self.stop.deferred():
            self.reporter.start_training(start, total)
            self.model.train()
            began = time.monotonic()
            for step in [] if plateau else self.schedule.steps(start):
                loss, stopping = self._train_step(step.micro_batches)
                lr = self.scheduler.get_last_lr()[0]
                self.log.append({"event": "step", "step": step.number, "epoch": round(step.epoch, 4),
                                 "loss": round(loss, 6), "gradNorm": round(self.last_grad_norm, 6),
                                 "learningRate": lr, "tokens": self.last_step_tokens,
                                 "time": round(time.time(), 3)})
                self.reporter.step(step.number, step.epoch, loss, lr)
                self.last_step = step.number
                plateau = self._watch(step.number, total)
                if self.checkpoints.due(step.number, total) or stopping:
                    self._checkpoint(step.number, self.train_seconds + time.monotonic() - began)
                if stopping:  # every rank got (or was told of) SIGTERM after this step; leave once it is saved
                    self.dist.barrier()
                    raise Interrupted(f"stopped by SIGTERM after step {step.number} of {total} (pod deleted or node "
                                      f"drained); checkpoint step-{step.number} saved, the next attempt resumes there")
                if plateau:
                    break
            self.train_seconds += time.monotonic() - began
        self._finish_training(plateau)

    def _watch(self, step: int, total: int) -> bool:
        """Early stopping's evaluation when one is due; whether training should stop here."""
        if self.watch is None or not self.watch.due(step, total):
            return False
        loss = mean_loss(self.model, self.watch.subset, self.tokenizer.pad_token_id, self._eval_batch(), self.device,
                         self.dist, **self.loss_options)
        self.model.train()
        self.log.append({**self.watch.record(step, loss, lambda: self.dist.trainable_state(self.model)),
                         "time": round(time.time(), 3)})
        return self.watch.stop

    def _finish_training(self, plateau: bool) -> None:
        """Why training stopped, and the best adapter put back when it is not the last one."""
        t, w = self.spec.training, self.watch
        self.stop_reason = StopReason.EARLY_STOPPED if plateau else \
            StopReason.MAX_STEPS if t.max_steps is not None else StopReason.MAX_EPOCHS
        self.best_step = self.last_step
        if w is not None and w.best_step is not None and w.best_step != self.last_step:
            self.dist.load_trainable(self.model, w.best_state)
            self.best_step = w.best_step
        self.gate_note = w.gate_note() if w else no_watch_note(self.spec.evaluation.gate)
        self.log.append({"event": "stop", "step": self.last_step, "reason": self.stop_reason,
                         "bestStep": self.best_step, **({"bestEvalLoss": round(w.best_loss, 6)} if w else {}),
                         "time": round(time.time(), 3)})

    def _checkpoint(self, step: int, seconds: float) -> None:
        # Whole tensors gathered by every rank (FSDP shards them), written by one.
        trainable = self.dist.trainable_state(self.model)
        optimizer = self.dist.optimizer_state(self.model, self.optimizer)
        if self.dist.is_writer:
            watch = {"earlyStopping": self.watch.state()} if self.watch else {}
            self.checkpoints.save(step, trainable, optimizer, self.scheduler,
                                  {"log": self.log, "trainSeconds": seconds, "microBatch": self.micro_batch,
                                   "worldSize": self.dist.world_size, "sharding": self.sharding, **watch},
                                  best=self.watch.best_state if self.watch else None)

    def _resume(self) -> int:
        step = self.resume_step  # the writer's choice, so every rank resumes from the same checkpoint
        if step is None:
            return 0
        trainable, optimizer, state = self.checkpoints.load(step, self.scheduler)
        self.dist.load_state(self.model, self.optimizer, trainable, optimizer)
        self.log = [e for e in state.get("log", []) if e.get("step", 0) <= step]
        self.train_seconds = state.get("trainSeconds", 0.0)
        if self.watch is not None and "earlyStopping" in state:
            self.watch.restore(state["earlyStopping"], state.get("bestAdapter"))
        self.log.append({"event": "resume", "step": step, "time": round(time.time(), 3)})
        self.resumed_from = step
        return step

    def _train_step(self, micro_batches: list[list[int]]) -> tuple[float, bool]:
        """One optimizer step (trainstep.train_step): the step's loss and whether any rank got SIGTERM. A
        method, so that bench/startup.py can time the first step."""
        return trainstep.train_step(self, micro_batches)

    # ---- evaluate ----------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        self.reporter.stage("evaluating")
        self.results, self.predictions = score_held_out(self, self._eval_batch())
        if self.gate_note is not None:
            self.results["gateFirstReached"] = self.gate_note
        return self.results

    @property
    def loss_options(self) -> dict:
        """How answer_loss runs for this model and data (loss.py), as trainstep decided at set-up."""
        return {"share_prefix": self.share_prefix, "chunked_head": self.chunked_head}

    def _eval_batch(self) -> int:
        return min(32, max(8, self.spec.training.batch_size * 2))

    # ---- save --------------------------------------------------------------------------------------
    def save(self) -> TrainerResult:
        self.adapter_state = self.dist.trainable_state(self.model) if self.dist.sharded else None  # all ranks
        if not self.dist.is_writer:  # the writer stores everything; every other rank is done
            return TrainerResult(ok=True, reason="Completed", spec_hash=self.job.spec_hash,
                                 message=f"rank {self.dist.rank} of {self.dist.world_size}: done")
        self.reporter.stage("saving")
        artifacts = None if self.store.exists(SUCCESS) else store_once(self)
        if artifacts is None:  # another run of the same spec stored first: keep what it stored
            from .runner import already_complete

            return already_complete(self.job, self.store, self.data_version)
        r = self.results
        message = "; ".join([summary(r), stop_summary(self), *(f"warning: {w}" for w in self.data_report.warnings)])
        return TrainerResult(
            ok=True, reason="Completed", message=message, spec_hash=self.job.spec_hash,
            metrics=r["tuned"], base_metrics=r["base"], gate_passed=r["gatePassed"],
            gate_message=r["gateMessage"], artifacts=artifacts, data_version=self.data_version,
            **serving_fields(self.serving),
            # The operator's status shows the steps even if it missed the last reports.
            step=self.last_step, total_steps=self.schedule.total_steps,
            stop_reason=self.stop_reason, best_step=self.best_step,
        )

    def cleanup(self) -> None:
        """Remove the scratch folder (downloaded data, local copies of artefacts and checkpoints)."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.dist.close()


def summary(results: dict) -> str:
    tuned, base = results.get("tuned", {}), results.get("base", {})
    key = next((m for m in ("exactMatch", "rougeL", "evalLoss") if m in tuned), None)
    if key is None:
        return "training complete"
    text = f"training complete: {key} {tuned[key]:g}"
    return text + (f" (base {base[key]:g})" if key in base else "")


def warn(message: str) -> None:
    print(f"kubetune: warning: {message}", file=sys.stderr)


def _require_bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"method.type qlora needs bitsandbytes, which cannot be loaded here: {err}") from None
