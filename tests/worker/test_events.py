"""Webhook events from the worker go through the SSRF guard: refused up front for a private address,
refused again at connection time, delivered in order to an allowed receiver."""
from __future__ import annotations

import time

import pytest

from tests.worker.test_preview_e2e import Receiver
from contract.errors import ErrorCode, JobError
from worker.inputs.netguard import NetPolicy
from worker.preview.events import EventPoster, check_webhook_url


@pytest.mark.parametrize("url", ["http://10.0.0.1/h", "http://127.0.0.1:9/h", "http://[::1]/h", "ftp://example.com/h",
                                 "http://169.254.169.254/latest"])
def test_private_or_odd_webhook_urls_are_refused_before_the_job_runs(url):
    with pytest.raises(JobError) as err:
        check_webhook_url(url, NetPolicy())
    assert err.value.code is ErrorCode.E_INPUT_VALIDATION and err.value.details["field"] == "webhook_url"


def test_events_are_posted_in_order_when_the_receiver_is_allowed():
    hook = Receiver()
    poster = EventPoster("j1", hook.url, frozenset({"segment"}), NetPolicy(allow=("127.0.0.1",)))
    for i in range(3):
        poster.post("segment", {"segment": i})
    poster.post("done", {"status": "COMPLETED"})  # not asked for: not sent
    poster.close()
    assert [(b["id"], b["event"], b["segment"]) for b in hook.bodies] == [("j1", "segment", i) for i in range(3)]
    assert poster.delivered == 3


def test_guard_refuses_at_connection_time_and_the_job_goes_on():
    hook = Receiver()
    poster = EventPoster("j2", hook.url, frozenset({"segment"}), NetPolicy())  # loopback not allowed
    poster.post("segment", {"segment": 0})
    t = time.monotonic()
    poster.close()
    assert hook.bodies == [] and poster.failed == 1 and time.monotonic() - t < 5
