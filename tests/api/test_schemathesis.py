"""Schemathesis against the OpenAPI document: no 5xx, no response breaking its schema."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import schemathesis.python.asgi
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from dispatcher.api.app import create_app
from dispatcher.api.auth import hash_token, new_token
from dispatcher.db.engine import create_engine
from dispatcher.settings import Settings
from tests.api.conftest import RECIPIENT_KEY
from tests.api.world import build
from tests.conftest import AMQP_URL, _admin, database_url, drop_database

pytestmark = pytest.mark.postgres
TOKEN = new_token()


DATABASE = f"dispatcher_t_{uuid.uuid4().hex[:12]}"
APP_SETTINGS = Settings(
    database_url=database_url(DATABASE),
    amqp_url=AMQP_URL,
    api={
        "tokens": [
            {
                "name": "fuzzer",
                "sha256": hash_token(TOKEN),
                "scopes": ["audit:read", "audit:read-pii", "dlq:write"],
            }
        ],
        "recipient_hash_key": RECIPIENT_KEY,
        "limits": {"rate_per_second": 100_000, "burst": 100_000},
    },
)
# Loaded at import, as schemathesis needs; the app touches the database only per request,
# and the fixture below creates and seeds it before the first one.
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(APP_SETTINGS))
# Refusing an over-long query string (414) or body (413) before parsing it is a rejection.
_negative = schema.config.checks.negative_data_rejection
_negative.expected_statuses = [*_negative.expected_statuses, "413", "414"]
# So is a schema-valid one past those sizes: a replay body with a hundred ids and long
# non-ASCII texts (escaped six bytes a character) can pass 16 KiB (docs/api.md, "Limits").
_positive = schema.config.checks.positive_data_acceptance
_positive.expected_statuses = [*_positive.expected_statuses, "413", "414"]


@schema.auth()
class Bearer:
    """The token, given through schemathesis so that it knows what each request carried.

    Passed as ``headers=`` to the call instead, it replaced an Authorization header that a
    negative case had removed or broken, and schemathesis, still counting that header as
    invalid, reported "Schema-violating request accepted" for a request that was valid on
    the wire (its other mutation, e.g. ``{"": []}`` in the query, serializes to nothing).
    A case with a negated Authorization header is sent as generated and must get 401.
    """

    def get(self, case: Any, context: Any) -> str:
        return TOKEN

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@pytest.fixture(scope="module", autouse=True)
def seeded_database(template_database: str) -> Iterator[None]:
    """The database the app points at, copied from the template and seeded."""

    async def prepare() -> None:
        await _admin(f'CREATE DATABASE "{DATABASE}" TEMPLATE "{template_database}"')
        engine = create_engine(database_url(DATABASE), pool_size=1)
        try:
            await build(engine)
        finally:
            await engine.dispose()

    asyncio.run(prepare())
    yield
    schemathesis.python.asgi.shutdown_lifespans()
    asyncio.run(drop_database(DATABASE))


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_openapi_document(case: Any) -> None:
    """Generated requests (valid and invalid) get documented statuses and shapes, never 5xx."""
    # Only cursors this server issued, and only real addresses or numbers, are valid; any
    # other string fits their schema but is refused (400, 422) by design, as
    # test_events.py and test_deliveries.py check. Every other check stays on.
    opaque = bool(case.query) and bool({"cursor", "recipient"} & set(case.query))
    # A replay of every dead letter needs `all: true`: refused (422) by design without
    # it, as test_replays.py checks.
    if case.method == "POST" and case.path == "/v1/replays":
        body = case.body if isinstance(case.body, dict) else {}
        filters = body.get("filters")
        unfiltered = not (isinstance(filters, dict) and any(filters.values()))
        opaque = opaque or (unfiltered and body.get("all") is not True)
    case.call_and_validate(
        excluded_checks=[positive_data_acceptance] if opaque else [],
    )
