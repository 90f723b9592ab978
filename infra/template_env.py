"""The env a Runpod template must carry so that a worker composing from that env alone gets an equal config.

`template_env(cfg)` -> `TemplateEnv(plain, secret)`; infra puts `plain` in the template and each
`secret` key in a Runpod secret. Checked by composing again from the result.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from omegaconf import OmegaConf

from configuration.compose import (
    GROUP_ENV_VARS,
    OVERRIDES_ENV_VAR,
    SECRET_OVERRIDES_ENV_VAR,
    ConfigError,
    _compose_raw,
    _flatten,
    _hydra,
    _hydra_value,
    _lock,
    compose_config,
    default_conf_dir,
)
from configuration.schema import AppConfig
from contract.errors import is_secret_name

__all__ = ["TemplateEnv", "template_env"]


@dataclass(frozen=True)
class TemplateEnv:
    """Env for a Runpod template: `plain` goes in as plain env; each `secret` key becomes a Runpod
    secret (infra.runpod_provider.RunpodSecret) that the template's env only refers to as
    `{{ RUNPOD_SECRET_<name> }}`, so no secret value is ever plain template env."""

    plain: dict[str, str]
    secret: dict[str, str]

    def merged(self) -> dict[str, str]:
        return {**self.plain, **self.secret}


_ENV_REF = re.compile(r"^\$\{oc\.env:([A-Za-z_][A-Za-z0-9_]*)(?:,.*)?\}$", re.S)
_SECRET_VAR = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)


def _env_bindings(choices: Mapping[str, str], conf_dir: Path) -> dict[str, str]:
    """{ENV_VAR: config path} for every value that is exactly `${oc.env:VAR,...}` in the tree."""
    with _hydra(conf_dir):
        raw, _ = _compose_raw([f"{g}={o}" for g, o in choices.items()], with_choices=False)
    container = OmegaConf.to_container(raw, resolve=False)
    bindings: dict[str, str] = {}
    for path, value in _flatten(container).items():
        if isinstance(value, str):
            m = _ENV_REF.match(value)
            if m:
                bindings.setdefault(m.group(1), path)
    return bindings


def _env_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _lookup(tree: Mapping[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def template_env(cfg: AppConfig, *, conf_dir: str | os.PathLike[str] | None = None) -> TemplateEnv:
    """The env under which `compose_config(env=...)` reproduces `cfg` exactly.

    Group choices go in INFINITETALK_<GROUP>; every value read through `${oc.env:VAR}` goes in VAR;
    anything else that differs from what those alone compose to goes in INFINITETALK_OVERRIDES
    (a JSON list). Variables and overrides that carry credentials go in `secret`.
    """
    conf_path = Path(conf_dir).resolve() if conf_dir else default_conf_dir()
    tree = cfg.tree()
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for group, var in GROUP_ENV_VARS.items():
        if group in cfg.choices:
            plain[var] = cfg.choices[group]
    with _lock:
        bindings = _env_bindings(cfg.choices, conf_path)
    for var, path in sorted(bindings.items()):
        value = _lookup(tree, path)
        if value is None:
            continue
        target = secret if (_SECRET_VAR.search(var) or is_secret_name(path.rsplit(".", 1)[-1])) else plain
        target[var] = _env_str(value)

    base = compose_config(env={**plain, **secret}, conf_dir=conf_path)
    want, got = _flatten(tree), _flatten(base.tree())
    plain_ov, secret_ov = [], []
    for path in sorted(want):
        if want[path] != got.get(path):
            ov = f"{path}={_hydra_value(want[path])}"
            (secret_ov if is_secret_name(path.rsplit(".", 1)[-1]) else plain_ov).append(ov)
    if plain_ov:
        plain[OVERRIDES_ENV_VAR] = json.dumps(plain_ov, separators=(",", ":"))
    if secret_ov:
        secret[SECRET_OVERRIDES_ENV_VAR] = json.dumps(secret_ov, separators=(",", ":"))
    result = TemplateEnv(plain=plain, secret=secret)
    check = compose_config(env=result.merged(), conf_dir=conf_path)
    if check.tree() != cfg.tree() or check.choices != cfg.choices:
        diff = sorted(p for p, v in _flatten(check.tree()).items() if want.get(p) != v)
        raise ConfigError(f"template env does not reproduce the config (differs at {diff[:5]})")
    return result
