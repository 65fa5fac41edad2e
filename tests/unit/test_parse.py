"""The parser: every malformed kind becomes a Rejection with its reason; never an exception."""

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.events.parse import MAX_DEPTH, ParsedEvent, parse_event
from dispatcher.events.rejection import Rejection, RejectReason
from dispatcher.testing import event_bytes, make_event

LIMIT = 262_144
ENDPOINTS = frozenset({"safety-monitor"})


def _deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def _with_raw(field: str, raw_value: str) -> bytes:
    """A valid event with one field replaced by raw JSON text."""
    event = make_event()
    event[field] = "__PLACEHOLDER__"
    return json.dumps(event).replace('"__PLACEHOLDER__"', raw_value).encode()


MALFORMED: list[tuple[str, bytes, RejectReason]] = [
    ("not-json", b"this is not json", RejectReason.NOT_JSON),
    ("truncated-json", event_bytes()[:-5], RejectReason.NOT_JSON),
    ("invalid-utf8", b'{"type": "\xff\xfe"}', RejectReason.INVALID_UTF8),
    ("empty-body", b"", RejectReason.EMPTY_BODY),
    ("top-level-array", b"[1, 2, 3]", RejectReason.NOT_AN_OBJECT),
    ("top-level-string", b'"crisis"', RejectReason.NOT_AN_OBJECT),
    (
        "missing-schema-version",
        event_bytes(schema_version=None),
        RejectReason.MISSING_SCHEMA_VERSION,
    ),
    (
        "unknown-schema-version",
        event_bytes(schema_version=2),
        RejectReason.UNKNOWN_SCHEMA_VERSION,
    ),
    (
        "schema-version-as-string",
        event_bytes(schema_version="1"),
        RejectReason.UNKNOWN_SCHEMA_VERSION,
    ),
    ("missing-event-id", event_bytes(event_id=None), RejectReason.MISSING_FIELD),
    ("missing-type", event_bytes(type=None), RejectReason.MISSING_FIELD),
    ("missing-severity", event_bytes(severity=None), RejectReason.MISSING_FIELD),
    ("missing-occurred-at", event_bytes(occurred_at=None), RejectReason.MISSING_FIELD),
    ("missing-subject", event_bytes(subject=None), RejectReason.MISSING_FIELD),
    (
        "subject-without-id",
        event_bytes(subject={"name": "x"}),
        RejectReason.MISSING_FIELD,
    ),
    ("bad-event-id", event_bytes(event_id="not-a-uuid"), RejectReason.INVALID_EVENT_ID),
    ("event-id-as-number", event_bytes(event_id=12345), RejectReason.INVALID_EVENT_ID),
    (
        "bad-type-uppercase",
        event_bytes(type="Crisis.Detected"),
        RejectReason.INVALID_TYPE,
    ),
    ("bad-type-spaces", event_bytes(type="crisis detected"), RejectReason.INVALID_TYPE),
    ("type-as-number", event_bytes(type=7), RejectReason.INVALID_TYPE),
    (
        "unknown-severity",
        event_bytes(severity="apocalyptic"),
        RejectReason.INVALID_SEVERITY,
    ),
    (
        "naive-timestamp",
        event_bytes(occurred_at="2026-11-23T10:00:00"),
        RejectReason.NAIVE_TIMESTAMP,
    ),
    (
        "garbage-timestamp",
        event_bytes(occurred_at="yesterday"),
        RejectReason.INVALID_TIMESTAMP,
    ),
    ("data-not-object", event_bytes(data=[1, 2]), RejectReason.INVALID_FIELD),
    (
        "recipients-not-list",
        event_bytes(recipients="ops@example.org"),
        RejectReason.INVALID_FIELD,
    ),
    (
        "unknown-channel",
        event_bytes(recipients=[{"channel": "pigeon", "to": "x"}]),
        RejectReason.UNKNOWN_CHANNEL,
    ),
    (
        "invalid-email",
        event_bytes(recipients=[{"channel": "email", "to": "not-an-address"}]),
        RejectReason.INVALID_EMAIL,
    ),
    (
        "invalid-e164",
        event_bytes(recipients=[{"channel": "sms", "to": "555-0100"}]),
        RejectReason.INVALID_PHONE,
    ),
    (
        "unknown-endpoint",
        event_bytes(recipients=[{"channel": "webhook", "to": "nowhere"}]),
        RejectReason.UNKNOWN_ENDPOINT,
    ),
    (
        "unknown-top-level-field",
        event_bytes(priority="urgent"),
        RejectReason.UNKNOWN_FIELD,
    ),
    ("nan", _with_raw("data", '{"score": NaN}'), RejectReason.NON_FINITE_NUMBER),
    (
        "infinity",
        _with_raw("data", '{"score": -Infinity}'),
        RejectReason.NON_FINITE_NUMBER,
    ),
    (
        "number-too-large",
        _with_raw("data", '{"big": 1e400}'),
        RejectReason.NON_FINITE_NUMBER,
    ),
    (
        "negative-number-too-large",
        _with_raw("data", '{"big": [-1.5E+309]}'),
        RejectReason.NON_FINITE_NUMBER,
    ),
    (
        "number-too-large-without-exponent",
        _with_raw("data", '{"big": 1' + "0" * 400 + ".5}"),
        RejectReason.NON_FINITE_NUMBER,
    ),
    (
        "number-too-large-outside-data",
        _with_raw("subject", '{"id": "p-1", "score": 2e308}'),
        RejectReason.NON_FINITE_NUMBER,
    ),
    (
        "duplicate-keys",
        _with_raw("data", '{"a": 1, "a": 2}'),
        RejectReason.DUPLICATE_KEY,
    ),
    (
        "duplicate-top-level-key",
        b'{"type": "a", "type": "b"}',
        RejectReason.DUPLICATE_KEY,
    ),
    (
        "nul-character",
        _with_raw("data", '{"note": "a\\u0000b"}'),
        RejectReason.NUL_CHARACTER,
    ),
    ("nul-in-key", _with_raw("data", '{"a\\u0000": 1}'), RejectReason.NUL_CHARACTER),
    (
        "lone-surrogate",
        _with_raw("data", '{"note": "\\ud800"}'),
        RejectReason.LONE_SURROGATE,
    ),
    ("deep-nesting", _with_raw("data", _deep(MAX_DEPTH + 5)), RejectReason.TOO_DEEP),
    ("very-deep-nesting", _with_raw("data", _deep(40_000)), RejectReason.TOO_DEEP),
    ("too-large", event_bytes(data={"blob": "x" * LIMIT}), RejectReason.TOO_LARGE),
]


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b, r) for _, b, r in MALFORMED],
    ids=[i for i, _, _ in MALFORMED],
)
def test_malformed_is_rejected_with_reason(body: bytes, reason: RejectReason) -> None:
    """Each malformed kind is refused with its own machine-readable reason and a message."""
    outcome = parse_event(body, max_bytes=LIMIT, endpoints=ENDPOINTS)
    assert isinstance(outcome, Rejection), outcome
    assert outcome.reason is reason
    assert outcome.message


def test_rejection_message_never_repeats_the_value() -> None:
    """Reasons name the field and the rule, not the (possibly personal) value."""
    address = f"canary-pii-{uuid.uuid4()}"
    outcome = parse_event(
        event_bytes(recipients=[{"channel": "email", "to": address}]), max_bytes=LIMIT
    )
    assert isinstance(outcome, Rejection)
    assert address not in outcome.message


def test_accepted_numbers_are_stored_unchanged() -> None:
    """Numbers at the edges of a double, and integers beyond it, are stored as sent."""
    data = {
        "largest": 1.7976931348623157e308,
        "smallest": 5e-324,
        "negative": -1.7976931348623157e308,
        "integer": 10**30,
    }
    outcome = parse_event(event_bytes(data=data), max_bytes=LIMIT)
    assert isinstance(outcome, ParsedEvent)
    assert json.loads(outcome.canonical)["data"] == data


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("top", "top level: key 9 of 9"),
        ("recipient", "recipients.0: key 2 of 3"),
    ],
)
def test_unknown_key_is_located_by_position_not_name(where: str, expected: str) -> None:
    """An unknown key is reported by its position: the publisher's key name (which may be
    personal data) never appears in the message."""
    key = f"canary-pii-{uuid.uuid4()}@example.org"
    if where == "top":
        body = event_bytes(**{key: 1})
    else:
        recipient = {"channel": "email", key: "x", "to": "team@example.org"}
        body = event_bytes(recipients=[recipient])
    outcome = parse_event(body, max_bytes=LIMIT)
    assert isinstance(outcome, Rejection)
    assert outcome.reason is RejectReason.UNKNOWN_FIELD
    assert key not in outcome.message
    assert outcome.message.startswith(expected), outcome.message


def test_invalid_event_id_message_quotes_no_character() -> None:
    """pydantic quotes the offending character of a bad UUID; the message drops it."""
    outcome = parse_event(event_bytes(event_id="\u03a9-not-a-uuid"), max_bytes=LIMIT)
    assert isinstance(outcome, Rejection)
    assert outcome.reason is RejectReason.INVALID_EVENT_ID
    assert "\u03a9" not in outcome.message
    assert "`" not in outcome.message


def _padded_to(size: int) -> bytes:
    body = event_bytes(data={"pad": ""})
    pad = size - len(body)
    return event_bytes(data={"pad": "x" * pad}) if pad >= 0 else body


def test_body_of_exactly_the_limit_is_accepted() -> None:
    """The size limit is inclusive: exactly max_bytes parses, one more byte is refused."""
    body = _padded_to(LIMIT)
    assert len(body) == LIMIT
    assert isinstance(parse_event(body, max_bytes=LIMIT), ParsedEvent)
    over = parse_event(body + b" ", max_bytes=LIMIT)
    assert isinstance(over, Rejection)
    assert over.reason is RejectReason.TOO_LARGE


def test_valid_event_with_every_recipient_kind_is_accepted() -> None:
    """A full event parses, recipients are normalised and the digest is stable."""
    body = event_bytes(
        recipients=[
            {"channel": "email", "to": "Crisis-Team@Example.ORG"},
            {"channel": "sms", "to": "+15551234567"},
            {"channel": "webhook", "to": "safety-monitor"},
        ],
        correlation_id="case-42",
    )
    outcome = parse_event(body, max_bytes=LIMIT, endpoints=ENDPOINTS)
    assert isinstance(outcome, ParsedEvent)
    assert outcome.event.recipients[0].to == "Crisis-Team@example.org"
    again = parse_event(
        json.dumps(json.loads(body), indent=2).encode(),
        max_bytes=LIMIT,
        endpoints=ENDPOINTS,
    )
    assert isinstance(again, ParsedEvent)
    assert again.digest == outcome.digest, "whitespace must not change the digest"


def test_escaped_backslash_u_is_not_a_nul() -> None:
    """A literal backslash followed by u0000 is text, not a NUL character."""
    body = _with_raw("data", '{"note": "\\\\u0000"}')
    assert isinstance(parse_event(body, max_bytes=LIMIT), ParsedEvent)


def test_all_listed_kinds_are_distinct_reasons() -> None:
    """The table covers at least twenty distinct reasons."""
    assert len({r for _, _, r in MALFORMED}) >= 20


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_parse_never_raises_on_arbitrary_bytes(body: bytes) -> None:
    """parse_event is total: any bytes give a ParsedEvent or a Rejection."""
    assert isinstance(parse_event(body, max_bytes=LIMIT), ParsedEvent | Rejection)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(sorted(make_event())) | st.text(max_size=10),
        json_values,
        max_size=10,
    )
)
def test_parse_never_raises_on_mutated_envelopes(doc: dict[str, object]) -> None:
    """Envelopes with arbitrary field values are accepted or rejected, never raise."""
    body = json.dumps({**make_event(), **doc}, allow_nan=True).encode()
    assert isinstance(
        parse_event(body, max_bytes=LIMIT, endpoints=ENDPOINTS), ParsedEvent | Rejection
    )
