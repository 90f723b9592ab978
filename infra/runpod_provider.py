"""Pulumi dynamic providers for Runpod: network volume, secret, registry credential, template, endpoint.

Each provider talks to `infra.runpod_api.RunpodApi`, so REST v2 and GraphQL share one diff/CRUD
logic. Per field, a change is either applied in place or forces a replacement (`REPLACES`);
everything else in the inputs is compared for an in-place update. Inputs that only say *how* to
reach Runpod (`api_*`) never cause an API call by themselves.

Unknown inputs: during `pulumi preview` the engine hands `check` and `diff` the unknown sentinel
(`pulumi.output.Unknown`) for anything computed from resources not yet created (the bucket, the
access key, a secret's name). `check` validates only what is known; `diff` reports an unknown
field as a change. `create`/`update`/`read`/`delete` run only with known inputs, and say so
clearly if ever handed an unknown one.

Secrets: values the worker needs secretly (the S3 keys) become Runpod secrets (`RunpodSecret`,
created and rotated here), and the template's env holds only `{{ RUNPOD_SECRET_<name> }}`
references to them, so no secret value is ever sent in a template or endpoint body nor readable
from either. The API key and secret values are listed in `additional_secret_outputs`, so Pulumi
encrypts them in state; errors pass through the API layer's redaction and never echo them.
"""
from __future__ import annotations

import secrets as _random
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
from pulumi.output import Unknown
from pulumi.runtime.rpc import UNKNOWN as UNKNOWN_SENTINEL

from infra.runpod_api import EndpointSpec, RunpodApi, TemplateSpec, VolumeSpec, make_api
from infra.runpod_api.base import DEFAULT_GRAPHQL_URL, flashboot_mode
from infra.runpod_api.errors import RunpodApiError, RunpodValidationError
from infra.runpod_api.graphql import GraphqlApi

API_FIELDS = ("api_mode", "api_url", "api_graphql_url", "api_key", "api_backoff_s", "api_unbind_wait_s")
SECRET_OUTPUTS = ["api_key"]


def is_unknown(value: Any) -> bool:
    """True for the engine's unknown marker, in either form it reaches a provider."""
    return isinstance(value, Unknown) or (isinstance(value, str) and value == UNKNOWN_SENTINEL)


def has_unknown(value: Any) -> bool:
    if is_unknown(value):
        return True
    if isinstance(value, Mapping):
        return any(has_unknown(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(has_unknown(v) for v in value)
    return False


def require_known(props: Mapping[str, Any], operation: str) -> None:
    """create/update/read/delete act on Runpod: every input must be a value by now."""
    unknown = sorted(k for k, v in props.items() if has_unknown(v))
    if unknown:
        raise RunpodApiError(
            f"{operation}: inputs {unknown} are still unknown; the engine only calls {operation} once "
            "every input is known (this is a preview-only value reaching a real call)",
            operation=operation,
        )


@dataclass(frozen=True)
class ApiArgs:
    """How to reach Runpod; `key` should be a secret Output. Secrets always go through GraphQL."""

    mode: str
    key: pulumi.Input[str]
    url: Optional[str] = None
    graphql_url: Optional[str] = None
    backoff_s: float = 0.5
    unbind_wait_s: float = 600.0

    def props(self) -> dict[str, Any]:
        return {
            "api_mode": self.mode, "api_url": self.url, "api_graphql_url": self.graphql_url, "api_key": self.key,
            "api_backoff_s": self.backoff_s, "api_unbind_wait_s": self.unbind_wait_s,
        }


def _float(props: Mapping[str, Any], key: str, default: float) -> float:
    v = props.get(key)
    return float(v) if v is not None else default


def api_from(props: Mapping[str, Any], extra_secrets: Sequence[str] = ()) -> RunpodApi:
    return make_api(
        props.get("api_mode") or "rest",
        props.get("api_key") or "",
        base_url=props.get("api_url") or None,
        backoff_s=_float(props, "api_backoff_s", 0.5),
        secrets=extra_secrets,
        unbind_wait_s=_float(props, "api_unbind_wait_s", 600.0),
    )


def graphql_from(props: Mapping[str, Any], extra_secrets: Sequence[str] = ()) -> GraphqlApi:
    """Runpod secrets exist only on GraphQL; a REST stack reaches them at `api_graphql_url`."""
    url = props.get("api_graphql_url") or (props.get("api_url") if props.get("api_mode") == "graphql" else None)
    return GraphqlApi(
        props.get("api_key") or "", url=url or DEFAULT_GRAPHQL_URL, backoff_s=_float(props, "api_backoff_s", 0.5),
        secrets=extra_secrets,
    )


def _as_int(value: Any) -> Optional[int]:
    """Numbers cross the engine's wire as protobuf doubles (200 arrives as 200.0)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _api_props(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: props.get(k) for k in API_FIELDS}


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    return value


class _Base(ResourceProvider):
    """Field-level diff shared by the providers; an unknown new value counts as a change."""

    FIELDS: tuple[str, ...] = ()
    REPLACES: tuple[str, ...] = ()

    def _changed(self, olds: Mapping[str, Any], news: Mapping[str, Any]) -> list[str]:
        return [f for f in self.FIELDS if has_unknown(news.get(f)) or _norm(olds.get(f)) != _norm(news.get(f))]

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        changed = self._changed(olds, news)
        api_changed = [f for f in API_FIELDS if has_unknown(news.get(f)) or olds.get(f) != news.get(f)]
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
    # The volume is protected (the weights live on it), and the engine refuses to replace a protected
    # resource; so nothing here replaces: a data-center move is refused at check, with the way out.
    REPLACES: tuple[str, ...] = ()

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        size, dc = news.get("size_gb"), news.get("datacenter")
        if not is_unknown(size):
            size = _as_int(size)
            old_size = _as_int(olds.get("size_gb")) if olds else None
            if size is None or not 10 <= size <= 4096:
                failures.append(CheckFailure("size_gb", f"size_gb must be an integer in 10..4096, got {news.get('size_gb')!r}"))
            elif old_size is not None and size < old_size:
                failures.append(
                    CheckFailure("size_gb", f"a network volume can only grow: {olds['size_gb']} GB -> {size} GB refused")
                )
        if not is_unknown(dc):
            if not dc:
                failures.append(CheckFailure("datacenter", "datacenter is required"))
            elif olds and olds.get("datacenter") and not is_unknown(olds.get("datacenter")) and olds["datacenter"] != dc:
                failures.append(CheckFailure(
                    "datacenter",
                    f"the network volume is protected and cannot move {olds['datacenter']} -> {dc}; "
                    "see docs/DEPLOY.md 'Moving or removing the volume'",
                ))
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
        require_known(props, "create")
        state = api_from(props).create_volume(VolumeSpec(props["volume_name"], int(props["size_gb"]), props["datacenter"]))
        return CreateResult(state.id, self._outs(props, state))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        require_known(props, "read")
        state = api_from(props).get_volume(id_)
        if state is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(props, state))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        require_known(news, "update")
        api = api_from(news)
        if int(news["size_gb"]) < int(olds["size_gb"]):
            raise RunpodApiError(
                f"network volume {id_}: size may only grow ({olds['size_gb']} GB -> {news['size_gb']} GB refused)"
            )
        if olds.get("datacenter") and news["datacenter"] != olds["datacenter"]:
            raise RunpodApiError(f"network volume {id_}: cannot move between data centers (see docs/DEPLOY.md)")
        state = api.update_volume(
            id_,
            name=news["volume_name"] if news["volume_name"] != olds.get("volume_name") else None,
            size_gb=int(news["size_gb"]) if news["size_gb"] != olds.get("size_gb") else None,
        )
        return UpdateResult(self._outs(news, state))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        require_known(props, "delete")
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
# Secret


SECRET_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def secret_base_name(*parts: str) -> str:
    """A Runpod secret name from free text: lowercase letters, digits and underscores."""
    raw = "_".join(parts).lower()
    return "".join(c if c in SECRET_NAME_CHARS else "_" for c in raw).strip("_")[:48]


class RunpodSecretProvider(_Base):
    """A Runpod secret. A new value is a new secret (fresh name suffix), created before the old one
    is deleted, so rotating a key rolls the template (its reference changes) and then the endpoint."""

    FIELDS = ("secret_name", "value", "description")
    REPLACES = ("secret_name", "value")

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        name = news.get("secret_name")
        if not is_unknown(name) and (not isinstance(name, str) or not name or set(name) - SECRET_NAME_CHARS):
            failures.append(CheckFailure("secret_name", f"secret_name must be lowercase letters, digits, underscores: {name!r}"))
        value = news.get("value")
        if not is_unknown(value) and (not isinstance(value, str) or not value):
            failures.append(CheckFailure("value", "value must be a non-empty string"))
        return CheckResult(news, failures)

    @staticmethod
    def _outs(props: Mapping[str, Any], secret_id: str, runpod_name: str) -> dict[str, Any]:
        return {
            **_api_props(props),
            "secret_name": props.get("secret_name"),
            "value": props.get("value"),
            "description": props.get("description"),
            "secret_id": secret_id,
            "runpod_name": runpod_name,
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        require_known(props, "create")
        name = f"{props['secret_name']}_{_random.token_hex(3)}"
        state = graphql_from(props, [props["value"]]).create_secret(name, props["value"], props.get("description") or "")
        return CreateResult(state.id, self._outs(props, state.id, state.name))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        require_known(props, "read")
        state = graphql_from(props, [props.get("value") or ""]).get_secret(id_)
        if state is None:
            return ReadResult("", {})
        # the value cannot be read back (Runpod never returns it); keep the one we set
        return ReadResult(id_, self._outs(props, state.id, state.name))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        require_known(news, "update")  # only description / api_* reach here; value and name replace
        return UpdateResult(self._outs(news, id_, olds.get("runpod_name") or ""))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        require_known(props, "delete")
        graphql_from(props, [props.get("value") or ""]).delete_secret(id_)


class RunpodSecret(Resource, module="runpod", name="Secret"):
    secret_id: pulumi.Output[str]
    runpod_name: pulumi.Output[str]

    def __init__(
        self, resource_name: str, *, secret_name: pulumi.Input[str], value: pulumi.Input[str], api: ApiArgs,
        description: str = "", opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {
            **api.props(), "secret_name": secret_name, "value": pulumi.Output.secret(value),
            "description": description, "secret_id": None, "runpod_name": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS + ["value"])
        )
        super().__init__(RunpodSecretProvider(), resource_name, props, opts)


# ---------------------------------------------------------------------------------------
# Container registry credential


def rest_from(props: Mapping[str, Any], extra_secrets: Sequence[str] = ()):
    """Registry credentials are a REST v2 resource (`/v2/registries`); GraphQL stacks reach them at
    Runpod's REST host (the credential id is the same one templates take on either API)."""
    from infra.runpod_api.base import DEFAULT_REST_URL
    from infra.runpod_api.rest import RestApi

    url = props.get("api_url") if props.get("api_mode") == "rest" else props.get("api_rest_url")
    return RestApi(props.get("api_key") or "", base_url=url or DEFAULT_REST_URL,
                   backoff_s=_float(props, "api_backoff_s", 0.5), secrets=extra_secrets)


class RegistryCredentialProvider(_Base):
    """Username and password for a private registry (GHCR, ECR). Runpod never returns them, so a
    change of either is a new credential (created first; the template then points at it)."""

    FIELDS = ("registry_name", "username", "password")
    REPLACES = ("registry_name", "username", "password")

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = [
            CheckFailure(k, f"{k} is required") for k in self.FIELDS if not is_unknown(news.get(k)) and not news.get(k)
        ]
        return CheckResult(news, failures)

    @staticmethod
    def _outs(props: Mapping[str, Any], rid: str, name: str) -> dict[str, Any]:
        return {**_api_props(props), "api_rest_url": props.get("api_rest_url"), "registry_name": name,
                "username": props.get("username"), "password": props.get("password"), "registry_id": rid}

    def create(self, props: dict[str, Any]) -> CreateResult:
        require_known(props, "create")
        name = f"{props['registry_name']}-{_random.token_hex(3)}"
        rid, got = rest_from(props, [props["password"]]).create_registry(name, props["username"], props["password"])
        return CreateResult(rid, {**self._outs(props, rid, got), "registry_name": props["registry_name"]})

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        require_known(props, "read")
        if rest_from(props).get_registry(id_) is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(props, id_, props.get("registry_name") or ""))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        require_known(news, "update")
        return UpdateResult(self._outs(news, id_, news.get("registry_name") or ""))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        require_known(props, "delete")
        rest_from(props).delete_registry(id_)


class RegistryCredential(Resource, module="runpod", name="RegistryCredential"):
    registry_id: pulumi.Output[str]

    def __init__(
        self, resource_name: str, *, registry_name: pulumi.Input[str], username: pulumi.Input[str],
        password: pulumi.Input[str], api: ApiArgs, opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {**api.props(), "api_rest_url": None, "registry_name": registry_name, "username": username,
                 "password": pulumi.Output.secret(password), "registry_id": None}
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS + ["password"])
        )
        super().__init__(RegistryCredentialProvider(), resource_name, props, opts)


# ---------------------------------------------------------------------------------------
# Template


def _is_reference(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("{{ RUNPOD_SECRET_") and value.endswith(" }}")


class TemplateProvider(_Base):
    FIELDS = ("template_name", "image", "container_disk_gb", "env", "registry_id")
    REPLACES: tuple[str, ...] = ()  # both APIs update every field we set in place

    @staticmethod
    def _spec(props: Mapping[str, Any]) -> TemplateSpec:
        return TemplateSpec(
            props["template_name"], props["image"], int(props["container_disk_gb"]), dict(props.get("env") or {}),
            registry_id=props.get("registry_id") or None,
        )

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        from contract.errors import is_secret_name

        failures = []
        env = news.get("env")
        if not is_unknown(env) and env is not None:
            if not isinstance(env, Mapping):
                failures.append(CheckFailure("env", f"env must be a mapping, got {type(env).__name__}"))
            else:
                # plain env holds no secret: a secret-named key must be a Runpod secret reference
                leaked = sorted(
                    k for k, v in env.items() if is_secret_name(k) and not is_unknown(v) and not _is_reference(v)
                )
                if leaked:
                    failures.append(CheckFailure(
                        "env", f"{leaked} look secret but are plain values; use RunpodSecret references"
                    ))
        image = news.get("image")
        if not is_unknown(image) and not image:
            failures.append(CheckFailure("image", "image is required"))
        return CheckResult(news, failures)

    @staticmethod
    def _outs(props: Mapping[str, Any], state, revision: int) -> dict[str, Any]:
        return {
            **_api_props(props),
            "template_name": state.name,
            "image": state.image,
            "container_disk_gb": state.container_disk_gb,
            "env": dict(state.env),
            "registry_id": state.registry_id,
            "template_id": state.id,
            # bumped on every update so endpoints can re-apply the template (REST keeps no link)
            "revision": revision,
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        require_known(props, "create")
        state = api_from(props).create_template(self._spec(props))
        return CreateResult(state.id, self._outs(props, state, 1))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        require_known(props, "read")
        state = api_from(props).get_template(id_)
        if state is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(props, state, int(props.get("revision") or 1)))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        require_known(news, "update")
        api = api_from(news)
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
        require_known(props, "delete")
        api_from(props).delete_template(id_, props.get("template_name") or "")


class Template(Resource, module="runpod", name="Template"):
    template_id: pulumi.Output[str]
    revision: pulumi.Output[int]
    env: pulumi.Output[dict]
    image: pulumi.Output[str]

    def __init__(
        self, resource_name: str, *, template_name: pulumi.Input[str], image: pulumi.Input[str],
        container_disk_gb: pulumi.Input[int], env: pulumi.Input[Mapping[str, str]], api: ApiArgs,
        registry_id: pulumi.Input[Optional[str]] = None, opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {
            **api.props(),
            "template_name": template_name,
            "image": image,
            "container_disk_gb": container_disk_gb,
            "env": env,
            "registry_id": registry_id,
            "template_id": None,
            "revision": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS))
        super().__init__(TemplateProvider(), resource_name, props, opts)


# ---------------------------------------------------------------------------------------
# Endpoint


class EndpointProvider(_Base):
    FIELDS = (
        "endpoint_name", "template_id", "template_revision", "template_image", "template_env", "gpu_pools",
        "gpu_count", "workers_min", "workers_max", "idle_timeout_s", "scaler_type", "scaler_value", "flashboot",
        "execution_timeout_s", "network_volume_id", "datacenters", "min_cuda_version",
    )
    # every field is patchable on both APIs; the routing type (queue) is fixed by this provider
    REPLACES: tuple[str, ...] = ()
    # what the workers run: a change here means the template must be applied to the endpoint again
    ROLLS = ("template_id", "template_revision", "template_image", "template_env")

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
            scaler_value=props["scaler_value"],
            flashboot=flashboot_mode(props["flashboot"]),
            execution_timeout_s=int(props["execution_timeout_s"]),
            network_volume_id=props.get("network_volume_id") or None,
            datacenters=tuple(props.get("datacenters") or ()),
            min_cuda_version=props.get("min_cuda_version") or None,
        )

    def check(self, olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        pools = news.get("gpu_pools")
        if not is_unknown(pools) and not pools:
            failures.append(CheckFailure("gpu_pools", "at least one Runpod GPU pool is required"))
        wmin, wmax = _as_int(news.get("workers_min")), _as_int(news.get("workers_max"))
        if wmin is not None and wmax is not None and wmin > wmax:
            failures.append(CheckFailure("workers_min", f"workers_min ({wmin}) exceeds workers_max ({wmax})"))
        stype = news.get("scaler_type")
        if not is_unknown(stype) and stype not in ("QUEUE_DELAY", "REQUEST_COUNT"):
            failures.append(CheckFailure("scaler_type", "scaler_type must be QUEUE_DELAY or REQUEST_COUNT"))
        fb = news.get("flashboot")
        if not is_unknown(fb):
            try:
                flashboot_mode(fb)
            except ValueError as exc:
                failures.append(CheckFailure("flashboot", str(exc)))
        return CheckResult(news, failures)

    @staticmethod
    def _outs(props: Mapping[str, Any], state) -> dict[str, Any]:
        return {
            **_api_props(props),
            "endpoint_name": state.name,
            # REST does not report the template an endpoint came from; keep what we applied
            "template_id": state.template_id or props.get("template_id"),
            "template_revision": props.get("template_revision"),
            # what the workers run, read back: drift here re-applies the template on the next up
            "template_image": state.image or props.get("template_image"),
            "template_env": dict(state.env) if state.image else props.get("template_env"),
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
            "min_cuda_version": state.min_cuda_version,
            "endpoint_id": state.id,
            "run_url": state.run_url,
        }

    @staticmethod
    def _check_pools(api: RunpodApi, spec: EndpointSpec) -> None:
        """Resolve the GPU pools against Runpod's catalogue, where the API offers one."""
        known = api.gpu_pools()
        if known is None:
            return
        missing = [p for p in spec.gpu_pools if p not in known]
        if missing:
            raise RunpodValidationError(
                f"GPU pool(s) {missing} are not serverless pools in Runpod's catalogue (available: {sorted(known)}); "
                "pick another gpu tier in infinitetalk:overrides",
                operation="createEndpoint",
            )

    def create(self, props: dict[str, Any]) -> CreateResult:
        require_known(props, "create")
        api, spec = api_from(props), self._spec(props)
        self._check_pools(api, spec)
        state = api.create_endpoint(spec)
        return CreateResult(state.id, self._outs(props, state))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        require_known(props, "read")
        state = api_from(props).get_endpoint(id_)
        if state is None:
            return ReadResult("", {})
        return ReadResult(id_, self._outs(props, state))

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        require_known(news, "update")
        api, spec = api_from(news), self._spec(news)
        if sorted(olds.get("gpu_pools") or []) != sorted(spec.gpu_pools):
            self._check_pools(api, spec)
        reapply = any(_norm(olds.get(f)) != _norm(news.get(f)) for f in self.ROLLS)
        state = api.update_endpoint(id_, spec, reapply_template=reapply)
        return UpdateResult(self._outs(news, state))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        require_known(props, "delete")
        api_from(props).delete_endpoint(id_)


class Endpoint(Resource, module="runpod", name="Endpoint"):
    endpoint_id: pulumi.Output[str]
    run_url: pulumi.Output[str]

    def __init__(
        self, resource_name: str, *, endpoint_name: pulumi.Input[str], template_id: pulumi.Input[str],
        template_revision: pulumi.Input[int], template_image: pulumi.Input[str],
        template_env: pulumi.Input[Mapping[str, str]], gpu_pools: pulumi.Input[Sequence[str]],
        gpu_count: pulumi.Input[int], workers_min: pulumi.Input[int], workers_max: pulumi.Input[int],
        idle_timeout_s: pulumi.Input[int], scaler_type: pulumi.Input[str], scaler_value: pulumi.Input[float],
        flashboot: pulumi.Input[str], execution_timeout_s: pulumi.Input[int],
        network_volume_id: pulumi.Input[Optional[str]], datacenters: pulumi.Input[Sequence[str]], api: ApiArgs,
        min_cuda_version: pulumi.Input[Optional[str]] = None, opts: Optional[pulumi.ResourceOptions] = None,
    ) -> None:
        props = {
            **api.props(),
            "endpoint_name": endpoint_name,
            "template_id": template_id,
            "template_revision": template_revision,
            "template_image": template_image,
            "template_env": template_env,
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
            "min_cuda_version": min_cuda_version,
            "endpoint_id": None,
            "run_url": None,
        }
        opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=SECRET_OUTPUTS))
        super().__init__(EndpointProvider(), resource_name, props, opts)
