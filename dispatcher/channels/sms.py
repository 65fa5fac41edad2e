"""SMS through Twilio: the adapter for one account (configuration: ``sms_config.py``)."""

import asyncio
import base64
import logging
from contextvars import ContextVar
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp
from twilio.base.domain import Domain
from twilio.base.exceptions import (
    TwilioException,
    TwilioRestException,
    TwilioServiceException,
)
from twilio.base.version import Version
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from dispatcher.channels import classify
from dispatcher.channels.base import OutboundMessage, SendReceipt
from dispatcher.channels.sms_config import SmsChannelConfig, TwilioProvider
from dispatcher.channels.templates import DEFAULT_SMS, check_template, render_sms
from dispatcher.events.kinds import ChannelKind

# twilio logs every request's URL and headers at INFO through the logger it is given;
# ours stays at WARNING so no account SID or header reaches the logs.
_HTTP_LOG: Final = logging.getLogger(f"{__name__}.http")
_HTTP_LOG.setLevel(logging.WARNING)

#: ``Retry-After`` of the current task's Twilio calls: ``TwilioRestException`` drops the
#: response headers, and this one decides when a rate-limited SMS is retried.
_RETRY_AFTER: ContextVar[list[str | None] | None] = ContextVar(
    "twilio_retry_after", default=None
)

# Twilio's client reads region and edge from os.environ unless given a mapping, and
# rewrites the host when they are set; a non-empty neutral mapping keeps it explicit.
_NO_ENVIRONMENT: Final = {"TWILIO_REGION": "", "TWILIO_EDGE": ""}

#: Where twilio's ``client.api`` sends, and the version of its Message resource.
_API_URL: Final = "https://api.twilio.com"
_API_VERSION: Final = "2010-04-01"
#: The headers twilio's ``MessageList.create_async`` sends (tests/unit/
#: test_library_internals.py checks the request is the same as twilio's own).
_FORM: Final = "application/x-www-form-urlencoded"
_CREATE_HEADERS: Final = {
    "Content-Type": _FORM,
    "Accept": "application/json",
}


class _HttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
    """twilio's aiohttp client (a custom ``http_client`` is twilio's documented hook),
    changed for behaviour: it never logs; it keeps each request's ``Retry-After`` for
    the classifier, since ``TwilioRestException`` drops the response headers; and it
    builds the Basic header, since twilio 9.13 builds an ``aiohttp.BasicAuth``,
    deprecated in aiohttp 3.14 (a warning per request). And for speed: it hands aiohttp
    the form already encoded (``_form``).

    Its session may open ``connections`` at once: as many as the channel has slots, so
    that no send, a critical one least of all, queues inside aiohttp for a connection
    (twilio's own session keeps aiohttp's default of 100, shared first come first
    served).
    """

    def __init__(self, connections: int) -> None:
        super().__init__(pool_connections=False, logger=_HTTP_LOG)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections)
        )
        self._authorization: dict[tuple[str, str], str] = {}

    # twilio logs the URL (with the account SID) and every header of each request:
    # never, whatever level its logger is set to.
    def log_request(self, kwargs: dict[str, Any]) -> None:
        pass

    def log_response(self, status_code: int, response: Any) -> None:
        pass

    async def request(  # noqa: PLR0917 - twilio's signature
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - twilio's signature
        allow_redirects: bool = False,
    ) -> Response:
        if auth is not None:
            headers = {**(headers or {}), "Authorization": self._basic(auth)}
        response: Response = await super().request(
            method,
            url,
            params=params,
            data=_form(data, headers),
            headers=headers,
            auth=None,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )
        seen = _RETRY_AFTER.get()
        if seen is not None and response.headers is not None:
            seen.append(response.headers.get("Retry-After"))
        return response

    def _basic(self, auth: tuple[str, str]) -> str:
        header = self._authorization.get(auth)
        if header is None:
            token = base64.b64encode(":".join(auth).encode("latin-1")).decode()
            header = self._authorization[auth] = f"Basic {token}"
        return header


def _form(
    data: dict[str, object] | None, headers: dict[str, str] | None
) -> dict[str, object] | bytes | None:
    """The body of a form POST as aiohttp would encode it from the dict (``FormData``:
    ``urlencode(fields, doseq=True)``, UTF-8), so aiohttp does not build, per request, a
    ``FormData`` with a multipart writer (a random boundary) that the form never uses.
    Only when the request says it is a form (twilio's headers do): aiohttp would
    otherwise take the Content-Type from the FormData."""
    if not isinstance(data, dict) or (headers or {}).get("Content-Type") != _FORM:
        return data
    return urlencode(data, doseq=True).encode()


class TwilioChannel:
    """The SMS ``Channel`` for one Twilio account, over one pooled HTTP session of up
    to ``connections`` connections (the channel's ``concurrency``)."""

    kind = ChannelKind.SMS
    time_limit: float | None = None

    def __init__(
        self,
        provider: TwilioProvider,
        *,
        template: str = DEFAULT_SMS,
        connections: int = 100,
    ) -> None:
        self.name = provider.name
        self._provider = provider
        self._connections = connections
        self._template = check_template(template)
        self._api: Version | None = None
        self._uri = f"/Accounts/{provider.account_sid}/Messages.json"
        # The form fields of Twilio's Message create that never change.
        self._sender: dict[str, str] = (
            {"From": provider.from_number}
            if provider.from_number is not None
            else {"MessagingServiceSid": str(provider.messaging_service_sid)}
        )
        self._http: _HttpClient | None = None

    async def send(self, message: OutboundMessage, /) -> SendReceipt:
        """Send one SMS.

        Raises:
            TransientDeliveryError: HTTP 5xx, Twilio 20429 (with ``retry_after``), bad
                credentials, timeouts and network errors.
            PermanentDeliveryError: invalid, unreachable or unsubscribed numbers, and a
                template that cannot be rendered.
        """
        body = render_sms(self._template, message)
        retry_after: list[str | None] = []
        token = _RETRY_AFTER.set(retry_after)
        try:
            async with asyncio.timeout(self._provider.timeout):
                created = await self._version().create_async(
                    method="POST",
                    uri=self._uri,
                    data={"To": message.recipient, **self._sender, "Body": body},
                    headers=dict(_CREATE_HEADERS),
                )
        except (TwilioRestException, TwilioServiceException) as exc:
            # Twilio's message quotes the number: keep it out of the chain.
            raise classify.twilio_error(
                exc.status,
                exc.code,
                retry_after=retry_after[-1] if retry_after else None,
            ) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise classify.exception(exc) from exc
        except TwilioException as exc:
            # E.g. an unreadable 2xx answer; its text may echo the request.
            raise classify.exception(exc) from None
        finally:
            _RETRY_AFTER.reset(token)
        return SendReceipt(
            provider=self.name,
            provider_code=str(created.get("status")),
            provider_message_id=created.get("sid"),
        )

    async def aclose(self) -> None:
        """Close the HTTP session; the next send would open a new one."""
        http, self._http, self._api = self._http, None, None
        if http is not None:
            await http.close()

    def _version(self) -> Version:
        # Built on first use: aiohttp's session must be created inside the running loop.
        # Twilio's own Version and Domain over its Client (auth, user agent, errors), not
        # ``client.messages``: that imports twilio's whole 2010 API tree (calls, SIP,
        # conferences...: about 5 MB of a replica's memory) for the one Message create.
        if self._api is None:
            provider = self._provider
            self._http = _HttpClient(self._connections)
            client = Client(
                provider.account_sid,
                provider.auth_token.get_secret_value(),
                http_client=self._http,
                environment=_NO_ENVIRONMENT,
            )
            domain = Domain(client, provider.base_url or _API_URL)
            self._api = Version(domain, _API_VERSION)
        return self._api


def build_channels(config: SmsChannelConfig) -> list[TwilioChannel]:
    """One adapter per account, in failover order; empty when the channel is disabled."""
    if not config.enabled:
        return []
    return [
        TwilioChannel(
            provider, template=config.template, connections=config.concurrency
        )
        for provider in config.providers
    ]
