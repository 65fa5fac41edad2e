"""``dispatcher demo``: the service against local sink servers, with sample events."""

from typing import Annotated

import typer

from dispatcher.cli.root import app, run, settings


@app.command()
def demo(
    events: Annotated[
        int, typer.Option(envvar="DISPATCHER_DEMO_EVENTS", min=1, max=1000)
    ] = 6,
) -> None:
    """Run the service with local sink servers, publish sample crisis events, show the result."""
    from dispatcher.demo import run_demo  # noqa: PLC0415

    run(run_demo(settings(), events=events))
