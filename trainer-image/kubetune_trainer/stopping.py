"""SIGTERM: the kubelet's notice, `terminationGracePeriodSeconds` before it kills the trainer (the pod is
deleted for preemption, a suspend or a spec change, or its node is drained). Inside the training loop the
trainer finishes the optimizer step it is in, saves a checkpoint and exits, so the next attempt resumes
from that step instead of the last periodic checkpoint; anywhere else it exits at once, as Python's default
would, but with a typed result in the termination message."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Transient


class Interrupted(Transient):
    """Stopped by SIGTERM; a new attempt can go on (retryable)."""


class GracefulStop:
    def __init__(self) -> None:
        self.requested = False
        self._deferred = False

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """Handle SIGTERM while inside (main thread only, as all signal handlers); the previous handler after."""
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        if not self._deferred:
            raise Interrupted("stopped by SIGTERM outside the training loop (pod deleted or node drained); "
                              "the next attempt starts from the newest checkpoint")

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """While inside, SIGTERM only sets `requested`; the caller stops at its next safe point."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False
