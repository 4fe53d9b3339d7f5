"""Progress events (the API's ProgressEvent) through one small interface with pluggable sinks.

`ProgressReporter.stage(...)` and `.step(...)` build events; each sink decides how often it passes them on.
Stage changes and the final event are always `forced` through every sink.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import urllib.request
from typing import Protocol, TextIO

from kubetune_api.results import PROGRESS_PATH, ProgressEvent
from kubetune_api.status import now_rfc3339


class Sink(Protocol):
    def emit(self, event: ProgressEvent, forced: bool) -> None: ...

    def close(self) -> None: ...


class JsonLinesSink:
    """One JSON object per line (stdout in the pod), at most one per `interval` seconds unless forced."""

    def __init__(self, stream: TextIO | None = None, interval: float = 1.0):
        self.stream = stream or sys.stdout
        self.interval = interval
        self._last = 0.0

    def emit(self, event: ProgressEvent, forced: bool) -> None:
        now = time.monotonic()
        if forced or now - self._last >= self.interval:
            self._last = now
            self.stream.write(json.dumps(event.to_wire(), separators=(",", ":")) + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass


class HttpSink:
    """POSTs events to the operator, best effort: a background thread sends the latest event at most every
    `interval` seconds (forced events are never dropped); failures are logged to stderr and ignored."""

    def __init__(self, base_url: str, token: str, namespace: str, name: str,
                 interval: float = 5.0, timeout: float = 3.0):
        self.url = base_url.rstrip("/") + PROGRESS_PATH.format(namespace=namespace, name=name)
        self.token, self.interval, self.timeout = token, interval, timeout
        self._queue: queue.Queue = queue.Queue()
        self._last = 0.0
        self._thread = threading.Thread(target=self._run, name="progress-http", daemon=True)
        self._thread.start()

    def emit(self, event: ProgressEvent, forced: bool) -> None:
        now = time.monotonic()
        if forced or now - self._last >= self.interval:
            self._last = now
            self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            self._post(event)

    def _post(self, event: ProgressEvent) -> None:
        body = json.dumps(event.to_wire()).encode()
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except OSError as err:  # URLError, HTTPError and timeouts are all OSErrors
            print(f"progress: POST {self.url} failed: {err}", file=sys.stderr)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout * 3)


class TqdmSink:
    """A progress bar on stderr for local runs."""

    def __init__(self):
        self._bar = None
        self._stage = None

    def emit(self, event: ProgressEvent, forced: bool) -> None:
        from tqdm import tqdm

        if event.stage != "training":
            if event.stage != self._stage:
                self.close()
                print(f"[kubetune] {event.stage}", file=sys.stderr)
            self._stage = event.stage
            return
        if self._bar is None:
            self._bar = tqdm(total=event.total_steps, initial=event.step, desc="training", unit="step",
                             file=sys.stderr, dynamic_ncols=True)
        self._stage = event.stage
        self._bar.update(event.step - self._bar.n)
        if event.loss is not None:
            self._bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.learning_rate or 0:.2e}", refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class ProgressReporter:
    """Builds ProgressEvents with an ETA and hands them to every sink."""

    def __init__(self, sinks: list[Sink] | None = None):
        self.sinks = list(sinks or [])
        self.current = ProgressEvent(stage="starting")
        self._started: tuple[float, int] | None = None

    def _send(self, forced: bool) -> None:
        self.current.time = now_rfc3339()
        for sink in self.sinks:
            sink.emit(self.current.model_copy(), forced)

    def stage(self, name: str) -> None:
        self.current = self.current.model_copy(update={"stage": name, "eta_seconds": None})
        self._send(forced=True)

    def start_training(self, step: int, total_steps: int) -> None:
        self._started = (time.monotonic(), step)
        self.current = self.current.model_copy(update={"stage": "training", "step": step, "total_steps": total_steps})
        self._send(forced=True)

    def step(self, step: int, epoch: float, loss: float, learning_rate: float) -> None:
        eta = None
        if self._started and step > self._started[1] and self.current.total_steps:
            rate = (time.monotonic() - self._started[0]) / (step - self._started[1])
            eta = int(rate * (self.current.total_steps - step))
        self.current = self.current.model_copy(update={
            "step": step, "epoch": round(epoch, 4), "loss": round(loss, 6),
            "learning_rate": learning_rate, "eta_seconds": eta})
        # The first step of an attempt always goes out: it says that training really runs, and its loss.
        first = self._started is not None and step == self._started[1] + 1
        self._send(forced=first or step == self.current.total_steps)

    def close(self, final_stage: str = "done") -> None:
        self.current = self.current.model_copy(update={"stage": final_stage, "eta_seconds": 0})
        self._send(forced=True)
        for sink in self.sinks:
            sink.close()
