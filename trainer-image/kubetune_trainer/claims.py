"""Who writes a spec hash's artefacts: a claim object created only if absent, so two runs of one spec racing
to the same output (a pod left running on a partitioned node while the next attempt trains, or one manifest
run twice by hand) never write over each other.

The writer creates `_WRITING` below the artefact root with a conditional create (S3 `If-None-Match: *`,
which AWS S3, MinIO and SeaweedFS honour; `O_EXCL` for a local folder), keeps it fresh with a heartbeat
while it writes, `_SUCCESS` last, then removes it. A run that finds a fresh claim waits for the holder's
`_SUCCESS` and then reports AlreadyComplete, keeping what the other stored; a claim with no heartbeat for
`STALE_AFTER_S` (its writer died while saving) is taken over. A store that ignores the condition gives no
protection beyond the `_SUCCESS` check before saving (docs/failures.md).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from datetime import datetime, timezone

from .errors import NotFound, Transient

CLAIM = "_WRITING"
WAIT_S = 900.0  # how long a run waits for another's save before failing as Transient (the operator retries)
STALE_AFTER_S = 120.0  # no heartbeat for this long: the writer is gone
HEARTBEAT_S = 20.0
POLL_S = 5.0


def _now() -> datetime:
    return datetime.now(timezone.utc)


class OutputClaim:
    """`acquire()` -> True: this run writes (call `release()` after `_SUCCESS`); False: another run's
    `_SUCCESS` landed while this one waited, so nothing must be written."""

    def __init__(self, store, owner: str, *, success: str, wait_s: float | None = None,
                 stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S, poll_s: float = POLL_S):
        self.store, self.success = store, success
        self.owner = f"{owner} (pod/host {socket.gethostname()}, pid {os.getpid()})"
        self.token = secrets.token_hex(8)
        self.wait_s = float(os.environ.get("KUBETUNE_CLAIM_WAIT_SECONDS", WAIT_S)) if wait_s is None else wait_s
        self.stale_after_s, self.heartbeat_s, self.poll_s = stale_after_s, heartbeat_s, poll_s
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def _document(self) -> str:
        return json.dumps({"owner": self.owner, "token": self.token, "heartbeat": _now().isoformat()}) + "\n"

    def acquire(self) -> bool:
        started = time.monotonic()
        announced = False
        while True:
            held = self.store.create_exclusive(CLAIM, self._document())
            if held is None:
                if self.store.exists(self.success):  # its holder finished and let go just now
                    self.store.delete(CLAIM)
                    return False
                self._start_heartbeat()
                return True
            if self.store.exists(self.success):
                return False
            claim = _parse(held)
            idle = (_now() - claim["heartbeat"]).total_seconds() if claim else float("inf")
            if idle >= self.stale_after_s:
                print(f"kubetune: taking over {self.store.uri(CLAIM)} from {claim.get('owner', '?')}: no heartbeat "
                      f"for {idle:.0f}s and no {self.success}", file=sys.stderr)
                self._delete_if_unchanged(held)
                continue
            waited = time.monotonic() - started
            if waited >= self.wait_s:
                raise Transient(
                    f"{claim['owner']} is writing the artefacts of this spec hash to {self.store.uri()}; waited "
                    f"{waited:.0f}s for its {self.success}. The next attempt looks again and reports "
                    "AlreadyComplete once that run is done")
            if not announced:
                print(f"kubetune: {claim['owner']} is writing the artefacts of this spec hash; waiting for its "
                      f"{self.success}", file=sys.stderr)
                announced = True
            time.sleep(self.poll_s)

    def _delete_if_unchanged(self, held: str) -> None:
        """Delete the stale claim unless a third run took it over since we read it."""
        try:
            if self.store.read_text(CLAIM) == held:
                self.store.delete(CLAIM)
        except (NotFound, FileNotFoundError):
            pass

    def _start_heartbeat(self) -> None:
        self._beat = threading.Thread(target=self._heartbeat, name="output-claim-heartbeat", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if self.token not in self.store.read_text(CLAIM):
                    print("kubetune: warning: another run took over the output claim", file=sys.stderr)
                    return
                self.store.write_text(CLAIM, self._document())
            except (Transient, NotFound, OSError) as err:  # the next beat tries again
                print(f"kubetune: warning: output claim heartbeat failed: {err}", file=sys.stderr)

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        self.store.delete(CLAIM)


def _parse(text: str) -> dict:
    try:
        doc = json.loads(text)
        doc["heartbeat"] = datetime.fromisoformat(doc["heartbeat"])
        doc.setdefault("owner", "another run")
        return doc
    except (ValueError, KeyError, TypeError):
        return {}  # unreadable: treated as stale, so a garbage object never blocks a spec hash for good
