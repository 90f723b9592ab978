"""Request bodies and job states of Runpod's queue-based endpoint API (`/v2/{endpoint_id}/...`)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS)


# Runpod's /retry accepts only FAILED and TIMED_OUT jobs (a cancelled job stays cancelled).
RETRYABLE = frozenset({JobStatus.FAILED, JobStatus.TIMED_OUT})


class Policy(BaseModel):
    """`policy` of a run request; times in milliseconds as Runpod takes them."""

    model_config = ConfigDict(extra="allow")

    executionTimeout: int | None = Field(None, gt=0)
    ttl: int | None = Field(None, gt=0)
    lowPriority: bool | None = None


class RunRequest(BaseModel):
    """Body of POST /run and /runsync. Unknown top-level keys (s3Config, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    input: Any = Field(...)
    webhook: str | None = None
    policy: Policy | None = None
