"""The audit API served by real uvicorn on a free port, over a fresh database."""

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from dispatcher.api.app import create_app
from dispatcher.api.auth import hash_token, new_token
from dispatcher.api.server import ApiServer
from dispatcher.settings import Settings

RECIPIENT_KEY = "test-recipient-hash-key-0123456789"
#: name -> scopes of the tokens every API test may present.
TOKEN_SCOPES: dict[str, list[str]] = {
    "reader": ["audit:read"],
    "pii": ["audit:read", "audit:read-pii"],
    "replayer": ["dlq:write"],
}


@pytest.fixture
def tokens() -> dict[str, str]:
    """A fresh token per name (and one that was never configured)."""
    return {name: new_token() for name in [*TOKEN_SCOPES, "unknown"]}


def token_config(
    tokens: dict[str, str], names: list[str] | None = None
) -> list[dict[str, Any]]:
    return [
        {"name": name, "sha256": hash_token(tokens[name]), "scopes": TOKEN_SCOPES[name]}
        for name in names or list(TOKEN_SCOPES)
    ]


@pytest.fixture
def api_settings(
    make_settings: Callable[..., Settings], database: str, tokens: dict[str, str]
) -> Callable[..., Settings]:
    """Settings for an API on a free port; ``api`` overrides merge into the defaults."""

    def make(**api: Any) -> Settings:
        values: dict[str, Any] = {
            "port": 0,
            "tokens": token_config(tokens),
            "recipient_hash_key": RECIPIENT_KEY,
            **api,
        }
        return make_settings(database, api=values)

    return make


class Api:
    """A running API and a client for it; ``get(path, as_=token name)``."""

    def __init__(
        self, server: ApiServer, client: httpx.AsyncClient, tokens: dict[str, str]
    ) -> None:
        self.server = server
        self.client = client
        self.tokens = tokens

    def auth(self, name: str | None) -> dict[str, str]:
        return {} if name is None else {"Authorization": f"Bearer {self.tokens[name]}"}

    async def get(
        self, path: str, as_: str | None = "reader", **params: Any
    ) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.auth(as_))

    async def ok(self, path: str, as_: str | None = "reader", **params: Any) -> Any:
        response = await self.get(path, as_, **params)
        assert response.status_code == 200, response.text
        return response.json()


async def start_api(
    settings: Settings, tokens: dict[str, str]
) -> tuple[ApiServer, Api]:
    server = ApiServer(create_app(settings), settings.api)
    await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    return server, Api(server, client, tokens)


@pytest.fixture
async def api(
    api_settings: Callable[..., Settings], tokens: dict[str, str]
) -> AsyncIterator[Api]:
    server, client = await start_api(api_settings(), tokens)
    yield client
    await client.client.aclose()
    await server.stop()
