"""A whole replica in the test's event loop: real RabbitMQ, PostgreSQL and protocol sinks.

Events go in through the broker (``Publisher``), are stored by the real ingest, and are
delivered by the real channel workers to local servers that speak SMTP, the Twilio API and
HTTP. Nothing of ours is replaced; only the far ends are local.
"""

import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AsyncExitStack
from typing import Any, Self

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.app import IngestService, build_delivery
from dispatcher.delivery.service import DeliveryService
from dispatcher.delivery.worker import ChannelWorker
from dispatcher.events.kinds import ChannelKind
from dispatcher.publisher import Publisher
from dispatcher.settings import Settings
from dispatcher.testing import make_event
from tests.channels import TWILIO_SID, TWILIO_TOKEN
from tests.waiting import NotYet, wait_for

#: Whsec secret for every test endpoint (24 zero bytes, base64); not a real secret.
SECRET = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
FINAL = ("delivered", "dead")

#: Retries and breakers on a test's time scale.
FAST: dict[str, Any] = {
    "retry": {"max_attempts": 30, "base_delay": 0.05, "max_delay": 0.4, "max_age": 600},
    "retry_by_severity": {},
    "breaker": {
        "failure_threshold": 5,
        "failure_rate": 1.0,
        "min_calls": 50,
        "open_seconds": 1.0,
    },
    "poll_interval": 0.1,
    "lease_seconds": 15.0,
    "deadline_seconds": 2.0,
}


def webhook_channel(
    url_for: Callable[[str], str], names: Iterable[str], **overrides: Any
) -> dict[str, Any]:
    return {
        **FAST,
        "endpoints": {
            name: {"url": url_for(f"/{name}"), "secrets": [SECRET]} for name in names
        },
        "allow_http": True,
        "allow_private_networks": ["127.0.0.0/8"],
        **overrides,
    }


def email_channel(*ports: int, **overrides: Any) -> dict[str, Any]:
    """Email through SMTP sinks on these ports, in failover order."""
    providers = [
        {
            "name": f"relay-{n}",
            "host": "127.0.0.1",
            "port": port,
            "tls": "none",
            "from_address": "dispatcher@example.org",
            "timeout": 2.0,
        }
        for n, port in enumerate(ports, 1)
    ]
    # The phases of an email try on a test's time scale too: the lease covers them all.
    limits = {"connection_wait_seconds": 1.0, "final_reply_seconds": 3.0}
    return {**FAST, **limits, "enabled": True, "providers": providers, **overrides}


def sms_channel(*base_urls: str, **overrides: Any) -> dict[str, Any]:
    """SMS through Twilio-compatible sinks at these base URLs, in failover order."""
    providers = [
        {
            "name": f"twilio-{n}",
            "account_sid": TWILIO_SID,
            "auth_token": TWILIO_TOKEN,
            "from_number": "+15550009999",
            "base_url": url,
            "timeout": 2.0,
        }
        for n, url in enumerate(base_urls, 1)
    ]
    return {**FAST, "enabled": True, "providers": providers, **overrides}


def event_to(*recipients: tuple[str, str], **overrides: Any) -> dict[str, Any]:
    """An event addressed to ``(channel, to)`` pairs."""
    return make_event(
        recipients=[{"channel": c, "to": t} for c, t in recipients], **overrides
    )


class Stack:
    """Ingest plus delivery of one replica, started and stopped with ``async with``."""

    def __init__(
        self,
        settings: Settings,
        engine: AsyncEngine,
        *,
        only: Iterable[ChannelKind] | None = None,
        deliver: bool = True,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.delivery: DeliveryService | None = (
            build_delivery(settings, engine, only=None if only is None else set(only))
            if deliver
            else None
        )
        self.ingest = IngestService(
            settings,
            engine,
            handoff=None if self.delivery is None else self.delivery.fast_path,
        )
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self.ingest.start()
        self._stack.push_async_callback(self.ingest.stop)
        if self.delivery is not None:
            await self.delivery.start()
            self._stack.push_async_callback(self.delivery.stop)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def publish(self, *events: Mapping[str, Any]) -> list[uuid.UUID]:
        import json

        async with Publisher(
            self.settings.amqp_url.get_secret_value(), self.settings.exchange
        ) as publisher:
            await publisher.publish_many(
                (json.dumps(e).encode(), e["type"], e["event_id"]) for e in events
            )
        return [uuid.UUID(e["event_id"]) for e in events]

    async def rows(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).all())

    async def deliveries(
        self, event_ids: Iterable[uuid.UUID] | None = None
    ) -> list[Any]:
        if event_ids is None:
            return await self.rows("SELECT * FROM deliveries ORDER BY created_at, id")
        return await self.rows(
            "SELECT * FROM deliveries WHERE event_id = ANY(:ids) ORDER BY created_at, id",
            ids=list(event_ids),
        )

    async def wait_deliveries(
        self,
        predicate: Callable[[list[Any]], bool],
        *,
        event_ids: Iterable[uuid.UUID] | None = None,
        timeout: float = 30.0,
        what: str = "condition",
    ) -> list[Any]:
        """The deliveries once ``predicate`` holds; fails with their states if it never does."""
        ids = None if event_ids is None else list(event_ids)

        async def holds() -> list[Any] | NotYet:
            rows = await self.deliveries(ids)
            if rows and predicate(rows):
                return rows
            return NotYet(
                sorted((r.channel, r.recipient, r.status, r.attempts) for r in rows)
            )

        return await wait_for(holds, what, timeout=timeout)

    async def wait_listening_and_swept(self) -> None:
        """Until the LISTEN connection is up and every channel worker's first claim (its
        start-up sweep) has returned: from then on only a notification, a freed slot or
        the next sweep starts a claim."""
        assert self.delivery is not None
        await wait_for(
            self.delivery.waker.connected, "the LISTEN connection", timeout=10
        )
        workers = len(self.delivery.workers)

        async def returned() -> bool | NotYet:
            # A worker keeps its claim connection, idle after the claim: a single
            # statement on deliveries. Ingest and the dead-letter sweep end theirs with
            # COMMIT, the waker with LISTEN, the pool's pre-ping with SELECT 1.
            (row,) = await self.rows(
                "SELECT count(*) AS n FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state = 'idle' AND query LIKE '%FROM deliveries%'"
            )
            return row.n >= workers or NotYet(row.n)

        await wait_for(returned, "the workers' first claims to return", timeout=10)

    async def wait_final(
        self, event_ids: Iterable[uuid.UUID], *, count: int, timeout: float = 30.0
    ) -> list[Any]:
        """Wait until ``count`` deliveries of these events are delivered or dead."""
        return await self.wait_deliveries(
            lambda rows: len(rows) == count and all(r.status in FINAL for r in rows),
            event_ids=event_ids,
            timeout=timeout,
            what=f"{count} final deliveries",
        )

    async def attempts(self, delivery_id: uuid.UUID) -> list[Any]:
        return await self.rows(
            "SELECT * FROM delivery_attempts WHERE delivery_id = :id ORDER BY id",
            id=delivery_id,
        )

    async def audit(self, kind: str) -> list[Any]:
        return await self.rows(
            "SELECT * FROM audit_log WHERE kind = :kind ORDER BY id", kind=kind
        )


#: ``stack(channels=..., routing=...)``: a replica to use with ``async with``.
StackFactory = Callable[..., Stack]


def workers_of(stacks: Iterable[Stack], kind: ChannelKind) -> list[ChannelWorker]:
    """Each replica's worker of one channel."""
    return [s.delivery.workers[kind] for s in stacks if s.delivery is not None]


def worker_of(s: Stack, kind: ChannelKind = ChannelKind.WEBHOOK) -> ChannelWorker:
    """One replica's worker of one channel."""
    assert s.delivery is not None
    return s.delivery.workers[kind]
