"""Runpod REST v2 (`https://api.runpod.io/v2/...`, documented by openapi-v2.json).

Facts the mapping relies on: volumes are `/v2/network-volumes` (size in GB, `dataCenter`
immutable, size may only grow); templates `/v2/templates` (`disk`, `env` as an object,
`serverless`); endpoints `/v2/serverless` (`gpu.pools`, `workers`, `scaling` as a tagged union,
`flashboot` an enum, `timeout` in milliseconds). An endpoint keeps no link to the template it was
created from, so a template change is pushed by PATCHing the endpoint with `templateId` again.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import httpx

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
from infra.runpod_api.errors import RunpodApiError


class RestApi(RunpodApi):
    mode = "rest"

    def __init__(
        self, api_key: str, *, base_url: str, backoff_s: float = 0.5, retries: int = 5, secrets: Iterable[str] = ()
    ) -> None:
        self.http = Transport(base_url, api_key, backoff_s=backoff_s, retries=retries, secrets=secrets)

    # -- plumbing

    def _call(self, method: str, path: str, operation: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> httpx.Response:
        resp = self.http.request(method, path, operation, body)
        if resp.status_code not in ok:
            raise self.http.fail(resp, operation)
        return resp

    def _json(self, resp: httpx.Response, operation: str) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            raise RunpodApiError(f"Runpod {operation} returned a body that is not JSON", operation=operation) from None
        if not isinstance(data, dict):
            raise RunpodApiError(f"Runpod {operation} returned {type(data).__name__}, expected an object", operation=operation)
        return data

    def _get(self, path: str, operation: str) -> Optional[dict[str, Any]]:
        resp = self.http.request("GET", path, operation)
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self.http.fail(resp, operation)
        return self._json(resp, operation)

    def _delete(self, path: str, operation: str) -> None:
        resp = self.http.request("DELETE", path, operation)
        if resp.status_code in (200, 204, 404):  # 404: already gone, which is what we wanted
            return
        raise self.http.fail(resp, operation)

    # -- volumes

    @staticmethod
    def _volume(data: dict[str, Any]) -> VolumeState:
        return VolumeState(id=data["id"], name=data["name"], size_gb=int(data["size"]), datacenter=data["dataCenter"])

    def create_volume(self, spec: VolumeSpec) -> VolumeState:
        op = "createNetworkVolume"
        body = {"name": spec.name, "size": spec.size_gb, "dataCenter": spec.datacenter}
        return self._volume(self._json(self._call("POST", "/v2/network-volumes", op, body, ok=(200, 201)), op))

    def get_volume(self, volume_id: str) -> Optional[VolumeState]:
        data = self._get(f"/v2/network-volumes/{volume_id}", "getNetworkVolume")
        return None if data is None else self._volume(data)

    def update_volume(self, volume_id: str, *, name: Optional[str] = None, size_gb: Optional[int] = None) -> VolumeState:
        op = "updateNetworkVolume"
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if size_gb is not None:
            body["size"] = size_gb
        if not body:
            got = self.get_volume(volume_id)
            if got is None:
                raise RunpodApiError(f"network volume {volume_id} not found", status=404, operation=op)
            return got
        return self._volume(self._json(self._call("PATCH", f"/v2/network-volumes/{volume_id}", op, body), op))

    def delete_volume(self, volume_id: str) -> None:
        self._delete(f"/v2/network-volumes/{volume_id}", "deleteNetworkVolume")

    # -- templates

    @staticmethod
    def _template(data: dict[str, Any]) -> TemplateState:
        return TemplateState(
            id=data["id"],
            name=data["name"],
            image=data["image"],
            container_disk_gb=int(data.get("disk") or 0),
            env=dict(data.get("env") or {}),
        )

    def _template_body(self, spec: TemplateSpec) -> dict[str, Any]:
        self.http.add_secrets(spec.env.values())
        return {"name": spec.name, "image": spec.image, "disk": spec.container_disk_gb, "env": dict(spec.env)}

    def create_template(self, spec: TemplateSpec) -> TemplateState:
        op = "createTemplate"
        body = {
            **self._template_body(spec),
            "serverless": True,
            "public": False,
            "category": "NVIDIA",
            # serverless workers need neither; leaving the defaults would inject PUBLIC_KEY/JUPYTER_PASSWORD
            "startSsh": False,
            "startJupyter": False,
        }
        return self._template(self._json(self._call("POST", "/v2/templates", op, body, ok=(200, 201)), op))

    def get_template(self, template_id: str) -> Optional[TemplateState]:
        data = self._get(f"/v2/templates/{template_id}", "getTemplate")
        return None if data is None else self._template(data)

    def update_template(self, template_id: str, spec: TemplateSpec) -> TemplateState:
        op = "updateTemplate"
        return self._template(self._json(self._call("PATCH", f"/v2/templates/{template_id}", op, self._template_body(spec)), op))

    def delete_template(self, template_id: str, name: str) -> None:
        self._delete(f"/v2/templates/{template_id}", "deleteTemplate")

    # -- endpoints

    @staticmethod
    def _scaling(spec: EndpointSpec) -> dict[str, Any]:
        if spec.scaler_type == "REQUEST_COUNT":
            return {"type": "REQUEST_COUNT", "requestCount": spec.scaler_value}
        if spec.scaler_type == "QUEUE_DELAY":
            return {"type": "QUEUE_DELAY", "queueDelay": spec.scaler_value}
        raise RunpodApiError(f"unknown scaler type {spec.scaler_type!r}: use QUEUE_DELAY or REQUEST_COUNT")

    def _endpoint_body(self, spec: EndpointSpec) -> dict[str, Any]:
        workers: dict[str, Any] = {"min": spec.workers_min, "max": spec.workers_max}
        if spec.scaler_type != "REQUEST_COUNT":  # Runpod rejects idleTimeout beside a request-count scaler
            workers["idleTimeout"] = spec.idle_timeout_s
        body: dict[str, Any] = {
            "name": spec.name,
            "gpu": {"pools": list(spec.gpu_pools), "count": spec.gpu_count},
            "workers": workers,
            "scaling": self._scaling(spec),
            "flashboot": "FLASHBOOT" if spec.flashboot else "OFF",
            "timeout": spec.execution_timeout_s * 1000,
            "networkVolumes": [spec.network_volume_id] if spec.network_volume_id else [],
            "dataCenterIds": list(spec.datacenters),
        }
        return body

    @staticmethod
    def _endpoint(data: dict[str, Any], template_id: str = "") -> EndpointState:
        gpu = data.get("gpu") or {}
        workers = data.get("workers") or {}
        scaling = data.get("scaling") or {}
        stype = scaling.get("type", "QUEUE_DELAY")
        svalue = scaling.get("requestCount") if stype == "REQUEST_COUNT" else scaling.get("queueDelay")
        vols = data.get("networkVolumes") or []
        urls = data.get("requestUrls") or {}
        return EndpointState(
            id=data["id"],
            name=data["name"],
            template_id=template_id,
            gpu_pools=tuple(gpu.get("pools") or ()),
            gpu_count=int(gpu.get("count") or 1),
            workers_min=int(workers.get("min", 0)),
            workers_max=int(workers.get("max", 0)),
            idle_timeout_s=int(workers.get("idleTimeout") or 0),
            scaler_type=stype,
            scaler_value=int(svalue or 0),
            flashboot=data.get("flashboot", "OFF") != "OFF",
            execution_timeout_s=int(data.get("timeout") or 0) // 1000,
            network_volume_id=vols[0] if vols else None,
            datacenters=tuple(data.get("dataCenterIds") or ()),
            run_url=urls.get("run") or run_url_for(data["id"]),
        )

    def create_endpoint(self, spec: EndpointSpec) -> EndpointState:
        op = "createEndpoint"
        body = {**self._endpoint_body(spec), "type": "QUEUE", "templateId": spec.template_id}
        return self._endpoint(self._json(self._call("POST", "/v2/serverless", op, body, ok=(200, 201)), op), spec.template_id)

    def get_endpoint(self, endpoint_id: str) -> Optional[EndpointState]:
        data = self._get(f"/v2/serverless/{endpoint_id}", "getEndpoint")
        return None if data is None else self._endpoint(data)

    def update_endpoint(self, endpoint_id: str, spec: EndpointSpec, *, reapply_template: bool = False) -> EndpointState:
        op = "updateEndpoint"
        body = self._endpoint_body(spec)
        if reapply_template:
            body["templateId"] = spec.template_id
        data = self._json(self._call("PATCH", f"/v2/serverless/{endpoint_id}", op, body), op)
        return self._endpoint(data, spec.template_id)

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._delete(f"/v2/serverless/{endpoint_id}", "deleteEndpoint")
