"""``dispatcher status``: the outbox per channel and status, and the breakers."""

from dispatcher.cli.root import app, run, settings


@app.command()
def status() -> None:
    """Show deliveries per channel and status, and the latest state of every breaker."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from dispatcher.app import build_engine  # noqa: PLC0415
    from dispatcher.db.engine import wrap_db_errors  # noqa: PLC0415
    from dispatcher.outbox.status import (  # noqa: PLC0415
        BreakerStatus,
        QueueCount,
        breaker_status,
        queue_status,
    )

    cfg = settings()

    async def go() -> tuple[list[QueueCount], list[BreakerStatus]]:
        engine = build_engine(cfg, "dispatcher-status")
        try:
            with wrap_db_errors():
                async with engine.connect() as conn:
                    return await queue_status(conn), await breaker_status(conn)
        finally:
            await engine.dispose()

    counts, breakers = run(go())
    console = Console()
    queue = Table(title="deliveries")
    for column in ("channel", "status", "count", "next due"):
        queue.add_column(column)
    for c in counts:
        queue.add_row(c.channel, c.status, str(c.count), str(c.next_due or ""))
    console.print(queue)
    table = Table(
        title="circuit breakers (latest transition per replica; none = closed)"
    )
    for column in ("replica", "channel", "provider", "state", "reason", "since"):
        table.add_column(column)
    for b in breakers:
        table.add_row(b.owner, b.channel, b.provider, b.state, b.reason, str(b.at))
    console.print(table)
