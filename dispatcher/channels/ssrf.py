"""Destination guard for webhook URLs (SSRF): which hosts a webhook may reach.

Two checks, because aiohttp consults its resolver only for host *names*:

- ``url_refusal`` checks the URL itself (scheme, credentials, port) and an IP-literal host
  in every spelling that ``getaddrinfo`` accepts (``2130706433``, ``0x7f000001``,
  ``0177.0.0.1``, ``127.1``, ``0``, a trailing dot, IPv6, IPv4-mapped IPv6), refuses hosts
  no resolver should be asked about (percent-encoded, IPv6 zone ids, empty labels, a
  numeric last label) and ``localhost`` names. It runs at configuration load and again
  before every attempt.
- ``GuardedResolver`` resolves a name, refuses the whole answer if *any* A/AAAA record is
  not allowed, and hands the connector only the addresses it validated. The connector
  connects to exactly those (no DNS cache), while the ``Host`` header and SNI keep the
  name: the validated address is pinned, so a rebinding answer cannot slip in between
  check and connect. Every new connection resolves and validates again.

Refusals are values (a short reason with no host or address in it) until the edge, where
``classify.forbidden_destination`` turns them into a permanent delivery error.
"""

import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from dispatcher.channels import classify

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# IPv4-compatible IPv6 (deprecated, RFC 4291 2.5.5.1): ipaddress calls ::7f00:1 global.
_IPV4_COMPATIBLE: Final = ip_network("::/96")
# NAT64 prefixes (RFC 6052, RFC 8215): a gateway would forward to the embedded IPv4.
_NAT64: Final = (ip_network("64:ff9b::/96"), ip_network("64:ff9b:1::/48"))
_LOOPBACK: Final = IPv4Address("127.0.0.1")
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationPolicy:
    """What a webhook URL may point at.

    Attributes:
        allow_http: Permit plain ``http`` (tests and private receivers); https otherwise.
        allowed_ports: Ports a URL may name; empty means any.
        allow_private_networks: Networks allowed although not globally routable.
    """

    allow_http: bool = False
    allowed_ports: frozenset[int] = frozenset()
    allow_private_networks: tuple[Network, ...] = ()


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host means to ``getaddrinfo``, or None for a name.

    ``ipaddress`` refuses the legacy IPv4 spellings that the C library still accepts,
    so those are read with ``inet_aton``, which is what ``getaddrinfo`` uses for them.
    """
    text = host.removeprefix("[").removesuffix("]")
    try:
        return ip_address(text)
    except ValueError:
        pass
    if not text or not all(c in "0123456789abcdefxABCDEFX." for c in text):
        return None  # a name: inet_aton would also accept "1 trailing junk"
    try:
        return IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in _NAT64):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: IPAddress, policy: DestinationPolicy) -> str | None:
    """Why ``address`` may not be contacted, or None when it may."""
    candidate: IPAddress = address
    if isinstance(address, IPv6Address):
        bare = IPv6Address(str(address).split("%", 1)[0])
        # Checked as what the packet reaches: ::ffff:127.0.0.1 is loopback.
        candidate = _embedded_ipv4(bare) or bare
    if any(candidate in net for net in policy.allow_private_networks):
        return None
    if isinstance(candidate, IPv6Address) and candidate in _IPV4_COMPATIBLE:
        return "destination address is reserved"
    if not candidate.is_global or candidate.is_multicast:
        return f"destination address is not public ({_kind(candidate)})"
    return None


def url_refusal(url: URL, policy: DestinationPolicy) -> str | None:
    """Why ``url`` may not be used as a webhook destination, or None when it may.

    Host names are not resolved here (``GuardedResolver`` does that per connection).
    """
    allowed_schemes = {"https", "http"} if policy.allow_http else {"https"}
    if url.scheme not in allowed_schemes:
        return "URL scheme must be " + " or ".join(sorted(allowed_schemes))
    if url.raw_user is not None or url.raw_password is not None:
        return "URL must not carry credentials"
    host = url.raw_host
    if not host:
        return "URL must name a host"
    if policy.allowed_ports and url.port not in policy.allowed_ports:
        return "URL port is not allowed"
    if "%" in host:
        # Percent-encoding (%31%32%37.0.0.1) or an IPv6 zone id: the resolver would get
        # the text as it is, so what it means is never checked here.
        return "URL host must not contain '%' (percent-encoding or an IPv6 zone id)"
    # One trailing dot is the DNS root: 127.0.0.1. and localhost. are what they spell.
    literal = parse_ip_literal(host.removesuffix("."))
    if literal is None:
        return _name_refusal(host.removesuffix("."), policy)
    refusal = address_refusal(literal, policy)
    if refusal is None and isinstance(literal, IPv4Address) and host != str(literal):
        # aiohttp refuses legacy spellings itself; say so plainly at config load.
        return (
            "IPv4 address must be written in dotted-quad form, without a trailing dot"
        )
    return refusal


def _name_refusal(name: str, policy: DestinationPolicy) -> str | None:
    """Why a host that is not an IP literal may not be used, before any lookup."""
    labels = name.lower().split(".")
    if "" in labels:
        return "URL host is not a valid host name"
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        # A name ending in a number is an IPv4 address to URL parsers (WHATWG), and no
        # top-level domain is numeric: this one is neither, so it cannot be reached.
        return "URL host is neither an IP address nor a host name"
    if labels[-1] == "localhost":  # RFC 6761 6.3: always loopback, whatever DNS says
        return address_refusal(_LOOPBACK, policy)
    return None


def _kind(address: IPAddress) -> str:
    for attr in ("loopback", "link_local", "private", "multicast", "unspecified"):
        if getattr(address, f"is_{attr}"):
            return attr.replace("_", "-")
    return "reserved"


class GuardedResolver(AbstractResolver):
    """Resolve, then allow the answer only if every address passes the policy.

    Args:
        policy: The destination policy.
        inner: The resolver that does the lookup: aiohttp's ``ThreadedResolver``
            (``getaddrinfo``) in production; tests inject one to fake DNS answers.
    """

    def __init__(self, policy: DestinationPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        refusals = _refusals(answers, self._policy)
        if refusals:
            raise classify.forbidden_destination(refusals[0])
        if not answers:
            raise OSError("no addresses")  # becomes a DNS error, as an empty answer is
        return answers

    async def close(self) -> None:
        await self._inner.close()


def _refusals(answers: Iterable[ResolveResult], policy: DestinationPolicy) -> list[str]:
    refusals = []
    for answer in answers:
        try:
            address = ip_address(answer["host"])
        except ValueError:
            refusals.append("resolver returned a non-address")
            continue
        refusal = address_refusal(address, policy)
        if refusal is not None:
            refusals.append(refusal)
    return refusals
