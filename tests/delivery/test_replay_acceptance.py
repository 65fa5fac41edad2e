"""Dead-letter replay acceptance (issue 13, "Done when"), end to end: real PostgreSQL and
RabbitMQ, the real ingest, channel workers and ``dispatcher dlq`` command, and the local
channel servers, where every delivery is counted as it arrives (email by Message-ID,
webhook by ``webhook-id``, SMS by the delivery id the test's template puts in the body;
all three are the delivery id).

The outage scenario runs 500 deliveries per channel at ``--rate 1000``: the default rate
(10 a second) would make each run take 50 s of nothing but waiting, and what is checked
(each once, exactly the filtered set) does not depend on the rate; the rate's own
behaviour is in bench/replay.py and tests/delivery/test_replay_scenarios.py.
"""

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dispatcher.delivery.reconcile import Reconciled, reconcile
from dispatcher.delivery.replayer import ReplayRunner
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox import dead
from dispatcher.outbox.dead import DeadFilter
from dispatcher.sinks.base import Sink
from dispatcher.sinks.smtp import SmtpSink
from dispatcher.sinks.twilio import TwilioSink
from dispatcher.sinks.webhook import WebhookSink
from tests.conftest import AMQP_URL
from tests.delivery.harness import (
    FAST,
    Stack,
    StackFactory,
    email_channel,
    event_to,
    sms_channel,
    webhook_channel,
)
from tests.delivery.test_replay_scenarios import (
    create,
    dead_lettered,
    replay_row,
    wait_replay,
    webhook_ids,
)
from tests.waiting import NotYet, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

#: Deliveries dead-lettered by the outage, per channel.
N = 500
#: Dead letters of another cause, before the outage: the replay's filter leaves them.
OTHER = 20

#: One attempt, and breakers that never open: an outage kills every delivery at once.
ONE_SHOT: dict[str, Any] = {
    "retry": {**FAST["retry"], "max_attempts": 1},
    "breaker": {**FAST["breaker"], "failure_threshold": 10**6, "min_calls": 10**6},
}


@dataclass(frozen=True, slots=True)
class Far:
    """A channel and its receiving server, as the outage scenario uses them."""

    kind: str
    sink: Sink[Any]
    config: dict[str, Any]
    to: Callable[[int], str]
    #: Refuse the next ``n`` messages with a permanent error.
    refuse: Callable[[int], None]
    #: Delivery id -> how many times the server accepted it.
    received: Callable[[], Counter[str]]


def _email(sink: SmtpSink) -> Far:
    def received() -> Counter[str]:
        # Message-ID is <delivery id@dispatcher>, the same on every try.
        return Counter(
            (m.message_id or "").strip("<>").partition("@")[0] for m in sink.received
        )

    return Far(
        "email",
        sink,
        email_channel(sink.port, **ONE_SHOT),
        lambda i: f"person{i}@example.org",
        lambda n: sink.fail(550, times=n),
        received,
    )


def _sms(sink: TwilioSink) -> Far:
    return Far(
        "sms",
        sink,
        sms_channel(sink.base_url, template="Alert $delivery_id", **ONE_SHOT),
        lambda i: f"+1555010{i:04d}",
        lambda n: sink.fail(400, 21211, times=n),
        lambda: Counter(m.body.removeprefix("Alert ") for m in sink.received),
    )


def _webhook(sink: WebhookSink) -> Far:
    return Far(
        "webhook",
        sink,
        webhook_channel(sink.url, ["east"], **ONE_SHOT),
        lambda i: "east",
        lambda n: sink.respond("/east", 400, times=n),
        lambda: webhook_ids(sink, "/east"),
    )


@pytest.fixture
def far(request: pytest.FixtureRequest) -> Far:
    kind = request.param
    if kind == "email":
        return _email(request.getfixturevalue("smtp_sink"))
    if kind == "sms":
        return _sms(request.getfixturevalue("twilio_sink"))
    return _webhook(request.getfixturevalue("webhook_sink"))


def _env(database: str, names: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "DISPATCHER_DATABASE_URL": database,
        "DISPATCHER_AMQP_URL": AMQP_URL,
        "DISPATCHER_QUEUE_PREFIX": names["queue_prefix"],
        "DISPATCHER_EXCHANGE": names["exchange"],
    }


async def dlq(database: str, names: dict[str, str], *args: str) -> Any:
    """Run ``dispatcher dlq ARGS`` in its own process, to its end."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "dispatcher", "dlq", *args],
        capture_output=True,
        text=True,
        env=_env(database, names),
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
    )


async def all_mirrored(s: Stack, dead_count: int) -> None:
    """Until the broker confirmed a DLQ message for every one of the dead letters."""

    async def confirmed() -> bool | NotYet:
        [row] = await s.rows(
            "SELECT count(*) FILTER (WHERE mirrored_at IS NOT NULL) AS marked,"
            " count(*) AS dead FROM deliveries WHERE status = 'dead'"
        )
        return row.marked == row.dead == dead_count or NotYet(tuple(row))

    await wait_for(confirmed, "every dead letter mirrored", timeout=60)


async def only_replay(s: Stack) -> uuid.UUID:
    [row] = await s.rows("SELECT id FROM replays")
    replay_id: uuid.UUID = row.id
    return replay_id


@pytest.mark.parametrize("far", ["email", "sms", "webhook"], indirect=True)
async def test_after_an_outage_a_filtered_replay_delivers_each_dead_letter_once(
    stack: StackFactory, far: Far, database: str, names: dict[str, str]
) -> None:
    """A channel down dead-letters 500 deliveries; once it is back, `dlq replay` of the
    outage's error class delivers exactly those, each once at the server, leaves the
    dead letters of another cause dead, and reconcile then finds nothing to repair."""
    kind = ChannelKind(far.kind)
    async with stack(channels={far.kind: far.config}) as s:
        far.refuse(OTHER)
        others = await s.publish(
            *(event_to((far.kind, far.to(i))) for i in range(OTHER))
        )
        await s.wait_final(others, count=OTHER)
        await far.sink.go_down()
        outage = await s.publish(
            *(event_to((far.kind, far.to(i))) for i in range(OTHER, OTHER + N))
        )
        rows = await s.wait_final(outage, count=N, timeout=90)
        assert {(r.status, r.last_error_class) for r in rows} == {
            ("dead", "connection")
        }
        await far.sink.come_up()
        await all_mirrored(s, OTHER + N)

        result = await dlq(
            database, names, "replay", "--channel", far.kind,
            "--error-class", "connection", "--reason", "relay back, INC-1",
            "--yes", "--rate", "1000",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        row = await replay_row(s.engine, await only_replay(s))
        final = await s.deliveries()
        [first] = await reconcile(AMQP_URL, names["queue_prefix"], s.engine, (kind,))
        [again] = await reconcile(AMQP_URL, names["queue_prefix"], s.engine, (kind,))
    assert (row.status, row.total, row.requeued, row.delivered) == ("done", N, N, N)
    assert (row.failed_again, row.skipped) == (0, 0)
    received = far.received()
    assert set(received) == {str(r.id) for r in rows}
    assert set(received.values()) == {1}
    still_dead = {r.id for r in final if r.status == "dead"}
    assert len(still_dead) == OTHER
    assert still_dead.isdisjoint(r.id for r in rows)
    total = OTHER + N
    assert first == Reconciled(far.kind, found=total, kept=OTHER, removed=N, restored=0)
    assert again == Reconciled(far.kind, found=OTHER, kept=OTHER, removed=0, restored=0)


async def test_a_replay_whose_process_is_killed_is_resumed_by_another_replica_once(
    stack: StackFactory, webhook_sink: WebhookSink, database: str, names: dict[str, str]
) -> None:
    """`dlq replay` SIGKILLed half-way leaves its lease to expire; another replica's
    runner finishes the replay and the server receives each delivery once."""
    n = 100
    channels = {"webhook": webhook_channel(webhook_sink.url, ["east"])}
    async with stack(channels=channels) as s:
        rows = await dead_lettered(s, webhook_sink, ("east",), n)
        assert s.delivery is not None
        assert s.delivery.replayer is not None
        await s.delivery.replayer.stop()  # the command's runner must hold the replay
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dispatcher", "dlq", "replay",
            "--channel", "webhook", "--reason", "endpoint back", "--yes",
            "--rate", "20",
            env=_env(database, names),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            replay_id = await wait_for(
                lambda: only_replay_or_not(s), "the command's replay", timeout=60
            )
            held = await wait_replay(
                s.engine, replay_id, lambda r: r.requeued >= n // 4, timeout=60
            )
            assert held.lease_owner is not None
            assert f":{command.pid}:" in held.lease_owner
        finally:
            command.send_signal(signal.SIGKILL)
            await command.wait()
        killed = await replay_row(s.engine, replay_id)
        assert killed.requeued < n
        assert killed.status == "running"
        heir = ReplayRunner(s.engine, owner="heir", only=replay_id)
        await asyncio.wait_for(heir.run(), 60)  # it returns once the replay is final
        row = await replay_row(s.engine, replay_id)
        await s.wait_deliveries(
            lambda found: all(r.status == "delivered" for r in found),
            what="every delivery delivered",
        )
    assert (row.status, row.requeued, row.delivered, row.skipped) == (
        "done",
        n,
        n,
        0,
    )
    received = webhook_ids(webhook_sink, "/east")
    assert set(received) == {str(r.id) for r in rows}
    assert set(received.values()) == {1}


async def only_replay_or_not(s: Stack) -> uuid.UUID | NotYet:
    found = await s.rows("SELECT id FROM replays")
    return found[0].id if found else NotYet("no replay yet")


async def test_overlapping_replays_driven_by_two_replicas_send_each_once(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Three replays sharing deliveries (one endpoint, the whole channel, the whole
    channel again), run by two replicas' runners at once: each delivery arrives once."""
    n = 60
    channels = {"webhook": webhook_channel(webhook_sink.url, ["east", "west"])}
    async with stack(channels=channels) as s:
        rows = await dead_lettered(s, webhook_sink, ("east", "west"), n)
        east, _ = await create(s.engine, DeadFilter(endpoints=("east",)), rate=50)
        whole, in_whole = await create(s.engine, DeadFilter(channels=("webhook",)))
        again, in_again = await create(s.engine, DeadFilter(channels=("webhook",)))
        second = ReplayRunner(s.engine, owner="replica-2", poll_interval=0.2)
        await second.start()
        try:
            done = [
                await wait_replay(s.engine, r, lambda r: r.status == "done")
                for r in (east, whole, again)
            ]
        finally:
            await second.stop()
        await s.wait_deliveries(
            lambda found: all(r.status == "delivered" for r in found),
            what="every delivery delivered",
        )
    assert (in_whole, in_again) == (n, 0)  # east's wait in the first replay
    assert [r.delivered for r in done] == [n, n, 0]
    received = webhook_ids(webhook_sink, "/east") + webhook_ids(webhook_sink, "/west")
    assert set(received) == {str(r.id) for r in rows}
    assert set(received.values()) == {1}


async def test_the_plans_count_is_what_runs_though_more_died_since(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Dead letters that arrive between the plan and the replay's creation (with the
    plan's as_of, as the command and the API create it) are not replayed: what runs and
    arrives is what the plan counted."""
    channels = {"webhook": webhook_channel(webhook_sink.url, ["east"])}
    async with stack(channels=channels) as s:
        planned = await dead_lettered(s, webhook_sink, ("east",), 40)
        where = DeadFilter(channels=("webhook",))
        async with s.engine.connect() as conn:
            driver: Any = (await conn.get_raw_connection()).driver_connection
            plan = await dead.plan(driver, where)
        late = await dead_lettered(s, webhook_sink, ("east",), 10)
        replay_id, total = await create(s.engine, where, as_of=plan.as_of)
        row = await wait_replay(s.engine, replay_id, lambda r: r.status == "done")
        final = {r.id: r.status for r in await s.deliveries()}
    assert plan.count == total == row.requeued == row.delivered == 40
    received = webhook_ids(webhook_sink, "/east")
    assert set(received) == {str(r.id) for r in planned}
    assert set(received.values()) == {1}
    assert {final[r.id] for r in late} == {"dead"}


async def test_a_breaker_that_opens_pauses_the_replay_instead_of_burning_its_set(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """The endpoint fails again mid-replay: its breaker opens, the replay pauses with
    most of its set still waiting (not dead-lettered again) and stops walking its held
    set on every tick, and once the endpoint is back and the breaker closes, it
    finishes; each delivery arrives once."""
    n = 60
    breaker = {**FAST["breaker"], "open_seconds": 3.0}
    retry = {**FAST["retry"], "max_attempts": 4}
    channels = {
        "webhook": webhook_channel(
            webhook_sink.url, ["east"], breaker=breaker, retry=retry
        )
    }
    async with stack(channels=channels) as s:
        rows = await dead_lettered(s, webhook_sink, ("east",), n)
        replay_id, _ = await create(
            s.engine, DeadFilter(channels=("webhook",)), rate=10
        )
        await wait_replay(s.engine, replay_id, lambda r: r.requeued >= 10)
        webhook_sink.respond("/east", 503)  # down again
        paused = await wait_replay(
            s.engine, replay_id, lambda r: r.status == "paused", timeout=30
        )
        # Paused, it tries its held set again once per checkpoint, not on every tick.
        assert s.delivery is not None
        assert s.delivery.replayer is not None
        runner = s.delivery.replayer
        steps, checkpoints = runner.steps, runner.checkpoints

        def three_checkpoints() -> bool | NotYet:
            n = runner.checkpoints - checkpoints
            return n >= 3 or NotYet(n)

        await wait_for(three_checkpoints, "three checkpoints while paused", timeout=30)
        assert runner.steps - steps <= runner.checkpoints - checkpoints + 1
        [dead_again] = await s.rows(
            "SELECT count(*) AS n FROM deliveries WHERE status = 'dead'"
            " AND replay_id = :r",
            r=replay_id,
        )
        webhook_sink.clear("/east")  # back
        row = await wait_replay(s.engine, replay_id, lambda r: r.status == "done")
    # Paused before the rate could requeue the rest; at most the few deliveries the
    # breaker's threshold and probes cost died again, not the set.
    assert paused.requeued < n // 2
    assert dead_again.n <= 5
    assert row.requeued == n
    assert row.delivered + row.failed_again == n
    assert row.failed_again <= 5
    received = webhook_ids(webhook_sink, "/east")
    assert len(received) == row.delivered
    assert set(received) <= {str(r.id) for r in rows}
    assert set(received.values()) == {1}


async def test_a_recipient_reached_since_is_skipped_not_sent_again(
    stack: StackFactory, smtp_sink: SmtpSink
) -> None:
    """An event addressed the same person twice (two spellings, one mailbox), both
    dead-lettered: once one copy is replayed and delivered, a replay of the other skips
    it as `recipient_reached`, and the mailbox gets one message."""
    channels = {"email": email_channel(smtp_sink.port, **ONE_SHOT)}
    async with stack(channels=channels) as s:
        await smtp_sink.go_down()
        [event_id] = await s.publish(
            event_to(("email", "Person@example.org"), ("email", "person@example.org"))
        )
        rows = await s.wait_final([event_id], count=2)
        assert {r.status for r in rows} == {"dead"}
        await smtp_sink.come_up()
        first, second = rows
        one, _ = await create(s.engine, DeadFilter(delivery_ids=(first.id,)))
        await wait_replay(s.engine, one, lambda r: r.status == "done")
        other, total = await create(s.engine, DeadFilter(channels=("email",)))
        row = await wait_replay(s.engine, other, lambda r: r.status == "done")
        [item] = await s.rows(
            "SELECT delivery_id, state, reason FROM replay_items WHERE replay_id = :r",
            r=other,
        )
    assert total == 1
    assert (row.requeued, row.skipped) == (0, 1)
    assert (item.delivery_id, item.state, item.reason) == (
        second.id,
        "skipped",
        "recipient_reached",
    )
    assert [m.delivery_id for m in smtp_sink.received] == [str(first.id)]
