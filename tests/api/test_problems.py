"""Every error is an RFC 9457 problem document without internals."""

from typing import Any

import pytest

from tests.api.conftest import Api, start_api

pytestmark = pytest.mark.postgres


def assert_problem(response, status: int) -> Any:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["type"]
    assert "Traceback" not in response.text
    assert "SELECT" not in response.text
    return body


async def test_unknown_route_is_404_problem(api: Api) -> None:
    """An unknown path is a 404 problem."""
    assert_problem(await api.get("/v1/nothing-here"), 404)


async def test_wrong_method_is_405_problem(api: Api) -> None:
    """A POST to a read route is a 405 problem that still lists the allowed method."""
    response = await api.client.post("/v1/events", headers=api.auth("reader"))
    assert_problem(response, 405)
    assert "GET" in response.headers["allow"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 251}, "limit"),
        ({"severity": "urgent"}, "severity"),
        ({"received_after": "yesterday"}, "received_after"),
        ({"received_after": "2026-01-01T00:00:00"}, "received_after"),
        ({"type": "Crisis!"}, "type"),
        ({"no_such_filter": "1"}, "no_such_filter"),
    ],
    ids=[
        "limit-0",
        "limit-251",
        "bad-enum",
        "bad-time",
        "naive-time",
        "bad-type",
        "unknown",
    ],
)
async def test_bad_filter_is_422_naming_it(
    api: Api, params: dict[str, Any], field: str
) -> None:
    """A bad or unknown filter is a 422 naming the parameter, never echoing its value."""
    body = assert_problem(await api.get("/v1/events", **params), 422)
    assert field in body["detail"]
    assert any(field in e["loc"] for e in body["errors"])
    for value in params.values():
        if len(str(value)) > 3:
            assert str(value) not in str(body)


async def test_bad_id_is_422_and_unknown_id_404(api: Api) -> None:
    """A malformed id is a 422; a well-formed unknown one a 404."""
    assert_problem(await api.get("/v1/events/not-a-uuid"), 422)
    body = assert_problem(
        await api.get("/v1/events/00000000-0000-0000-0000-000000000000"), 404
    )
    assert "no event" in body["detail"]
    assert_problem(await api.get("/v1/rejected/0"), 422)


async def test_injection_looking_filters_are_plain_values(api: Api) -> None:
    """SQL-looking filter values match nothing (bound parameters), and nothing breaks."""
    for value in ("' OR 1=1--", "%", "_", "'; DROP TABLE events;--"):
        page = await api.ok("/v1/events", subject_id=value)
        assert page["data"] == []
    assert_problem(await api.get("/v1/events", subject_id="a\x00b"), 422)
    assert_problem(await api.get("/v1/deliveries", provider="a\x00b"), 422)


async def test_long_query_string_is_414(api_settings, tokens) -> None:
    """A query string over the limit is refused before any route runs."""
    server, client = await start_api(
        api_settings(limits={"max_query_bytes": 256}), tokens
    )
    try:
        assert_problem(await client.get("/v1/events", subject_id="x" * 300), 414)
    finally:
        await client.client.aclose()
        await server.stop()


async def test_large_body_is_413(api: Api) -> None:
    """A request body over the limit is refused before any route runs."""
    response = await api.client.post(
        "/v1/events", content=b"x" * 20_000, headers=api.auth("reader")
    )
    assert_problem(response, 413)


async def test_slow_request_is_a_503_problem(api_settings, tokens, engine) -> None:
    """A request past the request timeout is answered 503 (statement timeout bounds SQL)."""
    from sqlalchemy import text

    settings = api_settings(limits={"statement_timeout_ms": 100})
    server, client = await start_api(settings, tokens)
    try:
        # Hold a lock the count must wait for, longer than the statement timeout.
        async with engine.connect() as conn, conn.begin():
            await conn.execute(text("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE"))
            body = assert_problem(
                await client.get("/v1/deliveries/count", "reader"), 503
            )
        assert "retry" in body["detail"]
    finally:
        await client.client.aclose()
        await server.stop()


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/rejected", "received_before"),
        ("/v1/rejected", "received_after"),
        ("/v1/events", "received_before"),
        ("/v1/deliveries", "created_after"),
        ("/v1/audit", "before"),
    ],
)
@pytest.mark.parametrize(
    "value", ["0001-01-01T00:00:00+00:01", "9999-12-31T23:59:59-00:01"]
)
async def test_times_past_the_datetime_range_are_valid_filters(
    api: Api, path: str, name: str, value: str
) -> None:
    """A schema-valid RFC 3339 time outside datetime's UTC range is a 200, not a 422."""
    response = await api.get(path, **{name: value})
    assert response.status_code == 200, response.text
