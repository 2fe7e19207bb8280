"""Every endpoint of the OpenAPI schema fuzzed with schemathesis (property-based, from the schema):
no 500s and no tracebacks in any answer, whatever the body, path or query."""

from __future__ import annotations

import tempfile
from pathlib import Path

import hypothesis
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error

from aidungeon.server.state import ServerState
from tests.server.conftest import full_app, make_server

pytestmark = pytest.mark.server

_HOME = Path(tempfile.mkdtemp(prefix="aidungeon-fuzz-"))
_SERVER = make_server(_HOME)
_SERVER.state.games.create(0, _SERVER.state.games.from_setting("fantasy", "1", "Fuzz"))
_APP = full_app(_SERVER.state)
# schemathesis runs the app's lifespan around each call, and its end drains the state it closes
# over; the routes read `app.state.server`, so they get a twin that stays open.
_APP.state.server = ServerState(db=_SERVER.state.db, games=_SERVER.state.games)
# The KoboldAI and OpenAI endpoints have their own fuzz test (tests/server/test_kobold_api.py).
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP).exclude(path_regex="^/(v1|api/(v1|latest|extra))/")


@schema.parametrize()
@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=list(hypothesis.HealthCheck))
def test_no_endpoint_answers_a_server_error(case: schemathesis.Case) -> None:
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert "Traceback" not in response.text
