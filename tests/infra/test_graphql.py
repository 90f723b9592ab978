"""GraphQL client details: documents validate against the stand-in's schema (Runpod's published
facts), FlashBoot is `flashBootType`, `saveEndpoint` gets every field every time."""
from __future__ import annotations

import json

import httpx
import pytest

from infra.runpod_api import EndpointSpec, TemplateSpec, VolumeSpec, make_api
from tests.infra.conftest import API_KEY


def test_flashboot_type_and_drain_before_delete(graphql_standin):
    api = make_api("graphql", API_KEY, base_url=graphql_standin.base_url, backoff_s=0.0)
    vol = api.create_volume(VolumeSpec("v", 20, "EU-RO-1"))
    tpl = api.create_template(TemplateSpec("t", "img:1", 20, {"A": "1"}))
    spec = EndpointSpec("e", tpl.id, ("ADA_80_PRO",), workers_min=1, network_volume_id=vol.id, min_cuda_version="12.8")
    ep = api.create_endpoint(spec)
    stored = graphql_standin.endpoints[ep.id]
    assert stored["name"] == "e" and stored["flashBootType"] == "FLASHBOOT" and stored["minCudaVersion"] == "12.8"
    assert ep.flashboot == "FLASHBOOT" and ep.image == "img:1" and ep.env == {"A": "1"}
    off = api.update_endpoint(ep.id, EndpointSpec(**{**spec.__dict__, "flashboot": "OFF"}))
    assert off.flashboot == "OFF"
    api.delete_endpoint(ep.id)  # the stand-in refuses unless workers were drained first
    assert ep.id not in graphql_standin.endpoints


def test_save_endpoint_sends_every_field(graphql_standin):
    """saveEndpoint replaces the endpoint: an update that left a field out would reset it."""
    api = make_api("graphql", API_KEY, base_url=graphql_standin.base_url, backoff_s=0.0)
    tpl = api.create_template(TemplateSpec("t", "img:1", 20, {}))
    spec = EndpointSpec("e", tpl.id, ("ADA_80_PRO",), workers_min=1, workers_max=4, idle_timeout_s=60,
                        execution_timeout_s=900, datacenters=("EU-RO-1",), min_cuda_version="12.8")
    ep = api.create_endpoint(spec)
    api.update_endpoint(ep.id, EndpointSpec(**{**spec.__dict__, "workers_max": 5}))
    sent = json.loads(graphql_standin.bodies[-2])  # the saveEndpoint before the template read
    inp = sent["variables"]["input"]
    for key in ("name", "templateId", "gpuIds", "gpuCount", "workersMin", "workersMax", "idleTimeout", "scalerType",
                "scalerValue", "locations", "networkVolumeId", "executionTimeoutMs", "flashBootType", "minCudaVersion"):
        assert key in inp, key
    got = graphql_standin.endpoints[ep.id]
    assert (got["workersMax"], got["idleTimeout"], got["executionTimeoutMs"], got["minCudaVersion"]) == (5, 60, 900_000, "12.8")


def test_standin_rejects_the_old_flashboot_form(graphql_standin):
    """A client still using the `-fb` suffix (or a boolean flashboot) fails against the stand-in."""
    tpl = make_api("graphql", API_KEY, base_url=graphql_standin.base_url).create_template(TemplateSpec("t", "i:1", 20, {}))
    q = "mutation S($input: EndpointInput!) { saveEndpoint(input: $input) { id } }"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    old = {"name": "e-fb", "templateId": tpl.id, "gpuIds": "ADA_80_PRO"}
    r = httpx.post(graphql_standin.base_url, json={"query": q, "variables": {"input": old}}, headers=headers)
    assert r.json()["errors"] and "flashBootType" in r.json()["errors"][0]["message"]
    boolean = {"name": "e", "templateId": tpl.id, "gpuIds": "ADA_80_PRO", "flashBootType": True}
    r = httpx.post(graphql_standin.base_url, json={"query": q, "variables": {"input": boolean}}, headers=headers)
    assert r.json()["errors"]
    assert len(graphql_standin.violations) == 2 and graphql_standin.endpoints == {}
    graphql_standin.violations.clear()  # seen and expected: do not fail the fixture


def test_graphql_refuses_priority_flashboot(graphql_standin):
    api = make_api("graphql", API_KEY, base_url=graphql_standin.base_url, backoff_s=0.0)
    tpl = api.create_template(TemplateSpec("t", "img:1", 20, {}))
    with pytest.raises(Exception, match="not available on GraphQL"):
        api.create_endpoint(EndpointSpec("e", tpl.id, ("ADA_80_PRO",), flashboot="PRIORITY_FLASHBOOT"))
