"""The data version: what a run's data was, not only where it was.

The spec hash names a run by its settings and data URIs; the data version names the bytes behind those
URIs: one digest over every data file's URI, size and identity (its S3 ETag, or the sha256 of a local file).
It is computed from a listing (no download), by the trainer before it trains, and by a FineTuneSchedule
before it creates a job. A finished run records it in lineage.json; runs recorded before data versions
existed have it recomputed from the per-file inputs their lineage.json lists, so they compare the same.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

# The spec fields whose files are data (the model is named by its weights digest in lineage.json instead).
DATA_ROLES = ("train", "eval", "regression")


def file_identity(entry: Mapping) -> str:
    """The content identity of one listed file: its S3 ETag, else the sha256 of a local file."""
    return str(entry.get("etag") or entry.get("sha256") or "")


def data_version(inputs: Mapping[str, Sequence[Mapping]]) -> str:
    """16 hex digits over every (role, uri, size, identity), order-independent. `inputs` maps a role
    (train, eval, regression) to its files as lineage.json lists them: dicts with uri, size and etag or
    sha256 (other keys are ignored)."""
    lines = sorted(
        f"{role}\t{f['uri']}\t{int(f['size'])}\t{file_identity(f)}"
        for role, files in inputs.items() if role in DATA_ROLES for f in files
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def versioned_root(root: str, version: str) -> str:
    """Where a run of the same spec on other data goes: `{...}/{specHash}-data-{version}/`, next to the
    spec hash's first folder, which stays untouched."""
    return f"{root.rstrip('/')}-data-{version}/"
