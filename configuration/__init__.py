"""The Hydra configuration under conf/: its typed schema and its composition (no per-job rules, no torch).

Shared by the worker (composes once at start), infra (template env, stack overrides) and tools.
`configuration.schema`: the frozen dataclasses; `configuration.compose`: `compose_config` and helpers.
Per-job resolution is the worker's (worker/resolve.py); the template env is infra's (infra/template_env.py).
"""
from configuration.compose import (
    CONF_DIR_ENV_VAR,
    GROUP_ENV_VARS,
    GROUPS,
    OVERRIDES_ENV_VAR,
    SECRET_OVERRIDES_ENV_VAR,
    ConfigError,
    compose_config,
    default_conf_dir,
    describe,
    iter_overrides_for,
    results_overlap_inputs,
    s3_input_prefixes,
    secret_values,
)
from configuration.schema import (
    AppConfig,
    DeployConf,
    DownloadConf,
    GpuConf,
    HfSource,
    InlineConf,
    JobDefaultsConf,
    LocalConf,
    ModelConf,
    ParallelConf,
    RootConf,
    S3Conf,
    SamplerConf,
    ServerConf,
    StorageConf,
    VolumeConf,
)

__all__ = [
    "CONF_DIR_ENV_VAR", "GROUP_ENV_VARS", "GROUPS", "OVERRIDES_ENV_VAR", "SECRET_OVERRIDES_ENV_VAR",
    "ConfigError", "compose_config", "default_conf_dir", "describe", "iter_overrides_for",
    "results_overlap_inputs", "s3_input_prefixes", "secret_values",
    "AppConfig", "DeployConf", "DownloadConf", "GpuConf", "HfSource", "InlineConf", "JobDefaultsConf",
    "LocalConf", "ModelConf", "ParallelConf", "RootConf", "S3Conf", "SamplerConf", "ServerConf",
    "StorageConf", "VolumeConf",
]
