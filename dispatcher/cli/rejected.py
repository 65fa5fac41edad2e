"""``dispatcher rejected``: read rejected ingest messages and, once their cause is fixed,
replay them through ingest (docs/operations.md, "Fixing rejected messages").

``replay`` has the safeguards of ``dlq replay`` (``cli/safeguards.py``): the plan first,
a filter or ``--all``, ``--reason``, confirmation on a terminal unless ``--yes``, audit
entries naming the OS user. Exit codes: 0 done, 1 some still rejected, 2 usage.
"""

import base64
import json
from dataclasses import asdict, replace
from datetime import datetime
from typing import Annotated, Any

import typer

from dispatcher.cli import audit_trail
from dispatcher.cli import safeguards as safe
from dispatcher.cli.filtered import Option, filtered
from dispatcher.cli.root import app, run, settings
from dispatcher.db.states import AuditKind
from dispatcher.events.rejection import RejectReason
from dispatcher.ingest.reingest import ReplayPlan, ReplayResult
from dispatcher.ingest.rejected import RejectedDetail, RejectedFilter, RejectedRow

rejected_app = typer.Typer(
    help="Rejected ingest messages: list, show, and replay once the cause is fixed.",
    no_args_is_help=True,
)
app.add_typer(rejected_app, name="rejected")

_NAME = "dispatcher-rejected"

_OPTIONS: tuple[Option, ...] = (
    (
        "code",
        Annotated[
            list[RejectReason],
            typer.Option(
                help="Reason code, e.g. unknown_endpoint; repeatable.",
                show_choices=False,
            ),
        ],
        [],
    ),
    (
        "received_from",
        Annotated[datetime | None, typer.Option(help="Received at or after.")],
        None,
    ),
    (
        "received_until",
        Annotated[datetime | None, typer.Option(help="Received at or before.")],
        None,
    ),
    (
        "id_",
        Annotated[list[int], typer.Option("--id", help="Message id; repeatable.")],
        [],
    ),
)


def _filter(values: dict[str, Any]) -> RejectedFilter:
    return RejectedFilter(
        reasons=tuple(c.value for c in values["code"]),
        received_from=values["received_from"],
        received_until=values["received_until"],
        ids=tuple(values["id_"]),
    )


rejected_filtered = filtered(_OPTIONS, _filter)


def _line(r: RejectedRow) -> str:
    state = f"replayed as {r.replayed_event_id}" if r.replayed_at else "rejected"
    return (
        f"{r.id} {r.received_at:%Y-%m-%d %H:%M:%S} {r.source} {r.reason} "
        f"{r.body_size}B {state}: {r.message}"
    )


@rejected_app.command("list")
@rejected_filtered
def list_(
    *,
    where: RejectedFilter,
    replayed: Annotated[
        bool, typer.Option("--replayed", help="Also those already replayed.")
    ] = False,
    limit: Annotated[int, typer.Option(min=0, max=1000)] = 50,
    summary: Annotated[
        bool, typer.Option("--summary", help="Counts by reason only.")
    ] = False,
    as_json: safe.AsJson = False,
) -> None:
    """Rejected messages, oldest first, without their bodies; counts by reason."""
    from dispatcher.ingest import rejected  # noqa: PLC0415

    where = replace(where, include_replayed=replayed)

    async def go() -> tuple[dict[str, int], list[RejectedRow]]:
        async with safe.database(_NAME) as conn:
            counts = await rejected.counts(conn, where)
            rows = [] if summary else await rejected.page(conn, where, limit)
            return counts, rows

    counts, rows = run(go())
    if as_json:
        doc = {"count": sum(counts.values()), "by_reason": counts}
        if not summary:
            doc["messages"] = [asdict(r) for r in rows]
        typer.echo(json.dumps(doc, default=str, indent=2))
        return
    typer.echo(f"{sum(counts.values())} rejected message(s)")
    if counts:
        typer.echo("  by reason: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for r in rows:
        typer.echo("  " + _line(r))


@rejected_app.command("show")
def show(
    rejected_id: Annotated[int, typer.Argument(help="The rejected message.")],
    show_body: Annotated[
        bool,
        typer.Option(
            "--show-body", help="Also the raw body and headers (health data)."
        ),
    ] = False,
    as_json: safe.AsJson = False,
) -> None:
    """One rejected message: reason, time, size, history; the body only if asked."""
    from dispatcher.ingest import rejected  # noqa: PLC0415

    async def go() -> RejectedDetail | None:
        async with safe.database(_NAME) as conn:
            found = await rejected.one(conn, rejected_id)
            if found is not None and show_body:
                await audit_trail.disclosed(
                    conn, "rejected show --show-body", [rejected_id]
                )
            return found

    found = run(go())
    if found is None:
        typer.echo(f"no rejected message {rejected_id}", err=True)
        raise typer.Exit(1)
    if as_json:
        doc: dict[str, Any] = {
            **asdict(found.row),
            "earlier_reasons": found.earlier_reasons,
            "truncated": found.truncated,
        }
        if show_body:
            doc["body_base64"] = base64.b64encode(found.body).decode()
            doc["headers"] = found.headers
        typer.echo(json.dumps(doc, default=str, indent=2))
        return
    typer.echo(_line(found.row))
    if found.row.routing_key or found.row.message_id:
        typer.echo(
            f"  routing key {found.row.routing_key or '-'}, "
            f"message id {found.row.message_id or '-'}"
        )
    if found.truncated:
        typer.echo(f"  only the first {len(found.body)} bytes were kept")
    for e in found.earlier_reasons:
        typer.echo(
            f"  earlier: {e.get('reason')} until {e.get('until')}: {e.get('message')}"
        )
    if show_body:
        typer.echo(f"  headers: {json.dumps(found.headers)}")
        typer.echo(found.body.decode("utf-8", errors="backslashreplace"))


def _print_plan(plan: ReplayPlan, *, as_json: bool) -> None:
    if as_json:
        doc = {
            "count": plan.count,
            "by_reason": dict(plan.by_reason.most_common()),
            "outcomes": {o.value: n for o, n in plan.outcomes.most_common()},
            "still_failing": dict(plan.still_failing.most_common()),
            "ids": plan.ids,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    typer.echo(f"{plan.count} rejected message(s)")
    for title, groups in (
        ("reason now", plan.by_reason),
        ("read again", {o.value: n for o, n in plan.outcomes.items()}),
        ("would still fail", plan.still_failing),
    ):
        if groups:
            typer.echo(
                f"  {title}: " + ", ".join(f"{k}={v}" for k, v in groups.items())
            )


@rejected_app.command("replay")
@rejected_filtered
def replay(
    *,
    where: RejectedFilter,
    reason: safe.Reason = None,
    all_: safe.All = False,
    yes: safe.Yes = False,
    dry_run: safe.DryRun = False,
    as_json: safe.AsJson = False,
) -> None:
    """Read rejected messages again through ingest (after the cause is fixed): valid
    ones are stored once by event_id, the others stay rejected with their new reason."""
    from dispatcher.app import build_reader, recipient_key  # noqa: PLC0415
    from dispatcher.ingest import reingest  # noqa: PLC0415

    safe.guard(
        unfiltered=where.is_empty(), all_=all_, reason=reason, dry_run=dry_run,
        every="every rejected message",
    )  # fmt: skip
    cfg = settings()
    reader = build_reader(cfg)

    async def planned() -> ReplayPlan:
        async with safe.database(_NAME) as conn:
            return await reingest.plan(conn, reader, where)

    plan = run(planned())
    _print_plan(plan, as_json=as_json)
    if dry_run or not plan.count:
        return
    safe.confirm(f"replay {plan.count} rejected message(s)?", yes=yes)

    async def go() -> ReplayResult:
        async with safe.database(_NAME) as conn:
            # Committed first: a run that dies part-way is still on record.
            await audit_trail.append(
                conn,
                AuditKind.REJECTED_REPLAY_STARTED,
                {"reason": reason, "filters": where.to_json(), "count": plan.count},
            )
            return await reingest.replay(
                conn,
                reader,
                plan.ids,
                by=safe.who(),
                reason=str(reason),
                where=where,
                max_body_bytes=cfg.ingest.max_body_bytes,
                recipient_key=recipient_key(cfg),
            )

    done = run(go())
    outcomes = ", ".join(f"{o.value}={n}" for o, n in done.outcomes.items())
    typer.echo(
        f"replayed: {outcomes or 'none'}" + (f", gone={done.gone}" if done.gone else "")
    )
    if done.still_failing:
        typer.echo(
            "still rejected: "
            + ", ".join(f"{k}={v}" for k, v in done.still_failing.items())
        )
        raise typer.Exit(1)
