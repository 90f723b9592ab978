"""Compose the Hydra tree under conf/ into the typed, frozen `AppConfig` (configuration/schema.py).

* `compose_config(overrides, env)` -> `AppConfig`, a frozen, fully resolved view of the tree.
  Group options come from overrides (`sampler=turbo`) or from the environment
  (`INFINITETALK_MODEL`, `INFINITETALK_GPU`, `INFINITETALK_SAMPLER`, `INFINITETALK_STORAGE`,
  `INFINITETALK_DEPLOY`); further operator overrides may come as a JSON list in
  `INFINITETALK_OVERRIDES` (and `INFINITETALK_SECRET_OVERRIDES`). Explicit overrides win.
* `describe`, `secret_values`, `iter_overrides_for`: log-safe summary, credentials for the redactor,
  trusted values as override strings.

Per-job rules live in worker/resolve.py; the template env that reproduces a config lives in
infra/template_env.py. No torch, no worker imports.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from contract.choices import CONF_DIR_ENV_VAR, MODES, OUTPUT_TARGETS, SIZE_RANK, conf_dir
from contract.errors import JobError, is_secret_name
from configuration.schema import (
    AppConfig,
    DeployConf,
    GpuConf,
    ModelConf,
    RootConf,
    SamplerConf,
    StorageConf,
)

__all__ = [
    "ConfigError",
    "GROUPS",
    "GROUP_ENV_VARS",
    "OVERRIDES_ENV_VAR",
    "SECRET_OVERRIDES_ENV_VAR",
    "CONF_DIR_ENV_VAR",
    "default_conf_dir",
    "compose_config",
    "s3_input_prefixes",
    "results_overlap_inputs",
    "secret_values",
    "describe",
    "iter_overrides_for",
]

GROUPS = ("model", "gpu", "sampler", "storage", "deploy")
GROUP_ENV_VARS: Mapping[str, str] = {
    "model": "INFINITETALK_MODEL",
    "gpu": "INFINITETALK_GPU",
    "sampler": "INFINITETALK_SAMPLER",
    "storage": "INFINITETALK_STORAGE",
    "deploy": "INFINITETALK_DEPLOY",
}
OVERRIDES_ENV_VAR = "INFINITETALK_OVERRIDES"
SECRET_OVERRIDES_ENV_VAR = "INFINITETALK_SECRET_OVERRIDES"


class ConfigError(ValueError):
    """The configuration could not be composed (bad override, missing value, wrong type)."""


# ---------------------------------------------------------------------------------------
# ConfigStore registration


_TWINS: dict[type, type] = {}


def _twin_type(tp: Any) -> Any:
    import typing

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _twin(tp)
    origin = typing.get_origin(tp)
    if origin is None:
        return tp
    args = tuple(_twin_type(a) for a in typing.get_args(tp))
    if origin is list:
        return list[args[0]]  # type: ignore[valid-type]
    if origin is dict:
        return dict[args[0], args[1]]  # type: ignore[valid-type]
    if origin is typing.Union or str(origin) == "types.UnionType":
        return typing.Union[args]  # type: ignore[return-value]
    return tp


def _twin(cls: type) -> type:
    """A mutable copy of a frozen schema dataclass.

    OmegaConf makes nodes of frozen dataclasses read-only, and Hydra must merge the yaml files
    into them; so the ConfigStore holds mutable twins and the frozen classes stay the single
    definition (the typed view is rebuilt from the composed values by `_build`).
    """
    import typing

    if cls in _TWINS:
        return _TWINS[cls]
    hints = typing.get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        tp = _twin_type(hints[f.name])
        if f.default is not dataclasses.MISSING:
            specs.append((f.name, tp, field(default=f.default)))
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            factory = f.default_factory  # type: ignore[misc]
            sample = factory()
            if dataclasses.is_dataclass(sample):
                specs.append((f.name, tp, field(default_factory=_twin(type(sample)))))
            else:
                specs.append((f.name, tp, field(default_factory=factory)))
        else:
            specs.append((f.name, tp))
    twin = dataclasses.make_dataclass(cls.__name__, specs, frozen=False)
    _TWINS[cls] = twin
    return twin


def _build(cls: Any, data: Any) -> Any:
    """Rebuild the frozen typed view from plain composed data."""
    import typing

    if data is None:
        return None
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _build(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data})
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin is list:
        return [_build(args[0], v) for v in data]
    if origin is dict:
        return {k: _build(args[1], v) for k, v in data.items()}
    if origin is typing.Union or str(origin) == "types.UnionType":
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], data) if len(inner) == 1 else data
    return data


def _schema(cls: type) -> Any:
    return _twin(cls)


_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="base_config", node=_schema(RootConf))
    cs.store(group="model", name="base_model", node=_schema(ModelConf))
    cs.store(group="gpu", name="base_gpu", node=_schema(GpuConf))
    cs.store(group="sampler", name="base_sampler", node=_schema(SamplerConf))
    cs.store(group="storage", name="base_storage", node=_schema(StorageConf))
    cs.store(group="deploy", name="base_deploy", node=_schema(DeployConf))
    _registered = True

# ---------------------------------------------------------------------------------------
# Composition

_lock = threading.RLock()


def default_conf_dir() -> Path:
    return conf_dir()


@contextmanager
def _environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """oc.env reads os.environ; to compose from a given env, os.environ *is* that env meanwhile."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _override_key(ov: str) -> str:
    return ov.split("=", 1)[0].lstrip("+~")


def _env_overrides(environ: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for group, var in GROUP_ENV_VARS.items():
        val = environ.get(var)
        if val:
            out.append(f"{group}={val}")
    for var in (OVERRIDES_ENV_VAR, SECRET_OVERRIDES_ENV_VAR):
        raw = environ.get(var)
        if not raw:
            continue
        try:
            items = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{var} must be a JSON list of Hydra overrides: {exc}") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{var} must be a JSON list of strings")
        out.extend(items)
    return out


def _dedupe(overrides: Sequence[str]) -> list[str]:
    """Later overrides of the same key win (env first, explicit last)."""
    last: dict[str, int] = {}
    for i, ov in enumerate(overrides):
        last[_override_key(ov)] = i
    return [ov for i, ov in enumerate(overrides) if last[_override_key(ov)] == i]


@contextmanager
def _hydra(conf_dir: Path) -> Iterator[None]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    _register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
            yield
    finally:
        GlobalHydra.instance().clear()


def _compose_raw(overrides: Sequence[str], *, with_choices: bool) -> tuple[DictConfig, dict[str, str]]:
    from hydra import compose

    cfg = compose("config", overrides=list(overrides), return_hydra_config=with_choices)
    choices: dict[str, str] = {}
    if with_choices:
        rc = cfg.hydra.runtime.choices
        choices = {g: str(rc[g]) for g in GROUPS if g in rc and rc[g] is not None}
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg, choices


def _group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(o for o in loader.get_group_options(group) if not o.startswith("base_"))


def compose_config(
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    *,
    conf_dir: str | os.PathLike[str] | None = None,
) -> AppConfig:
    """Compose conf/ into a frozen AppConfig.

    `env`, when given, replaces os.environ for the duration (oc.env lookups and the
    INFINITETALK_* selectors read it); None means the process environment.
    """
    conf_path = Path(conf_dir).resolve() if conf_dir else default_conf_dir()
    snapshot = dict(os.environ) if env is None else {str(k): str(v) for k, v in env.items()}
    key = (str(conf_path), tuple(overrides), tuple(sorted(snapshot.items())))
    with _lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _compose_uncached(overrides, env, conf_path)
            if len(_cache) >= 64:
                _cache.pop(next(iter(_cache)))
            _cache[key] = cached
        return cached


# Composition costs Hydra ~0.7 s; template_env and tests compose the same inputs repeatedly.
_cache: dict[tuple[Any, ...], AppConfig] = {}


def _compose_uncached(overrides: Sequence[str], env: Mapping[str, str] | None, conf_path: Path) -> AppConfig:
    with _lock, _environment(env):
        all_overrides = _dedupe(_env_overrides(os.environ) + list(overrides))
        try:
            with _hydra(conf_path):
                cfg, choices = _compose_raw(all_overrides, with_choices=True)
                # resolve while env is in place (oc.env reads os.environ)
                root: RootConf = _build(RootConf, OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
                presets: dict[str, SamplerConf] = {}
                for name in _group_options("sampler"):
                    if name == choices.get("sampler"):
                        presets[name] = root.sampler
                    else:
                        other, _ = _compose_raw([f"sampler={name}"], with_choices=False)
                        presets[name] = _build(
                            SamplerConf, OmegaConf.to_container(other.sampler, resolve=True, throw_on_missing=True)
                        )
        except JobError:
            raise
        except Exception as exc:  # Hydra/OmegaConf raise many types; one clear type for callers
            raise ConfigError(f"cannot compose configuration: {exc}") from exc
    _check(root)
    values = {f.name: getattr(root, f.name) for f in dataclasses.fields(RootConf)}
    return AppConfig(**values, choices=choices, sampler_presets=presets)


def _check(root: RootConf) -> None:
    if root.job_defaults.size not in SIZE_RANK:
        raise ConfigError(f"job_defaults.size must be one of {sorted(SIZE_RANK)} (DEFAULT_SIZE?)")
    if root.job_defaults.mode not in MODES:
        raise ConfigError("job_defaults.mode must be clip or streaming")
    if root.gpu.max_size not in SIZE_RANK:
        raise ConfigError(f"gpu.max_size must be one of {sorted(SIZE_RANK)}")
    if root.storage.target not in OUTPUT_TARGETS:
        raise ConfigError(f"storage.target must be one of {', '.join(OUTPUT_TARGETS)}")
    for entry in root.storage.s3_inputs:
        if "/" not in entry or not entry.split("/", 1)[0]:
            raise ConfigError(f"storage.s3_inputs entries are 'bucket/prefix', got {entry!r}")
    if root.storage.s3.bucket and results_overlap_inputs(root.storage, root.storage.key_prefix):
        raise ConfigError("storage.key_prefix must not overlap storage.s3_inputs (results would be readable as inputs)")
    steps = root.job_defaults.sample_steps
    if steps is not None and not 1 <= steps <= 100:
        raise ConfigError("job_defaults.sample_steps (DEFAULT_SAMPLE_STEPS) must be in 1..100")
    if root.gpu.quant not in ("model", "fp8", "none"):
        raise ConfigError("gpu.quant must be model, fp8 or none")
    par = root.gpu.parallel
    if par.ranks < 1 or par.method not in ("auto", "ulysses", "ring") or par.timeout_s <= 0:
        raise ConfigError("gpu.parallel needs ranks >= 1, method auto|ulysses|ring and timeout_s > 0")
    if par.ranks > 1 and (root.gpu.stream_blocks or root.gpu.offload_vae):
        raise ConfigError("gpu.parallel.ranks > 1 cannot be combined with gpu.stream_blocks or gpu.offload_vae")


def s3_input_prefixes(storage: StorageConf) -> tuple[str, ...]:
    """The "bucket/prefix" entries s3:// inputs may come from (default: <results bucket>/inputs/)."""
    if storage.s3_inputs:
        return tuple(storage.s3_inputs)
    return (f"{storage.s3.bucket}/inputs/",) if storage.s3.bucket else ()


def results_overlap_inputs(storage: StorageConf, key_prefix: str) -> str | None:
    """The input entry that S3 results under `key_prefix` could fall into, or None.

    A result's key is "<key_prefix without slashes>/<job id>.mp4" (worker/job.py), the job id having no "/".
    """
    folder = key_prefix.strip("/") + "/" if key_prefix.strip("/") else ""
    for entry in s3_input_prefixes(storage):
        bucket, _, prefix = entry.partition("/")
        if bucket != storage.s3.bucket:
            continue
        if folder.startswith(prefix) or (prefix.startswith(folder) and "/" not in prefix[len(folder):]):
            return entry
    return None


def secret_values(cfg: AppConfig) -> list[str]:
    """Credential values in the config, for the log redactor."""
    out = []
    for path, value in _flatten(cfg.tree()).items():
        if isinstance(value, str) and value and is_secret_name(path.rsplit(".", 1)[-1]):
            out.append(value)
    return out


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def _hydra_value(value: Any) -> str:
    """Render a value in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # Hydra keeps backslashes literal except before a quote, before `${` and at the end.
        escaped = re.sub(r"(\\+)(?='|\$\{|$)", lambda m: m.group(1) * 2, value)
        escaped = escaped.replace("'", "\\'").replace("${", "\\${")
        return f"'{escaped}'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    raise ConfigError(f"cannot express {type(value).__name__} as a Hydra override")


def describe(cfg: AppConfig) -> dict[str, Any]:
    """A log-safe summary of the composed config (credentials masked)."""
    out = {}
    for path, value in _flatten(cfg.tree()).items():
        out[path] = "[REDACTED]" if value is not None and is_secret_name(path.rsplit(".", 1)[-1]) else value
    return {"choices": dict(cfg.choices), "values": out}


def iter_overrides_for(values: Mapping[str, Any]) -> Iterable[str]:
    """Hydra override strings for trusted (operator) values, e.g. from the CLI or infra."""
    for path, value in values.items():
        yield f"{path}={_hydra_value(value)}"
