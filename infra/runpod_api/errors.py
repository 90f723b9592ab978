"""Errors of the Runpod management API, one type per thing a caller does differently.

Messages name the operation and what the server said; they never carry the API key or a secret
env value (every message passes through `redact` with the values the client knows are secret).
"""
from __future__ import annotations

from typing import Iterable, Optional


class RunpodApiError(RuntimeError):
    """A Runpod management call failed."""

    def __init__(self, message: str, *, status: Optional[int] = None, operation: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.operation = operation


class RunpodAuthError(RunpodApiError):
    """401/403: the API key is missing, wrong, or lacks the permission for this call."""


class RunpodNotFoundError(RunpodApiError):
    """404: the resource is gone (deleted outside Pulumi, or never existed)."""


class RunpodValidationError(RunpodApiError):
    """400/422: Runpod refused the request body; retrying will not help."""


class RunpodConflictError(RunpodApiError):
    """The request conflicts with the resource's state (e.g. a template still bound)."""


class RunpodRateLimitError(RunpodApiError):
    """429 after every retry was spent."""


class RunpodServerError(RunpodApiError):
    """5xx or a transport failure after every retry was spent."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace each known secret value in `text` (longest first, so overlaps cannot leak a tail)."""
    out = text
    for value in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        out = out.replace(value, "[REDACTED]")
    return out


def error_for_status(status: int, message: str, operation: str) -> RunpodApiError:
    hints = {
        401: " (check infinitetalk:runpodApiKey: `pulumi config set --secret infinitetalk:runpodApiKey ...`)",
        403: " (the API key lacks permission for this call; give it read/write on serverless and storage)",
    }
    text = f"Runpod {operation} failed with HTTP {status}: {message}{hints.get(status, '')}"
    if status in (401, 403):
        return RunpodAuthError(text, status=status, operation=operation)
    if status == 404:
        return RunpodNotFoundError(text, status=status, operation=operation)
    if status in (400, 422):
        return RunpodValidationError(text, status=status, operation=operation)
    if status == 409:
        return RunpodConflictError(text, status=status, operation=operation)
    if status == 429:
        return RunpodRateLimitError(text, status=status, operation=operation)
    if status >= 500:
        return RunpodServerError(text, status=status, operation=operation)
    return RunpodApiError(text, status=status, operation=operation)
