"""SSRF guard: forbidden destinations are refused before any packet reaches them.

A ``ConnectionCounter`` listens on the loopback port the URLs name and must count zero.
"""

import base64
import socket
import uuid
from collections.abc import AsyncIterator
from ipaddress import ip_address, ip_network

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import SecretStr, ValidationError
from yarl import URL

from dispatcher.channels import ssrf
from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.webhook import WebhookChannel
from dispatcher.channels.webhook_config import WebhookChannelConfig, WebhookEndpoint
from dispatcher.errors import ErrorClass, PermanentDeliveryError
from dispatcher.events.kinds import Severity
from dispatcher.sinks.webhook import WebhookSink
from tests.listener import ConnectionCounter

SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()

#: (url template, refused already when the configuration loads)
FORBIDDEN = [
    ("http://127.0.0.1:{port}/", True),
    ("http://localhost:{port}/", True),
    ("http://2130706433:{port}/", True),
    ("http://0x7f000001:{port}/", True),
    ("http://0177.0.0.1:{port}/", True),
    ("http://127.1:{port}/", True),
    ("http://0:{port}/", True),
    ("http://[::1]:{port}/", True),
    ("http://[::ffff:127.0.0.1]:{port}/", True),
    ("http://169.254.169.254/latest/meta-data/", True),
    ("http://10.0.0.1/", True),
    ("http://100.64.0.1/", True),
    ("http://[fc00::1]/", True),
    ("http://[fe80::1]/", True),
    ("http://user:pw@example.com/", True),
    ("ftp://example.com/hook", True),
    ("file:///etc/passwd", True),
    # Spellings that used to pass configuration loading and then fail at send time as
    # transient DNS errors, retried until the policy was spent (issue 16, item 6).
    ("http://127.0.0.1.:{port}/", True),
    ("http://localhost.:{port}/", True),
    ("http://%31%32%37.0.0.1:{port}/", True),
    # ... and their neighbours
    ("http://%31%32%37%2E0%2E0%2E1:{port}/", True),
    ("http://127%2e0%2e0%2e1:{port}/", True),
    ("http://local%68ost:{port}/", True),
    ("http://LocalHost.:{port}/", True),
    ("http://hooks.localhost:{port}/", True),
    ("http://2130706433.:{port}/", True),
    ("http://0x7f.1:{port}/", True),
    ("http://0X7F.0.0.1.:{port}/", True),
    ("http://127.1.:{port}/", True),
    ("http://127.0.0.01:{port}/", True),
    ("http://127.0.0.1..:{port}/", True),
    ("http://.127.0.0.1:{port}/", True),
    ("http://127.0.0.1.5:{port}/", True),
    ("http://hooks.0x7f:{port}/", True),
    ("http://[::1%25lo]:{port}/", True),
    ("http://[fe80::1%25eth0]:{port}/", True),
    ("http://[::ffff:7f00:1]:{port}/", True),
    ("http://[0:0:0:0:0:0:0:1]:{port}/", True),
    ("http://[::]:{port}/", True),
    ("http://[64:ff9b::7f00:1]:{port}/", True),
    # IDNA mapping (UTS 46) turns these into plain loopback spellings
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}/", True),
    ("http://127\u30020\u30020\u30021:{port}/", True),
    ("http://\u24dbocalhost:{port}/", True),
]


class FakeDNS(AbstractResolver):
    """Scripted DNS answers per name, one list per lookup (the last repeats).

    A fake is used only where real DNS cannot produce the answer on this machine: a
    public-looking name that resolves to loopback, and an answer that changes between
    lookups (rebinding). These are external faults, not our own code.
    """

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append(host)
        script = self.answers[host]
        addresses = script.pop(0) if len(script) > 1 else script[0]
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in addresses
        ]

    async def close(self) -> None:
        pass


def message(recipient: str = "target") -> OutboundMessage:
    return OutboundMessage(
        delivery_id=uuid.uuid4(),
        event_id=uuid.uuid4(),
        event_type="crisis.detected",
        severity=Severity.CRITICAL,
        occurred_at="2026-01-01T00:00:00+00:00",
        subject_id="person-1",
        recipient=recipient,
        data={"score": 0.9},
    )


def unchecked_config(url: str) -> WebhookChannelConfig:
    """A config that skips load-time validation, to prove the send-time guard alone.

    ``model_construct`` bypasses the validators on purpose: defence in depth means the
    channel refuses these URLs even if a bad config got past loading.
    """
    endpoint = WebhookEndpoint.model_construct(url=url, secrets=[SecretStr(SECRET)])
    return WebhookChannelConfig.model_construct(
        endpoints={"target": endpoint}, allow_http=True
    )


@pytest.fixture
async def listener() -> AsyncIterator[ConnectionCounter]:
    async with ConnectionCounter() as counter:
        yield counter


@pytest.mark.parametrize(
    ("template", "at_load"), FORBIDDEN, ids=[u for u, _ in FORBIDDEN]
)
async def test_forbidden_url_is_refused_before_any_packet(
    template: str, at_load: bool, listener: ConnectionCounter
) -> None:
    """Each forbidden URL fails with forbidden_destination and the listener sees nothing."""
    url = template.format(port=listener.port)
    channel = WebhookChannel(unchecked_config(url))
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await channel.send(message())
    finally:
        await channel.aclose()
    assert info.value.error_class is ErrorClass.FORBIDDEN_DESTINATION
    assert listener.connections == 0
    assert url not in str(info.value)
    if at_load:
        with pytest.raises(ValidationError, match=r"endpoints\.target\.url"):
            WebhookChannelConfig(
                allow_http=True,
                endpoints={"target": {"url": url, "secrets": [SECRET]}},
            )


async def test_public_looking_name_resolving_to_loopback_is_refused(
    listener: ConnectionCounter,
) -> None:
    """A name whose DNS answer is loopback is refused after the lookup, before connect."""
    dns = FakeDNS({"hooks.example.com": [["127.0.0.1"]]})
    config = WebhookChannelConfig(
        allow_http=True,
        endpoints={
            "target": {
                "url": f"http://hooks.example.com:{listener.port}/",
                "secrets": [SECRET],
            }
        },
    )
    channel = WebhookChannel(config, resolver=dns)
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await channel.send(message())
    finally:
        await channel.aclose()
    assert info.value.error_class is ErrorClass.FORBIDDEN_DESTINATION
    assert dns.lookups == ["hooks.example.com"]
    assert listener.connections == 0


async def test_one_private_record_refuses_the_whole_answer(
    listener: ConnectionCounter,
) -> None:
    """Every A/AAAA record must pass: a public record next to a loopback one is refused."""
    dns = FakeDNS({"hooks.example.com": [["93.184.215.14", "127.0.0.1"]]})
    config = WebhookChannelConfig(
        allow_http=True,
        endpoints={
            "target": {
                "url": f"http://hooks.example.com:{listener.port}/",
                "secrets": [SECRET],
            }
        },
    )
    channel = WebhookChannel(config, resolver=dns)
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            await channel.send(message())
    finally:
        await channel.aclose()
    assert info.value.error_class is ErrorClass.FORBIDDEN_DESTINATION
    assert listener.connections == 0


async def test_rebinding_connects_only_to_the_validated_address(
    listener: ConnectionCounter,
) -> None:
    """DNS answers an allowed address, then loopback: traffic goes only where validated.

    127.0.0.2 plays the "public" address (it is the only allowlisted one); the
    listener on 127.0.0.1, same port, plays the private target of the rebinding.
    """
    async with WebhookSink(host="127.0.0.2", port=listener.port) as sink:
        dns = FakeDNS({"hooks.example.com": [["127.0.0.2"], ["127.0.0.1"]]})
        config = WebhookChannelConfig(
            allow_http=True,
            allow_private_networks=[ip_network("127.0.0.2/32")],
            endpoints={
                "target": {
                    "url": f"http://hooks.example.com:{sink.port}/hook",
                    "secrets": [SECRET],
                }
            },
        )
        channel = WebhookChannel(config, resolver=dns)
        try:
            receipt = await channel.send(message())
            # A new pool forces a new connection, hence a new lookup.
            await channel.aclose()
            with pytest.raises(PermanentDeliveryError) as info:
                await channel.send(message())
        finally:
            await channel.aclose()
    assert receipt.provider_code == "200"
    assert info.value.error_class is ErrorClass.FORBIDDEN_DESTINATION
    (request,) = sink.received
    # Pinned by address, still addressed by name: Host (and SNI) keep the name.
    assert request.headers["host"] == f"hooks.example.com:{sink.port}"
    assert listener.connections == 0
    assert dns.lookups == ["hooks.example.com", "hooks.example.com"]


@pytest.mark.parametrize(
    "template",
    ["http://127.0.0.1:{port}/hook", "http://localhost:{port}/hook"],
    ids=["literal", "name"],
)
async def test_loopback_is_accepted_when_allowlisted(template: str) -> None:
    """With 127.0.0.0/8 in allow_private_networks the same loopback URL is delivered."""
    async with WebhookSink() as sink:
        config = WebhookChannelConfig(
            allow_http=True,
            allow_private_networks=[ip_network("127.0.0.0/8")],
            endpoints={
                "target": {"url": template.format(port=sink.port), "secrets": [SECRET]}
            },
        )
        channel = WebhookChannel(config)
        try:
            receipt = await channel.send(message())
        finally:
            await channel.aclose()
    assert receipt.provider_code == "200"
    assert len(sink.received_on("/hook")) == 1


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("[::1]", "::1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("8.8.8.8", "8.8.8.8"),
        ("example.com", None),
        ("cafe", None),
        ("127.0.0.1 junk", None),
    ],
)
def test_ip_literals_are_read_as_getaddrinfo_reads_them(
    host: str, expected: str | None
) -> None:
    """Every legacy IPv4 spelling maps to the address the C library would connect to."""
    parsed = ssrf.parse_ip_literal(host)
    assert parsed == (None if expected is None else ip_address(expected))
    if expected is not None and ":" not in host and " " not in host:
        assert socket.getaddrinfo(host, 80)[0][4][0] == expected


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("192.168.1.1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 wrapping loopback
        ("64:ff9b::7f00:1", False),  # NAT64 wrapping loopback
        ("::7f00:1", False),  # IPv4-compatible, deprecated
        ("fe80::1%eth0", False),
    ],
)
def test_address_policy(address: str, allowed: bool) -> None:
    """Only global addresses pass, judged after unwrapping embedded IPv4."""
    refusal = ssrf.address_refusal(ip_address(address), ssrf.DestinationPolicy())
    assert (refusal is None) is allowed


@pytest.mark.parametrize(
    ("url", "policy", "allowed"),
    [
        ("https://example.com/", ssrf.DestinationPolicy(), True),
        ("http://example.com/", ssrf.DestinationPolicy(), False),
        ("http://example.com/", ssrf.DestinationPolicy(allow_http=True), True),
        (
            "https://example.com:8443/",
            ssrf.DestinationPolicy(allowed_ports=frozenset({443})),
            False,
        ),
        (
            "https://example.com/",
            ssrf.DestinationPolicy(allowed_ports=frozenset({443})),
            True,
        ),
        ("https://user@example.com/", ssrf.DestinationPolicy(), False),
        ("https://hooks.example.com./", ssrf.DestinationPolicy(), True),
        ("https://b\u00fccher.example/", ssrf.DestinationPolicy(), True),
        ("https://8.8.8.8/", ssrf.DestinationPolicy(), True),
        ("https://8.8.8.8./", ssrf.DestinationPolicy(), False),
        ("https://[2606:4700:4700::1111]/", ssrf.DestinationPolicy(), True),
        ("https://[2606:4700:4700::1111%25eth0]/", ssrf.DestinationPolicy(), False),
        (
            "http://localhost./",
            ssrf.DestinationPolicy(
                allow_http=True, allow_private_networks=(ip_network("127.0.0.0/8"),)
            ),
            True,
        ),
    ],
    ids=[
        "https",
        "http-off",
        "http-on",
        "port-off",
        "port-on",
        "userinfo",
        "fqdn-trailing-dot",
        "idn",
        "public-ipv4",
        "public-ipv4-trailing-dot",
        "public-ipv6",
        "public-ipv6-zone-id",
        "localhost-allowlisted",
    ],
)
def test_url_policy(url: str, policy: ssrf.DestinationPolicy, allowed: bool) -> None:
    """Scheme, credentials, port and host spelling are checked from the URL alone; names
    (with or without the root's trailing dot) are left to the resolver's check."""
    assert (ssrf.url_refusal(URL(url), policy) is None) is allowed


def test_default_config_refuses_plain_http() -> None:
    """Without allow_http an http:// endpoint fails configuration load."""
    with pytest.raises(ValidationError, match="scheme must be https"):
        WebhookChannelConfig(
            endpoints={"m": {"url": "http://m.example.org/", "secrets": [SECRET]}}
        )
