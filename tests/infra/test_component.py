"""The deployment's resource graph under Pulumi mocks: policies and the env var agreement."""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from infra.component import InfiniteTalkDeployment
from infra.deploy_env import S3Values, stack_overrides
from infra.stack_config import StackSettings
from tests.infra.pulumi_mocks import run_program
from configuration import compose_config

REPO = Path(__file__).resolve().parents[2]
OVERRIDES = ["model=infinitetalk_single", "gpu=h100_80", "sampler=turbo", "storage=s3", "deploy=production"]
API_KEY = "rp_mock_api_key_abcdef0123456789"
IMAGE = "ghcr.io/infinitetalk-serve/worker@sha256:" + "0123456789abcdef" * 4

AWS_CONFIG = {
    "infinitetalk:overrides": json.dumps(OVERRIDES),
    "infinitetalk:bucketMode": "aws",
    "infinitetalk:lifecycleDays": "3",
    "infinitetalk:uiOrigins": json.dumps(["https://ui.example.com"]),
    "infinitetalk:runpodApiKey": API_KEY,
    "infinitetalk:image": IMAGE,
    "aws:region": "eu-west-1",
}
EXTERNAL_CONFIG = {
    "infinitetalk:overrides": json.dumps(["gpu=l40s_48", "storage=s3"]),
    "infinitetalk:bucketMode": "external",
    "infinitetalk:s3Endpoint": "https://acc0unt.r2.cloudflarestorage.com",
    "infinitetalk:s3Region": "auto",
    "infinitetalk:s3Bucket": "my-results",
    "infinitetalk:s3AccessKey": "r2-access-key-id-123",
    "infinitetalk:s3SecretKey": "r2-secret-access-key-456",
    "infinitetalk:runpodApi": "graphql",
    "infinitetalk:runpodApiKey": API_KEY,
    "infinitetalk:image": "ghcr.io/infinitetalk-serve/worker:v1.4.0",
}
SECRETS = ["infinitetalk:runpodApiKey", "infinitetalk:s3AccessKey", "infinitetalk:s3SecretKey"]


def _run_main(config):
    """Run infra/__main__.py exactly as `pulumi up` would, collecting the stack exports."""
    import pulumi

    exported: dict = {}
    real_export = pulumi.export

    def build():
        pulumi.export = lambda k, v: exported.__setitem__(k, v)
        try:
            runpy.run_path(str(REPO / "infra" / "__main__.py"), run_name="__main__")
        finally:
            pulumi.export = real_export
        return exported

    return run_program(build, config, SECRETS)


@pytest.fixture(scope="module")
def aws_run():
    return _run_main(AWS_CONFIG)


@pytest.fixture(scope="module")
def external_run():
    return _run_main(EXTERNAL_CONFIG)


def test_graph_has_every_resource_under_the_component(aws_run):
    types = sorted(r.type for r in aws_run.registrations)
    for t in (
        "infinitetalk:deploy:Deployment",
        "aws:s3/bucket:Bucket",
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
        "aws:s3/bucketOwnershipControls:BucketOwnershipControls",
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
        "aws:s3/bucketCorsConfiguration:BucketCorsConfiguration",
        "aws:iam/user:User",
        "aws:iam/userPolicy:UserPolicy",
        "aws:iam/accessKey:AccessKey",
        "pulumi-python:dynamic/runpod:NetworkVolume",
        "pulumi-python:dynamic/runpod:Template",
        "pulumi-python:dynamic/runpod:Endpoint",
        "pulumi-python:dynamic/runpod:Secret",
    ):
        assert t in types, t
    comp = aws_run.one("infinitetalk:deploy:Deployment")
    assert all(r.parent for r in aws_run.registrations if r is not comp)


def test_outputs(aws_run):
    out = aws_run.outputs
    assert out["endpoint_id"] == "ep-mock"
    assert out["run_url"] == "https://api.runpod.ai/v2/ep-mock/run"
    assert out["volume_id"] == "vol-mock"
    assert out["bucket"].startswith("infinitetalk-results-")
    assert aws_run.secret["worker_secret_access_key"] and aws_run.secret["worker_access_key_id"]
    for plain in ("endpoint_id", "run_url", "bucket", "volume_id"):
        assert not aws_run.secret[plain], plain


def test_bucket_is_private_with_expiry_and_cors(aws_run):
    pab = aws_run.one("BucketPublicAccessBlock").inputs
    assert all(pab[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    own = aws_run.one("BucketOwnershipControls").inputs
    assert own["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    assert "acl" not in aws_run.one("s3/bucket:Bucket").inputs
    rule = aws_run.one("BucketLifecycleConfiguration").inputs["rules"][0]
    assert rule["status"] == "Enabled" and rule["expiration"]["days"] == 3
    cors = aws_run.one("BucketCorsConfiguration").inputs["corsRules"][0]
    assert cors["allowedOrigins"] == ["https://ui.example.com"]
    assert set(cors["allowedMethods"]) <= {"GET", "HEAD"} and "GET" in cors["allowedMethods"]


def test_worker_policy_is_scoped_to_the_bucket(aws_run):
    bucket = aws_run.outputs["bucket"]
    policy = json.loads(aws_run.one("UserPolicy").inputs["policy"])
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        assert st["Resource"] in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*")
        assert all(a.startswith("s3:") and "*" not in a for a in st["Action"])


def test_volume_is_protected_and_sized_from_conf(aws_run):
    vol = aws_run.one("runpod:NetworkVolume")
    assert vol.protect
    cfg = compose_config(OVERRIDES, env={})
    assert vol.inputs["size_gb"] == cfg.deploy.volume_size_gb
    assert vol.inputs["datacenter"] == cfg.deploy.datacenter
    others = [r for r in aws_run.registrations if r is not vol]
    assert not any(r.protect for r in others)


def _secrets(run):
    return [r for r in run.registrations if r.type.endswith("runpod:Secret")]


def test_secrets_are_runpod_secrets_and_env_only_refers_to_them(aws_run):
    tpl = aws_run.one("runpod:Template")
    assert "api_key" in tpl.secret_inputs and "api_key" in aws_run.one("runpod:Endpoint").secret_inputs
    assert "api_key" in aws_run.one("runpod:NetworkVolume").secret_inputs
    assert "env" not in tpl.secret_inputs  # plain env (references only) stays readable in previews
    secrets = {r.inputs["secret_name"]: r for r in _secrets(aws_run)}
    assert len(secrets) == 2 and all("value" in r.secret_inputs for r in secrets.values())
    values = {r.inputs["value"] for r in secrets.values()}
    assert values == {"mock/secret+access/key0123456789abcdefghij", "AKIAMOCKMOCKMOCK0001"}
    env = tpl.inputs["env"]
    assert env["S3_SECRET_KEY"] == "{{ RUNPOD_SECRET_infinitetalk_test_s3_secret_key_a1b2c3 }}"
    assert env["S3_ACCESS_KEY"] == "{{ RUNPOD_SECRET_infinitetalk_test_s3_access_key_a1b2c3 }}"
    ep = aws_run.one("runpod:Endpoint").inputs
    sent = json.dumps([tpl.inputs, ep])
    for secret in (API_KEY, *values):
        if secret != API_KEY:
            assert secret not in sent
    assert "secret_env" not in tpl.inputs


def _substituted(run, env):
    """What the worker sees: Runpod replaces each reference with its secret's value."""
    by_ref = {"{{ RUNPOD_SECRET_" + r.inputs["secret_name"] + "_a1b2c3 }}": r.inputs["value"] for r in _secrets(run)}
    return {k: by_ref.get(v, v) for k, v in env.items()}


def _declared(run, bucket, region, endpoint, access, secret):
    overrides = json.loads(run_config(run)["infinitetalk:overrides"])
    s3 = S3Values(bucket=bucket, region=region, endpoint=endpoint, access_key=access, secret_key=secret)
    image = run.one("runpod:Template").inputs["image"]
    return compose_config(stack_overrides([*overrides, f"deploy.image='{image}'"], s3), env={})


def run_config(run):
    return AWS_CONFIG if run.one("runpod:Template").inputs["api_mode"] == "rest" else EXTERNAL_CONFIG


@pytest.mark.parametrize("which", ["aws", "external"])
def test_worker_composes_the_declared_config_from_template_env(which, aws_run, external_run):
    run = aws_run if which == "aws" else external_run
    tpl = run.one("runpod:Template").inputs
    env = _substituted(run, tpl["env"])
    worker_cfg = compose_config(env=env)  # exactly what the worker does at start
    if which == "aws":
        declared = _declared(run, run.outputs["bucket"], "eu-west-1", None, "AKIAMOCKMOCKMOCK0001",
                             "mock/secret+access/key0123456789abcdefghij")
    else:
        declared = _declared(run, "my-results", "auto", "https://acc0unt.r2.cloudflarestorage.com",
                             "r2-access-key-id-123", "r2-secret-access-key-456")
    assert worker_cfg.tree() == declared.tree()
    assert worker_cfg.choices == declared.choices
    assert worker_cfg.storage.target == "s3"


@pytest.mark.parametrize("which", ["aws", "external"])
def test_endpoint_sizing_comes_from_conf(which, aws_run, external_run):
    run = aws_run if which == "aws" else external_run
    overrides = json.loads(run_config(run)["infinitetalk:overrides"])
    cfg = compose_config(overrides, env={})
    ep = run.one("runpod:Endpoint").inputs
    tpl = run.one("runpod:Template").inputs
    d = cfg.deploy
    assert ep["gpu_pools"] == list(cfg.gpu.runpod_pools) and ep["gpu_pools"]
    assert (ep["gpu_count"], ep["workers_min"], ep["workers_max"]) == (cfg.gpu.parallel.ranks, d.workers_min, d.workers_max)
    assert ep["gpu_count"] == 1
    assert (ep["idle_timeout_s"], ep["scaler_type"], ep["scaler_value"]) == (d.idle_timeout_s, d.scaler_type, d.scaler_value)
    assert (ep["flashboot"], ep["execution_timeout_s"]) == ("FLASHBOOT" if d.flashboot else "OFF", d.execution_timeout_s)
    from infra.stack_config import IMAGE_MIN_CUDA

    assert ep["min_cuda_version"] == IMAGE_MIN_CUDA == "13.0"
    assert ep["template_image"] == tpl["image"] and ep["template_env"] == tpl["env"]
    assert ep["datacenters"] == [d.datacenter]
    assert ep["network_volume_id"] == "vol-mock" and ep["template_id"] == "tpl-mock"
    assert tpl["container_disk_gb"] == d.container_disk_gb
    assert tpl["image"] == run_config(run)["infinitetalk:image"]


def test_external_store_creates_no_aws_resources(external_run):
    assert not [r for r in external_run.registrations if r.type.startswith("aws:")]
    assert external_run.outputs["bucket"] == "my-results"
    assert external_run.one("runpod:Template").inputs["api_mode"] == "graphql"
    assert external_run.secret["worker_secret_access_key"]


def test_image_is_the_stacks_immutable_reference(monkeypatch):
    """The image comes from `infinitetalk:image` (CI: IMAGE_TAG), or INFINITETALK_IMAGE; never `:latest`."""
    from infra.deploy_env import ImageRefError

    run = _run_main({**AWS_CONFIG, "infinitetalk:image": "ghcr.io/acme/worker:v2.0.1"})
    assert run.one("runpod:Template").inputs["image"] == "ghcr.io/acme/worker:v2.0.1"
    no_image = {k: v for k, v in AWS_CONFIG.items() if k != "infinitetalk:image"}
    monkeypatch.setenv("INFINITETALK_IMAGE", "ghcr.io/acme/worker@sha256:" + "f" * 64)
    assert _run_main(no_image).one("runpod:Template").inputs["image"].endswith("f" * 64)
    monkeypatch.delenv("INFINITETALK_IMAGE")
    with pytest.raises(ImageRefError, match="infinitetalk:image"):
        _run_main(no_image)  # conf's default is :latest, which says nothing about what runs
    with pytest.raises(ImageRefError):
        _run_main({**AWS_CONFIG, "infinitetalk:image": "ghcr.io/acme/worker"})


def test_private_registry_and_import_of_existing_resources():
    """A private image: the credential is a resource the template points at. `importXxxId` adopts
    existing Runpod resources (what `pulumi import` does for dynamic providers)."""
    config = {**AWS_CONFIG, "infinitetalk:registryUsername": "bot", "infinitetalk:registryPassword": "ghp_tok_123",
              "infinitetalk:importVolumeId": "vol-old", "infinitetalk:importTemplateId": "tpl-old",
              "infinitetalk:importEndpointId": "ep-old"}
    run = run_program(lambda: _main_exports(), config, SECRETS + ["infinitetalk:registryPassword"])
    reg = run.one("runpod:RegistryCredential")
    assert reg.inputs["username"] == "bot" and "password" in reg.secret_inputs
    assert run.one("runpod:Template").inputs["registry_id"] == "reg-mock"
    assert "ghp_tok_123" not in json.dumps(run.one("runpod:Template").inputs)
    imported = {r.type.rsplit(":", 1)[-1]: r.import_id for r in run.registrations if r.import_id}
    assert imported == {"NetworkVolume": "vol-old", "Template": "tpl-old", "Endpoint": "ep-old"}
    assert run.one("runpod:NetworkVolume").protect  # still protected once adopted


def _main_exports():
    import pulumi

    exported: dict = {}
    real_export = pulumi.export
    pulumi.export = lambda k, v: exported.__setitem__(k, v)
    try:
        runpy.run_path(str(REPO / "infra" / "__main__.py"), run_name="__main__")
    finally:
        pulumi.export = real_export
    return exported


def test_cpu_tier_is_refused():
    from infra.deploy_env import DeployConfigError

    with pytest.raises(DeployConfigError, match="no Runpod serverless pools"):
        run_program(
            lambda: {"x": InfiniteTalkDeployment("t", StackSettings(overrides=("gpu=cpu",)), api_key="k").endpoint_id},
            {"aws:region": "eu-west-1"},
        )


def test_infra_does_not_import_torch():
    import subprocess
    import sys

    code = "import infra.component, infra.runpod_provider, infra.bucket, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("which", ["aws", "external"])
def test_providers_accept_what_the_program_declares(which, aws_run, external_run):
    """The inputs the program registers pass each provider's own check (no secret-looking plain env)."""
    from infra.runpod_provider import EndpointProvider, NetworkVolumeProvider, RunpodSecretProvider, TemplateProvider

    run = aws_run if which == "aws" else external_run
    for suffix, provider in (("runpod:Template", TemplateProvider()), ("runpod:Endpoint", EndpointProvider()),
                             ("runpod:NetworkVolume", NetworkVolumeProvider())):
        assert not provider.check({}, run.one(suffix).inputs).failures, suffix
    for secret in _secrets(run):
        assert not RunpodSecretProvider().check({}, secret.inputs).failures


def test_protected_resources_never_ask_for_replacement(aws_run):
    """The engine refuses to replace a protected resource; so its provider must never ask to."""
    import infra.runpod_provider as rp

    providers = {"NetworkVolume": rp.NetworkVolumeProvider, "Template": rp.TemplateProvider,
                 "Endpoint": rp.EndpointProvider, "Secret": rp.RunpodSecretProvider,
                 "RegistryCredential": rp.RegistryCredentialProvider}
    protected = [r for r in aws_run.registrations if r.protect]
    assert protected
    for r in protected:
        assert providers[r.type.rsplit(":", 1)[-1]].REPLACES == (), r.type


def test_multi_gpu_tier_sizes_the_endpoint_from_its_ranks(rest_standin):
    """gpu=h200_141x4: the one GPU count (gpu.parallel.ranks) reaches the endpoint the REST API creates."""
    from infra.runpod_provider import EndpointProvider, NetworkVolumeProvider, TemplateProvider
    from tests.infra.test_runpod_provider import endpoint_props, template_props, volume_props

    run = _run_main({**AWS_CONFIG, "infinitetalk:overrides": json.dumps([*OVERRIDES[:1], "gpu=h200_141x4",
                                                                          *OVERRIDES[2:]])})
    ep = run.one("runpod:Endpoint").inputs
    assert ep["gpu_count"] == 4 and ep["gpu_pools"] == ["HOPPER_141"]
    rest_standin.mode = "rest"
    tpl = TemplateProvider().create(template_props(rest_standin))
    vol = NetworkVolumeProvider().create(volume_props(rest_standin))
    end = EndpointProvider().create(endpoint_props(rest_standin, tpl.id, vol.id, gpu_count=ep["gpu_count"],
                                                   gpu_pools=ep["gpu_pools"]))
    assert rest_standin.endpoints[end.id]["gpu"]["count"] == 4
    assert end.outs["gpu_count"] == 4


def test_deploy_has_no_second_gpu_count():
    """One name per setting: a deploy-level GPU count is refused, not silently ignored."""
    from configuration import ConfigError

    with pytest.raises(ConfigError):
        compose_config(["deploy.gpu_count=4"], env={})
