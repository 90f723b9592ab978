"""The dynamic providers' CRUD and diff against both Runpod stand-ins on loopback.

Under mocks the providers never run, so here they run for real: create, update in place,
update that replaces, delete, drift seen through read, and the 401 / 429 / 500 paths.
"""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pulumi.output import Unknown

from infra.runpod_api.errors import RunpodApiError, RunpodAuthError, RunpodServerError
from infra.runpod_api.graphql import GraphqlApi
from infra.runpod_provider import EndpointProvider, NetworkVolumeProvider, TemplateProvider
from tests.infra.conftest import API_KEY

SECRET_VALUE = "s3-secret-value-do-not-log-123"
REFERENCE = "{{ RUNPOD_SECRET_it_s3_secret_key_abc123 }}"


@pytest.fixture(params=["rest", "graphql"])
def standin(request):
    s = request.getfixturevalue(f"{request.param}_standin")
    s.mode = request.param
    return s


def api_props(standin, key=API_KEY):
    return {"api_mode": standin.mode, "api_url": standin.base_url, "api_key": key, "api_backoff_s": 0.0,
            "api_graphql_url": None, "api_unbind_wait_s": 5.0}


def volume_props(standin, **kw):
    return {**api_props(standin), "volume_name": "it-vol", "size_gb": 50, "datacenter": "EU-RO-1", **kw}


def template_props(standin, **kw):
    return {
        **api_props(standin),
        "template_name": "it-tpl",
        "image": "ghcr.io/x/worker:1",
        "container_disk_gb": 40,
        "env": {"INFINITETALK_GPU": "h100_80", "S3_BUCKET": "b", "S3_SECRET_KEY": REFERENCE},
        "registry_id": None,
        **kw,
    }


def endpoint_props(standin, template_id, volume_id, **kw):
    return {
        **api_props(standin),
        "endpoint_name": "it-ep",
        "template_id": template_id,
        "template_revision": 1,
        "template_image": "ghcr.io/x/worker:1",
        "template_env": {"INFINITETALK_GPU": "h100_80", "S3_BUCKET": "b", "S3_SECRET_KEY": REFERENCE},
        "gpu_pools": ["ADA_80_PRO"],
        "gpu_count": 1,
        "workers_min": 0,
        "workers_max": 3,
        "idle_timeout_s": 5,
        "scaler_type": "QUEUE_DELAY",
        "scaler_value": 4,
        "flashboot": "FLASHBOOT",
        "execution_timeout_s": 1800,
        "min_cuda_version": "12.8",
        "network_volume_id": volume_id,
        "datacenters": ["EU-RO-1"],
        **kw,
    }


def test_full_lifecycle(standin):
    vp, tp, ep = NetworkVolumeProvider(), TemplateProvider(), EndpointProvider()

    # create
    vol = vp.create(volume_props(standin))
    tpl = tp.create(template_props(standin))
    assert tpl.outs["revision"] == 1 and tpl.outs["env"]["S3_SECRET_KEY"] == REFERENCE
    end = ep.create(endpoint_props(standin, tpl.id, vol.id))
    assert end.outs["run_url"] == f"https://api.runpod.ai/v2/{end.id}/run"
    assert end.outs["network_volume_id"] == vol.id and end.outs["flashboot"] == "FLASHBOOT"
    assert end.outs["min_cuda_version"] == "12.8" and end.outs["template_image"] == "ghcr.io/x/worker:1"
    assert end.outs["gpu_pools"] == ["ADA_80_PRO"] and end.outs["execution_timeout_s"] == 1800

    # update in place: volume grows, template env changes, endpoint follows the template revision
    news = volume_props(standin, size_gb=80)
    d = vp.diff(vol.id, vol.outs, news)
    assert d.changes and not d.replaces
    vol_out = vp.update(vol.id, vol.outs, news).outs
    assert vol_out["size_gb"] == 80 and vol_out["volume_id"] == vol.id

    tnews = template_props(standin, image="ghcr.io/x/worker:2", env={"INFINITETALK_GPU": "h100_80", "S3_BUCKET": "c"})
    d = tp.diff(tpl.id, tpl.outs, tnews)
    assert d.changes and not d.replaces
    tpl_out = tp.update(tpl.id, tpl.outs, tnews).outs
    assert tpl_out["revision"] == 2 and tpl_out["image"] == "ghcr.io/x/worker:2"

    enews = endpoint_props(standin, tpl.id, vol.id, template_revision=2, workers_max=5, idle_timeout_s=30,
                           template_image=tpl_out["image"], template_env=tpl_out["env"])
    d = ep.diff(end.id, end.outs, enews)
    assert d.changes and not d.replaces
    end_out = ep.update(end.id, end.outs, enews).outs
    assert (end_out["workers_max"], end_out["idle_timeout_s"]) == (5, 30)
    if standin.mode == "rest":  # the new template was pushed to the endpoint
        assert standin.endpoints[end.id]["image"] == "ghcr.io/x/worker:2"
        assert standin.endpoints[end.id]["env"]["S3_BUCKET"] == "c"

    # the engine refuses to replace a protected resource, so the volume never asks for one: a move
    # between data centers is refused at check, naming the way out
    moved = volume_props(standin, size_gb=80, datacenter="US-KS-2")
    assert not vp.diff(vol.id, vol_out, moved).replaces
    failures = vp.check(vol_out, moved).failures
    assert failures and "protected" in failures[0].reason and "DEPLOY.md" in failures[0].reason
    new_vol = vp.create(moved)  # the documented route: a second volume, the endpoint moves to it
    enews = {**enews, "network_volume_id": new_vol.id}
    end_out = ep.update(end.id, end_out, enews).outs
    assert end_out["network_volume_id"] == new_vol.id
    vp.delete(vol.id, vol_out)
    assert vp.read(vol.id, vol_out).id == ""

    # nothing changed -> no diff
    assert not ep.diff(end.id, end_out, {**enews}).changes

    # delete (endpoint first: GraphQL drains workers before deleting)
    ep.delete(end.id, end_out)
    tp.delete(tpl.id, tpl_out)
    vp.delete(new_vol.id, new_vol.outs)
    assert standin.endpoints == {} and standin.templates == {} and standin.volumes == {}
    # deleting what is already gone is not an error
    ep.delete(end.id, end_out)
    tp.delete(tpl.id, tpl_out)


def test_drift_seen_through_read(standin):
    vp, tp, ep = NetworkVolumeProvider(), TemplateProvider(), EndpointProvider()
    vol = vp.create(volume_props(standin))
    tpl = tp.create(template_props(standin))
    end = ep.create(endpoint_props(standin, tpl.id, vol.id))
    # someone edits things in the console
    if standin.mode == "rest":
        standin.volumes[vol.id]["size"] = 100
        standin.templates[tpl.id]["image"] = "evil:latest"
        standin.endpoints[end.id]["workers"]["max"] = 9
        standin.endpoints[end.id]["image"] = "evil:latest"
        standin.endpoints[end.id]["flashboot"] = "PRIORITY_FLASHBOOT"
        standin.endpoints[end.id]["scaling"]["queueDelay"] = 2.5
    else:
        standin.volumes[vol.id]["size"] = 100
        standin.templates[tpl.id]["imageName"] = "evil:latest"
        standin.endpoints[end.id]["workersMax"] = 9
    assert vp.read(vol.id, vol.outs).outs["size_gb"] == 100
    t = tp.read(tpl.id, tpl.outs)
    assert t.outs["image"] == "evil:latest" and t.outs["env"]["S3_SECRET_KEY"] == REFERENCE
    e = ep.read(end.id, end.outs)
    assert e.outs["workers_max"] == 9
    # the image the workers run is read back (REST: from the endpoint; GraphQL: its template)
    assert e.outs["template_image"] == "evil:latest"
    if standin.mode == "rest":
        assert e.outs["flashboot"] == "PRIORITY_FLASHBOOT" and e.outs["scaler_value"] == 2.5
    # the next diff against the declared inputs wants to put it back, in place
    declared = endpoint_props(standin, tpl.id, vol.id)
    d = ep.diff(end.id, e.outs, declared)
    assert d.changes and not d.replaces
    tp.update(tpl.id, t.outs, template_props(standin))
    fixed = ep.update(end.id, e.outs, declared).outs
    assert fixed["template_image"] == "ghcr.io/x/worker:1" and fixed["workers_max"] == 3
    # a resource deleted outside Pulumi reads as gone
    if standin.mode == "rest":
        del standin.endpoints[end.id]
    else:
        standin.endpoints[end.id]["workersMin"] = standin.endpoints[end.id]["workersMax"] = 0
        del standin.endpoints[end.id]
    assert ep.read(end.id, end.outs).id == ""


def test_volume_may_only_grow(standin):
    vp = NetworkVolumeProvider()
    vol = vp.create(volume_props(standin, size_gb=60))
    check = vp.check(vol.outs, volume_props(standin, size_gb=50))
    assert check.failures and "only grow" in check.failures[0].reason
    with pytest.raises(Exception, match="only grow"):
        vp.update(vol.id, vol.outs, volume_props(standin, size_gb=50))
    assert not vp.check(vol.outs, volume_props(standin, size_gb=70)).failures


def test_unauthorized_is_a_clear_error_without_the_key(standin):
    wrong = "rp_wrong_key_zzzzzzzzzzzz"
    with pytest.raises(RunpodAuthError) as err:
        NetworkVolumeProvider().create({**volume_props(standin), "api_key": wrong})
    text = str(err.value)
    assert "401" in text and "runpodApiKey" in text
    assert wrong not in text and API_KEY not in text
    assert standin.volumes == {}


def test_rate_limit_is_retried(standin):
    standin.faults.add(429, times=2, retry_after=0)
    vol = NetworkVolumeProvider().create(volume_props(standin))
    assert vol.id in standin.volumes and standin.faults.pending() == 0
    assert len(standin.calls) == 3


def test_server_errors_are_retried_then_reported(standin):
    standin.faults.add(500, times=1)
    tpl = TemplateProvider().create(template_props(standin))
    assert tpl.id in standin.templates
    standin.faults.add(500, times=10)
    with pytest.raises(RunpodServerError) as err:
        TemplateProvider().update(tpl.id, tpl.outs, template_props(standin, image="x:2"))
    text = str(err.value)
    assert "500" in text and "gave up after 6 attempts" in text
    assert API_KEY not in text


def test_secret_value_never_reaches_error_messages(graphql_standin):
    """A server that echoes the request in its error must not leak a secret value through us."""
    graphql_standin.lose_next_response = 10  # every secretCreate "fails" after running
    api = GraphqlApi(API_KEY, url=graphql_standin.base_url, backoff_s=0.0, retries=0)
    api.http.add_secrets([SECRET_VALUE])
    with pytest.raises(RunpodServerError) as err:
        api.create_secret("n_abc", SECRET_VALUE)
    assert SECRET_VALUE not in str(err.value) and API_KEY not in str(err.value)


# ---------------------------------------------------------------------------------------
# The engine's view: preview hands check/diff unknowns; create..delete run through the same servicer


@pytest.fixture(scope="module")
def engine_stub():
    """pulumi's dynamic-provider host (`python -m pulumi.dynamic`), started as the engine starts it;
    calls go over gRPC with protobuf Structs, the engine's unknown sentinel and a dill-serialised provider."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import grpc
    from pulumi.runtime.proto import provider_pb2_grpc

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, "-m", "pulumi.dynamic"], cwd=repo, env=env, stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline().decode().strip())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        yield provider_pb2_grpc.ResourceProviderStub(channel)
        channel.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _engine(stub, method: str, provider, *, olds=None, news=None, props=None, id_=""):
    import asyncio

    from pulumi.dynamic.dynamic import PROVIDER_KEY, serialize_provider
    from pulumi.runtime import rpc
    from pulumi.runtime.proto import provider_pb2 as proto

    blob = serialize_provider(provider)

    def struct(d):
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(rpc.serialize_properties({**d, PROVIDER_KEY: blob}, {}))
        finally:
            loop.close()

    if method == "Check":
        req = proto.CheckRequest(urn="urn:x", olds=struct(olds or {}), news=struct(news))
    elif method == "Diff":
        req = proto.DiffRequest(id=id_, urn="urn:x", olds=struct(olds), news=struct(news))
    elif method == "Create":
        req = proto.CreateRequest(urn="urn:x", properties=struct(props))
    elif method == "Update":
        req = proto.UpdateRequest(id=id_, urn="urn:x", olds=struct(olds), news=struct(news))
    elif method == "Read":
        req = proto.ReadRequest(id=id_, urn="urn:x", properties=struct(props))
    else:
        req = proto.DeleteRequest(id=id_, urn="urn:x", properties=struct(props))
    return getattr(stub, method)(req, timeout=60)


def _unknown():
    from pulumi.runtime.rpc import UNKNOWN

    return UNKNOWN


@pytest.mark.parametrize("mode", ["rest", "graphql"])
def test_preview_with_unknowns_check_and_diff(mode, request, engine_stub):
    """First preview of `bucketMode: aws`: env (from the bucket) and the secret's name are unknown."""
    from pulumi.runtime.proto import provider_pb2 as proto

    from infra.runpod_provider import RunpodSecretProvider

    standin = request.getfixturevalue(f"{mode}_standin")
    standin.mode = mode
    U = _unknown()
    tnews = template_props(standin, env={"S3_BUCKET": U, "S3_SECRET_KEY": U, "INFINITETALK_GPU": "h100_80"})
    res = _engine(engine_stub, "Check", TemplateProvider(), news=tnews)
    assert not res.failures
    res = _engine(engine_stub, "Check", TemplateProvider(), news=template_props(standin, env=U, image=U))
    assert not res.failures
    snews = {**api_props(standin), "secret_name": "it_s3_secret_key", "value": U, "description": ""}
    assert not _engine(engine_stub, "Check", RunpodSecretProvider(), news=snews).failures
    enews = endpoint_props(standin, U, U, template_revision=U, template_image=U, template_env=U)
    assert not _engine(engine_stub, "Check", EndpointProvider(), news=enews).failures
    assert not _engine(engine_stub, "Check", NetworkVolumeProvider(), news=volume_props(standin, size_gb=U)).failures
    # numbers cross the wire as doubles (50 -> 50.0): a known size must still pass
    assert not _engine(engine_stub, "Check", NetworkVolumeProvider(), news=volume_props(standin)).failures
    shrink = _engine(engine_stub, "Check", NetworkVolumeProvider(), olds=volume_props(standin, size_gb=60),
                     news=volume_props(standin))
    assert "only grow" in shrink.failures[0].reason
    # known bad input next to unknowns is still reported
    bad = _engine(engine_stub, "Check", TemplateProvider(), news=template_props(standin, env={"S3_SECRET_KEY": "plain!", "X": U}))
    assert bad.failures and "S3_SECRET_KEY" in bad.failures[0].reason

    # diff against created state: an unknown field is a change, never a crash
    tpl = TemplateProvider().create(template_props(standin))
    d = _engine(engine_stub, "Diff", TemplateProvider(), id_=tpl.id, olds=tpl.outs, news=tnews)
    assert d.changes == proto.DiffResponse.DIFF_SOME
    vol = NetworkVolumeProvider().create(volume_props(standin))
    end = EndpointProvider().create(endpoint_props(standin, tpl.id, vol.id))
    d = _engine(engine_stub, "Diff", EndpointProvider(), id_=end.id, olds=end.outs, news={**end.outs, "template_env": U})
    assert d.changes == proto.DiffResponse.DIFF_SOME and not list(d.replaces)
    same = _engine(engine_stub, "Diff", EndpointProvider(), id_=end.id, olds=end.outs, news=endpoint_props(standin, tpl.id, vol.id))
    assert same.changes == proto.DiffResponse.DIFF_NONE


@pytest.mark.parametrize("mode", ["rest", "graphql"])
def test_engine_create_update_read_delete(mode, request, engine_stub):
    """The same servicer with known inputs (what the engine sends on `up`), secrets included."""
    from infra.runpod_provider import RunpodSecretProvider

    standin = request.getfixturevalue(f"{mode}_standin")
    standin.mode = mode
    if mode == "rest":  # secrets live on GraphQL even for a REST stack
        gql = request.getfixturevalue("graphql_standin")
        api = {**api_props(standin), "api_graphql_url": gql.base_url}
    else:
        gql, api = standin, api_props(standin)
    sprops = {**api, "secret_name": "it_s3_secret_key", "value": SECRET_VALUE, "description": "d"}
    created = _engine(engine_stub, "Create", RunpodSecretProvider(), props=sprops)
    assert created.id in gql.secrets and gql.secrets[created.id]["value"] == SECRET_VALUE
    read = _engine(engine_stub, "Read", RunpodSecretProvider(), id_=created.id, props=sprops)
    assert read.id == created.id
    upd = _engine(engine_stub, "Update", RunpodSecretProvider(), id_=created.id, olds=sprops, news={**sprops, "description": "e"})
    assert upd.properties["description"] == "e"
    _engine(engine_stub, "Delete", RunpodSecretProvider(), id_=created.id, props=sprops)
    assert gql.secrets == {}
    # in a preview the SDK turns the sentinel into `Unknown()`; reaching a real call, that is a clear error
    from pulumi.output import Unknown

    calls_before = len(standin.calls)
    for call in (
        lambda: TemplateProvider().create(template_props(standin, image=Unknown())),
        lambda: TemplateProvider().update("t", template_props(standin), template_props(standin, env=Unknown())),
        lambda: EndpointProvider().read("e", endpoint_props(standin, Unknown(), "v")),
        lambda: NetworkVolumeProvider().delete("v", volume_props(standin, api_key=Unknown())),
    ):
        with pytest.raises(RunpodApiError, match="still unknown"):
            call()
    assert standin.templates == {} and len(standin.calls) == calls_before  # refused before any request


def test_secret_rotation_rolls_template_then_deletes_old(graphql_standin):
    from infra.runpod_provider import RunpodSecretProvider

    sp = RunpodSecretProvider()
    graphql_standin.mode = "graphql"
    props = {**api_props(graphql_standin), "secret_name": "it_key", "value": "old-value-123", "description": ""}
    first = sp.create(props)
    rotated = {**props, "value": "new-value-456"}
    d = sp.diff(first.id, first.outs, rotated)
    assert d.replaces and not d.delete_before_replace  # new secret first, then the old one goes
    second = sp.create(rotated)
    assert second.outs["runpod_name"] != first.outs["runpod_name"]
    assert second.outs["runpod_name"].startswith("it_key_")
    sp.delete(first.id, first.outs)
    assert [s["value"] for s in graphql_standin.secrets.values()] == ["new-value-456"]


@pytest.mark.parametrize("mode", ["rest", "graphql"])
def test_no_secret_value_in_any_template_or_endpoint_body(mode, request):
    """Every body sent to either API for templates and endpoints is free of the secret value."""
    from infra.runpod_api.base import secret_reference
    from infra.runpod_provider import RunpodSecretProvider

    standin = request.getfixturevalue(f"{mode}_standin")
    standin.mode = mode
    gql = standin if mode == "graphql" else request.getfixturevalue("graphql_standin")
    api = {**api_props(standin), "api_graphql_url": gql.base_url}
    sec = RunpodSecretProvider().create({**api, "secret_name": "it_s3", "value": SECRET_VALUE, "description": ""})
    env = {"S3_BUCKET": "b", "S3_SECRET_KEY": secret_reference(sec.outs["runpod_name"])}
    tp, ep, vp = TemplateProvider(), EndpointProvider(), NetworkVolumeProvider()
    tpl = tp.create(template_props(standin, env=env))
    vol = vp.create(volume_props(standin))
    end = ep.create(endpoint_props(standin, tpl.id, vol.id, template_env=env))
    tpl2 = tp.update(tpl.id, tpl.outs, template_props(standin, env=env, image="ghcr.io/x/worker:2"))
    ep.update(end.id, end.outs, endpoint_props(standin, tpl.id, vol.id, template_env=env, template_revision=2,
                                               template_image=tpl2.outs["image"]))
    ep.read(end.id, end.outs)
    tp.read(tpl.id, tpl.outs)
    bodies = [b.decode() for b in standin.bodies]
    secret_bodies = [b for b in gql.bodies if b"secretCreate" in b]
    assert len(secret_bodies) == 1 and SECRET_VALUE in secret_bodies[0].decode()
    others = [b for b in bodies if "secretCreate" not in b]
    assert any("S3_SECRET_KEY" in b for b in others)  # the reference did go out
    assert not [b for b in others if SECRET_VALUE in b]
    # and nothing read back from a template or endpoint carries it
    stored = json.dumps([standin.templates, standin.endpoints])
    assert SECRET_VALUE not in stored and sec.outs["runpod_name"] in stored


@pytest.mark.parametrize("mode", ["rest", "graphql"])
def test_retried_create_does_not_duplicate(mode, request):
    standin = request.getfixturevalue(f"{mode}_standin")
    standin.mode = mode
    standin.lose_next_response = 1  # the first POST is handled but its answer is lost
    tpl = TemplateProvider().create(template_props(standin))
    assert len(standin.templates) == 1 and tpl.id in standin.templates
    standin.lose_next_response = 1
    vol = NetworkVolumeProvider().create(volume_props(standin))
    assert len(standin.volumes) == 1 and vol.id in standin.volumes
    standin.lose_next_response = 1
    end = EndpointProvider().create(endpoint_props(standin, tpl.id, vol.id))
    assert len(standin.endpoints) == 1 and end.id in standin.endpoints


@pytest.mark.parametrize("mode", ["rest", "graphql"])
def test_template_delete_waits_while_runpod_keeps_it_bound(mode, request):
    standin = request.getfixturevalue(f"{mode}_standin")
    standin.mode = mode
    standin.unbind_delay_calls = 3  # Runpod still reports the template in use for a while
    tp, ep, vp = TemplateProvider(), EndpointProvider(), NetworkVolumeProvider()
    tpl = tp.create(template_props(standin))
    vol = vp.create(volume_props(standin))
    end = ep.create(endpoint_props(standin, tpl.id, vol.id))
    ep.delete(end.id, end.outs)
    tp.delete(tpl.id, tpl.outs)
    assert standin.templates == {}
    # and gives up with a clear message when it stays bound past the wait
    tpl = tp.create(template_props(standin, template_name="it-tpl-2"))
    end = ep.create(endpoint_props(standin, tpl.id, vol.id, endpoint_name="it-ep-2"))
    with pytest.raises(Exception, match="still refused"):
        tp.delete(tpl.id, {**tpl.outs, "api_unbind_wait_s": 0.0})


def test_patch_keeps_console_gpu_exclusions(rest_standin):
    rest_standin.mode = "rest"  # (REST only: GraphQL has no exclusions field)
    tp, ep, vp = TemplateProvider(), EndpointProvider(), NetworkVolumeProvider()
    tpl = tp.create(template_props(rest_standin))
    vol = vp.create(volume_props(rest_standin))
    end = ep.create(endpoint_props(rest_standin, tpl.id, vol.id))
    rest_standin.endpoints[end.id]["gpu"]["excludedTypes"] = ["NVIDIA H100 PCIe"]
    ep.update(end.id, end.outs, endpoint_props(rest_standin, tpl.id, vol.id, workers_max=7))
    assert rest_standin.endpoints[end.id]["gpu"]["excludedTypes"] == ["NVIDIA H100 PCIe"]
    assert rest_standin.endpoints[end.id]["workers"]["max"] == 7


def test_gpu_pool_missing_from_catalogue_is_a_clear_error(rest_standin):
    rest_standin.mode = "rest"
    tpl = TemplateProvider().create(template_props(rest_standin))
    with pytest.raises(Exception, match=r"not serverless pools in Runpod's catalogue.*gpu tier"):
        EndpointProvider().create(endpoint_props(rest_standin, tpl.id, None, gpu_pools=["BLACKWELL_999"]))
    assert rest_standin.endpoints == {}


def test_private_registry_credential_is_a_resource_the_template_uses(rest_standin):
    from infra.runpod_provider import RegistryCredentialProvider

    rest_standin.mode = "rest"
    rp = RegistryCredentialProvider()
    props = {**api_props(rest_standin), "api_rest_url": None, "registry_name": "ghcr-acme", "username": "bot",
             "password": "ghp_token_value_123"}
    cred = rp.create(props)
    assert rest_standin.registries[cred.id]["password"] == "ghp_token_value_123"
    tpl = TemplateProvider().create(template_props(rest_standin, registry_id=cred.id))
    assert rest_standin.templates[tpl.id]["registry"] == cred.id and tpl.outs["registry_id"] == cred.id
    # a new token is a new credential (Runpod never returns the old one to compare)
    assert rp.diff(cred.id, cred.outs, {**props, "password": "ghp_new"}).replaces == ["password"]
    assert "ghp_token_value_123" not in json.dumps(rest_standin.templates)
    TemplateProvider().delete(tpl.id, tpl.outs)
    rp.delete(cred.id, cred.outs)
    assert rest_standin.registries == {}


@pytest.mark.parametrize("mode", ["rest", "graphql"])
def test_import_reads_existing_resources_from_inputs_alone(mode, request, engine_stub):
    """`pulumi import` / `import_=`: the engine calls Read with the declared inputs and no prior state."""
    import asyncio

    from pulumi.dynamic.dynamic import PROVIDER_KEY, serialize_provider
    from pulumi.runtime import rpc
    from pulumi.runtime.proto import provider_pb2 as proto

    standin = request.getfixturevalue(f"{mode}_standin")
    standin.mode = mode
    from infra.runpod_api import TemplateSpec, VolumeSpec
    from infra.runpod_provider import api_from

    api = api_from(api_props(standin))  # resources made outside Pulumi, straight through the API

    vol = api.create_volume(VolumeSpec("it-vol", 50, "EU-RO-1"))
    tpl = api.create_template(TemplateSpec("it-tpl", "ghcr.io/x/worker:1", 40, {"S3_BUCKET": "b"}))
    for provider, rid, inputs, key in (
        (NetworkVolumeProvider(), vol.id, volume_props(standin), "size_gb"),
        (TemplateProvider(), tpl.id, template_props(standin, env={"S3_BUCKET": "b"}), "image"),
    ):
        loop = asyncio.new_event_loop()
        struct = loop.run_until_complete(rpc.serialize_properties({**inputs, PROVIDER_KEY: serialize_provider(provider)}, {}))
        loop.close()
        got = engine_stub.Read(proto.ReadRequest(id=rid, urn="urn:x", inputs=struct), timeout=60)
        assert got.id == rid and got.properties[key] == inputs[key]


def _with_unknowns(draw_bools, value):
    from pulumi.output import Unknown

    if isinstance(value, dict):
        return {k: _with_unknowns(draw_bools, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_unknowns(draw_bools, v) for v in value]
    return Unknown() if next(draw_bools) else value


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=64, max_size=64))
def test_check_and_diff_never_fail_on_unknowns_anywhere(flags):
    """Any subset of inputs unknown (the class of first-preview inputs): check and diff answer."""
    from infra.runpod_provider import RunpodSecretProvider

    class S:  # no server is called by check/diff
        mode, base_url = "rest", "http://127.0.0.1:9"

    olds = {"template": template_props(S), "endpoint": endpoint_props(S, "t", "v"), "volume": volume_props(S),
            "secret": {**api_props(S), "secret_name": "n", "value": "v", "description": ""}}
    it = iter(flags * 4)
    for kind, provider in (("template", TemplateProvider()), ("endpoint", EndpointProvider()),
                           ("volume", NetworkVolumeProvider()), ("secret", RunpodSecretProvider())):
        news = _with_unknowns(it, olds[kind])
        provider.check(olds[kind], news)
        d = provider.diff("id", olds[kind], news)
        if any(isinstance(v, Unknown) for v in _leaves(news)):
            assert d.changes  # an unknown is always a change
        else:
            assert not d.changes


def _leaves(v):
    if isinstance(v, dict):
        for x in v.values():
            yield from _leaves(x)
    elif isinstance(v, list):
        for x in v:
            yield from _leaves(x)
    else:
        yield v
