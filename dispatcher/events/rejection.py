"""Why a message was not accepted as an event: a value, stored, never an exception."""

from dataclasses import dataclass
from enum import StrEnum


class RejectReason(StrEnum):
    """Machine-readable reason codes of ``rejected_messages.reason``."""

    #: The body is empty.
    EMPTY_BODY = "empty_body"
    #: The body is larger than ``ingest.max_body_bytes``.
    TOO_LARGE = "too_large"
    #: The body is not valid UTF-8.
    INVALID_UTF8 = "invalid_utf8"
    #: The body is not JSON.
    NOT_JSON = "not_json"
    #: An object has the same key twice.
    DUPLICATE_KEY = "duplicate_key"
    #: ``NaN``, ``Infinity`` or ``-Infinity``, which JSON does not allow, or a number too
    #: large for a double (``1e400``), which would be stored as ``null``.
    NON_FINITE_NUMBER = "non_finite_number"
    #: A string holds ``\\u0000``, which PostgreSQL ``jsonb`` cannot store.
    NUL_CHARACTER = "nul_character"
    #: A string holds an unpaired UTF-16 surrogate.
    LONE_SURROGATE = "lone_surrogate"
    #: Objects or arrays nested deeper than the limit.
    TOO_DEEP = "too_deep"
    #: The top-level JSON value is not an object.
    NOT_AN_OBJECT = "not_an_object"
    #: ``schema_version`` is absent.
    MISSING_SCHEMA_VERSION = "missing_schema_version"
    #: ``schema_version`` is not one this dispatcher knows.
    UNKNOWN_SCHEMA_VERSION = "unknown_schema_version"
    #: A required field is absent.
    MISSING_FIELD = "missing_field"
    #: A field that the contract does not define.
    UNKNOWN_FIELD = "unknown_field"
    #: ``event_id`` is not a UUID.
    INVALID_EVENT_ID = "invalid_event_id"
    #: ``type`` is not a dotted lowercase name.
    INVALID_TYPE = "invalid_type"
    #: ``severity`` is not one of the five.
    INVALID_SEVERITY = "invalid_severity"
    #: ``occurred_at`` is not an RFC 3339 timestamp.
    INVALID_TIMESTAMP = "invalid_timestamp"
    #: ``occurred_at`` has no UTC offset.
    NAIVE_TIMESTAMP = "naive_timestamp"
    #: A recipient names a channel that does not exist.
    UNKNOWN_CHANNEL = "unknown_channel"
    #: An email recipient is not a valid address.
    INVALID_EMAIL = "invalid_email"
    #: An SMS recipient is not an E.164 number.
    INVALID_PHONE = "invalid_phone"
    #: A webhook recipient names no configured endpoint.
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    #: Any other field with a wrong type or value.
    INVALID_FIELD = "invalid_field"
    #: PostgreSQL refused the event even though it validated (kept apart from its batch).
    STORAGE_REJECTED = "storage_rejected"
    #: The broker dead-lettered the message (delivery limit) and it is not a valid event.
    DEAD_LETTERED = "dead_lettered"
    #: A bug: the parser raised. The message is kept so that nothing is lost.
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that is not a valid event, with the reason it was refused."""

    reason: RejectReason
    #: Readable detail: the field and the rule, never the offending value.
    message: str
