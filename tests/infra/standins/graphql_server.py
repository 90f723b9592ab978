"""A stand-in for Runpod's GraphQL management API, executed by graphql-core over a schema subset.

The schema below declares only the queries and mutations our client uses, with the field
names and argument types Runpod documents; graphql-core parses and validates every document
against it, so an unknown field, a wrong argument or a missing required input fails the test
(recorded in `violations`). Behaviours mirrored: template names are unique, an endpoint can be
deleted only with both worker bounds at zero, a volume cannot shrink.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from graphql import GraphQLError, build_schema, graphql_sync, parse, validate
from werkzeug.wrappers import Request, Response

from tests.infra.standins.common import StandIn, json_response, new_id

SDL = """
type Query { myself: User }

type User {
  id: String
  endpoints: [Endpoint]
  podTemplates: [PodTemplate]
  networkVolumes: [NetworkVolume]
}

type EnvironmentVariable { key: String value: String }
input EnvironmentVariableInput { key: String! value: String! }

type PodTemplate {
  id: String
  name: String
  imageName: String
  containerDiskInGb: Int
  volumeInGb: Int
  dockerArgs: String
  env: [EnvironmentVariable]
  isServerless: Boolean
}

input SaveTemplateInput {
  id: String
  name: String!
  imageName: String!
  containerDiskInGb: Int!
  volumeInGb: Int!
  dockerArgs: String!
  env: [EnvironmentVariableInput]!
  isServerless: Boolean
  ports: String
  readme: String
  volumeMountPath: String
  containerRegistryAuthId: String
}

type Endpoint {
  id: String
  name: String
  templateId: String
  gpuIds: String
  gpuCount: Int
  workersMin: Int
  workersMax: Int
  idleTimeout: Int
  scalerType: String
  scalerValue: Int
  locations: String
  networkVolumeId: String
  executionTimeoutMs: Int
}

input EndpointInput {
  id: String
  name: String!
  templateId: String!
  gpuIds: String!
  gpuCount: Int
  workersMin: Int
  workersMax: Int
  idleTimeout: Int
  scalerType: String
  scalerValue: Int
  locations: String
  networkVolumeId: String
  executionTimeoutMs: Int
}

type NetworkVolume { id: String name: String size: Int dataCenterId: String }
input CreateNetworkVolumeInput { name: String! size: Int! dataCenterId: String! }
input UpdateNetworkVolumeInput { id: String! name: String size: Int }
input DeleteNetworkVolumeInput { id: String! }

type Mutation {
  saveTemplate(input: SaveTemplateInput): PodTemplate
  deleteTemplate(templateName: String): Boolean
  saveEndpoint(input: EndpointInput!): Endpoint
  deleteEndpoint(id: String!): Boolean
  createNetworkVolume(input: CreateNetworkVolumeInput!): NetworkVolume
  updateNetworkVolume(input: UpdateNetworkVolumeInput!): NetworkVolume
  deleteNetworkVolume(input: DeleteNetworkVolumeInput!): Boolean
}
"""

SCHEMA = build_schema(SDL)
GPU_POOLS = {"AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141", "ADA_32_PRO"}


class GraphqlStandIn(StandIn):
    def __init__(self, api_key: str) -> None:
        super().__init__(api_key)
        self.volumes: dict[str, dict[str, Any]] = {}
        self.templates: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}

    def bind(self, url: str) -> None:
        self.base_url = url

    def wsgi(self, environ, start_response):
        request = Request(environ)
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        with self.lock:
            self.calls.append((request.method, request.path))
            self.bodies.append(request.get_data(cache=True))
        if request.method != "POST" or request.path != "/graphql":
            return json_response(404, {"errors": [{"message": "not found"}]})
        if not self.authorized(request):
            return json_response(401, {"errors": [{"message": "Unauthorized: invalid API key"}]})
        fault = self.faults.take(request.path)
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
            return json_response(fault.status, {"errors": [{"message": "injected fault"}]}, headers=headers)
        try:
            payload = json.loads(request.get_data())
            document = parse(payload["query"])
        except Exception as exc:
            self.violations.append(f"unparseable request: {exc}")
            return json_response(400, {"errors": [{"message": f"bad request: {exc}"}]})
        problems = validate(SCHEMA, document)
        if problems:
            self.violations.extend(p.message for p in problems)
            return json_response(400, {"errors": [{"message": p.message} for p in problems]})
        with self.lock:
            result = graphql_sync(SCHEMA, payload["query"], root_value=self, variable_values=payload.get("variables"))
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [{"message": e.message} for e in result.errors]
            # variable coercion failures are contract breaks, not business errors
            for e in result.errors:
                if "Variable" in e.message and ("got invalid value" in e.message or "of required type" in e.message):
                    self.violations.append(e.message)
        return json_response(200, body)

    # -- resolvers (graphql-core's default resolver reads attributes of the root value)

    @property
    def myself(self) -> dict[str, Any]:
        return {
            "id": "user-1",
            "endpoints": list(self.endpoints.values()),
            "podTemplates": [self._tpl_out(t) for t in self.templates.values()],
            "networkVolumes": list(self.volumes.values()),
        }

    @staticmethod
    def _tpl_out(t: dict[str, Any]) -> dict[str, Any]:
        return {**t, "env": [{"key": k, "value": v} for k, v in t["env"].items()]}

    def saveTemplate(self, info, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802 - GraphQL field name
        tid = input.get("id")
        for other in self.templates.values():
            if other["name"] == input["name"] and other["id"] != tid:
                raise GraphQLError(f"Template name must be unique: {input['name']!r} is taken")
        if tid and tid not in self.templates:
            raise GraphQLError(f"template {tid} not found")
        tid = tid or new_id("gtpl")
        self.templates[tid] = {
            "id": tid,
            "name": input["name"],
            "imageName": input["imageName"],
            "containerDiskInGb": input["containerDiskInGb"],
            "volumeInGb": input["volumeInGb"],
            "dockerArgs": input["dockerArgs"],
            "env": {e["key"]: e["value"] for e in input["env"]},
            "isServerless": input.get("isServerless", False),
        }
        return self._tpl_out(self.templates[tid])

    def deleteTemplate(self, info, templateName: Optional[str] = None) -> Optional[bool]:  # noqa: N802,N803
        for tid, t in list(self.templates.items()):
            if t["name"] == templateName:
                if any(e["templateId"] == tid for e in self.endpoints.values()):
                    raise GraphQLError("Template is in use by an endpoint")
                del self.templates[tid]
                return None
        raise GraphQLError(f"template {templateName!r} not found")

    def saveEndpoint(self, info, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        eid = input.get("id")
        if eid and eid not in self.endpoints:
            raise GraphQLError(f"endpoint {eid} not found")
        if input["templateId"] not in self.templates:
            raise GraphQLError(f"template {input['templateId']} not found")
        pools = [p for p in input["gpuIds"].split(",") if p]
        if not pools or any(p not in GPU_POOLS for p in pools):
            raise GraphQLError(f"invalid gpuIds {input['gpuIds']!r}")
        vol = input.get("networkVolumeId")
        if vol and vol not in self.volumes:
            raise GraphQLError(f"network volume {vol} not found")
        eid = eid or new_id("gep")
        current = self.endpoints.get(eid, {"gpuCount": 1, "workersMin": 0, "workersMax": 3, "idleTimeout": 5,
                                           "scalerType": "QUEUE_DELAY", "scalerValue": 4, "locations": "",
                                           "networkVolumeId": None, "executionTimeoutMs": 600000})
        self.endpoints[eid] = {**current, **{k: v for k, v in input.items() if v is not None}, "id": eid}
        return self.endpoints[eid]

    def deleteEndpoint(self, info, id: str) -> Optional[bool]:  # noqa: N802,A002
        ep = self.endpoints.get(id)
        if ep is None:
            raise GraphQLError(f"endpoint {id} not found")
        if ep["workersMin"] or ep["workersMax"]:
            raise GraphQLError("Endpoint must have workersMin and workersMax set to 0 before deletion")
        del self.endpoints[id]
        return None

    def createNetworkVolume(self, info, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        if not 10 <= input["size"] <= 4096:
            raise GraphQLError("size must be between 10 and 4096 GB")
        vid = new_id("gvol")
        self.volumes[vid] = {"id": vid, "name": input["name"], "size": input["size"], "dataCenterId": input["dataCenterId"]}
        return self.volumes[vid]

    def updateNetworkVolume(self, info, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        vol = self.volumes.get(input["id"])
        if vol is None:
            raise GraphQLError(f"network volume {input['id']} not found")
        if input.get("size") is not None and input["size"] < vol["size"]:
            raise GraphQLError("network volume size cannot be decreased")
        vol.update({k: input[k] for k in ("name", "size") if input.get(k) is not None})
        return vol

    def deleteNetworkVolume(self, info, input: dict[str, Any]) -> Optional[bool]:  # noqa: N802
        if self.volumes.pop(input["id"], None) is None:
            raise GraphQLError(f"network volume {input['id']} not found")
        return None
