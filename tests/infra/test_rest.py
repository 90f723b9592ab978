"""REST v2 client details: the stand-in rejects what openapi-v2.json rejects."""
from __future__ import annotations

import pytest

from infra.runpod_api import VolumeSpec, make_api
from infra.runpod_api.errors import RunpodRateLimitError, RunpodValidationError
from tests.infra.conftest import API_KEY


def test_a_request_outside_the_spec_fails(rest_standin):
    api = make_api("rest", API_KEY, base_url=rest_standin.base_url, backoff_s=0.0)
    with pytest.raises(RunpodValidationError, match="422"):
        api.create_volume(VolumeSpec("v", 5, "EU-RO-1"))  # the spec's minimum is 10 GB
    assert rest_standin.violations and "minimum of 10" in rest_standin.violations[0]
    rest_standin.violations.clear()  # seen and expected: do not fail the fixture


def test_rate_limit_exhausted(rest_standin):
    api = make_api("rest", API_KEY, base_url=rest_standin.base_url, backoff_s=0.0, retries=2)
    rest_standin.faults.add(429, times=3, retry_after=0)
    with pytest.raises(RunpodRateLimitError, match="429"):
        api.get_volume("nope")
    assert len(rest_standin.calls) == 3
