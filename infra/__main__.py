"""The Pulumi program (`main: infra/` in Pulumi.yaml): read the stack's config, build the deployment."""
from __future__ import annotations

import sys
from pathlib import Path

# `pulumi up` runs this file by path; make the repo importable even without `pip install -e .`
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402

from infra.component import InfiniteTalkDeployment  # noqa: E402
from infra.stack_config import NAMESPACE, from_pulumi_config  # noqa: E402


def main() -> InfiniteTalkDeployment:
    settings = from_pulumi_config()
    api_key = pulumi.Config(NAMESPACE).require_secret("runpodApiKey")
    deployment = InfiniteTalkDeployment("infinitetalk", settings, api_key=api_key)
    pulumi.export("endpoint_id", deployment.endpoint_id)
    pulumi.export("run_url", deployment.run_url)
    pulumi.export("bucket", deployment.bucket)
    pulumi.export("volume_id", deployment.volume_id)
    pulumi.export("worker_access_key_id", deployment.worker_access_key_id)
    pulumi.export("worker_secret_access_key", deployment.worker_secret_access_key)
    return deployment


main()
