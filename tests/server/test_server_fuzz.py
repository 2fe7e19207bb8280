"""Every endpoint of the OpenAPI schema fuzzed with schemathesis (property-based, from the schema):
no 500s and no tracebacks in any answer, whatever the body, path or query."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from aidungeon.server.app import create_app
from tests.server.conftest import make_server

pytestmark = pytest.mark.server

_HOME = Path(tempfile.mkdtemp(prefix="aidungeon-fuzz-"))
_SERVER = make_server(_HOME)
_SERVER.state.games.create(0, _SERVER.state.games.from_setting("fantasy", "1", "Fuzz"))
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_SERVER.state))


@schema.parametrize()
@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_endpoint_answers_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert "Traceback" not in response.text
