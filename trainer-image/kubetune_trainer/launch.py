"""`kubetune train` in a pod with several GPUs: this process becomes torchrun's agent (torch.distributed.run,
the module behind the `torchrun` command) and starts one `kubetune train` worker per GPU.

The operator asks for it with torchrun's own environment variables (`PET_NPROC_PER_NODE=G`, `PET_STANDALONE=1`
for one pod; a multi-node gang adds `PET_NNODES`, `PET_NODE_RANK` and the rendezvous ones), so the pod
command stays `kubetune train` and `torchrun -m kubetune_trainer train` would run the same workers. What the
agent adds to torchrun:

* the exit code and termination message of the pod are those of the worker that failed first (torchrun's
  own exit code is 1 for any failure, which would turn an invalid spec into a retry), or of this pod's
  lowest rank when all succeed or when the pod was stopped (rank 0, the writer, when it runs here: in a
  multi-node gang the rendezvous puts it on any one pod);
* on SIGTERM torchrun's agent passes the signal to every worker and waits for them (up to
  TORCH_ELASTIC_SHUTDOWN_TIMEOUT, set here well above a training step) so the step-finishing checkpoint is
  written before the kubelet's grace period ends.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from kubetune_api.results import ExitCode, TrainerResult

RESULT_DIR_ENV = "KUBETUNE_RESULT_DIR"  # where each worker writes its result (rank-N.json) for the agent
SHUTDOWN_TIMEOUT_S = 600  # the kubelet's terminationGracePeriodSeconds is the real bound


def wanted() -> bool:
    """PET_* ask for more than one process, and this process is not already one of torchrun's workers."""
    if "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        return False
    nproc = os.environ.get("PET_NPROC_PER_NODE", "1").strip() or "1"
    nnodes = os.environ.get("PET_NNODES", "1").strip() or "1"
    return (nproc.isdigit() and int(nproc) > 1) or nnodes != "1"


def worker_result_path(rank: int) -> str | None:
    """Where a worker writes its termination result when an agent of ours collects them."""
    folder = os.environ.get(RESULT_DIR_ENV)
    return f"{folder}/rank-{rank}.json" if folder else None


def launch(train_args: list[str], termination: str | None) -> int:
    """Run the workers to their end; returns the pod's exit code and writes its termination message."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from .models import available_cpus
    from .runner import write_termination

    results = Path(tempfile.mkdtemp(prefix="kubetune-ranks-"))
    os.environ[RESULT_DIR_ENV] = str(results)
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    args = parse_args(["--module", "kubetune_trainer", "train", *train_args])  # the rest from PET_*
    # torchrun gives each worker 1 CPU thread; CPU-only workers (tests, no GPU) share the pod's CPUs instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // max(1, int(args.nproc_per_node)))))
    rank, code = None, ExitCode.OK
    try:
        run(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        code = failure.exitcode if failure.exitcode >= 0 else 128 - failure.exitcode  # -9 -> 137, as a shell
    except SignalException:
        code = ExitCode.TRANSIENT  # every worker was told; rank 0 saved its step and says so
    if rank is None:
        written = sorted(int(f.stem.removeprefix("rank-")) for f in results.glob("rank-*.json"))
        rank = written[0] if written else 0
    source = results / f"rank-{rank}.json"
    if source.exists():
        if termination:
            Path(termination).write_text(source.read_text())
    else:
        write_termination(termination, TrainerResult(
            ok=False, reason=ExitCode.INTERNAL.reason, message=f"training process rank {rank} ended with exit code "
            f"{code} before writing a result (killed, or crashed in native code); see the pod's log"))
    shutil.rmtree(results, ignore_errors=True)
    print(f"kubetune: {int(args.nproc_per_node)} training processes ended; exit code {int(code)} "
          f"(from rank {rank})", file=sys.stderr)
    return int(code)
