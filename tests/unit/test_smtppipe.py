"""smtppipe's reply parser reads a pipelined byte stream as aiosmtplib reads each reply."""

import asyncio

import aiosmtplib
import pytest
from aiosmtplib import SMTPResponse
from aiosmtplib.protocol import MAX_LINE_LENGTH, SMTPProtocol

from dispatcher.channels.smtppipe import _parse

STREAMS = {
    "envelope": b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n",
    "multi-line": b"250-first\r\n250-second \t\r\n250 third\r\n550 5.1.1 <x@y.z> unknown\r\n",
    "bare-lf-and-no-text": b"250\n251 forward\n354\r\n",
    "utf-8-and-bytes": "250 queued as Ü\r\n".encode() + b"451 \xff broken\r\n",
}


def _aiosmtplib_parse(stream: bytes) -> list[SMTPResponse]:
    """aiosmtplib's own parser, one reply at a time, as it reads them unpipelined."""
    loop = asyncio.new_event_loop()
    try:
        protocol = SMTPProtocol(loop=loop)
        protocol._buffer.extend(stream)
        replies = []
        while (reply := protocol._read_response_from_buffer()) is not None:
            replies.append(reply)
        return replies
    finally:
        loop.close()


@pytest.mark.parametrize("name", STREAMS)
def test_parses_like_aiosmtplib_wherever_the_stream_is_split(name: str) -> None:
    """Codes and texts equal aiosmtplib's, for every split of the stream into two reads."""
    stream = STREAMS[name]
    expected = _aiosmtplib_parse(stream)
    assert len(expected) >= 2
    for cut in range(len(stream) + 1):
        buffer = bytearray(stream[:cut])
        replies = _parse(buffer)
        buffer += stream[cut:]
        replies += _parse(buffer)
        assert (replies, buffer) == (expected, bytearray()), cut


def test_partial_reply_stays_buffered() -> None:
    """A reply without its last line is not returned, and is kept for the next read."""
    buffer = bytearray(b"250 ok\r\n250-more\r\n250 to c")
    assert _parse(buffer) == [SMTPResponse(250, "ok")]
    assert buffer == bytearray(b"250-more\r\n250 to c")


@pytest.mark.parametrize(
    "stream",
    [
        b"250 ok\r\nhello there\r\n",
        b"2x0 ok\r\n",
        b"250-" + b"x" * MAX_LINE_LENGTH + b"\r\n",
    ],
    ids=["not-a-code", "bad-digit", "line-too-long"],
)
def test_malformed_reply_is_invalid_response(stream: bytes) -> None:
    """A line aiosmtplib would refuse raises its error with code -1, without the line."""
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        _parse(bytearray(stream))
    assert caught.value.code == -1
    assert b"hello" not in str(caught.value).encode()


def test_endless_reply_is_bounded() -> None:
    """Continuation lines without an end are refused once past aiosmtplib's limit."""
    with pytest.raises(aiosmtplib.SMTPResponseException) as caught:
        _parse(bytearray(b"250-more\r\n" * 5000))
    assert caught.value.code == -1
