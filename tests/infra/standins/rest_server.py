"""A stand-in for Runpod's REST v2 management API, checked against openapi-v2.json both ways.

Every request is validated with openapi-core before it is handled; a request the document
rejects is answered 422 *and* recorded in `violations`, which the test fixture turns into a
failure, so a client bug cannot hide behind a lenient stand-in. Every response is validated too
(a stand-in that drifts from the document fails the same way).
"""
from __future__ import annotations

import copy
import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.wrappers import Request, Response

from tests.infra.standins.common import StandIn, json_response, new_id

PROBLEM = "application/problem+json"


def spec_path() -> Path:
    env = os.environ.get("RUNPOD_OPENAPI")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[4] / "shared" / "runpod" / "openapi-v2.json"
    # The shared copy of Runpod's official spec when it sits beside the checkout; otherwise the same file
    # kept here, so the stand-in validates against the spec wherever the tests run.
    return shared if shared.is_file() else Path(__file__).with_name("openapi-v2.json")


_SPECS: dict[str, OpenAPI] = {}
SPEC_SERVER = "https://api.runpod.io"


def load_spec() -> OpenAPI:
    """The document as published, parsed once per process (parsing and checking it takes seconds)."""
    if "spec" not in _SPECS:
        raw = json.loads(spec_path().read_text())
        # RFC 7807 bodies are JSON; openapi-core only knows application/json by default
        config = Config(extra_media_type_deserializers={PROBLEM: lambda data, **_: json.loads(data)})
        _SPECS["spec"] = OpenAPI.from_dict(raw, config=config)
    return _SPECS["spec"]


class _AsProduction(WerkzeugOpenAPIRequest):
    """The loopback request, presented as sent to the documented server so `servers` matches."""

    @property
    def host_url(self) -> str:
        return SPEC_SERVER


def problem(status: int, title: str, detail: str, headers: Optional[dict] = None) -> Response:
    return json_response(status, {"title": title, "status": status, "detail": detail}, PROBLEM, headers)


class RestStandIn(StandIn):
    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        self.volumes: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.openapi: Optional[OpenAPI] = None
        self.registries: dict[str, dict[str, Any]] = {}
        # serverless pools the catalogue lists (GET /v2/catalog/gpus)
        self.catalog_pools = {"ADA_24": "NVIDIA GeForce RTX 4090", "ADA_80_PRO": "NVIDIA H100 80GB HBM3",
                              "AMPERE_80": "NVIDIA A100 80GB PCIe", "ADA_48_PRO": "NVIDIA L40S", "HOPPER_141": "NVIDIA H200"}
        # endpoint id -> template id applied (Runpod keeps no link, but refuses to delete a bound template)
        self.bound: dict[str, str] = {}
        self.bound_after_delete: dict[str, int] = {}
        self.unbind_delay_calls = 0
        # handle the next N POSTs, then answer 500 as if the response were lost
        self.lose_next_response = 0

    def bind(self, base_url: str) -> None:
        self.base_url = base_url
        self.openapi = load_spec()

    # -- WSGI

    def wsgi(self, environ, start_response):
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        assert self.openapi is not None
        body = request.get_data(cache=True)
        with self.lock:
            self.calls.append((request.method, request.path))
            self.bodies.append(body)
        oa_request = _AsProduction(request)
        if not self.authorized(request):
            response = problem(401, "Unauthorized", "missing bearer token" if "Authorization" not in request.headers else "invalid API key")
            return self._checked(oa_request, response)
        fault = self.faults.take(request.path)
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            title = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}.get(fault.status, "Error")
            return self._checked(oa_request, problem(fault.status, title, "injected fault", headers))
        try:
            self.openapi.validate_request(oa_request)
        except Exception as exc:  # openapi-core raises a family of validation errors
            detail = _explain(exc)
            with self.lock:
                self.violations.append(f"request {request.method} {request.path}: {detail}")
            return self._checked(oa_request, problem(422, "Unprocessable Entity", detail))
        payload = json.loads(body) if body else None
        with self.lock:
            response = self.route(request.method, request.path, payload)
            if self.lose_next_response and request.method == "POST" and response.status_code < 300:
                self.lose_next_response -= 1
                response = problem(502, "Bad Gateway", "upstream timed out")
        return self._checked(oa_request, response)

    def _checked(self, oa_request, response: Response) -> Response:
        assert self.openapi is not None
        try:
            self.openapi.validate_response(oa_request, WerkzeugOpenAPIResponse(response))
        except Exception as exc:
            with self.lock:
                self.violations.append(f"response {response.status_code} to {oa_request.method} {oa_request.path}: {_explain(exc)}")
        return response

    # -- routes

    def route(self, method: str, path: str, body: Any) -> Response:
        if path == "/v2/catalog/gpus" and method == "GET":
            gpus = [{"id": gid, "name": gid, "pool": pool, "manufacturer": "NVIDIA", "memory": 80, "secure": True,
                     "community": False, "price": {"secure": 2.0, "community": 0.0},
                     "maxCount": {"secure": 8, "community": 0}} for pool, gid in self.catalog_pools.items()]
            return json_response(200, {"gpus": gpus})
        m = re.fullmatch(r"/v2/(network-volumes|templates|serverless|registries)(?:/([^/]+))?", path)
        if not m:
            return problem(404, "Not Found", "no such route")
        kind, rid = m.group(1), m.group(2)
        handler = getattr(self, f"_{kind.replace('-', '_')}_{method.lower()}{'_one' if rid else ''}", None)
        if handler is None:
            return problem(405, "Method Not Allowed", f"{method} not allowed")
        return handler(rid, body) if rid else handler(body)

    # volumes
    def _network_volumes_post(self, body):
        vid = new_id("vol")
        vol = {"id": vid, "name": body["name"], "size": body["size"], "dataCenter": body["dataCenter"], "type": body.get("type", "STANDARD")}
        self.volumes[vid] = vol
        return json_response(201, vol)

    def _network_volumes_get_one(self, vid, _body=None):
        vol = self.volumes.get(vid)
        return json_response(200, vol) if vol else problem(404, "Not Found", "network volume not found")

    def _network_volumes_patch_one(self, vid, body):
        vol = self.volumes.get(vid)
        if not vol:
            return problem(404, "Not Found", "network volume not found")
        if "size" in body and body["size"] < vol["size"]:
            return problem(400, "Bad Request", "network volume size cannot be reduced")
        vol.update({k: body[k] for k in ("name", "size") if k in body})
        return json_response(200, vol)

    def _network_volumes_delete_one(self, vid, _body=None):
        if self.volumes.pop(vid, None) is None:
            return problem(404, "Not Found", "network volume not found")
        return Response(status=204)

    # templates
    def _templates_post(self, body):
        tid = new_id("tpl")
        tpl = {
            "id": tid,
            "name": body["name"],
            "image": body["image"],
            "args": body.get("args", ""),
            "disk": body.get("disk", 50),
            "mounts": body.get("mounts", {}),
            "ports": body.get("ports", []),
            "env": body.get("env", {}),
            "registry": body.get("registry"),
            "serverless": body.get("serverless", False),
            "public": body.get("public", False),
            "category": body.get("category", "NVIDIA"),
            "startSsh": body.get("startSsh", True),
            "startJupyter": body.get("startJupyter", True),
            "allowedCudaVersions": body.get("allowedCudaVersions", []),
        }
        self.templates[tid] = tpl
        return json_response(201, tpl)

    def _templates_get_one(self, tid, _body=None):
        tpl = self.templates.get(tid)
        return json_response(200, tpl) if tpl else problem(404, "Not Found", "template not found")

    def _templates_patch_one(self, tid, body):
        tpl = self.templates.get(tid)
        if not tpl:
            return problem(404, "Not Found", "template not found")
        tpl.update({k: v for k, v in body.items() if k != "mounts" or v})
        return json_response(200, tpl)

    # registry credentials (username/password are write-only: kept, never returned)
    def _registries_post(self, body):
        rid = new_id("reg")
        self.registries[rid] = {"id": rid, "name": body["name"], "username": body["username"], "password": body["password"]}
        return json_response(201, {"id": rid, "name": body["name"]})

    def _registries_get(self, _body=None):
        return json_response(200, {"registries": [{"id": r["id"], "name": r["name"]} for r in self.registries.values()]})

    def _registries_get_one(self, rid, _body=None):
        r = self.registries.get(rid)
        return json_response(200, {"id": r["id"], "name": r["name"]}) if r else problem(404, "Not Found", "registry not found")

    def _registries_delete_one(self, rid, _body=None):
        if any(t.get("registry") == rid for t in self.templates.values()):
            return problem(400, "Bad Request", "registry credential is in use by a template")
        if self.registries.pop(rid, None) is None:
            return problem(404, "Not Found", "registry not found")
        return Response(status=204)

    def _network_volumes_get(self, _body=None):
        return json_response(200, {"networkVolumes": list(self.volumes.values())})

    def _templates_get(self, _body=None):
        return json_response(200, {"templates": list(self.templates.values())})

    def _serverless_get(self, _body=None):
        return json_response(200, {"endpoints": list(self.endpoints.values())})

    def _templates_delete_one(self, tid, _body=None):
        if tid in self.bound.values() or self.bound_after_delete.get(tid, 0) > 0:
            if tid in self.bound_after_delete:
                self.bound_after_delete[tid] -= 1
            return problem(400, "Bad Request", "Template is in use by a pod or serverless endpoint and cannot be deleted")
        if self.templates.pop(tid, None) is None:
            return problem(404, "Not Found", "template not found")
        return Response(status=204)

    # endpoints
    def _apply_template(self, ep: dict, template_id: str) -> Optional[Response]:
        tpl = self.templates.get(template_id)
        if tpl is None:
            return problem(404, "Not Found", "template not found")
        if not tpl["serverless"]:
            return problem(422, "Unprocessable Entity", "template is not a serverless template")
        for k in ("image", "args", "disk", "ports", "registry"):
            ep[k] = tpl[k]
        ep["env"] = dict(tpl["env"])
        self.bound[ep["id"]] = template_id
        return None

    def _urls(self, eid: str) -> dict:
        base = f"https://api.runpod.ai/v2/{eid}"
        return {
            "run": f"{base}/run", "runSync": f"{base}/runsync", "status": f"{base}/status/{{job_id}}",
            "stream": f"{base}/stream/{{job_id}}", "cancel": f"{base}/cancel/{{job_id}}",
            "retry": f"{base}/retry/{{job_id}}", "purgeQueue": f"{base}/purge-queue", "health": f"{base}/health",
        }

    def _serverless_post(self, body):
        eid = new_id("ep")
        ep: dict[str, Any] = {"id": eid, "name": body["name"], "type": body["type"], "requestUrls": self._urls(eid)}
        if "templateId" in body:
            err = self._apply_template(ep, body["templateId"])
            if err:
                return err
        for k in ("image", "args", "disk", "ports", "registry"):
            if k in body:
                ep[k] = body[k]
        ep["env"] = {**ep.get("env", {}), **body.get("env", {})}
        gpu = body.get("gpu")
        if gpu is None:
            return problem(400, "Bad Request", "exactly one of gpu or cpu is required")
        ep["gpu"] = {"pools": gpu["pools"], "count": gpu.get("count", 1), "allowedCudaVersions": gpu.get("allowedCudaVersions", []),
                     "minCudaVersion": gpu.get("minCudaVersion")}
        if gpu.get("excludedTypes"):
            ep["gpu"]["excludedTypes"] = gpu["excludedTypes"]
        w = body.get("workers", {})
        ep["workers"] = {"min": w.get("min", 0), "max": w.get("max", 3)}
        if body["scaling"]["type"] != "REQUEST_COUNT":
            ep["workers"]["idleTimeout"] = w.get("idleTimeout", 10)
        ep["scaling"] = body["scaling"]
        ep["dataCenterIds"] = body.get("dataCenterIds", [])
        ep["networkVolumes"] = body.get("networkVolumes", [])
        for vid in ep["networkVolumes"]:
            if vid not in self.volumes:
                return problem(400, "Bad Request", f"network volume {vid} not found")
        ep["timeout"] = body.get("timeout", 300000)
        ep["flashboot"] = body.get("flashboot", "OFF")
        ep["createdAt"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.endpoints[eid] = ep
        return json_response(201, ep)

    def _serverless_get_one(self, eid, _body=None):
        ep = self.endpoints.get(eid)
        return json_response(200, ep) if ep else problem(404, "Not Found", "endpoint not found")

    def _serverless_patch_one(self, eid, body):
        ep = self.endpoints.get(eid)
        if not ep:
            return problem(404, "Not Found", "endpoint not found")
        if "templateId" in body:
            err = self._apply_template(ep, body["templateId"])
            if err:
                return err
        for k in ("name", "image", "args", "disk", "ports", "registry", "env", "scaling", "dataCenterIds", "networkVolumes", "timeout", "flashboot"):
            if k in body:
                ep[k] = body[k]
        if "gpu" in body:
            if "pools" in body["gpu"]:
                # pools and exclusions are one selection: pools without excludedTypes clears them
                ep["gpu"].pop("excludedTypes", None)
            ep["gpu"].update(body["gpu"])
        if "workers" in body:
            ep["workers"].update(body["workers"])
        if ep["scaling"]["type"] == "REQUEST_COUNT":
            ep["workers"].pop("idleTimeout", None)
        return json_response(200, ep)

    def _serverless_delete_one(self, eid, _body=None):
        if self.endpoints.pop(eid, None) is None:
            return problem(404, "Not Found", "endpoint not found")
        tid = self.bound.pop(eid, None)
        if tid and self.unbind_delay_calls:
            self.bound_after_delete[tid] = self.unbind_delay_calls
        return Response(status=204)


def _explain(exc: Exception) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    cause = exc.__cause__ or exc.__context__
    for _ in range(3):
        if cause is None:
            break
        errs = getattr(cause, "schema_errors", None)
        if errs:
            parts.extend(str(getattr(e, "message", e))[:300] for e in list(errs)[:3])
        else:
            parts.append(f"{type(cause).__name__}: {str(cause)[:300]}")
        cause = cause.__cause__ or cause.__context__
    return " | ".join(parts)
