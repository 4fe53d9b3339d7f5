"""Progress reaches the operator: JSON lines on stdout and throttled, authenticated POSTs."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubetune_api.results import ProgressEvent
from kubetune_trainer.progress import HttpSink, JsonLinesSink, ProgressReporter


class Recorder(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Authorization"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_events_are_posted_with_the_token_throttled_but_stage_changes_and_the_end_always_arrive():
    Recorder.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stdout = io.StringIO()
    sink = HttpSink(f"http://127.0.0.1:{server.server_port}", "s3cret", "team-a", "bot", interval=5.0)
    reporter = ProgressReporter([JsonLinesSink(stdout, interval=0), sink])
    reporter.stage("loading")
    reporter.start_training(0, 50)
    for step in range(1, 51):
        reporter.step(step, step / 50, 1.0 / step, 1e-4)
    reporter.stage("evaluating")
    reporter.close()
    server.shutdown()
    paths = {path for path, _, _ in Recorder.received}
    assert paths == {"/v1/progress/team-a/bot"}
    assert {auth for _, auth, _ in Recorder.received} == {"Bearer s3cret"}
    events = [ProgressEvent.model_validate(body) for _, _, body in Recorder.received]
    stages = [e.stage for e in events]
    assert stages[0] == "loading" and stages[-1] == "done" and "evaluating" in stages
    assert len(events) < 10, "steps within 5 seconds are not each posted"
    assert any(e.stage == "training" and e.step == 50 and e.percent == 100 for e in events)
    lines = [ProgressEvent.model_validate_json(line) for line in stdout.getvalue().splitlines()]
    assert len(lines) == 54 and lines[-3].step == 50 and lines[-3].eta_seconds == 0 and lines[10].eta_seconds is not None


def test_an_unreachable_operator_never_stops_training(capsys):
    sink = HttpSink("http://127.0.0.1:9", "t", "ns", "job", timeout=0.5)
    reporter = ProgressReporter([sink])
    reporter.stage("loading")
    reporter.close()
    assert "progress: POST http://127.0.0.1:9/v1/progress/ns/job failed" in capsys.readouterr().err
