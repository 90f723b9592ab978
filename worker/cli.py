"""`infinitetalk`: one command for local runs, the local endpoint, weights tooling and the clients.

`run PAYLOAD [hydra overrides]` runs a job in this process; relative media paths in the payload
are read relative to the payload file, whose folder becomes an allowed root for this run only.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

CLIENT_COMMANDS = {"submit", "status", "cancel", "estimate", "ui"}


def _resolve_paths(payload: dict[str, Any], base: Path) -> dict[str, Any]:
    from worker.schema import media_ref_kind

    def fix(ref: Any) -> Any:
        if isinstance(ref, str) and media_ref_kind(ref) == "path" and not Path(ref).is_absolute():
            return str((base / ref).resolve())
        return ref

    out = dict(payload)
    for key in ("image", "cond_image", "video", "cond_video"):
        if key in out:
            out[key] = fix(out[key])
    for key in ("audio", "cond_audio"):
        if isinstance(out.get(key), dict):
            out[key] = {k: fix(v) for k, v in out[key].items()}
        elif key in out:
            out[key] = fix(out[key])
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from worker.config import compose_config, secret_values
    from worker.errors import JobError
    from worker.job import JobContext, run_job
    from worker.logging_setup import configure_logging

    path = Path(args.payload)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(json.dumps({"error": {"code": "E_INPUT_VALIDATION", "message": f"cannot read {path}: {exc}"}}))
        return 2
    payload = doc.get("input", doc) if isinstance(doc, dict) else doc
    if isinstance(payload, dict):
        payload = _resolve_paths(payload, path.resolve().parent)
    cfg = compose_config(args.overrides)
    configure_logging(args.log_level or cfg.server.log_level, secrets=secret_values(cfg))
    ctx = JobContext.create(cfg, extra_roots=[path.resolve().parent])

    def sink(p: dict[str, Any]) -> None:
        if not args.quiet:
            print(f"[{p['percent']:5.1f}%] {p['stage']}: {p['message']}", file=sys.stderr, flush=True)

    try:
        out = run_job(f"local-{uuid.uuid4().hex[:8]}", payload, ctx, sink)
    except JobError as exc:
        print(json.dumps({"error": exc.to_dict()}, indent=2))
        return 1
    print(json.dumps(out, indent=2))
    return 0


def cmd_serve(argv: list[str]) -> int:
    from worker.local_endpoint.cli import main as serve_main

    return serve_main(argv) or 0


def cmd_schema(_: argparse.Namespace) -> int:
    from worker.schema import job_input_json_schema

    print(json.dumps(job_input_json_schema(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        from client.cli import main as client_main

        return client_main(argv) or 0
    if argv and argv[0] == "serve":
        return cmd_serve(argv[1:])
    if argv and argv[0] == "weights":
        from worker.weights.cli import main as weights_main

        return weights_main(argv[1:]) or 0
    parser = argparse.ArgumentParser(prog="infinitetalk", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one job payload locally (default: tiny model, local storage)")
    run.add_argument("payload", help="JSON file: {'input': {...}} or the input object itself")
    run.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sampler=turbo gpu=cpu")
    run.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    run.add_argument("--log-level", default=None)
    run.set_defaults(fn=cmd_run)
    schema = sub.add_parser("schema", help="print the job input's JSON schema")
    schema.set_defaults(fn=cmd_schema)
    sub.add_parser("serve", help="the Runpod-compatible local endpoint (see `infinitetalk serve --help`)")
    sub.add_parser("weights", help="weights tooling: fetch, verify, repack, upload-volume, make-tiny")
    for name in sorted(CLIENT_COMMANDS):
        sub.add_parser(name, help=f"client: {name} (see `infinitetalk {name} --help`)")
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
