"""The real WebhookChannel against the real WebhookSink on loopback (allowlisted 127/8)."""

import asyncio
import base64
import dataclasses
import json
import logging
import os
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import trustme
from standardwebhooks import Webhook
from structlog.testing import capture_logs

from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.webhook import WebhookChannel
from dispatcher.channels.webhook_config import WebhookChannelConfig
from dispatcher.errors import (
    ConfigError,
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from dispatcher.events.kinds import Severity
from dispatcher.sinks.webhook import WebhookSink
from tests.channels import Closer, send_error
from tests.listener import ConnectionCounter

OLD_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
NEW_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
LOOPBACK = [ip_network("127.0.0.0/8")]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def message(recipient: str, **overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "delivery_id": uuid.uuid4(),
        "event_id": uuid.uuid4(),
        "event_type": "crisis.detected",
        "severity": Severity.CRITICAL,
        "occurred_at": "2026-01-01T00:00:00+00:00",
        "subject_id": "person-1",
        "recipient": recipient,
        "data": {"score": 0.97},
        "correlation_id": "corr-1",
    }
    values.update(overrides)
    return OutboundMessage(**values)


def make_config(
    webhook_sink: WebhookSink, **endpoints: dict[str, Any]
) -> WebhookChannelConfig:
    """One endpoint per keyword, at ``webhook_sink.url('/<name>')`` unless a url is given."""
    return WebhookChannelConfig(
        allow_http=True,
        allow_private_networks=LOOPBACK,
        deadline_seconds=5.0,
        endpoints={
            name: {
                "url": webhook_sink.url(f"/{name}"),
                "secrets": [NEW_SECRET],
                **extra,
            }
            for name, extra in endpoints.items()
        },
    )


@pytest.fixture
def open_channel(closing: Closer) -> Callable[..., WebhookChannel]:
    """Builds channels, closed after the test."""

    def build(config: WebhookChannelConfig, **kw: Any) -> WebhookChannel:
        return closing(WebhookChannel(config, **kw))

    return build


async def test_delivered_signed_and_shaped(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """A delivery arrives once, verifies for both rotation keys and has the documented shape."""
    config = WebhookChannelConfig(
        allow_http=True,
        allow_private_networks=LOOPBACK,
        endpoints={
            "monitor": {
                "url": webhook_sink.url("/monitor"),
                "secrets": [NEW_SECRET, OLD_SECRET],
                "headers": {"Authorization": "Bearer tok_canary"},
            }
        },
    )
    msg = message("monitor", traceparent=TRACEPARENT)
    receipt = await open_channel(config).send(msg)

    assert receipt.provider == "monitor"
    assert receipt.provider_code == "200"
    (request,) = webhook_sink.received_on("/monitor")
    for secret in (NEW_SECRET, OLD_SECRET):
        Webhook(secret).verify(request.body, request.headers)
    assert request.webhook_id == str(msg.delivery_id)
    assert request.headers["content-type"] == "application/json"
    assert request.headers["traceparent"] == TRACEPARENT
    assert request.headers["authorization"] == "Bearer tok_canary"
    assert request.headers["dispatcher-attempt"] == "1"
    assert json.loads(request.body) == {
        "type": "crisis.detected",
        "timestamp": "2026-01-01T00:00:00+00:00",
        "event_id": str(msg.event_id),
        "delivery_id": str(msg.delivery_id),
        "severity": "critical",
        "subject_id": "person-1",
        "correlation_id": "corr-1",
        "data": {"score": 0.97},
    }
    assert webhook_sink.duplicates() == []


async def test_retry_keeps_id_and_is_accepted_once(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """After a 503 the retry has the same id, a later timestamp, a fresh signature."""
    clock = iter([time.time() - 5, time.time()])
    channel = open_channel(
        make_config(webhook_sink, monitor={}), clock=lambda: next(clock)
    )
    webhook_sink.respond("/monitor", 503, times=1)
    msg = message("monitor")
    await send_error(channel, msg)
    await channel.send(dataclasses.replace(msg, attempt=2))

    first, second = webhook_sink.received_on("/monitor")
    assert first.webhook_id == second.webhook_id == str(msg.delivery_id)
    assert int(second.headers["webhook-timestamp"]) > int(
        first.headers["webhook-timestamp"]
    )
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert first.body == second.body
    assert second.headers["dispatcher-attempt"] == "2"
    Webhook(NEW_SECRET).verify(second.body, second.headers)
    assert webhook_sink.accepted[str(msg.delivery_id)] == 1
    assert webhook_sink.duplicates() == []


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, ErrorClass.PROVIDER_PERMANENT),
        (404, ErrorClass.PROVIDER_PERMANENT),
        (410, ErrorClass.GONE),
    ],
)
async def test_client_errors_are_permanent_after_one_attempt(
    webhook_sink: WebhookSink, open_channel, status: int, error_class: ErrorClass
) -> None:
    """4xx (other than 408/429) are permanent; the channel made exactly one request."""
    webhook_sink.respond("/monitor", status)
    error = await send_error(
        open_channel(make_config(webhook_sink, monitor={})), message("monitor")
    )
    assert isinstance(error, PermanentDeliveryError)
    assert error.error_class is error_class
    assert error.provider_code == str(status)
    assert len(webhook_sink.received_on("/monitor")) == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_server_errors_are_transient(
    webhook_sink: WebhookSink, open_channel, status: int
) -> None:
    """5xx and 408 are transient: a later attempt may succeed."""
    webhook_sink.respond("/monitor", status)
    error = await send_error(
        open_channel(make_config(webhook_sink, monitor={})), message("monitor")
    )
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.PROVIDER_TRANSIENT


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_retry_after_is_honoured(
    webhook_sink: WebhookSink, open_channel, form: str
) -> None:
    """429 with Retry-After (delta-seconds or HTTP-date) sets retry_after."""
    when = datetime.now(UTC) + timedelta(seconds=120)
    value = "120" if form == "seconds" else format_datetime(when, usegmt=True)
    webhook_sink.respond("/monitor", 429, retry_after=value)
    error = await send_error(
        open_channel(make_config(webhook_sink, monitor={})), message("monitor")
    )
    assert isinstance(error, TransientDeliveryError)
    assert error.error_class is ErrorClass.RATE_LIMITED
    assert error.retry_after is not None
    assert 110 <= error.retry_after <= 120


async def test_redirect_is_not_followed(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """A 302 to loopback fails the attempt as redirect; the target sees no connection."""
    async with ConnectionCounter() as target:
        webhook_sink.redirect("/monitor", f"http://127.0.0.1:{target.port}/")
        error = await send_error(
            open_channel(make_config(webhook_sink, monitor={})), message("monitor")
        )
        await asyncio.sleep(0.05)  # a followed redirect would have connected by now
    assert error.error_class is ErrorClass.REDIRECT
    assert isinstance(error, PermanentDeliveryError)
    assert target.connections == 0


async def test_hanging_endpoint_is_cut_by_the_deadline_others_unaffected(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """The worker's asyncio.timeout cuts a hang while another endpoint delivers at once."""
    webhook_sink.hang("/stuck")
    channel = open_channel(make_config(webhook_sink, stuck={}, healthy={}))

    async def attempt(recipient: str) -> float:
        # The worker's pattern: every send inside the attempt's overall deadline.
        started = time.monotonic()
        async with asyncio.timeout(1.0):
            await channel.send(message(recipient))
        return time.monotonic() - started

    stuck, healthy = await asyncio.gather(
        attempt("stuck"), attempt("healthy"), return_exceptions=True
    )
    assert isinstance(stuck, TimeoutError)
    assert isinstance(healthy, float)
    assert healthy < 0.5
    assert len(webhook_sink.received_on("/healthy")) == 1
    # The pool survives the cancelled request.
    await channel.send(message("healthy"))


async def test_endpoint_timeout_is_a_transient_timeout(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """Without an outer deadline the endpoint's own timeout gives a timeout error."""
    webhook_sink.hang("/stuck")
    channel = open_channel(make_config(webhook_sink, stuck={"timeout": 0.3}))
    started = time.monotonic()
    error = await send_error(channel, message("stuck"))
    assert error.error_class is ErrorClass.TIMEOUT
    assert isinstance(error, TransientDeliveryError)
    assert time.monotonic() - started < 2


async def test_slow_body_after_2xx_does_not_hold_the_attempt(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """A 200 whose body trickles is a success, read for at most about a second."""
    webhook_sink.trickle("/monitor", interval=0.2, size=100)
    started = time.monotonic()
    receipt = await open_channel(make_config(webhook_sink, monitor={})).send(
        message("monitor")
    )
    assert receipt.provider_code == "200"
    assert time.monotonic() - started < 2.5


async def test_sequential_sends_reuse_one_connection(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """A response received whole is not waited on, and leaves its connection reusable:
    sequential sends to one endpoint go over one kept-alive connection."""
    channel = open_channel(make_config(webhook_sink, monitor={}))
    for _ in range(3):
        assert (await channel.send(message("monitor"))).provider_code == "200"
    assert len(webhook_sink.received_on("/monitor")) == 3
    assert webhook_sink.open_connections == 1


async def test_down_endpoint_is_a_connection_error_then_recovers(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """A refused connection is transient; once the endpoint is back it is delivered."""
    channel = open_channel(make_config(webhook_sink, monitor={}))
    await channel.send(message("monitor"))
    await webhook_sink.go_down()
    error = await send_error(channel, message("monitor"))
    assert error.error_class is ErrorClass.CONNECTION
    assert isinstance(error, TransientDeliveryError)
    await webhook_sink.come_up()
    await channel.send(message("monitor"))
    assert len(webhook_sink.received_on("/monitor")) == 2


async def test_unknown_endpoint_is_invalid_recipient(
    webhook_sink: WebhookSink, open_channel
) -> None:
    """A recipient that names no configured endpoint is permanent, with no request."""
    error = await send_error(
        open_channel(make_config(webhook_sink, monitor={})), message("nowhere")
    )
    assert isinstance(error, PermanentDeliveryError)
    assert error.error_class is ErrorClass.INVALID_RECIPIENT
    assert webhook_sink.received == []


async def test_endpoint_without_secret_is_refused_at_construction(
    webhook_sink: WebhookSink,
) -> None:
    """Deliveries are never unsigned: a secretless endpoint fails channel construction."""
    config = WebhookChannelConfig(
        allow_http=True,
        allow_private_networks=LOOPBACK,
        endpoints={"bare": {"url": webhook_sink.url("/bare")}},
    )
    with pytest.raises(ConfigError, match="bare"):
        WebhookChannel(config)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A trustme CA with a loopback certificate, and an unrelated CA."""
    ca, other = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server)
    folder = tmp_path_factory.mktemp("tls")
    right, wrong = folder / "ca.pem", folder / "other-ca.pem"
    ca.cert_pem.write_to_path(str(right))
    other.cert_pem.write_to_path(str(wrong))
    return {"server": server, "right": right, "wrong": wrong}


@pytest.mark.parametrize("trust", ["right", "wrong"])
async def test_tls_is_verified(tls: dict[str, Any], open_channel, trust: str) -> None:
    """HTTPS with the endpoint's CA delivers; a wrong CA is a tls error, nothing sent."""
    ca_file: Path = tls[trust]
    async with WebhookSink(ssl_context=tls["server"]) as https_sink:
        config = WebhookChannelConfig(
            allow_private_networks=LOOPBACK,
            endpoints={
                "monitor": {
                    "url": https_sink.url("/monitor"),
                    "secrets": [NEW_SECRET],
                    "ca_file": ca_file,
                }
            },
        )
        channel = open_channel(config)
        if trust == "right":
            await channel.send(message("monitor"))
            assert len(https_sink.received_on("/monitor")) == 1
        else:
            error = await send_error(channel, message("monitor"))
            assert error.error_class is ErrorClass.TLS
            assert isinstance(error, TransientDeliveryError)
            assert https_sink.received == []


async def test_flaky_sink_is_reproducible_per_seed() -> None:
    """The sink's random failures follow its seed, so fault tests are repeatable."""
    outcomes = []
    for _ in range(2):
        async with WebhookSink(seed=7) as flaky:
            flaky.flaky("/m", 0.5)
            config = make_config(flaky, m={})
            channel = WebhookChannel(config)
            run = []
            for _ in range(12):
                try:
                    await channel.send(message("m"))
                    run.append(200)
                except TransientDeliveryError as exc:
                    run.append(int(exc.provider_code or 0))
            await channel.aclose()
        outcomes.append(run)
    assert outcomes[0] == outcomes[1]
    assert {200, 503} == set(outcomes[0])


async def test_no_secret_signature_body_or_query_in_logs_or_errors(
    webhook_sink: WebhookSink, caplog: pytest.LogCaptureFixture
) -> None:
    """Secrets, signatures, bodies and URL query strings appear in no log or error text."""
    canary = f"canary-pii-{uuid.uuid4().hex}@example.org"
    config = WebhookChannelConfig(
        allow_http=True,
        allow_private_networks=LOOPBACK,
        endpoints={
            "monitor": {
                "url": webhook_sink.url("/monitor") + "?token=tok_query_canary",
                "secrets": [NEW_SECRET],
                "headers": {"Authorization": "Bearer tok_header_canary"},
            }
        },
    )
    errors: list[str] = []
    caplog.set_level(logging.DEBUG)
    with capture_logs() as logs:
        channel = WebhookChannel(config)
        for status in (200, 500, 404, 429):
            webhook_sink.respond("/monitor", status, retry_after="1")
            try:
                await channel.send(message("monitor", data={"contact": canary}))
            except DeliveryError as exc:
                errors.append(f"{exc!s} {exc!r} {exc.__cause__!r}")
        await webhook_sink.go_down()
        try:
            await channel.send(message("monitor", data={"contact": canary}))
        except DeliveryError as exc:
            errors.append(f"{exc!s} {exc!r}")
        await channel.aclose()

    signatures = [r.headers["webhook-signature"] for r in webhook_sink.received]
    assert len(signatures) == 4
    haystack = "\n".join(
        [caplog.text, *(json.dumps(entry, default=str) for entry in logs), *errors]
    )
    secret_body = NEW_SECRET.removeprefix("whsec_")
    for needle in [
        secret_body,
        "tok_query_canary",
        "tok_header_canary",
        canary,
        *(s.removeprefix("v1,") for s in signatures),
    ]:
        assert needle not in haystack
