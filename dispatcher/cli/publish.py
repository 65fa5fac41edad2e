"""``dispatcher publish``: events from a file or stdin to the exchange, with confirms."""

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from dispatcher.cli.root import app, run, settings, traced


@app.command()
def publish(
    source: Annotated[
        str,
        typer.Argument(
            help="Event file (JSON object or array of objects), or - for stdin."
        ),
    ] = "-",
    routing_key: Annotated[
        str | None,
        typer.Option(
            "--routing-key",
            "-k",
            envvar="DISPATCHER_PUBLISH_ROUTING_KEY",
            help="Default: each event's type.",
        ),
    ] = None,
    confirm_timeout: Annotated[
        float, typer.Option(envvar="DISPATCHER_PUBLISH_CONFIRM_TIMEOUT", min=0.1)
    ] = 5.0,
    attempts: Annotated[
        int, typer.Option(envvar="DISPATCHER_PUBLISH_ATTEMPTS", min=1, max=100)
    ] = 5,
) -> None:
    """Publish events to the exchange, waiting for the broker's confirms.

    A file that is not JSON is published as it is (it will be stored as a rejected message).
    """
    from dispatcher.publisher import Publisher  # noqa: PLC0415

    cfg = settings()
    messages = _messages(_read(source), routing_key)

    async def go() -> int:
        async with Publisher(
            cfg.amqp_url.get_secret_value(),
            cfg.exchange,
            confirm_timeout=confirm_timeout,
            attempts=attempts,
        ) as publisher:
            return await publisher.publish_many(messages)

    with traced():
        count = run(go())
    typer.echo(f"published {count} message(s) to exchange {cfg.exchange!r}")


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    path = Path(source)
    if not path.is_file():
        raise typer.BadParameter(f"no such file: {source}", param_hint="SOURCE")
    return path.read_bytes()


def _messages(
    raw: bytes, routing_key: str | None
) -> list[tuple[bytes, str, str | None]]:
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        if routing_key is None:
            raise typer.BadParameter(
                "the input is not JSON: give --routing-key to publish it anyway"
            ) from None
        return [(raw, routing_key, None)]
    if isinstance(doc, list):
        return [_one(json.dumps(item).encode(), item, routing_key) for item in doc]
    return [_one(raw, doc, routing_key)]


def _one(
    body: bytes, doc: object, routing_key: str | None
) -> tuple[bytes, str, str | None]:
    fields = doc if isinstance(doc, dict) else {}
    key = routing_key or fields.get("type")
    if not isinstance(key, str) or not key:
        raise typer.BadParameter("an event has no string 'type': give --routing-key")
    event_id = fields.get("event_id")
    return body, key, event_id if isinstance(event_id, str) else None
