"""Masks for health data shown to tokens without ``audit:read-pii``. Pure.

A mask keeps just enough to tell records apart in a listing (``j***@e***.org``,
``+44*******123``) and nothing that identifies the person.
"""

from typing import Any

MASK = "***"
#: Shorter numbers and subject ids are masked whole.
_MIN_PHONE_DIGITS = 7
_MIN_SUBJECT_CHARS = 6


def mask_email(address: str) -> str:
    """``jane.doe@example.org`` -> ``j***@e***.org``."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return MASK
    name, dot, tld = domain.rpartition(".")
    masked_domain = f"{name[:1]}{MASK}.{tld}" if dot and name else f"{domain[:1]}{MASK}"
    return f"{local[:1]}{MASK}@{masked_domain}"


def mask_phone(number: str) -> str:
    """``+447700900123`` -> ``+44*******123``: country code and last three digits."""
    digits = number.removeprefix("+")
    if len(digits) < _MIN_PHONE_DIGITS:
        return "+" + "*" * len(digits)
    return "+" + digits[:2] + "*" * (len(digits) - 5) + digits[-3:]


def mask_subject(subject_id: str) -> str:
    """A subject id shows its first and last character at most."""
    if len(subject_id) < _MIN_SUBJECT_CHARS:
        return MASK
    return f"{subject_id[0]}{MASK}{subject_id[-1]}"


def mask_recipient(channel: str, recipient: str) -> str:
    """Email and SMS recipients are masked; webhook endpoint names come from configuration."""
    if channel == "email":
        return mask_email(recipient)
    if channel == "sms":
        return mask_phone(recipient)
    return recipient


def mask_data(value: Any) -> Any:
    """Keys are kept (they are the publisher's field names); every value is masked."""
    if isinstance(value, dict):
        return {str(k): mask_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_data(v) for v in value]
    if value is None:
        return None
    return MASK
