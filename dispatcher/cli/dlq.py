"""``dispatcher dlq``: read, replay and discard dead letters (docs/operations.md).

Every write shows its plan first, refuses to touch every dead letter without ``--all``,
asks on a terminal unless ``--yes``, needs ``--reason``, and is audited with who (the OS
user) and the filters (``cli/safeguards.py``). Exit codes: 0 done, 1 partial failure
(some failed again, or the replay was cancelled), 2 usage.
"""

import json
import uuid
from dataclasses import asdict
from typing import Annotated

import typer

from dispatcher.cli import audit_trail
from dispatcher.cli.dead_filters import Channels, dead_filtered
from dispatcher.cli.delivery_story import story_text
from dispatcher.cli.replay_watch import RECONCILE_HINT, describe, watch
from dispatcher.cli.root import app, run, settings
from dispatcher.cli.safeguards import (
    All,
    AsJson,
    DryRun,
    Reason,
    Yes,
    confirm,
    database,
    guard,
    who,
)
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.dead import DeadFilter, Plan
from dispatcher.outbox.history import DeliveryHistory
from dispatcher.outbox.replays import DEFAULT_RATE, ReplayRow

dlq_app = typer.Typer(
    help="Dead letters: list, show, replay, discard, and watch replays.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")

_NAME = "dispatcher-dlq"
_EVERY = "every dead letter"


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


@dlq_app.command("list")
@dead_filtered
def list_(
    *,
    where: DeadFilter,
    limit: Annotated[int, typer.Option(min=0, max=1000)] = 50,
    summary: Annotated[bool, typer.Option("--summary", help="Counts only.")] = False,
    as_json: AsJson = False,
) -> None:
    """Dead letters (masked), oldest first, with counts by channel and error class."""
    from dispatcher.outbox import dead  # noqa: PLC0415

    async def go() -> Plan:
        async with database(_NAME) as conn:
            return await dead.plan(conn, where, sample=0 if summary else limit)

    _print_plan(run(go()), as_json=as_json)


@dlq_app.command("show")
def show(
    delivery_id: Annotated[uuid.UUID, typer.Argument(help="The dead letter.")],
    show_recipient: Annotated[
        bool,
        typer.Option(
            "--show-recipient",
            help="Unmasked recipient, subject and provider messages (health data).",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """One dead letter: its event, every attempt (initial, retry, replay), its replays."""
    from dispatcher.outbox.history import delivery_history  # noqa: PLC0415

    async def go() -> DeliveryHistory | None:
        async with database(_NAME) as conn:
            story = await delivery_history(conn, delivery_id, masked=not show_recipient)
            if story is not None and show_recipient:
                await audit_trail.disclosed(
                    conn,
                    "dlq show --show-recipient",
                    [delivery_id],
                    event_id=story.event_id,
                    delivery_id=delivery_id,
                )
            return story

    story = run(go())
    if story is None:
        typer.echo(f"no delivery {delivery_id}", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(asdict(story), default=str, indent=2))
        return
    typer.echo(story_text(story))


@dlq_app.command("replay")
@dead_filtered
def replay(
    *,
    where: DeadFilter,
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

    guard(
        unfiltered=where.is_empty(), all_=all_, reason=reason, dry_run=dry_run,
        every=_EVERY,
    )  # fmt: skip

    async def planned() -> Plan:
        async with database(_NAME) as conn:
            return await dead.plan(conn, where, max_age_seconds=max_age)

    plan = run(planned())
    _print_plan(plan, as_json=as_json)
    if dry_run or not plan.count:
        return
    confirm(f"replay {plan.count} dead letter(s)?", yes=yes)

    async def create() -> tuple[uuid.UUID, int]:
        async with database(_NAME) as conn, conn.transaction():
            return await replays.create(
                conn,
                where,
                as_of=plan.as_of,
                by=who(),
                reason=str(reason),
                rate=rate,
                max_age_seconds=max_age,
            )

    replay_id, total = run(create())
    typer.echo(f"replay {replay_id}: {total} delivery(ies) frozen")
    if not wait:
        return
    row = run(watch(replay_id, total))
    raise typer.Exit(0 if row.status == "done" and not row.failed_again else 1)


@dlq_app.command("replays")
def replays_(
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    as_json: AsJson = False,
) -> None:
    """Replays, newest first, with status and counters."""
    from dispatcher.outbox import replays  # noqa: PLC0415

    async def go() -> list[ReplayRow]:
        async with database(_NAME) as conn:
            return await replays.recent(conn, limit)

    for row in run(go()):
        typer.echo(json.dumps(asdict(row), default=str) if as_json else describe(row))


@dlq_app.command("cancel")
def cancel(
    replay_id: Annotated[uuid.UUID, typer.Argument(help="The replay to stop.")],
    reason: Reason = None,
) -> None:
    """Stop a replay; what it already requeued stays requeued."""
    from dispatcher.outbox import replays  # noqa: PLC0415

    async def go() -> ReplayRow | None:
        async with database(_NAME) as conn, conn.transaction():
            return await replays.cancel(conn, replay_id, by=who(), reason=reason)

    row = run(go())
    if row is None:
        typer.echo(f"replay {replay_id} is not active (unknown, done or cancelled)")
        raise typer.Exit(1)
    typer.echo(describe(row))


@dlq_app.command("discard")
@dead_filtered
def discard(
    *,
    where: DeadFilter,
    reason: Reason = None,
    all_: All = False,
    yes: Yes = False,
    dry_run: DryRun = False,
    as_json: AsJson = False,
) -> None:
    """Mark dead letters discarded (kept, never deleted): they will not be sent."""
    from dispatcher.outbox import dead  # noqa: PLC0415

    guard(
        unfiltered=where.is_empty(), all_=all_, reason=reason, dry_run=dry_run,
        every=_EVERY,
    )  # fmt: skip

    async def planned() -> Plan:
        async with database(_NAME) as conn:
            return await dead.plan(conn, where)

    plan = run(planned())
    _print_plan(plan, as_json=as_json)
    if dry_run or not plan.count:
        return
    confirm(f"discard {plan.count} dead letter(s)?", yes=yes)

    async def go() -> dict[str, int]:
        async with database(_NAME) as conn, conn.transaction():
            return await dead.discard(
                conn, where, as_of=plan.as_of, by=who(), reason=str(reason)
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
        engine = build_engine(cfg, _NAME)
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
