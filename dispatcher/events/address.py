"""Email address syntax: email_validator's rules, with an exact shortcut for plain addresses.

email_validator (no DNS) costs about 60 µs an address, mostly in its Unicode checks, and
ingest validates every email recipient of every event. Most addresses are plain ASCII
``local@label.label.tld``; for those its rules reduce to a few checks, written out below.
Whatever the shortcut is not sure of, it leaves to email_validator, which then decides
(and words the error). ``tests/unit/test_address.py`` compares the two on generated
addresses.
"""

import re

from email_validator import SPECIAL_USE_DOMAIN_NAMES as _SPECIAL_USE
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import (
    CASE_INSENSITIVE_MAILBOX_NAMES,
    DOMAIN_MAX_LENGTH,
    EMAIL_MAX_LENGTH,
    LOCAL_PART_MAX_LENGTH,
)

# RFC 5322 dot-atom (email_validator's ATEXT) @ LDH labels, the last one letters only
# (email_validator wants a period and a top-level domain ending in a letter).
_PLAIN = re.compile(
    r"[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+(?:\.[A-Za-z0-9_!#$%&'*+/=?^`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_SPECIAL_SUFFIXES = tuple("." + d for d in _SPECIAL_USE)
_SPECIAL = frozenset(_SPECIAL_USE)
_CASE_INSENSITIVE = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


class InvalidEmailError(ValueError):
    """Not a usable email address (the message never repeats it)."""


def _plain(address: str) -> str | None:
    """The normalised address when it is plain ASCII and certainly valid, else None."""
    if len(address) > EMAIL_MAX_LENGTH or not _PLAIN.fullmatch(address):
        return None
    local, _, domain = address.rpartition("@")
    domain = domain.lower()
    if (
        len(local) > LOCAL_PART_MAX_LENGTH
        or len(domain) > DOMAIN_MAX_LENGTH
        # R-LDH labels ("ab--") and Punycode ("xn--") need the IDNA rules
        or "--" in domain
        # postmaster@, abuse@ ... are lowercased by email_validator
        or local.lower() in _CASE_INSENSITIVE
        or domain in _SPECIAL
        or domain.endswith(_SPECIAL_SUFFIXES)
    ):
        return None
    return f"{local}@{domain}"


def normalize_email(address: str) -> str:
    """The address as email_validator normalises it (no DNS; ``check_deliverability=False``).

    Raises:
        InvalidEmailError: the address is not valid.
    """
    plain = _plain(address)
    if plain is not None:
        return plain
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        raise InvalidEmailError("not a valid email address") from None
