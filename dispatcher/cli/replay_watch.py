"""Running a dead-letter replay in the CLI and watching it with a progress bar."""

import uuid

import typer

from dispatcher.cli.root import settings
from dispatcher.cli.safeguards import database
from dispatcher.outbox.replays import ReplayRow

#: Replay and discard leave the broker's DLQ queues to this (docs/operations.md).
RECONCILE_HINT = (
    "the broker's DLQ queues still hold these messages: "
    "run 'dispatcher dlq reconcile' when done"
)


async def watch(replay_id: uuid.UUID, total: int) -> ReplayRow:
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
                async with database("dispatcher-dlq") as conn:
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
    typer.echo(describe(row))
    typer.echo(RECONCILE_HINT)
    return row


def describe(r: ReplayRow) -> str:
    """One line: a replay's status and counters, who and why."""
    return (
        f"{r.id} {r.status} total={r.total} requeued={r.requeued} "
        f"delivered={r.delivered} failed_again={r.failed_again} skipped={r.skipped} "
        f"by={r.created_by} reason={r.reason!r}"
    )
