"""From stack settings to the worker's config, the template env and the endpoint's sizing.

The env vars a template carries are never written by hand: the stack's Hydra overrides (plus the
S3 values known only once the bucket exists) are composed by `configuration.compose_config`, the
same function the worker runs at start, and `infra.template_env.template_env` turns the result into
env that reproduces it. `template_env` itself checks the round trip; the infra tests check it again
from the template resource's inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from configuration import AppConfig, compose_config, iter_overrides_for
from infra.template_env import TemplateEnv, template_env


@dataclass(frozen=True)
class S3Values:
    bucket: Optional[str] = None
    region: Optional[str] = None
    endpoint: Optional[str] = None
    access_key: Optional[str] = None
    secret_key: Optional[str] = None
    public_base: Optional[str] = None


class DeployConfigError(ValueError):
    """conf/ composes, but not into something that can be deployed (e.g. a GPU tier without pools)."""


def stack_overrides(overrides: Sequence[str], s3: S3Values) -> list[str]:
    """The stack's overrides with the bucket's facts appended (appended ones win)."""
    values = {
        "storage.s3.bucket": s3.bucket,
        "storage.s3.region": s3.region,
        "storage.s3.endpoint": s3.endpoint,
        "storage.s3.access_key": s3.access_key,
        "storage.s3.secret_key": s3.secret_key,
        "storage.s3.public_base": s3.public_base,
    }
    return list(overrides) + list(iter_overrides_for({k: v for k, v in values.items() if v is not None}))


class ImageRefError(DeployConfigError):
    """The image to deploy is a moving tag: a redeploy would not say what runs."""


def check_image(image: str) -> str:
    """An immutable reference: `repo@sha256:<digest>` or `repo:<release tag>` (not `latest`)."""
    if "@sha256:" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if not tag or tag == "latest":
        raise ImageRefError(
            f"image {image!r} is not immutable: deploy a digest (repo@sha256:...) or a release tag; "
            "set `pulumi config set infinitetalk:image <ref>` (CI: IMAGE_TAG)"
        )
    return image


# stand-in values used only to learn which env keys are secret; never deployed
_PLACEHOLDER_S3 = S3Values(bucket="b", region="r", endpoint="https://e.invalid", access_key="AKIDPLACEHOLDER",
                           secret_key="placeholder-secret")


def compose_sizing(overrides: Sequence[str]) -> AppConfig:
    """The composed config for the endpoint's sizing (bucket facts not needed), checked deployable."""
    cfg = compose_config(stack_overrides(overrides, S3Values()), env={})
    check_deployable(cfg)
    check_image(cfg.deploy.image)
    return cfg


def secret_keys(overrides: Sequence[str]) -> list[str]:
    """The env keys that hold secrets for this stack (known without the bucket: the program must
    declare one RunpodSecret per key while it runs, before the bucket exists)."""
    _, env = compose_stack(overrides, _PLACEHOLDER_S3)
    return sorted(env.secret)


def compose_stack(overrides: Sequence[str], s3: S3Values) -> tuple[AppConfig, TemplateEnv]:
    """Compose with an empty environment: the deployer's shell must not leak into the template.
    What the deployer chooses (the image) reaches conf/ as explicit overrides instead, see
    `StackSettings.deploy_overrides`."""
    cfg = compose_config(stack_overrides(overrides, s3), env={})
    check_deployable(cfg)
    return cfg, template_env(cfg)


def check_deployable(cfg: AppConfig) -> None:
    if not cfg.gpu.runpod_pools:
        raise DeployConfigError(
            f"gpu tier {cfg.gpu.name!r} has no Runpod serverless pools (gpu.runpod_pools); "
            "pick a GPU tier in infinitetalk:overrides, e.g. gpu=h100_80"
        )
    d = cfg.deploy
    if d.workers_min > d.workers_max:
        raise DeployConfigError(f"deploy.workers_min ({d.workers_min}) exceeds deploy.workers_max ({d.workers_max})")
    if d.scaler_type not in ("QUEUE_DELAY", "REQUEST_COUNT"):
        raise DeployConfigError(f"deploy.scaler_type must be QUEUE_DELAY or REQUEST_COUNT, got {d.scaler_type!r}")
    if not 10 <= d.volume_size_gb <= 4096:
        raise DeployConfigError("deploy.volume_size_gb must be within 10..4096 (Runpod's limits)")
