"""Run Pulumi programs without the CLI: `pulumi.runtime.set_mocks` with a recording monitor.

The mocks stand in for the engine and the cloud (they return ids and a few computed outputs);
our program code runs for real. The monitor records every registration's inputs as plain values,
which of them arrived secret, and the resource options the engine would honour (`protect`).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import pulumi
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor

SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"


@dataclass
class Registration:
    type: str
    name: str
    inputs: dict[str, Any]
    secret_inputs: set[str] = field(default_factory=set)
    protect: bool = False
    parent: str = ""
    import_id: str = ""


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        rid = f"{args.name}-id"
        t = args.typ
        if t == "aws:s3/bucket:Bucket":
            name = args.inputs.get("bucket") or f"{args.inputs.get('bucketPrefix', args.name)}abc123"
            state.update(bucket=name, arn=f"arn:aws:s3:::{name}", region="eu-west-1")
            rid = name
        elif t == "aws:iam/user:User":
            state.update(name=args.name, arn=f"arn:aws:iam::123456789012:user/{args.name}")
        elif t == "aws:iam/accessKey:AccessKey":
            rid = "AKIAMOCKMOCKMOCK0001"
            state.update(secret="mock/secret+access/key0123456789abcdefghij")
        elif t == "pulumi-python:dynamic/runpod:NetworkVolume":
            rid = "vol-mock"
            state["volume_id"] = rid
        elif t == "pulumi-python:dynamic/runpod:RegistryCredential":
            rid = "reg-mock"
            state["registry_id"] = rid
        elif t == "pulumi-python:dynamic/runpod:Secret":
            rid = f"sec-{args.name}"
            state.update(secret_id=rid, runpod_name=f"{args.inputs['secret_name']}_a1b2c3")
        elif t == "pulumi-python:dynamic/runpod:Template":
            rid = "tpl-mock"
            state.update(template_id=rid, revision=1)
        elif t == "pulumi-python:dynamic/runpod:Endpoint":
            rid = "ep-mock"
            state.update(endpoint_id=rid, run_url=f"https://api.runpod.ai/v2/{rid}/run")
        return rid, state

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}


class RecordingMonitor(MockMonitor):
    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request):  # noqa: N802 - gRPC name
        raw = json_format.MessageToDict(request.object)
        secret = {k for k, v in raw.items() if isinstance(v, dict) and v.get(SIG_KEY) == SECRET_SIG}
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        inputs = _plain(raw)
        self.registrations.append(
            Registration(request.type, request.name, inputs, secret, bool(request.protect), request.parent,
                         request.importId)
        )
        return response


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return _plain(value.get("value"))
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass
class ProgramRun:
    registrations: list[Registration]
    outputs: dict[str, Any]
    secret: dict[str, bool]

    def one(self, type_suffix: str) -> Registration:
        found = [r for r in self.registrations if r.type.endswith(type_suffix)]
        assert len(found) == 1, f"expected one {type_suffix}, got {[r.name for r in found]}"
        return found[0]


def run_program(
    build: Callable[[], Mapping[str, pulumi.Output]],
    config: Mapping[str, str],
    secret_keys: Optional[list[str]] = None,
    stack: str = "test",
) -> ProgramRun:
    """Run `build` under mocks with `config`; resolve the outputs it returns and their secretness."""
    mocks = Mocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="infinitetalk", stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(dict(config), secret_keys or [])
    outputs: dict[str, Any] = {}
    secret: dict[str, bool] = {}

    @pulumi.runtime.test
    def program():
        outs = build()

        async def gather() -> None:
            for key, out in outs.items():
                out = pulumi.Output.from_input(out)
                outputs[key] = await out.future()
                secret[key] = await out.is_secret()

        return asyncio.ensure_future(gather())

    program()
    return ProgramRun(monitor.registrations, outputs, secret)
