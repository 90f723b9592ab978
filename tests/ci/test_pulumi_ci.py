"""ci/pulumi.sh and its core (infra/ci_stack.py): run for real against a recording `pulumi` on PATH
(the CLI is not installed here), then the recorded stack config drives the Pulumi program under
mocks, so IMAGE_TAG is followed from CI's environment into the template's inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.ci_stack import CiConfigError, plan

REPO = Path(__file__).resolve().parents[2]
DIGEST_IMAGE = "ghcr.io/acme/worker@sha256:" + "ab" * 32

# a stand-in for the pulumi CLI: appends {"argv": [...], "stdin": "..."} per call to $PULUMI_LOG
FAKE_PULUMI = """#!/usr/bin/env python3
import json, os, sys
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open(os.environ["PULUMI_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "stdin": stdin}) + "\\n")
"""

BASE_ENV = {"PULUMI_STACK": "acme/infinitetalk/prod", "PULUMI_ACCESS_TOKEN": "pul-token", "RUNPOD_API_KEY": "rp_key_123456"}


def _run_script(tmp_path: Path, command: str, **env: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake = bindir / "pulumi"
    fake.write_text(FAKE_PULUMI)
    fake.chmod(0o755)
    log = tmp_path / "pulumi.log"
    full = {"PATH": f"{bindir}:{os.environ['PATH']}", "PULUMI_LOG": str(log), "PYTHON": sys.executable,
            "HOME": str(tmp_path), **env}
    res = subprocess.run(["bash", str(REPO / "ci" / "pulumi.sh"), command], cwd=REPO, env=full,
                         capture_output=True, text=True, timeout=120)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return res, calls


def _config_from_calls(calls: list[dict]) -> tuple[dict[str, str], list[str]]:
    """Apply the recorded `pulumi config set` calls to the committed stack file, as the CLI would."""
    data = yaml.safe_load((REPO / "Pulumi.prod.yaml").read_text())["config"]
    config = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in data.items()}
    secret_keys = []
    for c in calls:
        argv = c["argv"]
        if argv[:2] == ["config", "set"]:
            rest = [a for a in argv[2:] if a not in ("--secret",)]
            if "--stack" in rest:
                i = rest.index("--stack")
                del rest[i:i + 2]
            key = rest[0]
            config[key] = rest[1] if len(rest) > 1 else c["stdin"]
            if "--secret" in argv:
                secret_keys.append(key)
    return config, secret_keys


def test_ci_up_with_image_tag_reaches_the_template(tmp_path):
    res, calls = _run_script(tmp_path, "up", **BASE_ENV, IMAGE_TAG=DIGEST_IMAGE)
    assert res.returncode == 0, res.stderr
    argvs = [c["argv"] for c in calls]
    assert ["config", "set", "--stack", "acme/infinitetalk/prod", "infinitetalk:image", DIGEST_IMAGE] in argvs
    up = argvs[-1]
    assert up[0] == "up" and "--refresh" in up and "--yes" in up
    # the API key went through stdin, never argv
    assert not any("rp_key_123456" in a for argv in argvs for a in argv)
    assert any(c["stdin"] == "rp_key_123456" for c in calls)

    from tests.infra.test_component import _run_main

    config, secret_keys = _config_from_calls(calls)
    run = _run_main(config)
    tpl = run.one("runpod:Template").inputs
    assert tpl["image"] == DIGEST_IMAGE
    assert run.one("runpod:Endpoint").inputs["template_image"] == DIGEST_IMAGE
    assert "infinitetalk:runpodApiKey" in secret_keys


def test_preview_refreshes_and_sets_no_image_without_one(tmp_path):
    res, calls = _run_script(tmp_path, "preview", **BASE_ENV)
    assert res.returncode == 0, res.stderr
    argvs = [c["argv"] for c in calls]
    assert argvs[-1][0] == "preview" and "--refresh" in argvs[-1]
    assert not [a for a in argvs if "infinitetalk:image" in a]


@pytest.mark.parametrize(
    "env, match",
    [
        ({**BASE_ENV, "PULUMI_STACK": "acme/infinitetalk/staging"}, "Pulumi.staging.yaml is not committed"),
        ({**BASE_ENV, "IMAGE_TAG": "ghcr.io/acme/worker:latest"}, "IMAGE_TAG: .*not immutable"),
        ({k: v for k, v in BASE_ENV.items() if k != "PULUMI_ACCESS_TOKEN"} | {"PULUMI_BACKEND_URL": "s3://state"},
         "PULUMI_CONFIG_PASSPHRASE"),
        ({k: v for k, v in BASE_ENV.items() if k != "RUNPOD_API_KEY"}, "RUNPOD_API_KEY"),
    ],
)
def test_missing_pieces_fail_with_a_clear_message(tmp_path, env, match):
    with pytest.raises(CiConfigError, match=match):
        plan("up", env, REPO)
    res, calls = _run_script(tmp_path, "up", **env)
    assert res.returncode == 2 and calls == []
    assert "ci/pulumi.sh:" in res.stderr


def test_self_managed_backend_logs_in_with_the_passphrase_in_env():
    env = {**{k: v for k, v in BASE_ENV.items() if k != "PULUMI_ACCESS_TOKEN"},
           "PULUMI_BACKEND_URL": "s3://state", "PULUMI_CONFIG_PASSPHRASE": "pp"}
    p = plan("up", env, REPO)
    assert p.calls[0].argv[:3] == ("pulumi", "login", "s3://state")
    assert p.env["PULUMI_CONFIG_PASSPHRASE"] == "pp"
    assert not any("pp" == a for c in p.calls for a in c.argv)


def test_workflow_separates_preview_from_production():
    wf = yaml.safe_load((REPO / ".github" / "workflows" / "infra.yml").read_text())
    assert "env" not in wf  # no credentials at workflow level
    preview, up = wf["jobs"]["preview"], wf["jobs"]["up"]
    assert preview["environment"] == "preview" and up["environment"] == "production"
    assert "preview" in preview["env"]["PULUMI_STACK"] and "prod" in up["env"]["PULUMI_STACK"]
    assert "PULUMI_CONFIG_PASSPHRASE" in preview["env"] and "PULUMI_CONFIG_PASSPHRASE" in up["env"]
    paths = wf[True]["pull_request"]["paths"] if True in wf else wf["on"]["pull_request"]["paths"]
    for shaping in ("conf/**", "infra/**", "configuration/**", "contract/**", "Pulumi*.yaml"):
        assert shaping in paths
    for stack in ("prod", "preview"):
        assert (REPO / f"Pulumi.{stack}.yaml").is_file()
