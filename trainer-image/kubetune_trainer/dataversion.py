"""Which folder a run writes to, and whether it is already trained, by spec hash and data version.

The first run of a spec hash writes to `{specHash}/` as always. When that folder holds a finished run on
other data (the files at the same URIs changed), the run goes to `{specHash}-data-{dataVersion}/` and the
old one stays as it was; a finished run on the same data is AlreadyComplete, whichever folder holds it. The
data version comes from listing the data (no download; local files are hashed), before any model loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from kubetune_api.dataversion import data_version, versioned_root
from kubetune_api.results import ExitCode, TrainerResult
from kubetune_api.status import Reason

from .errors import TrainerError, classify
from .storage import ArtifactStore, Storage, sha256_of

SUCCESS = "_SUCCESS"


@dataclass(frozen=True)
class RunRoot:
    store: ArtifactStore  # where this run writes (or found its finished artefacts)
    data_version: str
    complete: bool  # a finished run on this very data is there
    versioned: bool = False  # the spec hash's own folder holds a run on other data: {specHash}-data-{version}/


def data_uris(spec) -> dict[str, str]:
    """Role -> URI of every data input of the spec."""
    uris = {"train": spec.dataset.train.uri}
    if spec.dataset.eval is not None:
        uris["eval"] = spec.dataset.eval.uri
    if spec.evaluation.regression is not None:
        uris["regression"] = spec.evaluation.regression.uri
    return uris


def list_inputs(spec, storage: Storage) -> dict[str, list[dict]]:
    """Every data file by role, as lineage.json records it: uri, size and etag (S3) or sha256 (local)."""
    inputs = {}
    for role, uri in data_uris(spec).items():
        files = []
        for info in storage.list_files(uri):
            entry = {"uri": info.uri, "size": info.size}
            if info.etag:
                entry["etag"] = info.etag
            else:
                entry["sha256"] = sha256_of(storage.resolve(info.uri))
            files.append(entry)
        inputs[role] = files
    return inputs


def stored_version(store: ArtifactStore) -> str | None:
    """The data version of the finished run at `store`: recorded in lineage.json, or recomputed from the
    inputs that lineage.json (or, before it existed, data-manifest.json) lists; None when neither says."""
    for name in ("lineage.json", "data-manifest.json"):
        try:
            doc = json.loads(store.read_text(name))
        except (OSError, ValueError, TrainerError):
            continue
        if doc.get("dataVersion"):
            return doc["dataVersion"]
        if doc.get("inputs"):
            return data_version(doc["inputs"])
    return None


def choose_root(job, storage: Storage) -> RunRoot:
    """The folder of this run: the spec hash's own unless a finished run on other data holds it."""
    first = ArtifactStore(job.artifact_root(), storage)
    done = first.exists(SUCCESS)  # first: a run that cannot write its output fails naming the output
    version = data_version(list_inputs(job.spec, storage))
    if not done:
        return RunRoot(first, version, complete=False)
    stored = stored_version(first)
    # A run recorded with no inputs at all cannot be compared: kept as trained, as before data versions.
    if stored is None or stored == version:
        return RunRoot(first, version, complete=True)
    other = ArtifactStore(versioned_root(job.artifact_root(), version), storage)
    return RunRoot(other, version, complete=other.exists(SUCCESS), versioned=True)


def probe(job, manifest_dir=None) -> tuple[ExitCode, TrainerResult]:
    """The data version of `job`'s data alone (`kubetune data-version`, a FineTuneSchedule's probe pod)."""
    try:
        inputs = list_inputs(job.spec, Storage(job.spec.storage.s3, manifest_dir))
    except Exception as err:  # noqa: BLE001 - typed like the trainer's; anything else is a bug, reported
        typed = classify(err) or TrainerError(f"internal error: {type(err).__name__}: {err}")
        return typed.code, TrainerResult(ok=False, reason=typed.code.reason, message=typed.message)
    files = sum(len(f) for f in inputs.values())
    version = data_version(inputs)
    return ExitCode.OK, TrainerResult(ok=True, reason=Reason.COMPLETED, data_version=version,
                                      message=f"data version {version} over {files} file(s)")
