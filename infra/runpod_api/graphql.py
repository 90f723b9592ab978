"""Runpod GraphQL (`https://api.runpod.io/graphql`): deprecated, retires in early 2027.

Kept selectable for accounts or regions where REST v2 is not yet available. Facts used:
`saveTemplate(input)` creates or (with `id`) updates a template (`imageName`,
`containerDiskInGb`, `volumeInGb` 0 for serverless, `dockerArgs`, `env` as key/value pairs,
`isServerless`); `deleteTemplate(templateName)`; `saveEndpoint(input)` creates or updates an
endpoint (`gpuIds` comma-separated pools, `gpuCount`, `workersMin/Max`, `idleTimeout`,
`scalerType/Value`, `locations`, `networkVolumeId`, `executionTimeoutMs`; FlashBoot is the `-fb`
name suffix); `deleteEndpoint(id)` needs both worker bounds at zero first;
`createNetworkVolume` / `updateNetworkVolume` / `deleteNetworkVolume(input)`; reads go through
`myself { podTemplates | endpoints | networkVolumes }`.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from infra.runpod_api.base import (
    EndpointSpec,
    EndpointState,
    RunpodApi,
    TemplateSpec,
    TemplateState,
    Transport,
    VolumeSpec,
    VolumeState,
    run_url_for,
)
from infra.runpod_api.errors import (
    RunpodApiError,
    RunpodAuthError,
    RunpodNotFoundError,
    RunpodValidationError,
)

FLASHBOOT_SUFFIX = "-fb"

_TEMPLATE_FIELDS = "id name imageName containerDiskInGb isServerless env { key value }"
_ENDPOINT_FIELDS = (
    "id name templateId gpuIds gpuCount workersMin workersMax idleTimeout scalerType scalerValue "
    "locations networkVolumeId executionTimeoutMs"
)
_VOLUME_FIELDS = "id name size dataCenterId"


class GraphqlApi(RunpodApi):
    mode = "graphql"

    def __init__(
        self, api_key: str, *, url: str, backoff_s: float = 0.5, retries: int = 5, secrets: Iterable[str] = ()
    ) -> None:
        # the key goes in a header, not `?api_key=`: URLs end up in proxies' and our own error logs
        self.http = Transport(url, api_key, backoff_s=backoff_s, retries=retries, secrets=secrets)

    def _gql(self, operation: str, query: str, variables: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        resp = self.http.request("POST", "", operation, {"query": query, "variables": variables or {}})
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
        data = self._gql("createNetworkVolume", q, {"input": {"name": spec.name, "size": spec.size_gb, "dataCenterId": spec.datacenter}})
        return self._volume(data["createNetworkVolume"])

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
            id=d["id"], name=d["name"], image=d["imageName"], container_disk_gb=int(d.get("containerDiskInGb") or 0), env=env
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
        }
        if template_id:
            inp["id"] = template_id
        q = f"mutation SaveTemplate($input: SaveTemplateInput) {{ saveTemplate(input: $input) {{ {_TEMPLATE_FIELDS} }} }}"
        return self._template(self._gql(operation, q, {"input": inp})["saveTemplate"])

    def create_template(self, spec: TemplateSpec) -> TemplateState:
        return self._save_template("saveTemplate(create)", spec, None)

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
        self._gql("deleteTemplate", q, {"name": current.name})

    # -- endpoints

    @staticmethod
    def _endpoint(d: dict[str, Any]) -> EndpointState:
        name = d["name"]
        flashboot = name.endswith(FLASHBOOT_SUFFIX)
        if flashboot:
            name = name[: -len(FLASHBOOT_SUFFIX)]
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
            flashboot=flashboot,
            execution_timeout_s=int(d.get("executionTimeoutMs") or 0) // 1000,
            network_volume_id=d.get("networkVolumeId") or None,
            datacenters=tuple(locs),
            run_url=run_url_for(d["id"]),
        )

    def _save_endpoint(self, operation: str, spec: EndpointSpec, endpoint_id: Optional[str]) -> EndpointState:
        if spec.name.endswith(FLASHBOOT_SUFFIX):
            raise RunpodValidationError(f"endpoint name must not end in {FLASHBOOT_SUFFIX!r} (GraphQL uses it for FlashBoot)")
        inp: dict[str, Any] = {
            "name": spec.name + (FLASHBOOT_SUFFIX if spec.flashboot else ""),
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
        return self._endpoint(self._gql(operation, q, {"input": inp})["saveEndpoint"])

    def create_endpoint(self, spec: EndpointSpec) -> EndpointState:
        return self._save_endpoint("saveEndpoint(create)", spec, None)

    def get_endpoint(self, endpoint_id: str) -> Optional[EndpointState]:
        for e in self._myself("Endpoints", f"endpoints {{ {_ENDPOINT_FIELDS} }}"):
            if e.get("id") == endpoint_id:
                return self._endpoint(e)
        return None

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


