"""Error classification: transient or permanent, the error class, codes and Retry-After."""

import socket
import ssl
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import aiohttp
import aiosmtplib
import pytest
from aiohttp.client_reqrep import ConnectionKey

from dispatcher.channels import classify
from dispatcher.errors import (
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
    TransientDeliveryError,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
CANARY = "canary-pii-3f1c@example.org"
KEY = ConnectionKey("relay.example.net", 443, True, True, None, None, None)

T = TransientDeliveryError
P = PermanentDeliveryError


def _check(
    error: DeliveryError,
    kind: type[DeliveryError],
    error_class: ErrorClass,
    code: str | None = None,
) -> None:
    assert type(error) is kind
    assert error.error_class is error_class
    if code is not None:
        assert error.provider_code == code


@pytest.mark.parametrize(
    ("status", "kind", "error_class"),
    [
        pytest.param(301, P, ErrorClass.REDIRECT, id="301"),
        pytest.param(302, P, ErrorClass.REDIRECT, id="302"),
        pytest.param(307, P, ErrorClass.REDIRECT, id="307"),
        pytest.param(308, P, ErrorClass.REDIRECT, id="308"),
        pytest.param(400, P, ErrorClass.PROVIDER_PERMANENT, id="400"),
        pytest.param(401, P, ErrorClass.PROVIDER_PERMANENT, id="401"),
        pytest.param(403, P, ErrorClass.PROVIDER_PERMANENT, id="403"),
        pytest.param(404, P, ErrorClass.PROVIDER_PERMANENT, id="404"),
        pytest.param(408, T, ErrorClass.PROVIDER_TRANSIENT, id="408"),
        pytest.param(410, P, ErrorClass.GONE, id="410"),
        pytest.param(413, P, ErrorClass.PROVIDER_PERMANENT, id="413"),
        pytest.param(422, P, ErrorClass.PROVIDER_PERMANENT, id="422"),
        pytest.param(425, T, ErrorClass.PROVIDER_TRANSIENT, id="425"),
        pytest.param(429, T, ErrorClass.RATE_LIMITED, id="429"),
        pytest.param(500, T, ErrorClass.PROVIDER_TRANSIENT, id="500"),
        pytest.param(501, T, ErrorClass.PROVIDER_TRANSIENT, id="501"),
        pytest.param(502, T, ErrorClass.PROVIDER_TRANSIENT, id="502"),
        pytest.param(503, T, ErrorClass.PROVIDER_TRANSIENT, id="503"),
        pytest.param(504, T, ErrorClass.PROVIDER_TRANSIENT, id="504"),
        pytest.param(599, T, ErrorClass.PROVIDER_TRANSIENT, id="599"),
    ],
)
def test_http_status(
    status: int, kind: type[DeliveryError], error_class: ErrorClass
) -> None:
    """Each HTTP status class maps to one kind and class, with the status as code."""
    _check(classify.http_status(status), kind, error_class, str(status))


@pytest.mark.parametrize(
    ("status", "header", "seconds"),
    [
        pytest.param(429, "120", 120.0, id="429-seconds"),
        pytest.param(503, "7", 7.0, id="503-seconds"),
        pytest.param(429, "1.5", 1.5, id="fractional"),
        pytest.param(
            429,
            format_datetime(NOW + timedelta(seconds=90), usegmt=True),
            90.0,
            id="http-date",
        ),
        pytest.param(
            503,
            format_datetime(NOW - timedelta(seconds=90), usegmt=True),
            0.0,
            id="http-date-past",
        ),
        pytest.param(429, "soon", None, id="garbage"),
        pytest.param(429, "-5", None, id="negative"),
        pytest.param(429, None, None, id="absent"),
    ],
)
def test_http_retry_after(
    status: int, header: str | None, seconds: float | None
) -> None:
    """Retry-After is read as delta-seconds or HTTP-date on transient statuses."""
    error = classify.http_status(status, retry_after=header, now=NOW)
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == seconds


def test_http_retry_after_ignored_on_permanent() -> None:
    """A permanent status carries no retry hint, whatever the header says."""
    error = classify.http_status(400, retry_after="30", now=NOW)
    assert isinstance(error, PermanentDeliveryError)
    assert not hasattr(error, "retry_after")


@pytest.mark.parametrize(
    ("code", "kind", "error_class"),
    [
        pytest.param(421, T, ErrorClass.PROVIDER_TRANSIENT, id="421"),
        pytest.param(450, T, ErrorClass.PROVIDER_TRANSIENT, id="450"),
        pytest.param(451, T, ErrorClass.PROVIDER_TRANSIENT, id="451"),
        pytest.param(452, T, ErrorClass.PROVIDER_TRANSIENT, id="452"),
        pytest.param(499, T, ErrorClass.PROVIDER_TRANSIENT, id="499"),
        pytest.param(500, P, ErrorClass.PROVIDER_PERMANENT, id="500"),
        pytest.param(550, P, ErrorClass.PROVIDER_PERMANENT, id="550"),
        pytest.param(552, P, ErrorClass.PROVIDER_PERMANENT, id="552"),
        pytest.param(553, P, ErrorClass.PROVIDER_PERMANENT, id="553"),
        pytest.param(554, P, ErrorClass.PROVIDER_PERMANENT, id="554"),
        pytest.param(599, P, ErrorClass.PROVIDER_PERMANENT, id="599"),
        pytest.param(0, T, ErrorClass.PROVIDER_TRANSIENT, id="zero"),
        pytest.param(250, T, ErrorClass.PROVIDER_TRANSIENT, id="2xx-as-error"),
        pytest.param(354, T, ErrorClass.PROVIDER_TRANSIENT, id="3xx"),
        pytest.param(600, T, ErrorClass.PROVIDER_TRANSIENT, id="600"),
        pytest.param(999, T, ErrorClass.PROVIDER_TRANSIENT, id="999"),
    ],
)
def test_smtp_reply(
    code: int, kind: type[DeliveryError], error_class: ErrorClass
) -> None:
    """SMTP 4xx is transient, 5xx permanent, anything out of range transient."""
    _check(classify.smtp_reply(code), kind, error_class, str(code))


@pytest.mark.parametrize(
    ("status", "code", "kind", "error_class", "provider_code"),
    [
        pytest.param(400, 21211, P, ErrorClass.PROVIDER_PERMANENT, "21211", id="21211"),
        pytest.param(400, 21614, P, ErrorClass.PROVIDER_PERMANENT, "21614", id="21614"),
        pytest.param(400, 21610, P, ErrorClass.PROVIDER_PERMANENT, "21610", id="21610"),
        pytest.param(400, 30007, P, ErrorClass.PROVIDER_PERMANENT, "30007", id="30007"),
        pytest.param(429, 20429, T, ErrorClass.RATE_LIMITED, "20429", id="20429"),
        pytest.param(500, 20500, T, ErrorClass.PROVIDER_TRANSIENT, "20500", id="20500"),
        pytest.param(503, 20503, T, ErrorClass.PROVIDER_TRANSIENT, "20503", id="20503"),
        pytest.param(400, 30001, T, ErrorClass.PROVIDER_TRANSIENT, "30001", id="30001"),
        pytest.param(
            503, None, T, ErrorClass.PROVIDER_TRANSIENT, "503", id="503-nocode"
        ),
        pytest.param(502, 503, T, ErrorClass.PROVIDER_TRANSIENT, "503", id="5xx-code"),
        pytest.param(429, None, T, ErrorClass.RATE_LIMITED, "429", id="429-nocode"),
        pytest.param(
            400, 99999, P, ErrorClass.PROVIDER_PERMANENT, "99999", id="unknown-4xx"
        ),
        pytest.param(
            500, 99999, T, ErrorClass.PROVIDER_TRANSIENT, "99999", id="unknown-5xx"
        ),
        pytest.param(401, 20003, T, ErrorClass.NOT_CONFIGURED, "20003", id="auth"),
        pytest.param(401, None, T, ErrorClass.NOT_CONFIGURED, "401", id="401-nocode"),
        pytest.param(404, 20404, P, ErrorClass.PROVIDER_PERMANENT, "20404", id="404"),
    ],
)
def test_twilio_error(
    status: int,
    code: int | None,
    kind: type[DeliveryError],
    error_class: ErrorClass,
    provider_code: str,
) -> None:
    """Twilio's error code decides first; the HTTP status when the code is unknown."""
    _check(classify.twilio_error(status, code), kind, error_class, provider_code)


@pytest.mark.parametrize(
    ("status", "code"),
    [pytest.param(429, 20429, id="20429"), pytest.param(503, None, id="503")],
)
def test_twilio_retry_after(status: int, code: int | None) -> None:
    """Retry-After reaches the transient Twilio errors."""
    error = classify.twilio_error(status, code, retry_after="42")
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == 42.0


def _with_cause(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def _refused_rcpt(code: int) -> aiosmtplib.SMTPRecipientsRefused:
    return aiosmtplib.SMTPRecipientsRefused(
        [aiosmtplib.SMTPRecipientRefused(code, f"5.1.1 <{CANARY}> unknown", CANARY)]
    )


@pytest.mark.parametrize(
    ("exc", "kind", "error_class"),
    [
        pytest.param(TimeoutError(), T, ErrorClass.TIMEOUT, id="TimeoutError"),
        pytest.param(
            ConnectionRefusedError(111, "refused"),
            T,
            ErrorClass.CONNECTION,
            id="refused",
        ),
        pytest.param(
            ConnectionResetError(104, "reset"), T, ErrorClass.CONNECTION, id="reset"
        ),
        pytest.param(BrokenPipeError(32, "pipe"), T, ErrorClass.CONNECTION, id="pipe"),
        pytest.param(OSError(113, "no route"), T, ErrorClass.CONNECTION, id="oserror"),
        pytest.param(
            socket.gaierror(-2, "Name or service not known"),
            T,
            ErrorClass.DNS,
            id="gaierror",
        ),
        pytest.param(
            ssl.SSLCertVerificationError(1, "certificate verify failed"),
            T,
            ErrorClass.TLS,
            id="ssl-verify",
        ),
        pytest.param(ssl.SSLError(1, "handshake failure"), T, ErrorClass.TLS, id="ssl"),
        pytest.param(
            aiohttp.ClientConnectorDNSError(KEY, socket.gaierror(-2, "nope")),
            T,
            ErrorClass.DNS,
            id="aiohttp-dns",
        ),
        pytest.param(
            aiohttp.ClientConnectorCertificateError(
                KEY, ssl.SSLCertVerificationError(1, "verify failed")
            ),
            T,
            ErrorClass.TLS,
            id="aiohttp-cert",
        ),
        pytest.param(
            aiohttp.ClientConnectorError(KEY, ConnectionRefusedError(111, "refused")),
            T,
            ErrorClass.CONNECTION,
            id="aiohttp-connector",
        ),
        pytest.param(
            aiohttp.ServerDisconnectedError(),
            T,
            ErrorClass.CONNECTION,
            id="aiohttp-disconnected",
        ),
        pytest.param(
            aiohttp.ServerTimeoutError(), T, ErrorClass.TIMEOUT, id="aiohttp-timeout"
        ),
        pytest.param(
            aiohttp.ClientPayloadError(), T, ErrorClass.CONNECTION, id="aiohttp-payload"
        ),
        pytest.param(
            aiosmtplib.SMTPConnectError("Error connecting to relay on port 25"),
            T,
            ErrorClass.CONNECTION,
            id="smtp-connect",
        ),
        pytest.param(
            _with_cause(
                aiosmtplib.SMTPConnectError("connect"), ConnectionRefusedError(111, "x")
            ),
            T,
            ErrorClass.CONNECTION,
            id="smtp-connect-refused",
        ),
        pytest.param(
            _with_cause(
                aiosmtplib.SMTPConnectError("connect"), socket.gaierror(-2, "x")
            ),
            T,
            ErrorClass.DNS,
            id="smtp-connect-dns",
        ),
        pytest.param(
            _with_cause(
                aiosmtplib.SMTPServerDisconnected("lost"),
                ssl.SSLCertVerificationError(1, "verify failed"),
            ),
            T,
            ErrorClass.TLS,
            id="smtp-disconnected-tls",
        ),
        pytest.param(
            aiosmtplib.SMTPConnectTimeoutError("timed out"),
            T,
            ErrorClass.TIMEOUT,
            id="smtp-connect-timeout",
        ),
        pytest.param(
            aiosmtplib.SMTPReadTimeoutError("timed out"),
            T,
            ErrorClass.TIMEOUT,
            id="smtp-read-timeout",
        ),
        pytest.param(
            aiosmtplib.SMTPServerDisconnected("lost"),
            T,
            ErrorClass.CONNECTION,
            id="smtp-disconnected",
        ),
        pytest.param(
            aiosmtplib.SMTPResponseException(550, "no"),
            P,
            ErrorClass.PROVIDER_PERMANENT,
            id="smtp-550",
        ),
        pytest.param(
            aiosmtplib.SMTPResponseException(451, "later"),
            T,
            ErrorClass.PROVIDER_TRANSIENT,
            id="smtp-451",
        ),
        pytest.param(
            aiosmtplib.SMTPDataError(554, "rejected"),
            P,
            ErrorClass.PROVIDER_PERMANENT,
            id="smtp-data-554",
        ),
        pytest.param(
            _refused_rcpt(550), P, ErrorClass.PROVIDER_PERMANENT, id="smtp-rcpts-550"
        ),
        pytest.param(
            _refused_rcpt(450), T, ErrorClass.PROVIDER_TRANSIENT, id="smtp-rcpts-450"
        ),
        pytest.param(
            aiosmtplib.SMTPAuthenticationError(535, "bad credentials"),
            T,
            ErrorClass.NOT_CONFIGURED,
            id="smtp-auth",
        ),
        pytest.param(
            aiosmtplib.SMTPNotSupported("no STARTTLS"),
            T,
            ErrorClass.NOT_CONFIGURED,
            id="smtp-unsupported",
        ),
        pytest.param(
            aiosmtplib.SMTPException(
                "SMTP STARTTLS extension not supported by server."
            ),
            T,
            ErrorClass.NOT_CONFIGURED,
            id="smtp-no-starttls",
        ),
        pytest.param(ValueError("what"), T, ErrorClass.UNKNOWN, id="ValueError"),
        pytest.param(RuntimeError("bug"), T, ErrorClass.UNKNOWN, id="RuntimeError"),
    ],
)
def test_exception(
    exc: BaseException, kind: type[DeliveryError], error_class: ErrorClass
) -> None:
    """Real exception instances map to the right kind and class."""
    _check(classify.exception(exc), kind, error_class)


def test_exception_passes_delivery_errors_through() -> None:
    """An error that is already classified comes back unchanged."""
    error = PermanentDeliveryError(ErrorClass.TEMPLATE, "bad template")
    assert classify.exception(error) is error


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(_refused_rcpt(550), id="recipients-refused"),
        pytest.param(
            aiosmtplib.SMTPResponseException(550, f"5.1.1 <{CANARY}>: unknown"),
            id="reply",
        ),
        pytest.param(
            aiosmtplib.SMTPRecipientRefused(550, "unknown", CANARY), id="recipient"
        ),
        pytest.param(ValueError(f"bad address {CANARY}"), id="value-error"),
    ],
)
def test_exception_never_copies_text(exc: BaseException) -> None:
    """A relay's text can quote the address; the classified message never does."""
    assert CANARY not in str(classify.exception(exc))


def test_invalid_recipient() -> None:
    """A recipient the library refuses is permanent and named only by kind."""
    error = classify.invalid_recipient("email address")
    _check(error, P, ErrorClass.INVALID_RECIPIENT)
    assert "email address" in str(error)
