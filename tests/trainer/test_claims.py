"""Two runs of one spec saving at the same time (issue 11): one writes, the other keeps what it stored.

The output claim (`_WRITING`, a conditional create) on a real S3 server (SeaweedFS honours
`If-None-Match: *`) and on a local folder, and the trainer's save step waiting on a claim another run holds.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kubetune_api.job import load_manifest
from kubetune_api.spec import S3Spec
from kubetune_trainer.claims import CLAIM, OutputClaim
from kubetune_trainer.errors import Transient
from kubetune_trainer.storage import ArtifactStore, Storage

from .test_bad_runs import digest, local_job

BUCKET = "kt-claims"


@pytest.fixture(params=["s3", "local"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "out"), Storage(S3Spec()))
    s3 = request.getfixturevalue("s3")
    request.getfixturevalue("s3_env")
    if BUCKET not in [b["Name"] for b in s3.client().list_buckets()["Buckets"]]:
        s3.make_bucket(BUCKET)
    spec = S3Spec(endpoint=s3.endpoint, addressingStyle="path")
    return ArtifactStore(f"s3://{BUCKET}/{tmp_path.name}/", Storage(spec))


def claimant(store, owner: str, **kw) -> OutputClaim:
    return OutputClaim(store, owner, success="_SUCCESS", **{"poll_s": 0.1, "heartbeat_s": 0.2, **kw})


def test_only_one_of_two_claimants_writes_and_the_other_sees_its_success(store):
    first = claimant(store, "FineTuneJob ns/a")
    assert first.acquire()
    outcome = {}
    waiter = threading.Thread(target=lambda: outcome.setdefault("wrote", claimant(store, "FineTuneJob ns/b").acquire()))
    waiter.start()
    time.sleep(1.0)
    assert waiter.is_alive(), "the second run did not wait for the first run's save"
    store.write_text("_SUCCESS", "")
    first.release()
    waiter.join(timeout=30)
    assert outcome == {"wrote": False}
    assert not store.exists(CLAIM)


def test_a_live_writer_keeps_its_claim_and_the_waiter_gives_up_as_transient(store):
    holder = claimant(store, "FineTuneJob ns/a")
    assert holder.acquire()
    try:
        # Longer than stale_after: only the heartbeat keeps the claim from being taken over.
        with pytest.raises(Transient) as err:
            claimant(store, "FineTuneJob ns/b", stale_after_s=3.0, wait_s=6.0).acquire()
    finally:
        holder.release()
    assert "FineTuneJob ns/a" in err.value.message and "is writing the artefacts of this spec hash" in err.value.message
    assert Transient.code.retryable


def test_a_claim_left_by_a_dead_writer_is_taken_over(store):
    old = (datetime.now(timezone.utc) - timedelta(seconds=600)).isoformat()
    store.write_text(CLAIM, json.dumps({"owner": "FineTuneJob ns/a (pod a-r1-1)", "token": "x", "heartbeat": old}))
    taker = claimant(store, "FineTuneJob ns/a", wait_s=5)
    assert taker.acquire()
    assert taker.token in store.read_text(CLAIM)
    taker.release()
    assert not store.exists(CLAIM)


def test_save_waits_for_the_run_that_holds_the_claim_and_keeps_its_artefacts(tmp_path, tiny_model):
    """Run B reaches its save step while run A (the same job on a node cut off from the cluster, say) is
    writing: B waits, then reports AlreadyComplete and writes nothing."""
    from kubetune_trainer.recipe import LoRARecipe

    job_path = local_job(tmp_path, tiny_model, name="race")
    job = load_manifest(job_path)
    racer = LoRARecipe(job, manifest_dir=tmp_path, work_dir=str(tmp_path))
    store = ArtifactStore(job.artifact_root(), Storage(job.spec.storage.s3, tmp_path))
    root = Path(store.root)
    try:
        racer.setup()
        racer.train()
        racer.evaluate()
        holder = claimant(store, "FineTuneJob default/race")
        assert holder.acquire()
        result = {}
        saver = threading.Thread(target=lambda: result.setdefault("r", racer.save()))
        saver.start()
        time.sleep(2.0)
        assert saver.is_alive() and not (root / "adapter").exists(), "run B wrote while run A held the claim"
        store.write_text("metrics.json", '{"tuned": {"evalLoss": 1.5}}\n')
        store.write_text("_SUCCESS", "")
        stored = digest(root)
        holder.release()
        saver.join(timeout=60)
    finally:
        racer.cleanup()
    assert result["r"].ok and result["r"].reason == "AlreadyComplete"
    assert digest(root) == {k: v for k, v in stored.items() if k != CLAIM}
