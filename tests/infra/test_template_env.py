import json

import pytest

from configuration import GROUP_ENV_VARS, compose_config, iter_overrides_for, secret_values
from infra.template_env import template_env




# -- template env ---------------------------------------------------------------------

@pytest.mark.parametrize("overrides,env", [
    ([], {}),
    (["sampler=turbo", "gpu=h100_80", "model=infinitetalk_multi_fp8", "storage=s3", "deploy=production",
      "server.download.retries=7", "server.allowed_roots=['/a','/b c']", "sampler.sample_steps=6",
      *iter_overrides_for({"storage.key_prefix": "it's/odd\\path/${x}", "deploy.workers_max": 9})],
     {"S3_BUCKET": "bkt", "S3_SECRET_KEY": "sekrit-123", "S3_ACCESS_KEY": "AKIA1234", "DEFAULT_SAMPLE_STEPS": "12",
      "ENABLE_APG": "true", "CKPT_DIR": "/w/ck", "DEFAULT_SIZE": "infinitetalk-720"}),
    (["storage.s3.secret_key=from-override-secret", "model=infinitetalk_single", "storage.s3.bucket=null"],
     {"S3_BUCKET": "bkt"}),
])
def test_template_env_round_trip(overrides, env):
    cfg = compose_config(overrides, env=env)
    t = template_env(cfg)
    for var in GROUP_ENV_VARS.values():
        assert var in t.plain
    again = compose_config(env=t.merged())
    assert again == cfg
    assert again.tree() == cfg.tree() and again.choices == cfg.choices
    # secrets only in the secret part
    plain_text = json.dumps(t.plain)
    for s in secret_values(cfg):
        assert s not in plain_text
        assert s in json.dumps(t.secret)
    assert all(isinstance(v, str) for v in {**t.plain, **t.secret}.values())


def test_template_env_secrets_separated():
    cfg = compose_config(["storage=s3"], env={"S3_BUCKET": "b", "S3_ACCESS_KEY": "AKIAXX", "S3_SECRET_KEY": "zzsecret"})
    t = template_env(cfg)
    assert t.secret == {"S3_ACCESS_KEY": "AKIAXX", "S3_SECRET_KEY": "zzsecret"}
    assert t.plain["S3_BUCKET"] == "b" and t.plain["INFINITETALK_STORAGE"] == "s3"
    assert "S3_ACCESS_KEY" not in t.plain and "S3_SECRET_KEY" not in t.plain
