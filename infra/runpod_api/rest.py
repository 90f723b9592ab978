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
    create_once,
    run_url_for,
    wait_while,
)
from infra.runpod_api.errors import RunpodApiError, RunpodValidationError

# how long `pulumi destroy` keeps asking to delete a template Runpod still reports bound
TEMPLATE_UNBIND_WAIT_S = 600.0


class RestApi(RunpodApi):
    mode = "rest"

    def __init__(
        self, api_key: str, *, base_url: str, backoff_s: float = 0.5, retries: int = 5, secrets: Iterable[str] = (),
        unbind_wait_s: float = TEMPLATE_UNBIND_WAIT_S,
    ) -> None:
        self.http = Transport(base_url, api_key, backoff_s=backoff_s, retries=retries, secrets=secrets)
        self.unbind_wait_s = unbind_wait_s

    def _post_once(self, path: str, op: str, body: Any, parse, find):
        """POST without retries of its own; `create_once` retries after a look-up by name."""
        return create_once(
            self.http, op,
            lambda: parse(self._json(self._call("POST", path, op, body, ok=(200, 201), retries=0), op)),
            find,
        )

    def _list(self, path: str, key: str, op: str) -> list[dict[str, Any]]:
        data = self._json(self._call("GET", path, op), op)
        return [d for d in (data.get(key) or []) if isinstance(d, dict)]

    # -- plumbing

    def _call(
        self, method: str, path: str, operation: str, body: Any = None, ok: tuple[int, ...] = (200,),
        retries: Optional[int] = None,
    ) -> httpx.Response:
        resp = self.http.request(method, path, operation, body, retries=retries)
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
        return self._post_once("/v2/network-volumes", op, body, self._volume, lambda: self.find_volume(spec.name))

    def find_volume(self, name: str) -> Optional[VolumeState]:
        for d in self._list("/v2/network-volumes", "networkVolumes", "listNetworkVolumes"):
            if d.get("name") == name:
                return self._volume(d)
        return None

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

    # -- container registry credentials (private images); username and password are write-only

    def create_registry(self, name: str, username: str, password: str) -> tuple[str, str]:
        op = "createRegistry"
        self.http.add_secrets([password])
        body = {"name": name, "username": username, "password": password}
        return self._post_once("/v2/registries", op, body, lambda d: (d["id"], d["name"]), lambda: self.find_registry(name))

    def find_registry(self, name: str) -> Optional[tuple[str, str]]:
        for d in self._list("/v2/registries", "registries", "listRegistries"):
            if d.get("name") == name:
                return d["id"], d["name"]
        return None

    def get_registry(self, registry_id: str) -> Optional[tuple[str, str]]:
        data = self._get(f"/v2/registries/{registry_id}", "getRegistry")
        return None if data is None else (data["id"], data["name"])

    def delete_registry(self, registry_id: str) -> None:
        self._delete(f"/v2/registries/{registry_id}", "deleteRegistry")

    # -- templates

    @staticmethod
    def _template(data: dict[str, Any]) -> TemplateState:
        return TemplateState(
            id=data["id"],
            name=data["name"],
            image=data["image"],
            container_disk_gb=int(data.get("disk") or 0),
            env=dict(data.get("env") or {}),
            registry_id=data.get("registry") or None,
        )

    def _template_body(self, spec: TemplateSpec) -> dict[str, Any]:
        self.http.add_secrets(spec.env.values())
        body = {"name": spec.name, "image": spec.image, "disk": spec.container_disk_gb, "env": dict(spec.env)}
        body["registry"] = spec.registry_id  # null clears a credential no longer wanted
        return body

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
        return self._post_once("/v2/templates", op, body, self._template, lambda: self.find_template(spec.name))

    def find_template(self, name: str) -> Optional[TemplateState]:
        for d in self._list("/v2/templates", "templates", "listTemplates"):
            if d.get("name") == name:
                return self._template(d)
        return None

    def get_template(self, template_id: str) -> Optional[TemplateState]:
        data = self._get(f"/v2/templates/{template_id}", "getTemplate")
        return None if data is None else self._template(data)

    def update_template(self, template_id: str, spec: TemplateSpec) -> TemplateState:
        op = "updateTemplate"
        return self._template(self._json(self._call("PATCH", f"/v2/templates/{template_id}", op, self._template_body(spec)), op))

    def delete_template(self, template_id: str, name: str) -> None:
        """Runpod answers 400 "in use" for minutes after the endpoint that used it is deleted."""
        op = "deleteTemplate"

        def attempt() -> bool:
            resp = self.http.request("DELETE", f"/v2/templates/{template_id}", op)
            if resp.status_code in (200, 204, 404):
                return True
            err = self.http.fail(resp, op)
            if isinstance(err, RunpodValidationError) and "in use" in str(err).lower():
                return False
            raise err

        wait_while(self.http, attempt, wait_s=self.unbind_wait_s, operation=op)

    # -- endpoints

    @staticmethod
    def _scaling(spec: EndpointSpec) -> dict[str, Any]:
        if spec.scaler_type == "REQUEST_COUNT":
            return {"type": "REQUEST_COUNT", "requestCount": int(spec.scaler_value)}
        if spec.scaler_type == "QUEUE_DELAY":
            return {"type": "QUEUE_DELAY", "queueDelay": float(spec.scaler_value)}
        raise RunpodApiError(f"unknown scaler type {spec.scaler_type!r}: use QUEUE_DELAY or REQUEST_COUNT")

    def _endpoint_body(self, spec: EndpointSpec, *, send_pools: bool = True) -> dict[str, Any]:
        workers: dict[str, Any] = {"min": spec.workers_min, "max": spec.workers_max}
        if spec.scaler_type != "REQUEST_COUNT":  # Runpod rejects idleTimeout beside a request-count scaler
            workers["idleTimeout"] = spec.idle_timeout_s
        # a PATCH that sends `pools` without `excludedTypes` clears the exclusions someone set in the
        # console; pools go out only on create or when they change
        gpu: dict[str, Any] = {"count": spec.gpu_count}
        if send_pools:
            gpu["pools"] = list(spec.gpu_pools)
        if spec.min_cuda_version:
            gpu["minCudaVersion"] = spec.min_cuda_version
        body: dict[str, Any] = {
            "name": spec.name,
            "gpu": gpu,
            "workers": workers,
            "scaling": self._scaling(spec),
            "flashboot": spec.flashboot,
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
            scaler_value=(int(svalue or 0) if stype == "REQUEST_COUNT" else float(svalue or 0)),
            flashboot=str(data.get("flashboot") or "OFF"),
            execution_timeout_s=int(data.get("timeout") or 0) // 1000,
            network_volume_id=vols[0] if vols else None,
            datacenters=tuple(data.get("dataCenterIds") or ()),
            run_url=urls.get("run") or run_url_for(data["id"]),
            min_cuda_version=gpu.get("minCudaVersion") or None,
            image=str(data.get("image") or ""),
            env=dict(data.get("env") or {}),
        )

    def create_endpoint(self, spec: EndpointSpec) -> EndpointState:
        op = "createEndpoint"
        body = {**self._endpoint_body(spec), "type": "QUEUE", "templateId": spec.template_id}
        return self._post_once(
            "/v2/serverless", op, body, lambda d: self._endpoint(d, spec.template_id), lambda: self.find_endpoint(spec.name)
        )

    def find_endpoint(self, name: str) -> Optional[EndpointState]:
        for d in self._list("/v2/serverless", "endpoints", "listEndpoints"):
            if d.get("name") == name:
                return self._endpoint(d)
        return None

    def gpu_pools(self) -> Optional[frozenset[str]]:
        data = self._json(self._call("GET", "/v2/catalog/gpus", "listGpuTypes"), "listGpuTypes")
        return frozenset(g["pool"] for g in data.get("gpus") or [] if isinstance(g, dict) and g.get("pool"))

    def get_endpoint(self, endpoint_id: str) -> Optional[EndpointState]:
        data = self._get(f"/v2/serverless/{endpoint_id}", "getEndpoint")
        return None if data is None else self._endpoint(data)

    def update_endpoint(self, endpoint_id: str, spec: EndpointSpec, *, reapply_template: bool = False) -> EndpointState:
        op = "updateEndpoint"
        current = self.get_endpoint(endpoint_id)
        same_pools = current is not None and sorted(current.gpu_pools) == sorted(spec.gpu_pools)
        body = self._endpoint_body(spec, send_pools=not same_pools)
        if reapply_template:
            body["templateId"] = spec.template_id
        data = self._json(self._call("PATCH", f"/v2/serverless/{endpoint_id}", op, body), op)
        return self._endpoint(data, spec.template_id)

    def delete_endpoint(self, endpoint_id: str) -> None:
        self._delete(f"/v2/serverless/{endpoint_id}", "deleteEndpoint")
