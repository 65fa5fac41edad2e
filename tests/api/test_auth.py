"""Every route's auth: open health probes and metrics; 401, 403 and 429 problems on the rest."""

import uuid

import pytest

from tests.api.conftest import Api, start_api

pytestmark = pytest.mark.postgres

ID = str(uuid.uuid4())
PROTECTED = [
    "/v1/events",
    f"/v1/events/{ID}",
    "/v1/deliveries",
    "/v1/deliveries/count",
    f"/v1/deliveries/{ID}",
    f"/v1/deliveries/{ID}/attempts",
    "/v1/rejected",
    "/v1/rejected/1",
    "/v1/audit",
    "/v1/channels",
    "/v1/replays/plan",
    "/v1/replays",
    f"/v1/replays/{ID}",
]
#: Write routes (POST), checked with ``dlq:write`` in tests/api/test_replays.py.
WRITES = {"/v1/replays", "/v1/replays/{replay_id}/cancel"}


def test_every_route_is_in_the_matrix(api_settings) -> None:
    """The matrix below covers every route the app serves."""
    from dispatcher.api.app import create_app

    paths = set(create_app(api_settings()).openapi()["paths"])
    listed = {p.replace(ID, "{event_id}") for p in PROTECTED[:2]}
    listed |= {p.replace(ID, "{delivery_id}") for p in PROTECTED[2:6]}
    listed |= {
        "/v1/rejected",
        "/v1/rejected/{rejected_id}",
        "/v1/audit",
        "/v1/channels",
        "/v1/replays/plan",
        "/v1/replays",
        "/v1/replays/{replay_id}",
    }
    assert paths == listed | WRITES | {"/healthz", "/readyz", "/metrics"}


@pytest.mark.parametrize("path", PROTECTED)
async def test_protected_route_auth_matrix(api: Api, path: str) -> None:
    """No token or an unknown one: 401 + challenge; a token without a read scope: 403;
    a read token passes auth (200 or a 404 problem for an unknown id)."""
    for name, status in (("none", 401), ("unknown", 401), ("replayer", 403)):
        response = await api.get(path, None if name == "none" else name)
        assert response.status_code == status, (name, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["status"] == status
    for reader in ("reader", "pii"):
        response = await api.get(path, reader)
        assert response.status_code in {200, 404}, response.text


@pytest.mark.parametrize("path", PROTECTED)
async def test_revoked_token_is_refused_everywhere(
    api_settings, tokens: dict[str, str], path: str
) -> None:
    """After rotation removes a token's entry, that token gets 401 on every route."""
    from tests.api.conftest import token_config

    settings = api_settings(tokens=token_config(tokens, ["pii"]))
    server, client = await start_api(settings, tokens)
    try:
        assert (await client.get(path, "reader")).status_code == 401
        assert (await client.get(path, "pii")).status_code in {200, 404}
    finally:
        await client.client.aclose()
        await server.stop()


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"]
)
async def test_health_and_docs_are_open(api: Api, path: str) -> None:
    """Health probes and the API description need no token."""
    response = await api.get(path, None)
    assert response.status_code == 200, response.text


async def test_rate_limit_answers_429_with_retry_after(api_settings, tokens) -> None:
    """Past its burst a token gets a 429 problem with Retry-After; others still pass."""
    settings = api_settings(limits={"rate_per_second": 0.01, "burst": 3})
    server, client = await start_api(settings, tokens)
    try:
        for _ in range(3):
            assert (await client.get("/v1/audit", "reader")).status_code == 200
        limited = await client.get("/v1/audit", "reader")
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/problem+json"
        assert int(limited.headers["retry-after"]) >= 1
        assert (await client.get("/v1/audit", "pii")).status_code == 200
    finally:
        await client.client.aclose()
        await server.stop()
