"""Runpod management API clients behind one interface: REST v2 (default) and GraphQL (deprecated)."""
from infra.runpod_api.base import (
    DEFAULT_GRAPHQL_URL,
    DEFAULT_REST_URL,
    EndpointSpec,
    EndpointState,
    RunpodApi,
    TemplateSpec,
    TemplateState,
    VolumeSpec,
    VolumeState,
)
from infra.runpod_api.errors import (
    RunpodApiError,
    RunpodAuthError,
    RunpodConflictError,
    RunpodNotFoundError,
    RunpodRateLimitError,
    RunpodServerError,
    RunpodValidationError,
)
from infra.runpod_api.factory import make_api

__all__ = [
    "DEFAULT_GRAPHQL_URL",
    "DEFAULT_REST_URL",
    "EndpointSpec",
    "EndpointState",
    "RunpodApi",
    "TemplateSpec",
    "TemplateState",
    "VolumeSpec",
    "VolumeState",
    "make_api",
    "RunpodApiError",
    "RunpodAuthError",
    "RunpodConflictError",
    "RunpodNotFoundError",
    "RunpodRateLimitError",
    "RunpodServerError",
    "RunpodValidationError",
]
