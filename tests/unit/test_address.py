"""The email shortcut agrees with email_validator wherever it answers."""

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dispatcher.events.address import InvalidEmailError, _plain, normalize_email


def reference(address: str) -> str | None:
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError:
        return None


# Characters the shortcut's pattern is about, plus a few it must leave alone.
_CHARS = "aZz09._-+!#'`{}|~@" + "AM" + '"<> \\' + "é"
_LABELS = st.sampled_from(
    [
        *("example", "ORG", "com", "co", "test", "local", "localhost", "arpa", "onion"),
        *("invalid", "xn--bcher-kva", "ab--cd", "-x", "x-", "1", "a", "123"),
        *("a" * 63, "b" * 64),
    ]
)
_LOCALS = st.sampled_from(
    [
        *("team", "Crisis-Team", "a.b", ".a", "a.", "a..b", "POSTMASTER", "Abuse"),
        *("o'brien", "a+tag", "{weird}", "!#$%&'*+/=?^_`{|}~-", "x" * 64, "x" * 65),
    ]
)


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=_CHARS, max_size=40),
        st.builds(
            lambda local, labels: f"{local}@{'.'.join(labels)}",
            _LOCALS | st.text(alphabet=_CHARS, min_size=1, max_size=12),
            st.lists(_LABELS, min_size=1, max_size=5),
        ),
    )
)
@example("Crisis-Team@Example.ORG")
@example("postmaster@example.org")
@example("a@b.test")
@example("a@mail.local")
@example("a@" + "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ".org")
def test_shortcut_matches_email_validator(address: str) -> None:
    """Where the shortcut accepts an address, email_validator accepts it with the same result."""
    fast = _plain(address)
    if fast is not None:
        assert reference(address) == fast


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("team@example.org", "team@example.org"),
        ("Crisis-Team@Example.ORG", "Crisis-Team@example.org"),
        ("POSTMASTER@example.org", "postmaster@example.org"),
        ("user@bücher.de", "user@bücher.de"),
        ("user@xn--bcher-kva.de", "user@bücher.de"),
    ],
    ids=["plain", "domain-case", "case-insensitive-mailbox", "idn", "punycode"],
)
def test_normalize_email(address: str, expected: str) -> None:
    """Plain and internationalised addresses are normalised as email_validator does."""
    assert normalize_email(address) == expected


@pytest.mark.parametrize(
    "address",
    ["not-an-address", "a@localhost", "a@b.test", "a..b@example.org", "a@-x.org"],
)
def test_invalid_email_is_refused(address: str) -> None:
    """Invalid addresses raise, without repeating the address."""
    with pytest.raises(InvalidEmailError) as info:
        normalize_email(address)
    assert address not in str(info.value)
