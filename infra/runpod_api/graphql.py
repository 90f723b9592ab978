"""Runpod GraphQL (`https://api.runpod.io/graphql`): deprecated, retires in early 2027.

Kept selectable for accounts or regions where REST v2 is not yet available. Facts used:
`saveTemplate(input)` creates or (with `id`) updates a template (`imageName`,
`containerDiskInGb`, `volumeInGb` 0 for serverless, `dockerArgs`, `env` as key/value pairs,
`isServerless`, `containerRegistryAuthId`); `deleteTemplate(templateName)`; `saveEndpoint(input)`
creates or updates an endpoint and *replaces* it: a field left out is reset, so every field is sent
every time (`gpuIds` comma-separated pools, `gpuCount`, `workersMin/Max`, `idleTimeout`,
`scalerType/Value`, `locations`, `networkVolumeId`, `executionTimeoutMs`, `flashBootType`
`FLASHBOOT | OFF`, `minCudaVersion`); `deleteEndpoint(id)` needs both worker bounds at zero first;
`createNetworkVolume` / `updateNetworkVolume` / `deleteNetworkVolume(input)`;
`secretCreate(input: {name, value, description})` / `secretDelete(id)`, referenced from env as
`{{ RUNPOD_SECRET_<name> }}`; reads go through `myself { podTemplates | endpoints |
networkVolumes | secrets }`. Secrets exist only here, so REST stacks use this client for them.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from infra.runpod_api.base import (
    EndpointSpec,
    EndpointState,
    RunpodApi,
    SecretState,
    TemplateSpec,
    TemplateState,
    Transport,
    VolumeSpec,
    VolumeState,
    create_once,
    run_url_for,
    wait_while,
)
from infra.runpod_api.errors import (
    RunpodApiError,
    RunpodAuthError,
    RunpodNotFoundError,
    RunpodValidationError,
)

GRAPHQL_FLASHBOOT = ("OFF", "FLASHBOOT")
TEMPLATE_UNBIND_WAIT_S = 600.0

_TEMPLATE_FIELDS = "id name imageName containerDiskInGb isServerless containerRegistryAuthId env { key value }"
_ENDPOINT_FIELDS = (
    "id name templateId gpuIds gpuCount workersMin workersMax idleTimeout scalerType scalerValue "
    "locations networkVolumeId executionTimeoutMs flashBootType minCudaVersion"
)
_SECRET_FIELDS = "id name"
_VOLUME_FIELDS = "id name size dataCenterId"


class GraphqlApi(RunpodApi):
    mode = "graphql"

    def __init__(
        self, api_key: str, *, url: str, backoff_s: float = 0.5, retries: int = 5, secrets: Iterable[str] = (),
        unbind_wait_s: float = TEMPLATE_UNBIND_WAIT_S,
    ) -> None:
        # the key goes in a header, not `?api_key=`: URLs end up in proxies' and our own error logs
        self.http = Transport(url, api_key, backoff_s=backoff_s, retries=retries, secrets=secrets)
        self.unbind_wait_s = unbind_wait_s

    def _gql(
        self, operation: str, query: str, variables: Optional[dict[str, Any]] = None, *, retries: Optional[int] = None
    ) -> dict[str, Any]:
        resp = self.http.request("POST", "", operation, {"query": query, "variables": variables or {}}, retries=retries)
        if resp.status_code != 200:
            raise self.http.fail(resp, operation)
        try:
            payload = resp.json()
        except ValueError:
            raise RunpodApiError(f"Runpod {operation} returned a body that is not JSON", operation=operation) from None
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            text = self.http.redact("; ".join(str(e.get("message", e)) for e in errors[:5]))
            low = text.lower()
            msg = f"Runpod {operation} failed: {text}"
            if "unauthor" in low or "api key" in low or "forbidden" in low:
                raise RunpodAuthError(msg, status=401, operation=operation)
            if "not found" in low or "does not exist" in low:
                raise RunpodNotFoundError(msg, status=404, operation=operation)
            raise RunpodValidationError(msg, status=400, operation=operation)
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            raise RunpodApiError(f"Runpod {operation} returned no data", operation=operation)
        return data

    def _myself(self, operation: str, selection: str) -> list[dict[str, Any]]:
        data = self._gql(operation, f"query {operation} {{ myself {{ {selection} }} }}")
        myself = data.get("myself") or {}
        key = selection.split("{", 1)[0].strip()
        return list(myself.get(key) or [])

    # -- volumes

    @staticmethod
    def _volume(d: dict[str, Any]) -> VolumeState:
        return VolumeState(id=d["id"], name=d["name"], size_gb=int(d["size"]), datacenter=d["dataCenterId"])

    def create_volume(self, spec: VolumeSpec) -> VolumeState:
        q = f"mutation CreateVolume($input: CreateNetworkVolumeInput!) {{ createNetworkVolume(input: $input) {{ {_VOLUME_FIELDS} }} }}"
        variables = {"input": {"name": spec.name, "size": spec.size_gb, "dataCenterId": spec.datacenter}}
        return create_once(
            self.http, "createNetworkVolume",
            lambda: self._volume(self._gql("createNetworkVolume", q, variables, retries=0)["createNetworkVolume"]),
            lambda: self.find_volume(spec.name),
        )

    def find_volume(self, name: str) -> Optional[VolumeState]:
        for v in self._myself("NetworkVolumes", f"networkVolumes {{ {_VOLUME_FIELDS} }}"):
            if v.get("name") == name:
                return self._volume(v)
        return None

    def get_volume(self, volume_id: str) -> Optional[VolumeState]:
        for v in self._myself("NetworkVolumes", f"networkVolumes {{ {_VOLUME_FIELDS} }}"):
            if v.get("id") == volume_id:
                return self._volume(v)
        return None

    def update_volume(self, volume_id: str, *, name: Optional[str] = None, size_gb: Optional[int] = None) -> VolumeState:
        inp: dict[str, Any] = {"id": volume_id}
        if name is not None:
            inp["name"] = name
        if size_gb is not None:
            inp["size"] = size_gb
        q = f"mutation UpdateVolume($input: UpdateNetworkVolumeInput!) {{ updateNetworkVolume(input: $input) {{ {_VOLUME_FIELDS} }} }}"
        return self._volume(self._gql("updateNetworkVolume", q, {"input": inp})["updateNetworkVolume"])

    def delete_volume(self, volume_id: str) -> None:
        if self.get_volume(volume_id) is None:
            return
        q = "mutation DeleteVolume($input: DeleteNetworkVolumeInput!) { deleteNetworkVolume(input: $input) }"
        self._gql("deleteNetworkVolume", q, {"input": {"id": volume_id}})

    # -- templates

    @staticmethod
    def _template(d: dict[str, Any]) -> TemplateState:
        env = {e["key"]: e["value"] for e in (d.get("env") or []) if e and e.get("key")}
        return TemplateState(
            id=d["id"], name=d["name"], image=d["imageName"], container_disk_gb=int(d.get("containerDiskInGb") or 0), env=env,
            registry_id=d.get("containerRegistryAuthId") or None,
        )

    def _save_template(self, operation: str, spec: TemplateSpec, template_id: Optional[str]) -> TemplateState:
        self.http.add_secrets(spec.env.values())
        inp: dict[str, Any] = {
            "name": spec.name,
            "imageName": spec.image,
            "containerDiskInGb": spec.container_disk_gb,
            "volumeInGb": 0,
            "dockerArgs": "",
            "env": [{"key": k, "value": v} for k, v in sorted(spec.env.items())],
            "isServerless": True,
            "containerRegistryAuthId": spec.registry_id or "",
        }
        if template_id:
            inp["id"] = template_id
        q = f"mutation SaveTemplate($input: SaveTemplateInput) {{ saveTemplate(input: $input) {{ {_TEMPLATE_FIELDS} }} }}"
        return self._template(self._gql(operation, q, {"input": inp}, retries=0 if not template_id else None)["saveTemplate"])

    def create_template(self, spec: TemplateSpec) -> TemplateState:
        return create_once(
            self.http, "saveTemplate(create)",
            lambda: self._save_template("saveTemplate(create)", spec, None),
            lambda: self.find_template(spec.name),
        )

    def find_template(self, name: str) -> Optional[TemplateState]:
        for t in self._myself("PodTemplates", f"podTemplates {{ {_TEMPLATE_FIELDS} }}"):
            if t.get("name") == name:
                return self._template(t)
        return None

    def get_template(self, template_id: str) -> Optional[TemplateState]:
        for t in self._myself("PodTemplates", f"podTemplates {{ {_TEMPLATE_FIELDS} }}"):
            if t.get("id") == template_id:
                return self._template(t)
        return None

    def update_template(self, template_id: str, spec: TemplateSpec) -> TemplateState:
        return self._save_template("saveTemplate(update)", spec, template_id)

    def delete_template(self, template_id: str, name: str) -> None:
        current = self.get_template(template_id)
        if current is None:
            return
        q = "mutation DeleteTemplate($name: String) { deleteTemplate(templateName: $name) }"

        def attempt() -> bool:
            try:
                self._gql("deleteTemplate", q, {"name": current.name})
            except RunpodNotFoundError:
                return True
            except RunpodValidationError as exc:  # still bound to a just-deleted endpoint
                if "in use" in str(exc).lower():
                    return False
                raise
            return True

        wait_while(self.http, attempt, wait_s=self.unbind_wait_s, operation="deleteTemplate")

    # -- endpoints

    @staticmethod
    def _endpoint(d: dict[str, Any], template: Optional[TemplateState] = None) -> EndpointState:
        name = d["name"]
        gpu_ids = [g.strip() for g in (d.get("gpuIds") or "").split(",") if g.strip()]
        locs = [loc.strip() for loc in (d.get("locations") or "").split(",") if loc.strip()]
        return EndpointState(
            id=d["id"],
            name=name,
            template_id=d.get("templateId") or "",
            gpu_pools=tuple(gpu_ids),
            gpu_count=int(d.get("gpuCount") or 1),
            workers_min=int(d.get("workersMin") or 0),
            workers_max=int(d.get("workersMax") or 0),
            idle_timeout_s=int(d.get("idleTimeout") or 0),
            scaler_type=d.get("scalerType") or "QUEUE_DELAY",
            scaler_value=int(d.get("scalerValue") or 0),
            flashboot=str(d.get("flashBootType") or "OFF"),
            execution_timeout_s=int(d.get("executionTimeoutMs") or 0) // 1000,
            network_volume_id=d.get("networkVolumeId") or None,
            datacenters=tuple(locs),
            run_url=run_url_for(d["id"]),
            min_cuda_version=d.get("minCudaVersion") or None,
            # the endpoint runs its template: image and env are the template's
            image=template.image if template else "",
            env=dict(template.env) if template else {},
        )

    def _save_endpoint(self, operation: str, spec: EndpointSpec, endpoint_id: Optional[str]) -> EndpointState:
        if spec.flashboot not in GRAPHQL_FLASHBOOT:
            raise RunpodValidationError(
                f"flashboot {spec.flashboot!r} is not available on GraphQL (flashBootType is one of {GRAPHQL_FLASHBOOT})"
            )
        # saveEndpoint replaces the endpoint: every field goes out every time
        inp: dict[str, Any] = {
            "name": spec.name,
            "flashBootType": spec.flashboot,
            "minCudaVersion": spec.min_cuda_version or "",
            "templateId": spec.template_id,
            "gpuIds": ",".join(spec.gpu_pools),
            "gpuCount": spec.gpu_count,
            "workersMin": spec.workers_min,
            "workersMax": spec.workers_max,
            "idleTimeout": spec.idle_timeout_s,
            "scalerType": spec.scaler_type,
            "scalerValue": spec.scaler_value,
            "locations": ",".join(spec.datacenters),
            "networkVolumeId": spec.network_volume_id or "",
            "executionTimeoutMs": spec.execution_timeout_s * 1000,
        }
        if endpoint_id:
            inp["id"] = endpoint_id
        q = f"mutation SaveEndpoint($input: EndpointInput!) {{ saveEndpoint(input: $input) {{ {_ENDPOINT_FIELDS} }} }}"
        data = self._gql(operation, q, {"input": inp}, retries=0 if not endpoint_id else None)["saveEndpoint"]
        return self._endpoint(data, self.get_template(spec.template_id))

    def create_endpoint(self, spec: EndpointSpec) -> EndpointState:
        return create_once(
            self.http, "saveEndpoint(create)",
            lambda: self._save_endpoint("saveEndpoint(create)", spec, None),
            lambda: self.find_endpoint(spec.name),
        )

    def _endpoints(self) -> list[dict[str, Any]]:
        return self._myself("Endpoints", f"endpoints {{ {_ENDPOINT_FIELDS} }}")

    def get_endpoint(self, endpoint_id: str) -> Optional[EndpointState]:
        for e in self._endpoints():
            if e.get("id") == endpoint_id:
                return self._endpoint(e, self.get_template(e.get("templateId") or ""))
        return None

    def find_endpoint(self, name: str) -> Optional[EndpointState]:
        for e in self._endpoints():
            if e.get("name") == name:
                return self._endpoint(e, self.get_template(e.get("templateId") or ""))
        return None

    # -- secrets

    def _secrets(self) -> list[dict[str, Any]]:
        return self._myself("Secrets", f"secrets {{ {_SECRET_FIELDS} }}")

    def find_secret(self, name: str) -> Optional[SecretState]:
        for s in self._secrets():
            if s.get("name") == name:
                return SecretState(id=s["id"], name=s["name"])
        return None

    def get_secret(self, secret_id: str) -> Optional[SecretState]:
        for s in self._secrets():
            if s.get("id") == secret_id:
                return SecretState(id=s["id"], name=s["name"])
        return None

    def create_secret(self, name: str, value: str, description: str = "") -> SecretState:
        self.http.add_secrets([value])
        q = f"mutation CreateSecret($input: SecretCreateInput!) {{ secretCreate(input: $input) {{ {_SECRET_FIELDS} }} }}"
        variables = {"input": {"name": name, "value": value, "description": description}}

        def send() -> SecretState:
            d = self._gql("secretCreate", q, variables, retries=0)["secretCreate"]
            return SecretState(id=d["id"], name=d["name"])

        return create_once(self.http, "secretCreate", send, lambda: self.find_secret(name))

    def delete_secret(self, secret_id: str) -> None:
        if self.get_secret(secret_id) is None:
            return
        self._gql("secretDelete", "mutation DeleteSecret($id: ID!) { secretDelete(id: $id) }", {"id": secret_id})

    def update_endpoint(self, endpoint_id: str, spec: EndpointSpec, *, reapply_template: bool = False) -> EndpointState:
        # GraphQL endpoints follow their template, so there is nothing extra to re-apply
        return self._save_endpoint("saveEndpoint(update)", spec, endpoint_id)

    def delete_endpoint(self, endpoint_id: str) -> None:
        current = self.get_endpoint(endpoint_id)
        if current is None:
            return
        if current.workers_min or current.workers_max:
            drained = EndpointSpec(**{**_spec_fields(current), "workers_min": 0, "workers_max": 0})
            self._save_endpoint("saveEndpoint(drain)", drained, endpoint_id)
        self._gql("deleteEndpoint", "mutation DeleteEndpoint($id: String!) { deleteEndpoint(id: $id) }", {"id": endpoint_id})


def _spec_fields(state: EndpointState) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(state, f.name) for f in fields(EndpointSpec)}


