"""`python -m tools.local_endpoint`: flags map one to one onto ServerSettings."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .server import serve
from .settings import DEFAULT_HANDLER, ServerSettings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.local_endpoint",
        description="Serve a Runpod handler locally behind Runpod's serverless endpoint API (/v2/{endpoint_id}/...).",
    )
    p.add_argument("--handler", default=DEFAULT_HANDLER, help="handler import path, module:function (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="worker processes, one job at a time each")
    p.add_argument("--api-key", default=os.environ.get("LOCAL_ENDPOINT_API_KEY"),
                   help="require this key in Authorization (default: accept any; env LOCAL_ENDPOINT_API_KEY)")
    p.add_argument("--endpoint-id", default=None, help="only answer for this endpoint id (default: any)")
    p.add_argument("--execution-timeout-ms", type=int, default=600_000)
    p.add_argument("--ttl-ms", type=int, default=86_400_000)
    p.add_argument("--webhook-retries", type=int, default=2)
    p.add_argument("--webhook-retry-delay", type=float, default=10.0, help="seconds between webhook attempts")
    p.add_argument("--return-aggregate-stream", action="store_true",
                   help="a generator handler's pieces also form the job's final output")
    p.add_argument("--webhook-allow", action="append", default=[], metavar="HOST_OR_CIDR",
                   help="let webhooks reach this host or network although it is not public (tests, local stacks)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve on a non-loopback address without --api-key (anyone who can reach it can run jobs)")
    p.add_argument("--log-level", default="info")
    return p


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not _is_loopback(args.host) and not args.api_key:
        if not args.allow_unauthenticated:
            parser.error(f"--host {args.host} is reachable from other machines: set --api-key "
                         "(or LOCAL_ENDPOINT_API_KEY), or pass --allow-unauthenticated to accept that risk")
        print(f"WARNING: serving on {args.host} WITHOUT an API key: anyone who can reach this port can run jobs "
              "and read their results", file=sys.stderr, flush=True)
    settings = ServerSettings(
        handler=args.handler,
        host=args.host,
        port=args.port,
        workers=args.workers,
        api_key=args.api_key,
        endpoint_id=args.endpoint_id,
        execution_timeout_ms=args.execution_timeout_ms,
        ttl_ms=args.ttl_ms,
        webhook_retries=args.webhook_retries,
        webhook_retry_delay_s=args.webhook_retry_delay,
        return_aggregate_stream=args.return_aggregate_stream,
        webhook_allow=tuple(args.webhook_allow),
    )
    serve(settings, log_level=args.log_level)
