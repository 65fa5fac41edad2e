"""Webhook channel: one signed JSON POST per attempt, to an endpoint named in config.

Body (UTF-8 JSON, serialised once per attempt and signed byte for byte as sent; the same
bytes on every retry of a delivery, since nothing in it changes between attempts)::

    {"type": "crisis.detected",            # event type
     "timestamp": "2026-01-01T00:00:00Z",  # the event's occurred_at
     "event_id": "<uuid>", "delivery_id": "<uuid>",
     "severity": "critical", "subject_id": "...", "correlation_id": "..." | null,
     "data": {...}}                        # the event's data object

Headers: ``webhook-id`` (the delivery id), ``webhook-timestamp`` and
``webhook-signature`` (Standard Webhooks), ``content-type: application/json``,
``dispatcher-attempt`` (1 for the first), ``traceparent`` when known, and the endpoint's
own extra headers. Redirects are never followed; the response body is read up to
``max_response_bytes`` only to keep the connection reusable, and then dropped.
"""

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, NamedTuple

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from dispatcher import __version__
from dispatcher.channels import classify, signing, ssrf
from dispatcher.channels.base import OutboundMessage, SendReceipt
from dispatcher.channels.webhook_config import WebhookChannelConfig, WebhookEndpoint
from dispatcher.errors import (
    ConfigError,
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
)
from dispatcher.events.kinds import ChannelKind
from dispatcher.telemetry import tracing

USER_AGENT: Final = f"dispatcher-webhook/{__version__}"
#: Longest wait for a response body once the status is known.
DRAIN_SECONDS: Final = 1.0


def render_body(message: OutboundMessage) -> bytes:
    """The request body for ``message`` (see the module docstring)."""
    envelope = {
        "type": message.event_type,
        "timestamp": message.occurred_at,
        "event_id": str(message.event_id),
        "delivery_id": str(message.delivery_id),
        "severity": str(message.severity),
        "subject_id": message.subject_id,
        "correlation_id": message.correlation_id,
        "data": message.data,
    }
    try:
        text = json.dumps(
            envelope, ensure_ascii=False, allow_nan=False, separators=(",", ":")
        )
    except (TypeError, ValueError):
        raise PermanentDeliveryError(
            ErrorClass.TEMPLATE, "event data is not serialisable as JSON"
        ) from None
    return text.encode()


class _Target(NamedTuple):
    url: URL
    #: Why the URL itself is refused (scheme, credentials, port, IP literal), or None.
    refusal: str | None
    timeout: aiohttp.ClientTimeout


class WebhookChannel:
    """All webhook endpoints behind one pooled, SSRF-guarded HTTP client.

    Args:
        config: The channel settings; every endpoint needs at least one secret.
        name: Channel name for breakers, metrics and audit rows.
        resolver: DNS lookup behind the SSRF guard; ``getaddrinfo`` by default. Tests
            inject one to fake DNS answers.
        clock: Unix time, for ``webhook-timestamp``.

    Raises:
        ConfigError: an endpoint has no signing secret.
    """

    kind: ChannelKind = ChannelKind.WEBHOOK
    time_limit: float | None = None

    def __init__(
        self,
        config: WebhookChannelConfig,
        *,
        name: str = "webhook",
        resolver: AbstractResolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unsigned = sorted(n for n, ep in config.endpoints.items() if not ep.secrets)
        if unsigned:
            # Receivers must be able to authenticate health data: never send unsigned.
            raise ConfigError(
                "channels.webhook.endpoints: no signing secret for "
                + ", ".join(unsigned)
            )
        self.name = name
        self._config = config
        self._policy = config.destination_policy()
        self._keys = {n: ep.signing_keys() for n, ep in config.endpoints.items()}
        self._tls = {
            n: _tls_context(ep.ca_file or config.ca_file)
            for n, ep in config.endpoints.items()
        }
        # Fixed per endpoint, so worked out once rather than on every send. The URL check
        # covers IP literals; host names are checked per connection by the resolver.
        self._targets = {
            n: _Target(
                URL(ep.url),
                ssrf.url_refusal(URL(ep.url), self._policy),
                aiohttp.ClientTimeout(
                    total=ep.timeout or config.deadline_seconds,
                    sock_connect=min(
                        config.connect_timeout, ep.timeout or config.deadline_seconds
                    ),
                ),
            )
            for n, ep in config.endpoints.items()
        }
        self._resolver = resolver
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def send(self, message: OutboundMessage, /) -> SendReceipt:
        """POST ``message`` to the endpoint named by ``message.recipient``.

        Raises:
            PermanentDeliveryError: unknown endpoint, forbidden destination, 3xx, 4xx.
            TransientDeliveryError: network, TLS, timeout, 5xx/408/429 (``retry_after``).
        """
        endpoint = self._config.endpoints.get(message.recipient)
        if endpoint is None:
            raise classify.unknown_recipient("webhook")
        target = self._targets[message.recipient]
        # Refused at every attempt: the resolver hook never sees IP literals.
        if target.refusal is not None:
            raise classify.forbidden_destination(target.refusal)
        body = render_body(message)
        headers = self._headers(message, endpoint, body)
        try:
            async with self._client().post(
                target.url,
                data=body,
                headers=headers,
                allow_redirects=False,
                ssl=self._tls[message.recipient],
                timeout=target.timeout,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                await _drain(response, self._config.max_response_bytes)
        except DeliveryError:
            raise  # the SSRF guard's refusal, raised inside the connector
        except Exception as exc:
            raise classify.exception(exc) from exc
        if 200 <= status < 300:  # noqa: PLR2004
            return SendReceipt(provider=message.recipient, provider_code=str(status))
        raise classify.http_status(status, retry_after=retry_after)

    async def aclose(self) -> None:
        """Close the pooled connections; a later ``send`` opens a new pool."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _headers(
        self, message: OutboundMessage, endpoint: WebhookEndpoint, body: bytes
    ) -> dict[str, str]:
        headers = {k: v.get_secret_value() for k, v in endpoint.headers.items()}
        headers |= signing.signature_headers(
            self._keys[message.recipient],
            str(message.delivery_id),
            int(self._clock()),
            body,
        )
        headers["content-type"] = "application/json"
        headers["dispatcher-attempt"] = str(message.attempt)
        traceparent = tracing.current_traceparent() or message.traceparent
        if traceparent:
            headers["traceparent"] = traceparent
        return headers

    def _client(self) -> aiohttp.ClientSession:
        # Built on first use: aiohttp binds the connector to the running loop.
        if self._session is None:
            resolver = ssrf.GuardedResolver(
                self._policy, self._resolver or ThreadedResolver()
            )
            connector = aiohttp.TCPConnector(
                limit=self._config.concurrency,
                use_dns_cache=False,  # a cached answer would skip the SSRF check
                resolver=resolver,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                cookie_jar=aiohttp.DummyCookieJar(),  # no state across endpoints
                trust_env=False,  # an environment proxy would bypass the guard
                auto_decompress=False,
            )
        return self._session


async def _drain(response: aiohttp.ClientResponse, limit: int) -> None:
    """Read and drop up to ``limit`` body bytes, so the connection can be reused.

    The status is already known; a body that is too long, slow or broken only costs
    the connection, never the verdict. A body already received whole (the usual short
    or empty one) leaves the connection reusable as it is: nothing to wait for.
    """
    if response.content.is_eof():
        return
    remaining = limit
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while remaining > 0:
                chunk = await response.content.read(remaining)
                if not chunk:
                    return
                remaining -= len(chunk)
        if not response.content.at_eof():
            response.close()
    except (aiohttp.ClientError, TimeoutError):
        response.close()


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    # Verification is always on; a private CA replaces the system store, not the check.
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
