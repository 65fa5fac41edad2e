"""Guards for the library internals dispatcher relies on for speed.

Each shortcut in docs/architecture.md ("Library internals") depends on something a
library does not promise: a private name, an attribute set in ``__init__``, a signature,
a behaviour. These tests check each of them on the installed version and fail with a
message naming the internal, the module relying on it and the range pyproject.toml pins,
so an upgrade that changes one is caught here, not in production. The checks that need
a real broker or database are in tests/integration/test_library_internals_live.py.
"""

import asyncio
import inspect
import tomllib
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]

#: Every library with a kept internal, and the module that relies on it.
RELIED_ON = {
    "aiormq": "dispatcher/ingest/intake.py (the consumer callback swap)",
    "aio-pika": "dispatcher/ingest/intake.py (the consumer callback swap)",
    "aiosmtplib": "dispatcher/channels/smtppipe.py (PIPELINING)",
    "aiosmtpd": "dispatcher/sinks/smtp.py (the MAIL/RCPT path shortcut)",
    "email-validator": "dispatcher/events/address.py (the plain-address shortcut)",
    "asyncpg": "dispatcher/db/engine.py and the stores (raw asyncpg)",
    "sqlalchemy": "dispatcher/db/engine.py (KeptConnection: the raw connection)",
    "twilio": "dispatcher/channels/sms.py (the HTTP client subclass)",
    "standardwebhooks": "dispatcher/channels/signing.py (signatures)",
}


def pinned(dist: str) -> Requirement:
    """The requirement pyproject.toml declares for ``dist`` (runtime or an extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    for line in [*project["dependencies"], *(line for e in extras for line in e)]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == canonicalize_name(dist):
            return requirement
    raise AssertionError(f"{dist} is not a dependency in pyproject.toml")


def broken(dist: str, internal: str) -> str:
    """The failure message: what changed, who relies on it, what the pin says."""
    requirement = pinned(dist)
    return (
        f"{dist} {version(dist)}: {internal} changed; {RELIED_ON[dist]} relies on it"
        f" (pinned {requirement.name}{requirement.specifier}). Re-check that shortcut"
        " against this version or move it to the library's public API; see"
        " docs/architecture.md, 'Library internals'."
    )


def parameters(function: Callable[..., object]) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize("dist", RELIED_ON)
def test_installed_versions_are_inside_the_pins(dist: str) -> None:
    """Every library with a kept internal runs at a version its pin allows."""
    requirement = pinned(dist)
    assert requirement.specifier.contains(version(dist), prereleases=True), broken(
        dist, "the installed version is outside the pinned range"
    )


def test_aiormq_channel_consumers_and_delivered_message() -> None:
    """aiormq keeps consumer callbacks in ``Channel.consumers`` and hands them a
    ``DeliveredMessage`` whose fields the lean ingest path reads."""
    import aiormq
    from aiormq.abc import DeliveredMessage

    init = inspect.getsource(aiormq.Channel.__init__)
    assert "self.consumers" in init, broken("aiormq", "Channel.consumers")
    assert parameters(DeliveredMessage) == ["delivery", "header", "body", "channel"], (
        broken("aiormq", "DeliveredMessage(delivery, header, body, channel)")
    )
    for name in ("routing_key", "delivery_tag"):
        assert isinstance(getattr(DeliveredMessage, name, None), property), broken(
            "aiormq", f"DeliveredMessage.{name}"
        )
    assert parameters(aiormq.Channel.basic_ack)[:3] == [
        "self",
        "delivery_tag",
        "multiple",
    ], broken("aiormq", "Channel.basic_ack(delivery_tag, multiple)")


def test_aio_pika_incoming_message_exposes_its_aiormq_channel() -> None:
    """aio-pika's incoming message names its aiormq channel and consumer tag."""
    from aio_pika.message import IncomingMessage

    assert isinstance(IncomingMessage.__dict__.get("channel"), property), broken(
        "aio-pika", "IncomingMessage.channel (the aiormq channel)"
    )
    init = inspect.getsource(IncomingMessage.__init__)
    assert "self.consumer_tag" in init, broken(
        "aio-pika", "IncomingMessage.consumer_tag"
    )


async def test_aiosmtplib_protocol_pieces_smtppipe_uses() -> None:
    """The helpers, constants and protocol attributes smtppipe builds on behave as
    smtppipe expects on tiny inputs."""
    import aiosmtplib
    from aiosmtplib import email as smtp_email
    from aiosmtplib import protocol

    def check(ok: bool, internal: str) -> None:
        assert ok, broken("aiosmtplib", internal)

    check(smtp_email.quote_address("a@b.example") == "<a@b.example>", "quote_address")
    check(
        protocol.normalize_message_line_endings(b"a\nb\r\nc") == b"a\r\nb\r\nc\r\n",
        "normalize_message_line_endings",
    )
    check(
        protocol.PERIOD_REGEX.sub(b"..", b".x\r\n.y\r\n") == b"..x\r\n..y\r\n",
        "PERIOD_REGEX (dot-stuffing)",
    )
    check(
        protocol.COMMAND_INJECTION_REGEX.search(b"a\r\nb") is not None,
        "COMMAND_INJECTION_REGEX",
    )
    check(protocol.MAX_LINE_LENGTH == 8192, "MAX_LINE_LENGTH")
    check(protocol.MAX_RESPONSE_LENGTH == 32768, "MAX_RESPONSE_LENGTH")
    smtp = protocol.SMTPProtocol(loop=asyncio.get_running_loop())
    transport = asyncio.Transport()
    smtp.connection_made(transport)
    check(smtp.transport is transport, "SMTPProtocol.transport")
    for name in ("write", "connection_lost", "pause_writing", "resume_writing"):
        check(callable(getattr(smtp, name, None)), f"SMTPProtocol.{name}")
    check(parameters(smtp.write) == ["data"], "SMTPProtocol.write(data)")
    # Why smtppipe reads replies itself: bytes that come while no command waits for
    # a reply are dropped, so pipelined replies after the first would be lost.
    smtp.data_received(b"250 ok\r\n")
    check(not smtp._buffer, "SMTPProtocol.data_received dropping unexpected replies")
    smtp.connection_lost(None)
    client = aiosmtplib.SMTP(hostname="127.0.0.1", timeout=5)
    check(client.protocol is None and client.timeout == 5, "SMTP.protocol / .timeout")
    check(client.is_ehlo_or_helo_needed is True, "SMTP.is_ehlo_or_helo_needed")
    check(
        parameters(client.supports_extension) == ["extension"],
        "SMTP.supports_extension(extension)",
    )


def test_aiosmtpd_getaddr() -> None:
    """aiosmtpd parses MAIL/RCPT paths in ``SMTP._getaddr(arg) -> (address, rest)``."""
    from aiosmtpd.smtp import SMTP

    assert parameters(SMTP._getaddr) == ["self", "arg"], broken(
        "aiosmtpd", "SMTP._getaddr(arg)"
    )
    smtp = SMTP(handler=object())
    assert smtp.local_part_limit == 0, broken("aiosmtpd", "SMTP.local_part_limit")
    got = smtp._getaddr("<a@b.example> SIZE=10")
    assert got == ("a@b.example", "SIZE=10"), broken("aiosmtpd", "SMTP._getaddr")


def test_email_validator_rules_the_address_shortcut_copies() -> None:
    """The constants the plain-address shortcut reads, and the rules it writes out,
    are still email_validator's."""
    import email_validator
    from email_validator import rfc_constants

    def check(ok: bool, internal: str) -> None:
        assert ok, broken("email-validator", internal)

    check(
        (
            rfc_constants.EMAIL_MAX_LENGTH,
            rfc_constants.LOCAL_PART_MAX_LENGTH,
            rfc_constants.DOMAIN_MAX_LENGTH,
        )
        == (254, 64, 253),
        "rfc_constants length limits",
    )
    check(
        "postmaster" in rfc_constants.CASE_INSENSITIVE_MAILBOX_NAMES,
        "rfc_constants.CASE_INSENSITIVE_MAILBOX_NAMES",
    )
    check(
        "local" in email_validator.SPECIAL_USE_DOMAIN_NAMES, "SPECIAL_USE_DOMAIN_NAMES"
    )

    def normalized(address: str) -> str | None:
        try:
            return email_validator.validate_email(
                address, check_deliverability=False
            ).normalized
        except email_validator.EmailNotValidError:
            return None

    check(
        normalized("Team.A@Example.ORG") == "Team.A@example.org", "domain lowercasing"
    )
    check(normalized("PostMaster@example.org") == "postmaster@example.org", "mailboxes")
    check(normalized("a@b.local") is None, "special-use domains refused")
    check(normalized("a..b@example.org") is None, "dot-atom rules")


def test_asyncpg_private_data_error() -> None:
    """``asyncpg.exceptions._base.DataError``, which db/engine.py imports (a missing
    name would stop every process at import), is still the client-side input error."""
    import asyncpg
    from asyncpg.exceptions import _base

    error = getattr(_base, "DataError", None)
    assert isinstance(error, type), broken("asyncpg", "exceptions._base.DataError")
    assert issubclass(error, asyncpg.InterfaceError), broken(
        "asyncpg", "exceptions._base.DataError (a client-side InterfaceError)"
    )
    assert not issubclass(error, asyncpg.PostgresError), broken(
        "asyncpg", "exceptions._base.DataError"
    )


def test_twilio_http_client_hooks() -> None:
    """The methods the SMS adapter's HTTP client overrides keep twilio's signatures,
    and twilio's request still calls its log hooks (which the adapter silences)."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.http.response import Response
    from twilio.rest import Client

    def check(ok: bool, internal: str) -> None:
        assert ok, broken("twilio", internal)

    check(
        parameters(AsyncTwilioHttpClient.request)
        == [
            "self",
            *("method", "url", "params", "data", "headers", "auth", "timeout"),
            "allow_redirects",
        ],
        "AsyncTwilioHttpClient.request signature",
    )
    source = inspect.getsource(AsyncTwilioHttpClient.request)
    check(
        "self.log_request(" in source and "self.log_response(" in source,
        "AsyncTwilioHttpClient.request calling log_request/log_response",
    )
    # The adapter gives the client a session whose connector allows one connection per
    # slot; twilio must still send through ``self.session`` when one is set.
    check(
        "self.session" in source
        and "pool_connections" in parameters(AsyncTwilioHttpClient.__init__),
        "AsyncTwilioHttpClient.session used by request (pool_connections=)",
    )
    check(
        Response(429, "{}", {"Retry-After": "7"}).headers == {"Retry-After": "7"},
        "Response.headers",
    )
    check(
        {"http_client", "environment"} <= set(parameters(Client.__init__)),
        "Client(http_client=, environment=)",
    )


def test_standardwebhooks_signs_the_spec_example() -> None:
    """The reference library's signature of the Standard Webhooks example is the one
    the spec gives, and ``signature_headers`` passes it through unchanged."""
    from standardwebhooks import Webhook

    from dispatcher.channels import signing

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    msg_id, timestamp, body = (
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        b'{"test": 2432232314}',
    )
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    when = datetime.fromtimestamp(timestamp, UTC)
    assert Webhook(secret).sign(msg_id, when, body.decode()) == expected, broken(
        "standardwebhooks", "Webhook.sign(msg_id, timestamp, data)"
    )
    headers = signing.signature_headers(
        [signing.decode_secret(secret)], msg_id, timestamp, body
    )
    assert headers["webhook-signature"] == expected


@pytest.mark.parametrize(
    "sender",
    [{"from_number": "+15550001111"}, {"messaging_service_sid": "MG" + "1" * 32}],
    ids=["from-number", "messaging-service"],
)
@pytest.mark.parametrize("base_url", [None, "http://127.0.0.1:9/twilio"])
async def test_twilio_message_create_request(
    sender: dict[str, str], base_url: str | None
) -> None:
    """The SMS adapter's Message create (twilio's ``Version`` over its ``Client``, without
    the 2010 API tree) sends exactly the request ``client.messages.create_async`` sends,
    and reads its answer the same way."""
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.http.response import Response
    from twilio.rest import Client

    from dispatcher.channels.sms import _NO_ENVIRONMENT, TwilioChannel
    from dispatcher.channels.sms_config import TwilioProvider
    from dispatcher.testing import make_message

    class Capture(AsyncTwilioHttpClient):  # type: ignore[misc]
        """Records each request and answers it as Twilio does (201, the resource)."""

        def __init__(self) -> None:
            super().__init__(pool_connections=False)
            self.requests: list[tuple[tuple[object, ...], dict[str, object]]] = []

        async def request(self, *args: object, **kwargs: object) -> Response:
            self.requests.append((args, kwargs))
            return Response(201, '{"sid": "SM123", "status": "queued"}')

    sid, token = "AC" + "0" * 32, "not-a-real-token"
    provider = TwilioProvider(
        name="twilio-a",
        account_sid=sid,
        auth_token=token,
        base_url=base_url,
        **sender,
    )
    message = make_message(recipient="+15557654321")

    theirs = Capture()
    client = Client(sid, token, http_client=theirs, environment=_NO_ENVIRONMENT)
    if base_url is not None:
        client.api.base_url = base_url
    fields = (
        {"from_": provider.from_number}
        if provider.from_number
        else {"messaging_service_sid": provider.messaging_service_sid}
    )
    created = await client.messages.create_async(
        to=message.recipient, body="the body", **fields
    )

    ours = Capture()
    channel = TwilioChannel(provider, template="the body")
    try:
        channel._version().domain.twilio.http_client = ours
        receipt = await channel.send(message)
    finally:
        await channel.aclose()
    assert ours.requests == theirs.requests, broken(
        "twilio", "MessageList.create_async's request (URI, form fields, headers)"
    )
    # The adapter's HTTP client encodes the form itself (sms.py ``_form``) when twilio
    # hands it the fields as a dict with the form's Content-Type.
    [(_, kwargs)] = ours.requests
    assert isinstance(kwargs["data"], dict), broken(
        "twilio", "http_client.request(data=) as a dict of form fields"
    )
    headers = kwargs["headers"]
    assert isinstance(headers, dict), broken("twilio", "http_client.request(headers=)")
    assert headers.get("Content-Type") == "application/x-www-form-urlencoded", broken(
        "twilio", "the form Content-Type in http_client.request(headers=)"
    )
    assert (receipt.provider_message_id, receipt.provider_code) == (
        created.sid,
        str(created.status),
    ), broken("twilio", "MessageInstance.sid/status from the created payload")
