"""From stack settings to the worker's config, the template env and the endpoint's sizing.

The env vars a template carries are never written by hand: the stack's Hydra overrides (plus the
S3 values known only once the bucket exists) are composed by `worker.config.compose_config`, the
same function the worker runs at start, and `worker.config.template_env` turns the result into
env that reproduces it. `template_env` itself checks the round trip; the infra tests check it again
from the template resource's inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from worker.config import AppConfig, TemplateEnv, compose_config, iter_overrides_for, template_env


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


def compose_stack(overrides: Sequence[str], s3: S3Values) -> tuple[AppConfig, TemplateEnv]:
    """Compose with an empty environment: the deployer's shell must not leak into the template."""
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
