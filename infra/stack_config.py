"""Stack settings: Hydra overrides for conf/ plus the few settings only infra has.

Pulumi config lives under the project namespace `infinitetalk:` (see Pulumi.example.yaml):

- `overrides`: list of Hydra overrides, e.g. `["gpu=h100_80", "sampler=turbo", "deploy=production"]`;
  everything about the worker and the endpoint's sizing comes from conf/ through these.
- `bucketMode`: `aws` (create the results bucket and a scoped IAM user) or `external` (your own
  S3-compatible store: R2, B2, MinIO; give `s3Endpoint`, `s3Region`, `s3Bucket`, and the secrets
  `s3AccessKey`, `s3SecretKey`).
- `bucketName` (aws, optional: an auto-named bucket otherwise), `lifecycleDays` (results expire),
  `uiOrigins` (list of origins allowed to GET results from a browser; CORS).
- `runpodApi`: `rest` (default) or `graphql`; `runpodApiUrl` to point at another host;
  `runpodGraphqlUrl` (Runpod secrets exist only on GraphQL); `runpodApiKey` (secret, required).
- `image`: the worker image, an immutable reference (`repo@sha256:...` or a release tag); CI sets
  it from IMAGE_TAG. Without it, `INFINITETALK_IMAGE` from the deployer's environment, then conf/.
- `registryUsername` (+ secret `registryPassword`, optional `registryName`): credentials for a
  private image registry (GHCR, ECR), kept as a Runpod registry credential the template uses.
- `importVolumeId`, `importTemplateId`, `importEndpointId`: adopt existing Runpod resources on
  the next `up` instead of creating new ones (`pulumi import` for dynamic resources).
- `minCudaVersion`: lowest CUDA the endpoint's hosts must offer (default: the image's, 13.0).

Parsing is a pure function of a string mapping, so it is tested without the Pulumi CLI.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional

BUCKET_MODES = ("aws", "external")
API_MODES = ("rest", "graphql")
NAMESPACE = "infinitetalk"
# images/Dockerfile builds on CUDA 13.0 (nvidia/cuda:13.0.x, torch cu130); hosts with an older driver cannot
# run it, so the endpoint asks Runpod for this floor (stack config `minCudaVersion` overrides it for an image
# built on another CUDA line)
IMAGE_MIN_CUDA = "13.0"


class StackConfigError(ValueError):
    """The stack's config is incomplete or contradictory; the message names the key to set."""


@dataclass(frozen=True)
class StackSettings:
    overrides: tuple[str, ...] = ()
    bucket_mode: str = "aws"
    bucket_name: Optional[str] = None
    lifecycle_days: int = 7
    ui_origins: tuple[str, ...] = ("http://localhost:7860",)
    key_prefix: str = "infinitetalk/"
    runpod_api: str = "rest"
    runpod_api_url: Optional[str] = None
    s3_endpoint: Optional[str] = None
    s3_region: Optional[str] = None
    s3_public_base: Optional[str] = None
    runpod_graphql_url: Optional[str] = None
    image: Optional[str] = None
    min_cuda_version: Optional[str] = IMAGE_MIN_CUDA
    registry_username: Optional[str] = None
    registry_name: str = "infinitetalk-registry"
    import_ids: tuple[tuple[str, str], ...] = ()

    def import_id(self, kind: str) -> Optional[str]:
        return dict(self.import_ids).get(kind)

    def deploy_overrides(self) -> tuple[str, ...]:
        """The stack's overrides plus what only the deployer chooses (the image), as overrides:
        conf/ is composed with an empty environment, so the image must arrive this way."""
        from configuration import iter_overrides_for

        extra = tuple(iter_overrides_for({"deploy.image": self.image})) if self.image else ()
        return tuple(self.overrides) + extra

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> "StackSettings":
        """Build from config values as Pulumi stores them (strings; lists as JSON or YAML lists)."""

        def get(key: str) -> Any:
            v = raw.get(key)
            if v is None:
                v = raw.get(f"{NAMESPACE}:{key}")
            return v

        def as_list(key: str) -> Optional[tuple[str, ...]]:
            v = get(key)
            if v is None:
                return None
            if isinstance(v, str):
                try:
                    v = json.loads(v)
                except json.JSONDecodeError:
                    v = [p.strip() for p in v.split(",") if p.strip()]
            if not isinstance(v, (list, tuple)) or not all(isinstance(i, str) for i in v):
                raise StackConfigError(f"{NAMESPACE}:{key} must be a list of strings")
            return tuple(v)

        def as_int(key: str, default: int) -> int:
            v = get(key)
            if v is None:
                return default
            try:
                return int(v)
            except (TypeError, ValueError):
                raise StackConfigError(f"{NAMESPACE}:{key} must be an integer, got {v!r}") from None

        overrides = as_list("overrides") or ()
        for ov in overrides:
            if "=" not in ov:
                raise StackConfigError(f"{NAMESPACE}:overrides: {ov!r} is not a Hydra override (key=value)")
        mode = str(get("bucketMode") or "aws")
        if mode not in BUCKET_MODES:
            raise StackConfigError(f"{NAMESPACE}:bucketMode must be one of {BUCKET_MODES}, got {mode!r}")
        api = str(get("runpodApi") or "rest")
        if api not in API_MODES:
            raise StackConfigError(f"{NAMESPACE}:runpodApi must be one of {API_MODES}, got {api!r}")
        days = as_int("lifecycleDays", 7)
        if days < 1:
            raise StackConfigError(f"{NAMESPACE}:lifecycleDays must be at least 1")
        settings = cls(
            overrides=overrides,
            bucket_mode=mode,
            bucket_name=get("bucketName") or get("s3Bucket"),
            lifecycle_days=days,
            ui_origins=as_list("uiOrigins") or cls.ui_origins,
            key_prefix=str(get("keyPrefix") or "infinitetalk/"),
            runpod_api=api,
            runpod_api_url=get("runpodApiUrl"),
            s3_endpoint=get("s3Endpoint"),
            s3_region=get("s3Region"),
            s3_public_base=get("s3PublicBase"),
            runpod_graphql_url=get("runpodGraphqlUrl"),
            image=get("image") or None,
            min_cuda_version=str(get("minCudaVersion") or IMAGE_MIN_CUDA),
            registry_username=get("registryUsername") or None,
            registry_name=str(get("registryName") or "infinitetalk-registry"),
            import_ids=tuple(
                (kind, str(get(key))) for kind, key in
                (("volume", "importVolumeId"), ("template", "importTemplateId"), ("endpoint", "importEndpointId"))
                if get(key)
            ),
        )
        if settings.min_cuda_version and not re.fullmatch(r"\d+\.\d+", settings.min_cuda_version):
            raise StackConfigError(f"{NAMESPACE}:minCudaVersion must be major.minor, got {settings.min_cuda_version!r}")
        if mode == "external":
            missing = [k for k, v in (("s3Endpoint", settings.s3_endpoint), ("s3Bucket", settings.bucket_name)) if not v]
            if missing:
                raise StackConfigError(
                    f"bucketMode external needs {', '.join(NAMESPACE + ':' + m for m in missing)} "
                    f"(plus secrets {NAMESPACE}:s3AccessKey and {NAMESPACE}:s3SecretKey)"
                )
        for origin in settings.ui_origins:
            if not origin.startswith(("http://", "https://")) or origin.rstrip("/") != origin:
                raise StackConfigError(f"{NAMESPACE}:uiOrigins: {origin!r} must be a scheme://host[:port] origin without a trailing slash")
        return settings


CONFIG_KEYS = (
    "overrides", "bucketMode", "bucketName", "s3Bucket", "lifecycleDays", "uiOrigins", "keyPrefix",
    "runpodApi", "runpodApiUrl", "s3Endpoint", "s3Region", "s3PublicBase", "runpodGraphqlUrl", "image",
    "minCudaVersion", "registryUsername", "registryName", "importVolumeId", "importTemplateId", "importEndpointId",
)


def from_pulumi_config() -> StackSettings:
    """Read the current stack's config (inside a Pulumi program or under mocks)."""
    import pulumi

    cfg = pulumi.Config(NAMESPACE)
    raw = {k: cfg.get(k) for k in CONFIG_KEYS}
    if not raw.get("image") and os.environ.get("INFINITETALK_IMAGE"):
        raw["image"] = os.environ["INFINITETALK_IMAGE"]  # explicit, unlike the rest of the shell
    return StackSettings.from_mapping({k: v for k, v in raw.items() if v is not None})
