"""A stand-in for Runpod's GraphQL management API, executed by graphql-core over a schema subset.

The schema below declares only the queries and mutations our client uses, with the field names,
argument types and enums of Runpod's published schema (facts as used by runpodctl,
runpod-python and the Runpod Terraform provider: `flashBootType: FlashBootType` with
`OFF | FLASHBOOT`, `minCudaVersion`, `secretCreate(input: SecretCreateInput!)`,
`secretDelete(id: ID!)`, `containerRegistryAuthId`); graphql-core parses and validates every
document against it, so an unknown field, a wrong argument or a missing required input fails the
test (recorded in `violations`). Behaviours mirrored: `saveEndpoint` replaces the whole endpoint
(a field not sent is reset), template and secret names are unique, an endpoint can be deleted only
with both worker bounds at zero, a template stays bound for a while after its endpoint is deleted,
a volume cannot shrink. The old FlashBoot form (a `-fb` name suffix) is refused as a violation.
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
  secrets: [Secret]
}

enum FlashBootType { OFF FLASHBOOT }

type Secret { id: ID name: String description: String }
input SecretCreateInput { name: String! value: String! description: String }

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
  containerRegistryAuthId: String
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
  flashBootType: FlashBootType
  minCudaVersion: String
  allowedCudaVersions: String
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
  flashBootType: FlashBootType
  minCudaVersion: String
  allowedCudaVersions: String
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
  secretCreate(input: SecretCreateInput!): Secret
  secretDelete(id: ID!): Boolean
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
        self.secrets: dict[str, dict[str, Any]] = {}
        # template id -> how many more deleteTemplate calls still find it bound (Runpod's delay)
        self.bound_after_delete: dict[str, int] = {}
        self.unbind_delay_calls = 0
        # run the mutation, then answer 500 as if the response were lost (retries must not duplicate)
        self.lose_next_response = 0

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
        if self.lose_next_response and not result.errors and payload["query"].lstrip().startswith("mutation"):
            self.lose_next_response -= 1
            return json_response(500, {"errors": [{"message": "upstream timeout"}]})
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [{"message": e.message} for e in result.errors]
            # variable coercion failures are contract breaks, not business errors
            for e in result.errors:
                if "Variable" in e.message and any(t in e.message for t in ("got invalid value", "has invalid value", "of required type")):
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
            "secrets": [{"id": x["id"], "name": x["name"], "description": x["description"]} for x in self.secrets.values()],
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
            "containerRegistryAuthId": input.get("containerRegistryAuthId") or None,
        }
        return self._tpl_out(self.templates[tid])

    def deleteTemplate(self, info, templateName: Optional[str] = None) -> Optional[bool]:  # noqa: N802,N803
        for tid, t in list(self.templates.items()):
            if t["name"] == templateName:
                if any(e["templateId"] == tid for e in self.endpoints.values()) or self.bound_after_delete.get(tid, 0) > 0:
                    if tid in self.bound_after_delete:
                        self.bound_after_delete[tid] -= 1
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
        if input["name"].rstrip().endswith("-fb"):
            # the old FlashBoot form: Runpod now reads flashBootType, a suffix is only a name
            self.violations.append(f"saveEndpoint: name {input['name']!r} carries the retired -fb FlashBoot suffix")
            raise GraphQLError("FlashBoot is flashBootType: FLASHBOOT | OFF, not a -fb name suffix")
        eid = eid or new_id("gep")
        # saveEndpoint replaces the endpoint: what is not sent falls back to Runpod's defaults
        defaults = {"gpuCount": 1, "workersMin": 0, "workersMax": 3, "idleTimeout": 5, "scalerType": "QUEUE_DELAY",
                    "scalerValue": 4, "locations": "", "networkVolumeId": None, "executionTimeoutMs": 600000,
                    "flashBootType": "OFF", "minCudaVersion": None, "allowedCudaVersions": None}
        self.endpoints[eid] = {**defaults, **{k: v for k, v in input.items() if v is not None}, "id": eid}
        return self.endpoints[eid]

    def deleteEndpoint(self, info, id: str) -> Optional[bool]:  # noqa: N802,A002
        ep = self.endpoints.get(id)
        if ep is None:
            raise GraphQLError(f"endpoint {id} not found")
        if ep["workersMin"] or ep["workersMax"]:
            raise GraphQLError("Endpoint must have workersMin and workersMax set to 0 before deletion")
        del self.endpoints[id]
        if self.unbind_delay_calls:
            self.bound_after_delete[ep["templateId"]] = self.unbind_delay_calls
        return None

    def secretCreate(self, info, input: dict[str, Any]) -> dict[str, Any]:  # noqa: N802
        if any(x["name"] == input["name"] for x in self.secrets.values()):
            raise GraphQLError(f"Secret name must be unique: {input['name']!r} is taken")
        sid = new_id("gsec")
        self.secrets[sid] = {"id": sid, "name": input["name"], "value": input["value"],
                             "description": input.get("description") or ""}
        return {k: self.secrets[sid][k] for k in ("id", "name", "description")}

    def secretDelete(self, info, id: str) -> Optional[bool]:  # noqa: N802,A002
        if self.secrets.pop(id, None) is None:
            raise GraphQLError(f"secret {id} not found")
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
