"""Settings of the local Runpod-compatible endpoint server.

Defaults mirror Runpod's documented endpoint defaults (10 min execution timeout, 24 h ttl,
30 min / 1 min result retention, 90 s runsync wait, webhook retried twice 10 s apart) so that
behaviour seen locally is the behaviour a deployed endpoint has; tests shorten the delays.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_HANDLER = "worker.handler:handler"


class ServerSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    handler: str = Field(DEFAULT_HANDLER, description="import path 'module:function' of the Runpod handler")
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = Field(1, ge=1, description="worker processes, each runs one job at a time")
    api_key: str | None = Field(None, description="when set, requests must carry it in Authorization")
    endpoint_id: str | None = Field(None, description="when set, other endpoint ids in paths get 404")
    execution_timeout_ms: int = Field(600_000, gt=0, description="endpoint default for policy.executionTimeout")
    ttl_ms: int = Field(86_400_000, gt=0, description="endpoint default for policy.ttl")
    run_retention_s: float = Field(1800.0, gt=0, description="how long /run results stay readable")
    runsync_retention_s: float = Field(60.0, gt=0, description="how long /runsync results stay readable")
    runsync_wait_ms: int = Field(90_000, gt=0, description="default time /runsync holds the request")
    webhook_retries: int = Field(2, ge=0, description="extra webhook attempts after a failed one")
    webhook_retry_delay_s: float = Field(10.0, ge=0)
    webhook_timeout_s: float = Field(10.0, gt=0)
    return_aggregate_stream: bool = Field(
        False, description="as runpod.serverless.start's flag: a generator's pieces also form the final output"
    )
    worker_restart_backoff_s: float = Field(2.0, ge=0, description="wait before respawning a worker whose handler failed to import")
    tick_s: float = Field(0.05, gt=0, description="scheduler period: dispatch, timeouts, ttl, retention")
    max_run_bytes: int = Field(10 * 1000 * 1000, gt=0, description="largest /run body (Runpod: 10 MB)")
    max_runsync_bytes: int = Field(20 * 1000 * 1000, gt=0, description="largest /runsync body (Runpod: 20 MB)")
    max_json_depth: int = Field(32, ge=2, description="deepest JSON nesting a request may hold")
    webhook_allow: tuple[str, ...] = Field(
        (), description="hosts / CIDRs a webhook may reach beyond public addresses (tests, local stacks)"
    )

    @property
    def internal_base_url(self) -> str:
        """Where worker processes reach this server: loopback unless bound to one specific address."""
        host = self.host
        if host in ("0.0.0.0", "", "::", "localhost"):
            host = "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"
