"""Picks the Runpod management API client by mode; apart from base.py so that the clients can import
the shared interface without base.py importing them back."""
from __future__ import annotations

from typing import Iterable, Optional

from infra.runpod_api.base import API_MODES, DEFAULT_GRAPHQL_URL, DEFAULT_REST_URL, RunpodApi
from infra.runpod_api.graphql import GraphqlApi
from infra.runpod_api.rest import RestApi


def make_api(
    mode: str,
    api_key: str,
    *,
    base_url: Optional[str] = None,
    backoff_s: float = 0.5,
    retries: int = 5,
    secrets: Iterable[str] = (),
    unbind_wait_s: float = 600.0,
) -> RunpodApi:
    """The client for `mode` (`rest` or `graphql`)."""
    if mode == "rest":
        return RestApi(api_key, base_url=base_url or DEFAULT_REST_URL, backoff_s=backoff_s, retries=retries,
                       secrets=secrets, unbind_wait_s=unbind_wait_s)
    if mode == "graphql":
        return GraphqlApi(
            api_key, url=base_url or DEFAULT_GRAPHQL_URL, backoff_s=backoff_s, retries=retries, secrets=secrets,
            unbind_wait_s=unbind_wait_s,
        )
    raise ValueError(f"unknown Runpod API mode {mode!r}: use one of {API_MODES}")
