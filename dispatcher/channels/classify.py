"""Error classification, in one place: transient or permanent, and why.

Every channel adapter turns what went wrong into a ``TransientDeliveryError`` or a
``PermanentDeliveryError`` through these functions, so the retry decision never depends on
which adapter failed. The messages carry codes and exception type names only: provider
answers can echo recipient addresses, so their text is never copied.
"""

import asyncio
import socket
import ssl
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Final

import aiohttp
import aiosmtplib

from dispatcher.channels.smtppipe import ReplyLost
from dispatcher.errors import (
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from dispatcher.resilience.retry import parse_retry_after

#: HTTP statuses that a later attempt may not get (RFC 9110 semantics plus common practice).
TRANSIENT_HTTP: Final = frozenset({408, 425, 429, 500, 502, 503, 504})

#: Twilio error codes that will not change on retry (https://www.twilio.com/docs/api/errors).
PERMANENT_TWILIO: Final = frozenset(
    {
        21211,  # invalid 'To' phone number
        21214,  # 'To' number cannot be reached
        21408,  # permission to send to this region not enabled
        21610,  # recipient unsubscribed (STOP)
        21612,  # 'To' number not reachable via this route
        21614,  # 'To' number is not a mobile number
        21606,  # 'From' number not SMS-capable
        21659,  # 'From' number not a valid sender
        30003,  # unreachable destination handset
        30004,  # message blocked
        30005,  # unknown destination handset
        30006,  # landline or unreachable carrier
        30007,  # filtered as spam by carrier
    }
)

#: Twilio's "Authenticate" error: wrong account SID or auth token.
TWILIO_AUTHENTICATE: Final = 20003

#: Twilio codes that mean "not now" although the HTTP status alone might say otherwise.
TRANSIENT_TWILIO: Final = frozenset(
    {
        20429,  # too many requests
        20500,  # internal server error
        20503,  # service unavailable
        30001,  # queue overflow
        30008,  # unknown error (carrier)
        30500,  # internal
    }
)


def http_status(
    status: int, *, retry_after: str | None = None, now: datetime | None = None
) -> DeliveryError:
    """Classify a non-2xx HTTP answer (webhooks, and Twilio when it has no error code).

    3xx are failures because redirects are never followed (SSRF): permanent, since the
    endpoint's configuration has to change. 410 Gone is permanent with its own class.
    """
    code = str(status)
    if status in TRANSIENT_HTTP:
        seconds = parse_retry_after(retry_after, now=now or datetime.now(UTC))
        error_class = (
            ErrorClass.RATE_LIMITED
            if status == HTTPStatus.TOO_MANY_REQUESTS
            else ErrorClass.PROVIDER_TRANSIENT
        )
        return TransientDeliveryError(
            error_class,
            f"HTTP {status}",
            provider_code=code,
            retry_after=seconds,
        )
    if 500 <= status < 600:  # noqa: PLR2004 - every other 5xx is the server's trouble too
        return TransientDeliveryError(
            ErrorClass.PROVIDER_TRANSIENT, f"HTTP {status}", provider_code=code
        )
    if 300 <= status < 400:  # noqa: PLR2004
        return PermanentDeliveryError(
            ErrorClass.REDIRECT,
            f"HTTP {status}: redirects are not followed",
            provider_code=code,
        )
    if status == HTTPStatus.GONE:
        return PermanentDeliveryError(
            ErrorClass.GONE, "HTTP 410 Gone", provider_code=code
        )
    return PermanentDeliveryError(
        ErrorClass.PROVIDER_PERMANENT, f"HTTP {status}", provider_code=code
    )


def forbidden_destination(reason: str) -> PermanentDeliveryError:
    """A destination the SSRF guard refuses: the endpoint's configuration must change.

    ``reason`` must not contain the URL or the address (``channels/ssrf.py`` keeps it so).
    """
    return PermanentDeliveryError(ErrorClass.FORBIDDEN_DESTINATION, reason)


def unknown_recipient(kind: str) -> PermanentDeliveryError:
    """A recipient this channel has no configuration for (e.g. an unknown endpoint name)."""
    return PermanentDeliveryError(
        ErrorClass.INVALID_RECIPIENT, f"{kind} recipient is not configured"
    )


def smtp_reply(code: int) -> DeliveryError:
    """Classify an SMTP reply code: 4xx transient, 5xx permanent (RFC 5321 4.2.1)."""
    if 400 <= code < 500:  # noqa: PLR2004
        return TransientDeliveryError(
            ErrorClass.PROVIDER_TRANSIENT, f"SMTP {code}", provider_code=str(code)
        )
    if 500 <= code < 600:  # noqa: PLR2004
        return PermanentDeliveryError(
            ErrorClass.PROVIDER_PERMANENT, f"SMTP {code}", provider_code=str(code)
        )
    # An out-of-protocol reply: the relay is confused, not the message.
    return TransientDeliveryError(
        ErrorClass.PROVIDER_TRANSIENT, f"SMTP {code}", provider_code=str(code)
    )


def twilio_error(
    status: int, code: int | None, *, retry_after: str | None = None
) -> DeliveryError:
    """Classify a Twilio REST error from its HTTP status and Twilio error code."""
    if status == HTTPStatus.UNAUTHORIZED or code == TWILIO_AUTHENTICATE:
        # Like an SMTP login failure: the account's configuration, not the message.
        # Transient, so the breaker opens and fails over instead of dead-lettering.
        return TransientDeliveryError(
            ErrorClass.NOT_CONFIGURED,
            f"Twilio authentication failed (HTTP {status})",
            provider_code=str(code if code is not None else status),
        )
    if code is not None:
        if code in PERMANENT_TWILIO:
            return PermanentDeliveryError(
                ErrorClass.PROVIDER_PERMANENT,
                f"Twilio {code} (HTTP {status})",
                provider_code=str(code),
            )
        if code in TRANSIENT_TWILIO:
            error_class = (
                ErrorClass.RATE_LIMITED
                if code == 20429  # noqa: PLR2004
                else ErrorClass.PROVIDER_TRANSIENT
            )
            seconds = parse_retry_after(retry_after, now=datetime.now(UTC))
            return TransientDeliveryError(
                error_class,
                f"Twilio {code} (HTTP {status})",
                provider_code=str(code),
                retry_after=seconds,
            )
    error = http_status(status, retry_after=retry_after)
    if code is not None:
        error.provider_code = str(code)
    return error


def deadline_passed(seconds: float) -> TransientDeliveryError:
    """A try ran past its deadline before the provider could have taken the message."""
    return TransientDeliveryError(
        ErrorClass.TIMEOUT, f"no answer within the {seconds:g} s deadline"
    )


def busy(seconds: float) -> TransientDeliveryError:
    """No pooled connection to the provider came free within ``seconds``.

    Nothing was sent: the attempt is given back rather than spent, and the provider's
    breaker does not count it (the relay is slow or the pool small, not failing).
    """
    return TransientDeliveryError(
        ErrorClass.BUSY, f"no pooled connection free within {seconds:g} s; not sent"
    )


def indeterminate(
    exc: BaseException, *, retry_after: float | None = None
) -> TransientDeliveryError:
    """The message was handed over and its reply never came: it may have been accepted.

    Retried, since a lost alert is worse than a duplicate, and with the same id
    (email ``Message-ID``) so that the receiver can de-duplicate; ``retry_after`` keeps
    the retry from following at once.
    """
    cause = exc.__cause__ if isinstance(exc, ReplyLost) and exc.__cause__ else exc
    return TransientDeliveryError(
        ErrorClass.INDETERMINATE,
        f"no reply after the message was handed over ({type(cause).__name__});"
        " it may have been accepted",
        retry_after=retry_after,
    )


def invalid_recipient(what: str) -> PermanentDeliveryError:
    """A recipient that the provider's library refuses to put on the wire.

    ``what`` names the kind of address; the address itself is never copied.
    """
    return PermanentDeliveryError(
        ErrorClass.INVALID_RECIPIENT, f"{what} refused by the client library"
    )


def exception(exc: BaseException) -> DeliveryError:
    """Classify an exception raised while talking to a provider.

    Anything not recognised is transient with class ``unknown``: an adapter bug or an
    unforeseen library error must cost a retry, never the delivery.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, ReplyLost):
        return indeterminate(exc)
    name = type(exc).__name__
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # Wrong credentials are the relay's configuration, not the message's fault: keep
        # the delivery, let the breaker open and fail over to the next relay.
        return TransientDeliveryError(
            ErrorClass.NOT_CONFIGURED,
            f"SMTP {exc.code}: authentication failed",
            provider_code=str(exc.code),
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return smtp_reply(exc.code)
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return smtp_reply(exc.recipients[0].code)
    if (
        isinstance(exc, aiosmtplib.SMTPNotSupported)
        or type(exc) is aiosmtplib.SMTPException
    ):
        # aiosmtplib raises the bare base class only for capability mismatches: no
        # STARTTLS (the message is then never sent in clear), no AUTH, no usable method.
        return TransientDeliveryError(ErrorClass.NOT_CONFIGURED, name)
    return TransientDeliveryError(_exception_class(exc) or ErrorClass.UNKNOWN, name)


def _exception_class(exc: BaseException) -> ErrorClass | None:
    # Order matters: the more specific library classes subclass the generic ones.
    if isinstance(exc, aiohttp.ClientConnectorDNSError | socket.gaierror):
        return ErrorClass.DNS
    if isinstance(
        exc,
        aiohttp.ClientConnectorCertificateError
        | aiohttp.ClientSSLError
        | ssl.SSLError
        | ssl.CertificateError,
    ):
        return ErrorClass.TLS
    if isinstance(
        exc,
        aiosmtplib.SMTPConnectTimeoutError
        | aiosmtplib.SMTPReadTimeoutError
        | aiosmtplib.SMTPTimeoutError
        | aiohttp.ServerTimeoutError
        | asyncio.TimeoutError
        | TimeoutError,
    ):
        return ErrorClass.TIMEOUT
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected):
        cause = exc.__cause__ or exc.__context__
        if cause is not None and cause is not exc:
            inner = _exception_class(cause)
            if inner is not None:
                return inner
        return ErrorClass.CONNECTION
    if isinstance(
        exc,
        aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError
        | ConnectionError
        | OSError,
    ):
        return ErrorClass.CONNECTION
    return None
