"""Stack settings parsing, and the example stack files parse."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from infra.stack_config import StackConfigError, StackSettings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_lists():
    s = StackSettings.from_mapping({"overrides": '["gpu=h100_80", "sampler=turbo"]', "uiOrigins": "https://a.example,https://b.example"})
    assert s.overrides == ("gpu=h100_80", "sampler=turbo")
    assert s.ui_origins == ("https://a.example", "https://b.example")
    assert (s.bucket_mode, s.runpod_api, s.lifecycle_days) == ("aws", "rest", 7)


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"bucketMode": "gcs"}, "bucketMode"),
        ({"runpodApi": "soap"}, "runpodApi"),
        ({"lifecycleDays": "0"}, "lifecycleDays"),
        ({"overrides": '["gpu"]'}, "not a Hydra override"),
        ({"bucketMode": "external"}, "s3Endpoint"),
        ({"uiOrigins": '["https://ui.example/"]'}, "origin"),
    ],
)
def test_bad_settings_name_the_key(raw, match):
    with pytest.raises(StackConfigError, match=match):
        StackSettings.from_mapping(raw)


@pytest.mark.parametrize("path", sorted(REPO.glob("Pulumi.*.yaml*")))
def test_example_stacks_parse(path):
    if path.name == "Pulumi.yaml":
        pytest.skip("project file")
    data = yaml.safe_load(path.read_text())["config"]
    plain = {k: v for k, v in data.items() if not isinstance(v, dict)}
    s = StackSettings.from_mapping({k: (v if isinstance(v, str) else __import__("json").dumps(v)) for k, v in plain.items()})
    assert s.overrides


def test_project_file():
    project = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
    assert project["name"] == "infinitetalk"
    assert project["runtime"]["name"] == "python" and project["main"].rstrip("/") == "infra"
