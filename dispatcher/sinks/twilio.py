"""A Twilio-compatible Messages endpoint on loopback that records what it accepts and
misbehaves on demand.

Only ``POST /2010-04-01/Accounts/{sid}/Messages.json``, answered the way Twilio does, so
the real ``twilio`` client can be pointed at it (``client.api.base_url``).
"""

import asyncio
import base64
import itertools
import re
import secrets
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final

from aiohttp import hdrs, web

from dispatcher.sinks.http import HttpSink

_API = "/2010-04-01"
_MESSAGES: Final = re.compile(_API + r"/Accounts/([^/]+)/Messages\.json")


@dataclass(frozen=True, slots=True)
class ReceivedSms:
    """One accepted message; numbers and body are kept out of ``repr``."""

    sid: str
    account_sid: str
    messaging_service_sid: str | None
    #: ``time.time()`` when the request was answered.
    received_at: float
    to: str = field(repr=False)
    from_: str | None = field(repr=False)
    body: str = field(repr=False)


@dataclass(slots=True)
class _Fault:
    status: int
    code: int | None
    times: int | None
    retry_after: str | None


class TwilioSink(HttpSink[ReceivedSms]):
    """Twilio-like HTTP server on ``127.0.0.1``; ``port=0`` picks a free port.

    Faults, switchable at any time:
    - ``fail(status, code=None, times=None, retry_after=None)``: a Twilio error answer
      for the next ``times`` requests, or always;
    - ``delay = seconds``: sleep before answering (``float("inf")``: hang);
    - ``await go_down()`` / ``await come_up()``: stop listening (connection refused).
    Requests whose Basic auth is not ``account_sid:auth_token`` get Twilio's 401/20003.
    """

    def __init__(self, account_sid: str, auth_token: str, *, port: int = 0) -> None:
        super().__init__(host="127.0.0.1", port=port)
        self.account_sid = account_sid
        #: Requests that reached the handler, including refused ones.
        self.requests = 0
        self.delay: float | None = None
        token = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._authorization = f"Basic {token}".encode()
        self._fault: _Fault | None = None
        self._peers: set[object] = set()
        # Unique per sink, not secret: a random half and a counter, no syscall per SID.
        self._sid_prefix = "SM" + secrets.token_hex(8)
        self._sids = itertools.count()
        self._date = (0, "")

    @property
    def connections(self) -> int:
        """Distinct client connections that sent requests (keep-alive reuse keeps it low)."""
        return len(self._peers)

    @property
    def base_url(self) -> str:
        """What to give ``TwilioProvider.base_url``."""
        return f"http://{self.host}:{self.port}"

    def fail(
        self,
        status: int,
        code: int | None = None,
        *,
        times: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        """Answer with a Twilio error for the next ``times`` requests (``None``: always)."""
        self._fault = _Fault(status, code, times, retry_after)

    def heal(self) -> None:
        self._fault = None
        self.delay = None

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        route = _MESSAGES.fullmatch(request.path)
        if route is None:
            return web.Response(status=404, text="404: Not Found")
        if request.method != hdrs.METH_POST:
            return web.Response(status=405, headers={hdrs.ALLOW: hdrs.METH_POST})
        return await self._create(request, route[1])

    async def _create(self, request: web.BaseRequest, sid: str) -> web.Response:
        self.requests += 1
        if request.transport is not None:
            self._peers.add(request.transport.get_extra_info("peername"))
        if self.delay is not None:
            await asyncio.sleep(self.delay)
        if not self._authorized(request, sid):
            return _error(401, 20003, "Authenticate")
        fault = self._take_fault()
        if fault is not None:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            if fault.code is None:
                return web.Response(status=fault.status, text="fault injected")
            return _error(fault.status, fault.code, "fault injected", headers)
        form = await request.post()
        to, sender, service = (
            form.get("To"),
            form.get("From"),
            form.get("MessagingServiceSid"),
        )
        body = form.get("Body")
        if not isinstance(to, str) or not isinstance(body, str):
            return _error(400, 21604, "A 'To' phone number and a 'Body' are required.")
        if not isinstance(sender, str) and not isinstance(service, str):
            return _error(400, 21603, "A 'From' or 'MessagingServiceSid' is required.")
        sms = ReceivedSms(
            sid=f"{self._sid_prefix}{next(self._sids):016x}",
            account_sid=self.account_sid,
            messaging_service_sid=service if isinstance(service, str) else None,
            received_at=time.time(),
            to=to,
            from_=sender if isinstance(sender, str) else None,
            body=body,
        )
        self.received.append(sms)
        return web.json_response(_resource(sms, self._http_date()), status=201)

    def _authorized(self, request: web.BaseRequest, sid: str) -> bool:
        # Twilio's clients all send the same Basic header for an account.
        header = request.headers.get(hdrs.AUTHORIZATION, "")
        return sid == self.account_sid and secrets.compare_digest(
            header.encode("utf-8", "surrogateescape"), self._authorization
        )

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]

    def _take_fault(self) -> _Fault | None:
        fault = self._fault
        if fault is not None and fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                self._fault = None
        return fault


def _error(
    status: int, code: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    payload = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(payload, status=status, headers=headers)


def _resource(sms: ReceivedSms, now: str) -> dict[str, Any]:
    return {
        "sid": sms.sid,
        "account_sid": sms.account_sid,
        "messaging_service_sid": sms.messaging_service_sid,
        "to": sms.to,
        "from": sms.from_,
        "body": sms.body,
        "status": "accepted" if sms.messaging_service_sid else "queued",
        "num_segments": str(max(1, -(-len(sms.body) // 153))),
        "direction": "outbound-api",
        "api_version": "2010-04-01",
        "date_created": now,
        "date_updated": now,
        "date_sent": None,
        "error_code": None,
        "error_message": None,
        "price": None,
        "price_unit": "USD",
        "uri": f"{_API}/Accounts/{sms.account_sid}/Messages/{sms.sid}.json",
    }
