"""schemathesis over the control plane's OpenAPI spec: generated requests to every route, with
the write token, never make it fail (no 5xx) and its answers match the documented schemas."""

from __future__ import annotations

import tempfile

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from warpdrive.control.api import create_app
from warpdrive.control.db import Store

TOKEN = "schemathesis-token-0123456789"
app = create_app(Store(f"sqlite:///{tempfile.mkdtemp(prefix='wd-st-')}/control.db"), TOKEN)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@schema.parametrize()
# Derandomized so that CI is reproducible; explore with a larger max_examples by hand (300 per
# route found the unbounded integer and the duplicate crawl key, both fixed).
@settings(max_examples=30, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_spec(case: schemathesis.Case) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[not_a_server_error, response_schema_conformance],
    )
