"""The dynamic providers' CRUD and diff against both Runpod stand-ins on loopback.

Under mocks the providers never run, so here they run for real: create, update in place,
update that replaces, delete, drift seen through read, and the 401 / 429 / 500 paths.
"""
from __future__ import annotations

import pytest

from infra.runpod_api.errors import RunpodAuthError, RunpodServerError
from infra.runpod_provider import EndpointProvider, NetworkVolumeProvider, TemplateProvider
from tests.infra.conftest import API_KEY

SECRET_VALUE = "s3-secret-value-do-not-log-123"


@pytest.fixture(params=["rest", "graphql"])
def standin(request):
    s = request.getfixturevalue(f"{request.param}_standin")
    s.mode = request.param
    return s


def api_props(standin, key=API_KEY):
    return {"api_mode": standin.mode, "api_url": standin.base_url, "api_key": key, "api_backoff_s": 0.0}


def volume_props(standin, **kw):
    return {**api_props(standin), "volume_name": "it-vol", "size_gb": 50, "datacenter": "EU-RO-1", **kw}


def template_props(standin, **kw):
    return {
        **api_props(standin),
        "template_name": "it-tpl",
        "image": "ghcr.io/x/worker:1",
        "container_disk_gb": 40,
        "env": {"INFINITETALK_GPU": "h100_80", "S3_BUCKET": "b"},
        "secret_env": {"S3_SECRET_KEY": SECRET_VALUE},
        **kw,
    }


def endpoint_props(standin, template_id, volume_id, **kw):
    return {
        **api_props(standin),
        "endpoint_name": "it-ep",
        "template_id": template_id,
        "template_revision": 1,
        "gpu_pools": ["ADA_80_PRO"],
        "gpu_count": 1,
        "workers_min": 0,
        "workers_max": 3,
        "idle_timeout_s": 5,
        "scaler_type": "QUEUE_DELAY",
        "scaler_value": 4,
        "flashboot": True,
        "execution_timeout_s": 1800,
        "network_volume_id": volume_id,
        "datacenters": ["EU-RO-1"],
        **kw,
    }


def test_full_lifecycle(standin):
    vp, tp, ep = NetworkVolumeProvider(), TemplateProvider(), EndpointProvider()

    # create
    vol = vp.create(volume_props(standin))
    tpl = tp.create(template_props(standin))
    assert tpl.outs["revision"] == 1 and tpl.outs["secret_env"] == {"S3_SECRET_KEY": SECRET_VALUE}
    end = ep.create(endpoint_props(standin, tpl.id, vol.id))
    assert end.outs["run_url"] == f"https://api.runpod.ai/v2/{end.id}/run"
    assert end.outs["network_volume_id"] == vol.id and end.outs["flashboot"] is True
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

    enews = endpoint_props(standin, tpl.id, vol.id, template_revision=2, workers_max=5, idle_timeout_s=30)
    d = ep.diff(end.id, end.outs, enews)
    assert d.changes and not d.replaces
    end_out = ep.update(end.id, end.outs, enews).outs
    assert (end_out["workers_max"], end_out["idle_timeout_s"]) == (5, 30)
    if standin.mode == "rest":  # the new template was pushed to the endpoint
        assert standin.endpoints[end.id]["image"] == "ghcr.io/x/worker:2"
        assert standin.endpoints[end.id]["env"]["S3_BUCKET"] == "c"

    # update that replaces: a volume cannot move between data centers
    moved = volume_props(standin, size_gb=80, datacenter="US-KS-2")
    d = vp.diff(vol.id, vol_out, moved)
    assert d.replaces == ["datacenter"]
    new_vol = vp.create(moved)  # the engine creates the replacement first ...
    assert new_vol.id != vol.id and new_vol.outs["datacenter"] == "US-KS-2"
    # ... dependents move to it ...
    enews = {**enews, "network_volume_id": new_vol.id}
    end_out = ep.update(end.id, end_out, enews).outs
    assert end_out["network_volume_id"] == new_vol.id
    vp.delete(vol.id, vol_out)  # ... then the old one is deleted
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
    else:
        standin.volumes[vol.id]["size"] = 100
        standin.templates[tpl.id]["imageName"] = "evil:latest"
        standin.endpoints[end.id]["workersMax"] = 9
    assert vp.read(vol.id, vol.outs).outs["size_gb"] == 100
    t = tp.read(tpl.id, tpl.outs)
    assert t.outs["image"] == "evil:latest" and t.outs["secret_env"] == {"S3_SECRET_KEY": SECRET_VALUE}
    e = ep.read(end.id, end.outs)
    assert e.outs["workers_max"] == 9
    # the next diff against the declared inputs wants to put it back, in place
    d = ep.diff(end.id, e.outs, endpoint_props(standin, tpl.id, vol.id))
    assert d.changes and not d.replaces
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
    assert SECRET_VALUE not in text and API_KEY not in text


def test_secret_env_never_reaches_error_messages(standin):
    """A server that echoes the request body in its error must not leak the secret through us."""
    tp = TemplateProvider()
    tpl = tp.create(template_props(standin))
    # name clash on GraphQL / unknown id on REST: both produce an error that may quote inputs
    with pytest.raises(Exception) as err:
        tp.update("does-not-exist", tpl.outs, template_props(standin, template_name=SECRET_VALUE))
    assert SECRET_VALUE not in str(err.value)
