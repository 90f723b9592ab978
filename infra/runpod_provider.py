"""Pulumi dynamic providers for the Runpod network volume, serverless template and endpoint.

Each provider talks to `infra.runpod_api.RunpodApi`, so REST v2 and GraphQL share one diff/CRUD
logic. Per field, a change is either applied in place or forces a replacement (`REPLACES`);
everything else in the inputs is compared for an in-place update. Inputs that only say *how* to
reach Runpod (`api_*`) never cause an API call by themselves.

Secrets: the API key and the template's secret env are inputs marked secret by the component and
listed in `additional_secret_outputs`, so Pulumi encrypts them in state; errors pass through the
API layer's redaction and never echo them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    Resource,
    ResourceProvider,
    UpdateResult,
)

from infra.runpod_api import EndpointSpec, RunpodApi, TemplateSpec, VolumeSpec, make_api
from infra.runpod_api.errors import RunpodApiError

API_FIELDS = ("api_mode", "api_url", "api_key", "api_backoff_s")
SECRET_OUTPUTS = ["api_key", "secret_env"]


@dataclass(frozen=True)
class ApiArgs:
    """How to reach Runpod; `key` should be a secret Output."""

    mode: str
    key: pulumi.Input[str]
    url: Optional[str] = None
    backoff_s: float = 0.5

    def props(self) -> dict[str, Any]:
        return {"api_mode": self.mode, "api_url": self.url, "api_key": self.key, "api_backoff_s": self.backoff_s}


def api_from(props: Mapping[str, Any], extra_secrets: Sequence[str] = ()) -> RunpodApi:
    return make_api(
        props.get("api_mode") or "rest",
        props.get("api_key") or "",
        base_url=props.get("api_url") or None,
        backoff_s=float(props.get("api_backoff_s") if props.get("api_backoff_s") is not None else 0.5),
        secrets=extra_secrets,
    )


def _api_props(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: props.get(k) for k in API_FIELDS}


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    return value


class _Base(ResourceProvider):
    """Field-level diff shared by the three providers."""

    FIELDS: tuple[str, ...] = ()
    REPLACES: tuple[str, ...] = ()

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = [f for f in self.FIELDS if _norm(olds.get(f)) != _norm(news.get(f))]
        api_changed = [f for f in API_FIELDS if olds.get(f) != news.get(f)]
        replaces = [f for f in changed if f in self.REPLACES]
        return DiffResult(
            changes=bool(changed or api_changed),
            replaces=replaces,
            stables=[f for f in self.FIELDS if f not in changed],
            delete_before_replace=False,
        )


# ---------------------------------------------------------------------------------------
# Network volume


class NetworkVolumeProvider(_Base):
    FIELDS = ("volume_name", "size_gb", "datacenter")
    # a volume lives in one data center; moving it means a new volume (the old one is protected)
    REPLACES = ("datacenter",)

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        size = news.get("size_gb")
        if not isinstance(size, int) or not 10 <= size <= 4096:
            failures.append(CheckFailure("size_gb", f"size_gb must be an integer in 10..4096, got {size!r}"))
        elif olds and isinstance(olds.get("size_gb"), int) and size < olds["size_gb"] and olds.get("datacenter") == news.get("datacenter"):
            failures.append(
                CheckFailure("size_gb", f"a network volume can only grow: {olds['size_gb']} GB -> {size} GB refused")
            )
        if not news.get("datacenter"):
            failures.append(CheckFailure("datacenter", "datacenter is required"))
        return CheckResult(news, failures)

    @staticmethod
    def _outs(props: Mapping[str, Any], state) -> dict[str, Any]:
        return {
            **_api_props(props),
            "volume_name": state.name,
            "size_gb": state.size_gb,
            "datacenter": state.datacenter,
            "volume_id": state.id,
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        state = api_from(props).create_volume(VolumeSpec(props["volume_name"], int(props["size_gb"]), props["datacenter"]))
        return CreateResult(state.id, self._outs(props, state))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = api_from(props).get_volume(id_)
        if state is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(props, state))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        api = api_from(news)
        if int(news["size_gb"]) < int(olds["size_gb"]):
            raise RunpodApiError(
                f"network volume {id_}: size may only grow ({olds['size_gb']} GB -> {news['size_gb']} GB refused)"
            )
        state = api.update_volume(
            id_,
            name=news["volume_name"] if news["volume_name"] != olds.get("volume_name") else None,
            size_gb=int(news["size_gb"]) if news["size_gb"] != olds.get("size_gb") else None,
        )
        return UpdateResult(self._outs(news, state))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        api_from(props).delete_volume(id_)


class NetworkVolume(Resource, module="runpod", name="NetworkVolume"):
    volume_id: pulumi.Output[str]
    volume_name: pulumi.Output[str]
    size_gb: pulumi.Output[int]
    datacenter: pulumi.Output[str]

    def __init__(
        self, resource_name: str, *, volume_name: pulumi.Input[str], size_gb: pulumi.Input[int],
        datacenter: pulumi.Input[str], api: ApiArgs, opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {**api.props(), "volume_name": volume_name, "size_gb": size_gb, "datacenter": datacenter, "volume_id": None}
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS))
        super().__init__(NetworkVolumeProvider(), resource_name, props, opts)


# ---------------------------------------------------------------------------------------
# Template


class TemplateProvider(_Base):
    FIELDS = ("template_name", "image", "container_disk_gb", "env", "secret_env")
    REPLACES = ()  # both APIs update every field we set in place

    @staticmethod
    def _spec(props: Mapping[str, Any]) -> TemplateSpec:
        env = {**(props.get("env") or {}), **(props.get("secret_env") or {})}
        return TemplateSpec(props["template_name"], props["image"], int(props["container_disk_gb"]), env)

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        overlap = set(news.get("env") or {}) & set(news.get("secret_env") or {})
        if overlap:
            failures.append(CheckFailure("secret_env", f"keys in both env and secret_env: {sorted(overlap)}"))
        if not news.get("image"):
            failures.append(CheckFailure("image", "image is required"))
        return CheckResult(news, failures)

    @staticmethod
    def _outs(props: Mapping[str, Any], state, revision: int) -> dict[str, Any]:
        from worker.errors import is_secret_name

        secret_keys = set(props.get("secret_env") or {})
        plain_keys = set(props.get("env") or {})

        def is_secret(key: str) -> bool:
            # keys we set keep their side; a key added outside Pulumi is secret if its name says so
            return key in secret_keys or (key not in plain_keys and is_secret_name(key))

        plain = {k: v for k, v in state.env.items() if not is_secret(k)}
        secret = {k: v for k, v in state.env.items() if is_secret(k)}
        return {
            **_api_props(props),
            "template_name": state.name,
            "image": state.image,
            "container_disk_gb": state.container_disk_gb,
            "env": plain,
            "secret_env": secret,
            "template_id": state.id,
            # bumped on every update so endpoints can re-apply the template (REST keeps no link)
            "revision": revision,
        }

    def _secrets(self, props: Mapping[str, Any]) -> list[str]:
        return list((props.get("secret_env") or {}).values())

    def create(self, props: dict[str, Any]) -> CreateResult:
        state = api_from(props, self._secrets(props)).create_template(self._spec(props))
        return CreateResult(state.id, self._outs(props, state, 1))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = api_from(props, self._secrets(props)).get_template(id_)
        if state is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(props, state, int(props.get("revision") or 1)))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        api = api_from(news, self._secrets(news) + self._secrets(olds))
        revision = int(olds.get("revision") or 1)
        if any(_norm(olds.get(f)) != _norm(news.get(f)) for f in self.FIELDS):
            state = api.update_template(id_, self._spec(news))
            revision += 1
        else:
            state = api.get_template(id_)
            if state is None:
                raise RunpodApiError(f"template {id_} is gone; run `pulumi refresh` to recreate it")
        return UpdateResult(self._outs(news, state, revision))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        api_from(props, self._secrets(props)).delete_template(id_, props.get("template_name") or "")


class Template(Resource, module="runpod", name="Template"):
    template_id: pulumi.Output[str]
    revision: pulumi.Output[int]
    env: pulumi.Output[dict]
    secret_env: pulumi.Output[dict]
    image: pulumi.Output[str]

    def __init__(
        self, resource_name: str, *, template_name: pulumi.Input[str], image: pulumi.Input[str],
        container_disk_gb: pulumi.Input[int], env: pulumi.Input[Mapping[str, str]],
        secret_env: pulumi.Input[Mapping[str, str]], api: ApiArgs, opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {
            **api.props(),
            "template_name": template_name,
            "image": image,
            "container_disk_gb": container_disk_gb,
            "env": env,
            "secret_env": pulumi.Output.secret(secret_env),
            "template_id": None,
            "revision": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS))
        super().__init__(TemplateProvider(), resource_name, props, opts)


# ---------------------------------------------------------------------------------------
# Endpoint


class EndpointProvider(_Base):
    FIELDS = (
        "endpoint_name", "template_id", "template_revision", "gpu_pools", "gpu_count", "workers_min", "workers_max",
        "idle_timeout_s", "scaler_type", "scaler_value", "flashboot", "execution_timeout_s", "network_volume_id",
        "datacenters",
    )
    # every field is patchable on both APIs; the routing type (queue) is fixed by this provider
    REPLACES = ()

    @staticmethod
    def _spec(props: Mapping[str, Any]) -> EndpointSpec:
        return EndpointSpec(
            name=props["endpoint_name"],
            template_id=props["template_id"],
            gpu_pools=tuple(props["gpu_pools"]),
            gpu_count=int(props["gpu_count"]),
            workers_min=int(props["workers_min"]),
            workers_max=int(props["workers_max"]),
            idle_timeout_s=int(props["idle_timeout_s"]),
            scaler_type=props["scaler_type"],
            scaler_value=int(props["scaler_value"]),
            flashboot=bool(props["flashboot"]),
            execution_timeout_s=int(props["execution_timeout_s"]),
            network_volume_id=props.get("network_volume_id") or None,
            datacenters=tuple(props.get("datacenters") or ()),
        )

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        if not news.get("gpu_pools"):
            failures.append(CheckFailure("gpu_pools", "at least one Runpod GPU pool is required"))
        wmin, wmax = news.get("workers_min"), news.get("workers_max")
        if isinstance(wmin, int) and isinstance(wmax, int) and wmin > wmax:
            failures.append(CheckFailure("workers_min", f"workers_min ({wmin}) exceeds workers_max ({wmax})"))
        if news.get("scaler_type") not in ("QUEUE_DELAY", "REQUEST_COUNT"):
            failures.append(CheckFailure("scaler_type", "scaler_type must be QUEUE_DELAY or REQUEST_COUNT"))
        return CheckResult(news, failures)

    @staticmethod
    def _outs(props: Mapping[str, Any], state) -> dict[str, Any]:
        return {
            **_api_props(props),
            "endpoint_name": state.name,
            # REST does not report the template an endpoint came from; keep what we applied
            "template_id": state.template_id or props.get("template_id"),
            "template_revision": props.get("template_revision"),
            "gpu_pools": list(state.gpu_pools),
            "gpu_count": state.gpu_count,
            "workers_min": state.workers_min,
            "workers_max": state.workers_max,
            "idle_timeout_s": state.idle_timeout_s if state.scaler_type != "REQUEST_COUNT" else props.get("idle_timeout_s"),
            "scaler_type": state.scaler_type,
            "scaler_value": state.scaler_value,
            "flashboot": state.flashboot,
            "execution_timeout_s": state.execution_timeout_s,
            "network_volume_id": state.network_volume_id,
            "datacenters": list(state.datacenters),
            "endpoint_id": state.id,
            "run_url": state.run_url,
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        state = api_from(props).create_endpoint(self._spec(props))
        return CreateResult(state.id, self._outs(props, state))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        state = api_from(props).get_endpoint(id_)
        if state is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(props, state))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        reapply = olds.get("template_id") != news.get("template_id") or olds.get("template_revision") != news.get("template_revision")
        state = api_from(news).update_endpoint(id_, self._spec(news), reapply_template=reapply)
        return UpdateResult(self._outs(news, state))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        api_from(props).delete_endpoint(id_)


class Endpoint(Resource, module="runpod", name="Endpoint"):
    endpoint_id: pulumi.Output[str]
    run_url: pulumi.Output[str]

    def __init__(
        self, resource_name: str, *, endpoint_name: pulumi.Input[str], template_id: pulumi.Input[str],
        template_revision: pulumi.Input[int], gpu_pools: pulumi.Input[Sequence[str]], gpu_count: pulumi.Input[int],
        workers_min: pulumi.Input[int], workers_max: pulumi.Input[int], idle_timeout_s: pulumi.Input[int],
        scaler_type: pulumi.Input[str], scaler_value: pulumi.Input[int], flashboot: pulumi.Input[bool],
        execution_timeout_s: pulumi.Input[int], network_volume_id: pulumi.Input[Optional[str]],
        datacenters: pulumi.Input[Sequence[str]], api: ApiArgs, opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {
            **api.props(),
            "endpoint_name": endpoint_name,
            "template_id": template_id,
            "template_revision": template_revision,
            "gpu_pools": gpu_pools,
            "gpu_count": gpu_count,
            "workers_min": workers_min,
            "workers_max": workers_max,
            "idle_timeout_s": idle_timeout_s,
            "scaler_type": scaler_type,
            "scaler_value": scaler_value,
            "flashboot": flashboot,
            "execution_timeout_s": execution_timeout_s,
            "network_volume_id": network_volume_id,
            "datacenters": datacenters,
            "endpoint_id": None,
            "run_url": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["api_key"]))
        super().__init__(EndpointProvider(), resource_name, props, opts)
