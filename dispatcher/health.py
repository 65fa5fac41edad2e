"""Readiness of the dependencies, for ``dispatcher check``, ``GET /readyz`` and container
health checks: one logic, per-component detail, never raises for an unreachable one."""

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aio_pika
import aiohttp
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.db.engine import create_engine, wrap_db_errors
from dispatcher.db.revisions import head as migrations_head
from dispatcher.errors import DispatcherError
from dispatcher.settings import Settings

#: Seconds one dependency may take to answer before it counts as unavailable.
PROBE_TIMEOUT = 3.0


@dataclass(frozen=True, slots=True)
class Component:
    """One dependency's state; ``detail`` names the problem, never a secret."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Readiness:
    components: tuple[Component, ...]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.components)

    def problems(self) -> list[str]:
        return [c.detail for c in self.components if not c.ok]


#: An extra readiness check of a component that lives in this process (e.g. ingest).
ComponentProbe = Callable[[], Component]


@functools.cache
def _head() -> str | None:
    """The migrations' head revision: the installed code's, read once per process
    instead of at every check (and without Alembic: db/revisions.py)."""
    return migrations_head()


async def check_database(engine: AsyncEngine) -> list[Component]:
    """PostgreSQL answers, and its schema is at the head revision."""
    head = _head()
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            with wrap_db_errors():
                async with engine.connect() as conn:
                    current = (
                        await conn.execute(
                            text("SELECT version_num FROM alembic_version")
                        )
                    ).scalar()
    except TimeoutError:
        detail = f"PostgreSQL did not answer within {PROBE_TIMEOUT:g} s"
        return [Component("postgresql", ok=False, detail=detail)]
    except DispatcherError as exc:
        return [Component("postgresql", ok=False, detail=str(exc))]
    postgres = Component("postgresql", ok=True, detail="reachable")
    if current != head:
        detail = f"database schema is at {current}, expected {head}: run 'dispatcher migrate'"
        return [postgres, Component("schema", ok=False, detail=detail)]
    return [postgres, Component("schema", ok=True, detail=f"at head {head}")]


async def check_rabbitmq(amqp_url: str) -> Component:
    """RabbitMQ accepts an AMQP connection."""
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            connection = await aio_pika.connect(amqp_url, timeout=PROBE_TIMEOUT)
            await connection.close()
    except (TimeoutError, aio_pika.exceptions.AMQPError, OSError) as exc:
        return Component(
            "rabbitmq",
            ok=False,
            detail=f"RabbitMQ is unavailable ({type(exc).__name__})",
        )
    return Component("rabbitmq", ok=True, detail="reachable")


async def readiness(
    engine: AsyncEngine, amqp_url: str, probes: Sequence[ComponentProbe] = ()
) -> Readiness:
    """Every component, checked concurrently."""
    database, rabbitmq = await asyncio.gather(
        check_database(engine), check_rabbitmq(amqp_url)
    )
    return Readiness((*database, rabbitmq, *(probe() for probe in probes)))


class ReadinessProbe:
    """``readiness`` behind a short cache and a lock, so an open ``/readyz`` hammered by
    clients costs at most one check per ``ttl`` seconds."""

    def __init__(
        self,
        engine: AsyncEngine,
        amqp_url: str,
        probes: Sequence[ComponentProbe] = (),
        ttl: float = 1.0,
    ) -> None:
        self._engine = engine
        self._amqp_url = amqp_url
        self._probes = tuple(probes)
        self._ttl = ttl
        self._lock = asyncio.Lock()
        self._last: tuple[float, Readiness] | None = None

    async def check(self) -> Readiness:
        async with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self._ttl:
                return self._last[1]
            result = await readiness(self._engine, self._amqp_url, self._probes)
            self._last = (time.monotonic(), result)
            return result


#: Components ``readiness`` checks itself; the rest of a ``/readyz`` answer is in-process.
_DEPENDENCIES = frozenset({"postgresql", "schema", "rabbitmq"})


async def check_serve(settings: Settings) -> list[Component]:
    """The in-process components (ingest consumer, channel worker loops) of the local
    ``dispatcher serve``, read from its ``/readyz`` on the API's port."""
    host = settings.api.host
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - a wildcard: ask over loopback
        host = "127.0.0.1"
    address = f"[{host}]" if ":" in host else host
    url = f"http://{address}:{settings.api.port}/readyz"
    try:
        async with (
            asyncio.timeout(PROBE_TIMEOUT * 2),
            aiohttp.ClientSession() as session,
            session.get(url) as response,
        ):
            body = await response.json()
        listed = [
            Component(str(c["name"]), ok=bool(c["ok"]), detail=str(c["detail"]))
            for c in body["components"]
        ]
    except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
        detail = (
            f"the local dispatcher serve did not answer on its API port "
            f"{settings.api.port} ({type(exc).__name__})"
        )
        return [Component("serve", ok=False, detail=detail)]
    return [c for c in listed if c.name not in _DEPENDENCIES]


async def check_dependencies(settings: Settings, *, serve: bool = False) -> list[str]:
    """Problems found (empty when ready); never raises for an unreachable dependency.

    ``serve`` also asks the local ``dispatcher serve`` whether its ingest consumer and
    channel worker loops run (``check_serve``): the container health check of a replica.
    """
    engine = create_engine(
        settings.database_url.get_secret_value(),
        pool_size=1,
        application_name="dispatcher-check",
    )
    try:
        result = await readiness(engine, settings.amqp_url.get_secret_value())
    finally:
        await engine.dispose()
    problems = result.problems()
    if serve:
        problems += [
            f"{c.name}: {c.detail}" for c in await check_serve(settings) if not c.ok
        ]
    return problems
