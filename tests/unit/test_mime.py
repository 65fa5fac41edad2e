"""The email writer against the stdlib's strict parser and its own ``EmailMessage``."""

import email
import email.policy
import re
import uuid
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.channels.mime import (
    FOLD_AT,
    MAX_LINE,
    is_plain_address,
    plain_text_email,
)

DELIVERY = uuid.UUID("0b7c5a4e-3f0e-4b8e-9a61-1d2f3c4b5a69")
EVENT = uuid.UUID("5f0c2a9d-8d1b-4c3e-b7a2-9e8f7d6c5b4a")


def _write(subject: str = "[critical] crisis.detected", body: str = "x\n") -> bytes:
    return plain_text_email(
        sender="alerts@dispatcher.example",
        recipient="crisis-team@example.org",
        subject=subject,
        body=body,
        delivery_id=DELIVERY,
        event_id=EVENT,
    )


def _parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.strict)
    assert isinstance(parsed, EmailMessage)
    assert parsed.defects == []
    for part in parsed.walk():
        assert part.defects == []
    return parsed


def _wire_rules(raw: bytes) -> None:
    """7-bit, CRLF only, no line over 998 octets."""
    assert raw.isascii()
    assert re.search(rb"(?<!\r)\n|\r(?!\n)", raw) is None
    assert "\0" not in raw.decode("ascii")
    for line in raw.split(b"\r\n"):
        assert len(line) <= MAX_LINE


def _header_lines(raw: bytes) -> list[bytes]:
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def _content(message: EmailMessage) -> str:
    """The decoded text with local line ends (7bit parts keep the wire's CRLF)."""
    text = message.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def _normalised_body(body: str) -> str:
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


# What render_email hands over: one line, words separated by single spaces.
subjects = st.text(max_size=200).map(lambda s: " ".join(s.split()))
bodies = st.text(max_size=3000)


@settings(max_examples=200, deadline=None)
@given(subject=subjects, body=bodies)
def test_reads_back_exactly(subject: str, body: str) -> None:
    """Any subject and body, parsed by the stdlib, read back as written, with no defect."""
    raw = _write(subject, body)
    _wire_rules(raw)
    parsed = _parse(raw)
    assert parsed["Subject"] == subject
    assert _content(parsed) == _normalised_body(body)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content_charset() == "utf-8"


@settings(max_examples=100, deadline=None)
@given(subject=st.text(max_size=200).filter(lambda s: "\r" not in s and "\n" not in s))
def test_any_one_line_subject_reads_back(subject: str) -> None:
    """Leading, trailing and repeated spaces, tabs and controls survive too (encoded)."""
    raw = _write(subject)
    _wire_rules(raw)
    assert _parse(raw)["Subject"] == subject


@settings(max_examples=100, deadline=None)
@given(subject=subjects, body=bodies)
def test_same_message_as_the_stdlib(subject: str, body: str) -> None:
    """Header names and decoded values, and the content, equal EmailMessage's."""
    ours = _parse(_write(subject, body))
    theirs = EmailMessage()
    theirs["From"] = "alerts@dispatcher.example"
    theirs["To"] = "crisis-team@example.org"
    theirs["Subject"] = subject
    theirs["Date"] = ours["Date"]
    theirs["Message-ID"] = f"<{DELIVERY}@dispatcher>"
    theirs["X-Dispatcher-Event-Id"] = str(EVENT)
    theirs["X-Dispatcher-Delivery-Id"] = str(DELIVERY)
    theirs.set_content(body)
    reference = _parse(theirs.as_bytes(policy=email.policy.SMTP))
    skip = {"content-transfer-encoding"}  # chosen differently, decoded the same
    assert sorted(
        (k.lower(), str(v)) for k, v in ours.items() if k.lower() not in skip
    ) == sorted(
        (k.lower(), str(v)) for k, v in reference.items() if k.lower() not in skip
    )
    assert _content(ours) == _content(reference)


def test_plain_subject_is_folded_under_78() -> None:
    subject = " ".join(["word"] * 40)
    raw = _write(subject)
    subject_lines = [
        line for line in _header_lines(raw) if line.startswith((b"Subject:", b" "))
    ]
    assert len(subject_lines) > 1
    assert all(len(line) <= FOLD_AT for line in subject_lines)
    assert _parse(raw)["Subject"] == subject


def test_non_ascii_subject_is_encoded_words_under_78() -> None:
    subject = "Krise erkannt: Überprüfung für 東京 " * 4
    subject = " ".join(subject.split())
    raw = _write(subject)
    lines = [
        line for line in _header_lines(raw) if line.startswith((b"Subject:", b" "))
    ]
    assert all(b"=?utf-8?b?" in line for line in lines)
    assert all(len(line) <= FOLD_AT for line in lines)
    assert _parse(raw)["Subject"] == subject


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8?b?SGk=?=",  # would be decoded if left bare
        "tab\there",
        "bell\x07",
        " leading",
        "trailing ",
        "two  spaces",
    ],
)
def test_subjects_that_must_be_encoded_read_back(subject: str) -> None:
    raw = _write(subject)
    assert b"=?utf-8?b?" in raw
    assert _parse(raw)["Subject"] == subject


@pytest.mark.parametrize("subject", ["a\r\nBcc: x@evil.example", "a\nb", "a\rb"])
def test_line_break_in_subject_is_refused(subject: str) -> None:
    """Header injection cannot pass: the writer refuses rather than writes a new line."""
    with pytest.raises(ValueError, match="one line"):
        _write(subject)


@pytest.mark.parametrize(
    "address",
    [
        "x@example.org\r\nRCPT TO:<y@example.org>",
        "x@example.org\nBcc: y@example.org",
        "a b@example.org",
        "ünïcode@example.org",
        "",
    ],
)
def test_only_plain_addresses_are_written(address: str) -> None:
    assert not is_plain_address(address)
    with pytest.raises(ValueError, match="plain ASCII address"):
        plain_text_email(
            sender="alerts@dispatcher.example",
            recipient=address,
            subject="s",
            body="b",
            delivery_id=DELIVERY,
            event_id=EVENT,
        )


def test_body_with_a_long_line_is_base64() -> None:
    body = "a" * (MAX_LINE + 1)
    raw = _write(body=body)
    _wire_rules(raw)
    assert b"Content-Transfer-Encoding: base64" in raw
    assert _content(_parse(raw)) == body + "\n"


def test_plain_ascii_body_is_7bit_and_readable() -> None:
    raw = _write(body="Event: crisis.detected\nSeverity: critical")
    assert b"Content-Transfer-Encoding: 7bit" in raw
    assert raw.endswith(b"\r\n\r\nEvent: crisis.detected\r\nSeverity: critical\r\n")


def test_headers_carry_the_ids() -> None:
    parsed = _parse(_write())
    assert parsed["Message-ID"] == f"<{DELIVERY}@dispatcher>"
    assert parsed["X-Dispatcher-Delivery-Id"] == str(DELIVERY)
    assert parsed["X-Dispatcher-Event-Id"] == str(EVENT)
    assert parsed["MIME-Version"] == "1.0"
    assert parsed["Date"].datetime is not None
