"""Email against a slow relay, through a whole replica: duplicates, indeterminate
outcomes, waiting for a pooled connection, and critical mail behind low-severity mail.

The relay is SmtpSink with ``reply_delay``: it takes each message when its final dot
arrives and answers later, as a relay that queued it before replying. The scenarios are
the defaults' (16 slots, pooled connections, a 30 s deadline, a relay answering in 8 s)
scaled down in time with the same ratios.
"""

import time
import uuid
from collections import Counter
from typing import Any

import pytest

from dispatcher.sinks.smtp import SmtpSink
from tests.delivery.harness import Stack, StackFactory, email_channel, event_to

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]


def _relay(sink: SmtpSink, **provider: Any) -> dict[str, Any]:
    """The email channel through ``sink``, with ``provider`` settings for the relay."""
    config = email_channel(sink.port)
    config["providers"] = [{**config["providers"][0], **provider}]
    return config


def _to(n: int) -> tuple[str, str]:
    return ("email", f"team-{n}@example.org")


async def _attempt_rows(s: Stack, event_ids: list[uuid.UUID]) -> list[Any]:
    return await s.rows(
        "SELECT a.* FROM delivery_attempts AS a JOIN deliveries AS d"
        " ON d.id = a.delivery_id WHERE d.event_id = ANY(:ids) ORDER BY a.id",
        ids=event_ids,
    )


async def test_a_burst_against_a_slow_relay_is_accepted_once_per_message(
    stack: StackFactory, smtp_sink: SmtpSink
) -> None:
    """16 emails at once over 4 pooled connections to a relay answering each message in
    0.8 s, every limit a tenth of its default (3 s deadline): the last sends wait over
    2 s for a connection, and that wait no longer counts against their deadline, so
    none times out while the relay has the message, and every Message-ID is accepted
    exactly once (a send that cannot get a connection in time is not sent at all)."""
    smtp_sink.reply_delay = 0.8
    channel = {
        **_relay(smtp_sink, pool_size=4),
        "concurrency": 16,
        "connection_wait_seconds": 1.0,
        "deadline_seconds": 3.0,
        "final_reply_seconds": 6.0,
        "lease_seconds": 24.0,
    }
    async with stack(channels={"email": channel}) as s:
        ids = await s.publish(*(event_to(_to(n), severity="low") for n in range(16)))
        # Final only once every try has ended, so every copy has reached the relay.
        rows = await s.wait_final(ids, count=16, timeout=60)
        attempts = await _attempt_rows(s, ids)
    copies = Counter(mail.message_id for mail in smtp_sink.received)
    assert {f"<{r.id}@dispatcher>" for r in rows} == set(copies)
    assert [n for n in copies.values() if n != 1] == []
    assert {(r.status, r.attempts) for r in rows} == {("delivered", 1)}
    assert {(a.outcome, a.error_class) for a in attempts} <= {
        ("delivered", None),
        ("not_sent", "busy"),
    }


async def test_no_reply_to_the_final_dot_is_indeterminate_and_retried_with_the_same_id(
    stack: StackFactory, smtp_sink: SmtpSink
) -> None:
    """A relay that takes the message but answers later than the final-reply limit
    gives an indeterminate attempt, not a timeout; the retry waits at least that limit
    and carries the same Message-ID, so the receiver can drop the second copy."""
    smtp_sink.reply_delay = 3.0
    channel = {
        **_relay(smtp_sink),
        "deadline_seconds": 1.0,
        "final_reply_seconds": 0.5,
        "lease_seconds": 30.0,
    }
    async with stack(channels={"email": channel}) as s:
        ids = await s.publish(event_to(_to(1)))
        await s.wait_deliveries(
            lambda rows: rows[0].last_error_class == "indeterminate",
            event_ids=ids,
            what="an indeterminate attempt",
        )
        smtp_sink.heal()
        (row,) = await s.wait_final(ids, count=1)
        attempts = await s.attempts(row.id)
    assert row.status == "delivered"
    assert [(a.outcome, a.error_class) for a in attempts] == [
        ("indeterminate", "indeterminate"),
        ("delivered", None),
    ]
    assert (attempts[1].started_at - attempts[0].finished_at).total_seconds() >= 0.5
    assert [mail.message_id for mail in smtp_sink.received] == [
        f"<{row.id}@dispatcher>"
    ] * 2


async def test_no_connection_free_in_time_is_not_sent_and_not_counted(
    stack: StackFactory, smtp_sink: SmtpSink
) -> None:
    """A try that waits longer than connection_wait_seconds for a pooled connection
    ends unsent (busy): the attempt is given back, nothing reaches the relay twice, and
    every delivery is sent once, on its one counted attempt."""
    smtp_sink.reply_delay = 0.5
    channel = {
        **_relay(smtp_sink, pool_size=1, pool_critical_reserve=0),
        "connection_wait_seconds": 0.3,
    }
    async with stack(channels={"email": channel}) as s:
        ids = await s.publish(*(event_to(_to(n)) for n in range(4)))
        rows = await s.wait_final(ids, count=4, timeout=60)
        attempts = await _attempt_rows(s, ids)
    assert {(r.status, r.attempts) for r in rows} == {("delivered", 1)}
    outcomes = Counter((a.outcome, a.error_class) for a in attempts)
    assert outcomes[("delivered", None)] == 4
    assert outcomes[("not_sent", "busy")] >= 1
    assert set(outcomes) == {("delivered", None), ("not_sent", "busy")}
    assert Counter(m.message_id for m in smtp_sink.received) == Counter(
        f"<{r.id}@dispatcher>" for r in rows
    )


async def test_a_critical_email_does_not_queue_behind_low_severity_mail(
    stack: StackFactory, smtp_sink: SmtpSink
) -> None:
    """While low-severity mail holds every general pooled connection of a relay that
    takes 2 s per message, and more waits for one, a critical email reaches the relay
    within one relay time of its claim (plus a margin), not after the queue ahead."""
    relay_seconds = 2.0
    smtp_sink.data_delay = relay_seconds
    channel = {
        **_relay(smtp_sink, timeout=10.0),
        "connection_wait_seconds": 10.0,
        "deadline_seconds": 30.0,
        "final_reply_seconds": 30.0,
        "lease_seconds": 300.0,
    }
    async with stack(channels={"email": channel}) as s:
        await s.publish(*(event_to(_to(n), severity="low") for n in range(40)))
        # Every general slot taken: the connections busy, the rest waiting for one.
        await s.wait_deliveries(
            lambda rows: sum(r.status == "in_flight" for r in rows) >= 14,
            what="low-severity mail in flight",
        )
        published = time.time()
        (critical,) = await s.publish(event_to(_to(99), severity="critical"))
        (row,) = await s.wait_final([critical], count=1, timeout=60)
        (attempt,) = await s.attempts(row.id)
    [mail] = [m for m in smtp_sink.received if m.delivery_id == str(row.id)]
    claimed = attempt.started_at.timestamp()
    assert mail.received_at - claimed < relay_seconds + 0.5
    assert mail.received_at - published < relay_seconds + 1.5
