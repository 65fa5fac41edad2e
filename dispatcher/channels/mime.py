"""Plain-text alert emails written straight to bytes: the email channel's hot path.

The stdlib's ``EmailMessage`` under the default policy parses every header it is given
and re-folds it when the message is flattened; in the end-to-end benchmark that was about
40 % of a replica's CPU. The messages this channel sends always have the same shape (a
handful of headers, one ``text/plain`` part), so they are written out here directly:

- 7-bit clean: a subject that is not plain printable ASCII becomes RFC 2047 encoded-words
  (UTF-8, base64); a body that is not plain ASCII, or has a line over 998 octets, is
  base64. No ``8BITMIME`` or ``SMTPUTF8`` is ever needed.
- CRLF line ends, no line over 998 octets, header lines folded under 78 where the words
  allow.
- No header injection: only printable ASCII reaches a header unencoded, and a subject or
  address with a line break is refused (``render_email`` already folds subjects onto one
  line, and ingest validates addresses).

Anything outside that shape (an address with non-ASCII characters, which needs SMTPUTF8)
is left to the stdlib by the caller: see ``is_plain_address``. ``tests/unit/test_mime.py``
parses the output with the stdlib's strict parser and compares it with ``EmailMessage``.
"""

import base64
import re
from email.utils import formatdate
from typing import Final
from uuid import UUID

#: RFC 5322's hard limit for a line, without its CRLF.
MAX_LINE: Final = 998
#: Soft limit for header lines (RFC 5322 2.1.1).
FOLD_AT: Final = 78
# UTF-8 octets per encoded-word: "=?utf-8?b?" + 56 base64 chars + "?=" = 68 characters,
# so "Subject: " plus one word stays under 78.
_WORD_OCTETS: Final = 42

_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_ADDRESS = re.compile(r"[\x21-\x7e]{3,320}")


def is_plain_address(address: str) -> bool:
    """True when ``address`` can go into a header and the envelope as it is (ASCII)."""
    return _ADDRESS.fullmatch(address) is not None


def plain_text_email(
    *,
    sender: str,
    recipient: str,
    subject: str,
    body: str,
    delivery_id: UUID,
    event_id: UUID,
) -> bytes:
    """One ``text/plain`` UTF-8 email as the bytes of an SMTP ``DATA`` payload.

    ``Message-ID`` is derived from ``delivery_id``: the same on every retry, so a receiver
    that got an earlier attempt can de-duplicate.

    Raises:
        ValueError: ``sender`` or ``recipient`` is not a plain address, or ``subject``
            holds a line break.
    """
    if not (is_plain_address(sender) and is_plain_address(recipient)):
        raise ValueError("not a plain ASCII address")
    if "\r" in subject or "\n" in subject:
        raise ValueError("a subject is one line")
    cte, payload = _body(body)
    head = (
        f"From: {sender}\r\n"
        f"To: {recipient}\r\n"
        f"Subject: {_subject(subject)}\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{delivery_id}@dispatcher>\r\n"
        f"X-Dispatcher-Event-Id: {event_id}\r\n"
        f"X-Dispatcher-Delivery-Id: {delivery_id}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + payload


def _subject(subject: str) -> str:
    # "=?" in plain text would be read back as the start of an encoded-word; spaces at
    # the ends or in a row may not survive unfolding, while encoded-words keep them.
    if (
        _PRINTABLE.fullmatch(subject)
        and "=?" not in subject
        and "  " not in subject
        and subject == subject.strip(" ")
    ):
        return _fold(subject, len("Subject: "))
    return _encoded_words(subject)


def _fold(value: str, used: int) -> str:
    """Break before spaces so lines stay under ``FOLD_AT`` where the words allow.

    ``value`` has single spaces between words and none at its ends. Unfolding (RFC 5322
    2.2.3) removes each inserted CRLF and keeps the space after it, so the value reads
    back unchanged. A word longer than a line stays whole: under the 998 limit, since a
    subject is at most a few hundred characters.
    """
    if used + len(value) <= FOLD_AT:
        return value
    words = value.split(" ")
    lines: list[str] = []
    line = words[0]
    for word in words[1:]:
        if used + len(line) + 1 + len(word) <= FOLD_AT:
            line = f"{line} {word}"
        else:
            lines.append(line)
            line, used = word, 1
    lines.append(line)
    return "\r\n ".join(lines)


def _encoded_words(value: str) -> str:
    """RFC 2047 ``B`` encoded-words, each whole characters of at most 42 UTF-8 octets.

    Whitespace between adjacent encoded-words is dropped when they are decoded, so every
    character of ``value``, spaces included, is inside a word.
    """
    words: list[str] = []
    chunk = bytearray()
    for char in value:
        octets = char.encode("utf-8")
        if len(chunk) + len(octets) > _WORD_OCTETS:
            words.append(_word(chunk))
            chunk.clear()
        chunk += octets
    if chunk or not words:
        words.append(_word(chunk))
    return "\r\n ".join(words)


def _word(octets: bytes | bytearray) -> str:
    return f"=?utf-8?b?{base64.b64encode(octets).decode('ascii')}?="


def _body(body: str) -> tuple[str, bytes]:
    """Content-Transfer-Encoding and payload; line ends normalised, a final one added."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    lines = text.split("\n")
    if text.isascii() and "\0" not in text and max(map(len, lines)) <= MAX_LINE:
        return "7bit", "\r\n".join(lines).encode("ascii")
    # As the stdlib does: the text's own "\n" line ends inside the base64.
    return "base64", base64.encodebytes(text.encode("utf-8")).replace(b"\n", b"\r\n")
