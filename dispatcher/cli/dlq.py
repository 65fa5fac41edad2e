"""``dispatcher dlq``: read, replay and discard dead letters (docs/operations.md).

Every write shows its plan first, refuses to touch every dead letter without ``--all``,
asks on a terminal unless ``--yes``, needs ``--reason``, and is audited with who (the OS
user) and the filters. Exit codes: 0 done, 1 partial failure (some failed again, or the
replay was cancelled), 2 usage.
"""

import getpass
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

import typer

from dispatcher.cli.root import app, run, settings
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.dead import DeadFilter, Plan
from dispatcher.outbox.replays import DEFAULT_RATE, ReplayRow

dlq_app = typer.Typer(
    help="Dead letters: list, replay, discard, and watch replays.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

#: Replay and discard leave the broker's DLQ queues to this (docs/operations.md).
RECONCILE_HINT = (
    "the broker's DLQ queues still hold these messages: "
    "run 'dispatcher dlq reconcile' when done"
)

Channels = Annotated[
    list[ChannelKind], typer.Option("--channel", help="Repeat for several.")
]
TypePrefix = Annotated[
    str | None, typer.Option("--type", help="Event type prefix, e.g. crisis.")
]
Severities = Annotated[list[str], typer.Option("--severity", help="Repeatable.")]
ErrorClasses = Annotated[list[str], typer.Option("--error-class", help="Repeatable.")]
Endpoints = Annotated[
    list[str],
    typer.Option("--endpoint", help="Webhook endpoint or email/SMS provider name."),
]
DeadFrom = Annotated[
    datetime | None, typer.Option("--dead-from", help="Dead-lettered at or after.")
]
DeadUntil = Annotated[
    datetime | None, typer.Option("--dead-until", help="Dead-lettered at or before.")
]
EventIds = Annotated[list[uuid.UUID], typer.Option("--event-id", help="Repeatable.")]
DeliveryIds = Annotated[
    list[uuid.UUID], typer.Option("--delivery-id", help="Repeatable.")
]
FailuresOf = Annotated[
    uuid.UUID | None,
    typer.Option("--failures-of", help="The deliveries this replay failed again."),
]
Reason = Annotated[
    str | None, typer.Option("--reason", help="Why (recorded in the audit log).")
]
All = Annotated[bool, typer.Option("--all", help="Required to act without any filter.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show the plan only.")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON output.")]


def _filter(  # noqa: PLR0917 - one argument per filter option
    channel: list[ChannelKind],
    type_: str | None,
    severity: list[str],
    error_class: list[str],
    endpoint: list[str],
    dead_from: datetime | None,
    dead_until: datetime | None,
    event_id: list[uuid.UUID],
    delivery_id: list[uuid.UUID],
    failures_of: uuid.UUID | None,
) -> DeadFilter:
    return DeadFilter(
        channels=tuple(c.value for c in channel),
        type_prefix=type_,
        severities=tuple(severity),
        error_classes=tuple(error_class),
        endpoints=tuple(endpoint),
        dead_from=dead_from,
        dead_until=dead_until,
        event_ids=tuple(event_id),
        delivery_ids=tuple(delivery_id),
        failures_of=failures_of,
    )


@asynccontextmanager
async def _database() -> AsyncIterator[Any]:
    """The asyncpg connection of one command, errors translated (one clear line)."""
    from dispatcher.app import build_engine  # noqa: PLC0415
    from dispatcher.db.engine import wrap_db_errors  # noqa: PLC0415

    engine = build_engine(settings(), "dispatcher-dlq")
    try:
        with wrap_db_errors():
            async with engine.connect() as conn:
                yield (await conn.get_raw_connection()).driver_connection
    finally:
        await engine.dispose()


def _guard(where: DeadFilter, *, all_: bool, reason: str | None, dry_run: bool) -> None:
    if where.is_empty() and not all_:
        raise typer.BadParameter(
            "no filter given: name what to act on, or pass --all for every dead letter"
        )
    if not dry_run and not (reason and reason.strip()):
        raise typer.BadParameter("--reason is required (it goes to the audit log)")


def _print_plan(plan: Plan, *, as_json: bool) -> None:
    if as_json:
        doc = asdict(plan)
        typer.echo(json.dumps(doc, default=str, indent=2))
        return
    typer.echo(f"{plan.count} dead letter(s) as of {plan.as_of.isoformat()}")
    for title, groups in (
        ("channel", plan.by_channel),
        ("error class", plan.by_error_class),
        ("endpoint/provider", plan.by_endpoint),
    ):
        if groups:
            typer.echo(
                f"  by {title}: " + ", ".join(f"{k}={v}" for k, v in groups.items())
            )
    for warning in plan.warnings():
        typer.echo(f"  warning: {warning}")
    for s in plan.sample:
        typer.echo(
            f"  {s.id} {s.channel} {s.recipient} {s.endpoint or '-'} "
            f"{s.error_class or '-'} {s.type} {s.severity} dead {s.dead_at:%Y-%m-%d %H:%M:%S}"
        )


def _confirm(question: str, *, yes: bool) -> None:
    if yes or not sys.stdin.isatty():
        return
    if not typer.confirm(question):
        raise typer.Exit(1)


@dlq_app.command("list")
def list_(  # noqa: PLR0917 - typer: one parameter per option
    channel: Channels = [],  # noqa: B006 - typer reads the default, never mutates it
    type_: TypePrefix = None,
    severity: Severities = [],  # noqa: B006
    error_class: ErrorClasses = [],  # noqa: B006
    endpoint: Endpoints = [],  # noqa: B006
    dead_from: DeadFrom = None,
    dead_until: DeadUntil = None,
    event_id: EventIds = [],  # noqa: B006
    delivery_id: DeliveryIds = [],  # noqa: B006
    failures_of: FailuresOf = None,
    limit: Annotated[int, typer.Option(min=0, max=1000)] = 50,
    summary: Annotated[bool, typer.Option("--summary", help="Counts only.")] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters (masked), oldest first, with counts by channel and error class."""
    from dispatcher.outbox import dead  # noqa: PLC0415

    where = _filter(
        channel, type_, severity, error_class, endpoint, dead_from, dead_until,
        event_id, delivery_id, failures_of,
    )  # fmt: skip

    async def go() -> Plan:
        async with _database() as conn:
            return await dead.plan(conn, where, sample=0 if summary else limit)

    _print_plan(run(go()), as_json=as_json)


@dlq_app.command("replay")
def replay(  # noqa: PLR0917 - typer: one parameter per option
    channel: Channels = [],  # noqa: B006
    type_: TypePrefix = None,
    severity: Severities = [],  # noqa: B006
    error_class: ErrorClasses = [],  # noqa: B006
    endpoint: Endpoints = [],  # noqa: B006
    dead_from: DeadFrom = None,
    dead_until: DeadUntil = None,
    event_id: EventIds = [],  # noqa: B006
    delivery_id: DeliveryIds = [],  # noqa: B006
    failures_of: FailuresOf = None,
    reason: Reason = None,
    all_: All = False,
    yes: Yes = False,
    dry_run: DryRun = False,
    rate: Annotated[
        float, typer.Option(min=0, help="Requeued per second; 0: unthrottled.")
    ] = DEFAULT_RATE,
    max_age: Annotated[
        float | None,
        typer.Option(min=0, help="Skip events older than this many seconds."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Run and watch it here until it is done.")
    ] = True,
    as_json: AsJson = False,
) -> None:
    """Put dead letters back into the outbox, frozen as planned, at --rate per second."""
    from dispatcher.outbox import dead, replays  # noqa: PLC0415

    where = _filter(
        channel, type_, severity, error_class, endpoint, dead_from, dead_until,
        event_id, delivery_id, failures_of,
    )  # fmt: skip
    _guard(where, all_=all_, reason=reason, dry_run=dry_run)

    async def planned() -> Plan:
        async with _database() as conn:
            return await dead.plan(conn, where, max_age_seconds=max_age)

    plan = run(planned())
    _print_plan(plan, as_json=as_json)
    if dry_run or not plan.count:
        return
    _confirm(f"replay {plan.count} dead letter(s)?", yes=yes)

    async def create() -> tuple[uuid.UUID, int]:
        async with _database() as conn, conn.transaction():
            return await replays.create(
                conn,
                where,
                as_of=plan.as_of,
                by=getpass.getuser(),
                reason=str(reason),
                rate=rate,
                max_age_seconds=max_age,
            )

    replay_id, total = run(create())
    typer.echo(f"replay {replay_id}: {total} delivery(ies) frozen")
    if not wait:
        return
    row = run(_watch(replay_id, total))
    raise typer.Exit(0 if row.status == "done" and not row.failed_again else 1)


async def _watch(replay_id: uuid.UUID, total: int) -> ReplayRow:
    """Run the replay here (another replica may hold it: then only watch) with a bar."""
    import asyncio  # noqa: PLC0415

    from rich.progress import Progress  # noqa: PLC0415

    from dispatcher.app import build_engine, build_replayer  # noqa: PLC0415
    from dispatcher.delivery.replica import replica_id  # noqa: PLC0415
    from dispatcher.outbox import replays  # noqa: PLC0415

    cfg = settings()
    engine = build_engine(cfg, "dispatcher-dlq")
    runner = build_replayer(cfg, engine, owner=replica_id(), only=replay_id)
    task = asyncio.create_task(runner.run())
    try:
        with Progress(transient=False) as bar:
            requeued = bar.add_task("requeued", total=total)
            delivered = bar.add_task("delivered", total=total)
            failed = bar.add_task("failed again", total=total)
            skipped = bar.add_task("skipped", total=total)
            while True:
                async with _database() as conn:
                    row = await replays.get(conn, replay_id)
                if row is None:  # it cannot vanish: replays are never deleted
                    raise typer.Exit(1)
                bar.update(requeued, completed=row.requeued)
                bar.update(delivered, completed=row.delivered)
                bar.update(failed, completed=row.failed_again)
                bar.update(skipped, completed=row.skipped)
                if row.final:
                    break
                await asyncio.sleep(0.5)
    finally:
        await runner.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.dispose()
    typer.echo(_describe(row))
    typer.echo(RECONCILE_HINT)
    return row


def _describe(r: ReplayRow) -> str:
    return (
        f"{r.id} {r.status} total={r.total} requeued={r.requeued} "
        f"delivered={r.delivered} failed_again={r.failed_again} skipped={r.skipped} "
        f"by={r.created_by} reason={r.reason!r}"
    )


@dlq_app.command("replays")
def replays_(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: AsJson = False,
) -> None:
    """Replays, newest first, with status and counters."""
    from dispatcher.outbox import replays  # noqa: PLC0415

    async def go() -> list[ReplayRow]:
        async with _database() as conn:
            return await replays.recent(conn, limit)

    for row in run(go()):
        typer.echo(json.dumps(asdict(row), default=str) if as_json else _describe(row))


@dlq_app.command("cancel")
def cancel(
    replay_id: Annotated[uuid.UUID, typer.Argument(help="The replay to stop.")],
    reason: Reason = None,
) -> None:
    """Stop a replay; what it already requeued stays requeued."""
    from dispatcher.outbox import replays  # noqa: PLC0415

    async def go() -> ReplayRow | None:
        async with _database() as conn, conn.transaction():
            return await replays.cancel(
                conn, replay_id, by=getpass.getuser(), reason=reason
            )

    row = run(go())
    if row is None:
        typer.echo(f"replay {replay_id} is not active (unknown, done or cancelled)")
        raise typer.Exit(1)
    typer.echo(_describe(row))


@dlq_app.command("discard")
def discard(  # noqa: PLR0917 - typer: one parameter per option
    channel: Channels = [],  # noqa: B006
    type_: TypePrefix = None,
    severity: Severities = [],  # noqa: B006
    error_class: ErrorClasses = [],  # noqa: B006
    endpoint: Endpoints = [],  # noqa: B006
    dead_from: DeadFrom = None,
    dead_until: DeadUntil = None,
    event_id: EventIds = [],  # noqa: B006
    delivery_id: DeliveryIds = [],  # noqa: B006
    failures_of: FailuresOf = None,
    reason: Reason = None,
    all_: All = False,
    yes: Yes = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Mark dead letters discarded (kept, never deleted): they will not be sent."""
    from dispatcher.outbox import dead  # noqa: PLC0415

    where = _filter(
        channel, type_, severity, error_class, endpoint, dead_from, dead_until,
        event_id, delivery_id, failures_of,
    )  # fmt: skip
    _guard(where, all_=all_, reason=reason, dry_run=dry_run)

    async def planned() -> Plan:
        async with _database() as conn:
            return await dead.plan(conn, where)

    plan = run(planned())
    _print_plan(plan, as_json=as_json)
    if dry_run or not plan.count:
        return
    _confirm(f"discard {plan.count} dead letter(s)?", yes=yes)

    async def go() -> dict[str, int]:
        async with _database() as conn, conn.transaction():
            return await dead.discard(
                conn, where, as_of=plan.as_of, by=getpass.getuser(), reason=str(reason)
            )

    counts = run(go())
    typer.echo(
        "discarded: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "none")
    )
    if counts:
        typer.echo(RECONCILE_HINT)


@dlq_app.command("reconcile")
def reconcile(
    channel: Channels = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Make the broker's <prefix>.dlq.<channel> queues agree with the database: remove
    the messages of deliveries no longer dead, publish the dead letters they lack."""
    typer.echo(_reconcile(tuple(channel) or tuple(ChannelKind)))


def _reconcile(channels: tuple[ChannelKind, ...]) -> str:
    from dispatcher.app import build_engine  # noqa: PLC0415
    from dispatcher.delivery.reconcile import reconcile as run_reconcile  # noqa: PLC0415

    cfg = settings()

    async def go() -> str:
        engine = build_engine(cfg, "dispatcher-dlq")
        try:
            done = await run_reconcile(
                cfg.amqp_url.get_secret_value(), cfg.queue_prefix, engine, channels
            )
        finally:
            await engine.dispose()
        return "\n".join(
            f"{r.channel}: found={r.found} kept={r.kept} removed={r.removed} "
            f"restored={r.restored}"
            for r in done
        )

    return run(go())
