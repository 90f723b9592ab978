"""GraphQL client details: documents validate against the schema; FlashBoot rides on the name."""
from __future__ import annotations

from infra.runpod_api import EndpointSpec, TemplateSpec, VolumeSpec, make_api
from tests.infra.conftest import API_KEY


def test_flashboot_suffix_and_drain_before_delete(graphql_standin):
    api = make_api("graphql", API_KEY, base_url=graphql_standin.base_url, backoff_s=0.0)
    vol = api.create_volume(VolumeSpec("v", 20, "EU-RO-1"))
    tpl = api.create_template(TemplateSpec("t", "img:1", 20, {"A": "1"}))
    ep = api.create_endpoint(EndpointSpec("e", tpl.id, ("ADA_80_PRO",), workers_min=1, network_volume_id=vol.id))
    assert graphql_standin.endpoints[ep.id]["name"] == "e-fb"
    assert ep.name == "e" and ep.flashboot
    api.delete_endpoint(ep.id)  # the stand-in refuses unless workers were drained first
    assert ep.id not in graphql_standin.endpoints
