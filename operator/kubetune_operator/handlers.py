"""The kopf handlers: one startup hook owning all settings, and watch handlers that only file what they
see with the reconciler. All decisions are in plan.py; all I/O in reconciler.py."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf

from kubetune_api import GROUP, PLURAL, RUNTIME_PLURAL, SCHEDULE_PLURAL, VERSION, __version__

from . import metrics, progress
from .builders import JOB_LABEL
from .kube import Kube
from .leader import LeaderElection
from .reconciler import Reconciler
from .schedule_builders import SCHEDULE_LABEL
from .schedule_reconciler import ScheduleReconciler
from .settings import Settings, configure_kopf

log = logging.getLogger(__name__)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure_kopf(settings)
    log.info("kubetune operator %s starting", __version__)
    config = Settings.from_env()
    if config.progress_key_generated:
        log.warning(
            "KUBETUNE_PROGRESS_KEY is not set: using a random key, so the progress tokens of running trainer "
            "pods stop working when the operator restarts (set it from a Secret)"
        )
    if not config.progress_url:
        log.warning("KUBETUNE_PROGRESS_URL is not set: trainer pods report progress to their logs only")
    store = progress.ProgressStore(config.progress_interval)
    # With a Lease configured, this replica starts on standby and acts once it leads.
    reconciler = Reconciler(Kube.connect(), config, store, active=config.leader_lease is None)
    schedules = ScheduleReconciler(reconciler.kube, config, active=reconciler.active)
    memo.config, memo.reconciler, memo.schedules = config, reconciler, schedules
    memo.election = memo.election_task = None
    if config.leader_lease is not None:
        namespace, name = config.leader_lease
        def lead(active: bool) -> None:
            reconciler.lead(active)
            schedules.lead(active)

        memo.election = LeaderElection(reconciler.kube, namespace, name, config.identity, lead, config.lease_seconds)
        memo.election_task = asyncio.create_task(memo.election.run(), name="kubetune leader election")
    memo.progress_runner = None
    if config.progress_port:
        app = progress.progress_app(config.progress_key, reconciler.uid_of, store, reconciler.request)
        memo.progress_runner = await progress.serve(app, config.progress_port)
    metrics.serve(config.metrics_port, reconciler.phases)
    log.info(
        "kubetune operator ready: namespaces=%s trainer image=%s progress=%s metrics port=%s leader election=%s",
        ",".join(config.namespaces) or "(all)", config.trainer_image, config.progress_url or "(logs only)",
        config.metrics_port or "(off)",
        "/".join(config.leader_lease) + f" as {config.identity}" if config.leader_lease else "(off)",
    )


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if memo.get("progress_runner") is not None:
        await memo.progress_runner.cleanup()
    if memo.get("election_task") is not None:
        memo.election_task.cancel()
        await asyncio.gather(memo.election_task, return_exceptions=True)
    if memo.get("reconciler") is not None:
        await memo.reconciler.stop()
    if memo.get("schedules") is not None:
        await memo.schedules.stop()
    if memo.get("election") is not None:
        await memo.election.release()  # after the reconciler stopped: the next leader may start at once
    if memo.get("reconciler") is not None:
        await memo.reconciler.kube.close()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def job_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    obj = event["object"]
    memo.reconciler.job_event(event.get("type"), copy.deepcopy(obj))
    if SCHEDULE_LABEL in ((obj.get("metadata") or {}).get("labels") or {}):  # a job a schedule created
        memo.schedules.child_event(event.get("type"), obj)


@kopf.on.event("v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
async def pod_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    obj = event["object"]
    if SCHEDULE_LABEL in ((obj.get("metadata") or {}).get("labels") or {}):  # a schedule's data probe
        memo.schedules.child_event(event.get("type"), obj, probe=True)
    else:
        memo.reconciler.pod_event(event.get("type"), copy.deepcopy(obj))


@kopf.on.event(GROUP, VERSION, SCHEDULE_PLURAL)
async def schedule_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.schedules.schedule_event(event.get("type"), copy.deepcopy(event["object"]))


@kopf.on.event(GROUP, VERSION, RUNTIME_PLURAL)
async def runtime_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.runtime_event(event.get("type"), copy.deepcopy(event["object"]))


@kopf.on.event("v1", "nodes")
async def node_event(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    memo.reconciler.node_event(event.get("type"), event["object"])
