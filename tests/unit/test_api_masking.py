"""Masks for PII shown without the audit:read-pii scope."""

import pytest

from dispatcher.api.masking import (
    mask_data,
    mask_email,
    mask_phone,
    mask_recipient,
    mask_subject,
)


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("jane.doe@example.org", "j***@e***.org"),
        ("a@b.co.uk", "a***@b***.uk"),
        ("x@localhost", "x***@l***"),
        ("not-an-address", "***"),
    ],
)
def test_email_keeps_first_letters_and_tld(address: str, masked: str) -> None:
    """An address keeps the first letter of its local part and domain, and the TLD."""
    assert mask_email(address) == masked


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+447700900123", "+44*******123"),
        ("+15551234567", "+15******567"),
        ("+12345", "+*****"),
    ],
)
def test_phone_keeps_country_prefix_and_last_three(number: str, masked: str) -> None:
    """A number keeps two leading and three trailing digits; short ones are masked whole."""
    assert mask_phone(number) == masked


def test_subject_and_data_values_are_hidden_but_keys_kept() -> None:
    """Subject ids keep at most their ends; data keeps keys, never values."""
    assert mask_subject("person-42") == "p***2"
    assert mask_subject("p42") == "***"
    assert mask_data({"score": 0.9, "notes": ["a", {"b": None}]}) == {
        "score": "***",
        "notes": ["***", {"b": None}],
    }


def test_webhook_endpoint_names_are_not_masked() -> None:
    """Endpoint names come from configuration, not from people."""
    assert mask_recipient("webhook", "ops-hook") == "ops-hook"
    assert mask_recipient("sms", "+447700900123") != "+447700900123"
