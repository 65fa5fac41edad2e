"""SmtpSink's shortcut for MAIL/RCPT paths answers what aiosmtpd's own parser does."""

import pytest
from aiosmtpd.smtp import SMTP

from dispatcher.sinks.smtp import SmtpSink, _Handler, _Tracked

PATHS = [
    "<crisis-team@example.org>",
    "<dispatcher@example.org> SIZE=1234 BODY=8BITMIME",
    "<a.b+c@x.y>  SMTPUTF8",
    "<a@b.org> trailing ",
    "<>",
    "",
    "< a@b.org>",
    '<"quoted local"@example.org>',
    "<a@[127.0.0.1]>",
    "<a..b@example.org>",
    "<.a@example.org>",
    "<a@example.org",
    "a@example.org",
    "<a@-example.org>",
    "<" + "x" * 80 + "@example.org>",
]


@pytest.mark.parametrize("arg", PATHS, ids=range(len(PATHS)))
@pytest.mark.parametrize("local_part_limit", [0, 64], ids=["no-limit", "limit-64"])
async def test_paths_parse_like_aiosmtpd(arg: str, local_part_limit: int) -> None:
    """Address and parameters match aiosmtpd's RFC 5322 parse, refusals included."""
    sink = SmtpSink()
    protocol = _Tracked(sink, _Handler(sink), hostname="sink.localhost")
    protocol.local_part_limit = local_part_limit
    assert protocol._getaddr(arg) == SMTP._getaddr(protocol, arg)
