import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from worker.progress import ProgressReporter, Stage
from worker.progress_sender import OrderedSender

ROOT = Path(__file__).resolve().parents[2]


def test_stages_arrive_in_order_even_when_the_first_post_is_slow():
    got = []

    def deliver(payload):
        if payload["stage"] == "load":
            time.sleep(0.2)  # a post-per-thread sender would let "encode" overtake this one
        got.append(payload["stage"])

    sender = OrderedSender(deliver)
    p = ProgressReporter(sender)
    for stage in (Stage.AUDIO, Stage.LOAD, Stage.ENCODE, Stage.SAMPLING, Stage.DECODE):
        p.stage(stage)
    assert sender.close(timeout=5)
    assert got == ["audio", "load", "encode", "sampling", "decode"]
    assert sender.sent == 5 and sender.failed == 0


def test_waiting_updates_of_one_stage_collapse_to_the_newest():
    release = threading.Event()
    got = []

    def deliver(payload):
        release.wait(5)
        got.append((payload["stage"], payload["percent"]))

    sender = OrderedSender(deliver)
    sender({"stage": "load", "percent": 12})
    time.sleep(0.05)  # the thread now holds "load" inside deliver
    for pct in (30, 40, 50):
        sender({"stage": "sampling", "percent": pct})
    sender({"stage": "decode", "percent": 90})
    release.set()
    assert sender.close(timeout=5)
    assert got == [("load", 12), ("sampling", 50), ("decode", 90)]
    assert sender.coalesced == 2


def test_a_failing_post_does_not_stop_later_ones_and_close_refuses_more():
    got = []

    def deliver(payload):
        if payload["stage"] == "load":
            raise ConnectionError("endpoint away")
        got.append(payload["stage"])

    sender = OrderedSender(deliver)
    for stage in ("audio", "load", "encode"):
        sender({"stage": stage})
    assert sender.close(timeout=5)
    assert got == ["audio", "encode"] and sender.failed == 1
    with pytest.raises(RuntimeError, match="closed"):
        sender({"stage": "done"})


def test_close_gives_up_after_its_timeout_on_a_stuck_endpoint():
    stuck = threading.Event()
    sender = OrderedSender(lambda payload: stuck.wait(10))
    sender({"stage": "load"})
    t0 = time.monotonic()
    assert sender.close(timeout=0.2) is False
    assert time.monotonic() - t0 < 2
    stuck.set()


def _recording_server() -> tuple[list, ThreadingHTTPServer]:
    """A real HTTP server that records each POST's path and JSON body."""
    bodies: list = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            n = int(self.headers["Content-Length"])
            bodies.append((self.path, json.loads(self.rfile.read(n))))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return bodies, server


def test_runpod_post_reaches_the_job_done_url_through_the_sdk():
    """The SDK's own HTTP path (aiohttp, its URL template) against a real local server."""
    bodies, server = _recording_server()
    try:
        _run_in_child(
            "from worker.progress_sender import runpod_post\n"
            "runpod_post({'id': 'job-7'}, {'stage': 'encode', 'percent': 20.0})\n"
            "runpod_post({'id': 'job-7'}, {'stage': 'sampling', 'percent': 25.0})\n",
            {"RUNPOD_WEBHOOK_POST_OUTPUT": f"http://127.0.0.1:{server.server_port}/done/$ID?gpu=x", "RUNPOD_POD_ID": "w1"},
        )
    finally:
        server.shutdown()
    assert [b for _, b in bodies] == [
        {"status": "IN_PROGRESS", "output": {"stage": "encode", "percent": 20.0}},
        {"status": "IN_PROGRESS", "output": {"stage": "sampling", "percent": 25.0}},
    ]
    assert all(path.startswith("/done/job-7?gpu=x") for path, _ in bodies)


def _run_in_child(code: str, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    """`code` in a fresh process: the SDK reads its job-done URL from the environment at import."""
    env = {k: v for k, v in os.environ.items() if k != "RUNPOD_WEBHOOK_POST_OUTPUT"} | env_extra
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def _deliver_in_child(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    return _run_in_child(
        "from worker.logging_setup import configure_logging\n"
        "configure_logging('INFO')\n"
        "from worker.progress_sender import progress_delivery\n"
        "progress_delivery({'id': 'job-9'})({'stage': 'encode', 'percent': 20.0})\n",
        env_extra,
    )


def test_without_a_job_done_url_progress_goes_to_the_log_not_a_failed_post():
    out = _deliver_in_child({})
    text = out.stdout + out.stderr
    assert "progress" in text and "job-9" in text and "encode" in text
    assert "Failed to return job results" not in text and "Error while returning" not in text


def test_with_a_job_done_url_progress_is_posted():
    bodies, server = _recording_server()
    try:
        url = f"http://127.0.0.1:{server.server_port}/done/$ID?gpu=x"
        _deliver_in_child({"RUNPOD_WEBHOOK_POST_OUTPUT": url, "RUNPOD_POD_ID": "w1"})
    finally:
        server.shutdown()
    assert [b for _, b in bodies] == [{"status": "IN_PROGRESS", "output": {"stage": "encode", "percent": 20.0}}]
