"""Fixtures for infra tests: the two Runpod stand-ins served on loopback.

`rest_standin` / `graphql_standin` yield a running stand-in; at teardown any request or response
that broke the API's contract (openapi-v2.json for REST, the schema for GraphQL) fails the test.
"""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.infra.standins.common import serve

API_KEY = "rp_test_key_0123456789abcdef"


@pytest.fixture
def rest_standin() -> Iterator["RestStandIn"]:
    from tests.infra.standins.rest_server import RestStandIn

    standin = RestStandIn(API_KEY)
    with serve(standin.wsgi) as url:
        standin.bind(url)
        yield standin
    assert not standin.violations, "requests/responses outside openapi-v2.json:\n" + "\n".join(standin.violations)


@pytest.fixture
def graphql_standin() -> Iterator["GraphqlStandIn"]:
    from tests.infra.standins.graphql_server import GraphqlStandIn

    standin = GraphqlStandIn(API_KEY)
    with serve(standin.wsgi) as url:
        standin.bind(url + "/graphql")
        yield standin
    assert not standin.violations, "GraphQL documents the schema rejects:\n" + "\n".join(standin.violations)
