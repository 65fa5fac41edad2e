"""Standard Webhooks signing, checked against the reference ``standardwebhooks`` library."""

import base64
import os
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from dispatcher.channels import signing
from dispatcher.channels.webhook_config import WebhookChannelConfig, WebhookEndpoint
from dispatcher.errors import ConfigError
from dispatcher.settings import load_settings

BODY = b'{"type":"crisis.detected","data":{"score":0.97}}'


def new_secret(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


def headers_for(
    secrets: list[str],
    body: bytes = BODY,
    *,
    msg_id: str | None = None,
    timestamp: float | None = None,
) -> dict[str, str]:
    keys = [signing.decode_secret(s) for s in secrets]
    return signing.signature_headers(
        keys,
        msg_id or str(uuid.uuid4()),
        int(time.time() if timestamp is None else timestamp),
        body,
    )


def test_headers_are_exactly_the_standard_three() -> None:
    """Signing yields webhook-id, webhook-timestamp and webhook-signature, nothing else."""
    headers = headers_for([new_secret()], msg_id="d-1", timestamp=1_700_000_000)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "d-1"
    assert headers["webhook-timestamp"] == "1700000000"
    assert headers["webhook-signature"].startswith("v1,")


def test_every_active_secret_verifies_with_the_reference_library() -> None:
    """Each active secret's receiver verifies; the header has one signature per secret."""
    secrets = [new_secret(24), new_secret(32), new_secret(64)]
    headers = headers_for(secrets)
    assert len(headers["webhook-signature"].split(" ")) == len(secrets)
    for secret in secrets:
        assert Webhook(secret).verify(BODY, headers) == {
            "type": "crisis.detected",
            "data": {"score": 0.97},
        }


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda b, h: (b[:-2] + b"8}", h), id="one-body-byte"),
        pytest.param(lambda b, h: (b, {**h, "webhook-id": "other"}), id="other-id"),
        pytest.param(
            lambda b, h: (
                b,
                {**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) - 1)},
            ),
            id="other-timestamp",
        ),
    ],
)
def test_tampering_fails_verification(tamper) -> None:
    """A body with one byte changed, another id or another timestamp does not verify."""
    secret = new_secret()
    body, headers = tamper(BODY, headers_for([secret]))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, headers)


def test_rotation_overlap_and_after() -> None:
    """During rotation old-only, new-only and both-key receivers verify; after it, old fails."""
    old, new = new_secret(), new_secret()
    during = headers_for([new, old])
    for receiver in (old, new):
        Webhook(receiver).verify(BODY, during)
    after = headers_for([new])
    Webhook(new).verify(BODY, after)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(BODY, after)


def test_retry_keeps_id_and_re_signs_for_the_new_timestamp() -> None:
    """A retry has the same webhook-id, a later timestamp and a recomputed signature."""
    secret = new_secret()
    now = int(time.time())
    first = headers_for([secret], msg_id="delivery-7", timestamp=now - 30)
    retry = headers_for([secret], msg_id="delivery-7", timestamp=now)
    assert first["webhook-id"] == retry["webhook-id"]
    assert int(retry["webhook-timestamp"]) > int(first["webhook-timestamp"])
    assert first["webhook-signature"] != retry["webhook-signature"]
    for headers in (first, retry):
        Webhook(secret).verify(BODY, headers)
    replayed = {**retry, "webhook-signature": first["webhook-signature"]}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, replayed)


@pytest.mark.parametrize(
    ("skew", "message"),
    [(+6 * 60, "too new"), (-6 * 60, "too old")],
    ids=["+6m", "-6m"],
)
def test_receiver_rejects_skewed_timestamps(skew: int, message: str) -> None:
    """A timestamp six minutes off the receiver's clock is refused by the reference lib."""
    secret = new_secret()
    headers = headers_for([secret], timestamp=time.time() + skew)
    with pytest.raises(WebhookVerificationError, match=message):
        Webhook(secret).verify(BODY, headers)


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.binary(min_size=24, max_size=64), min_size=1, max_size=3),
    msg_id=st.text(
        st.characters(codec="ascii", categories=("L", "N", "Pd")), min_size=1
    ),
    body=st.text().map(str.encode),
    offset=st.integers(-200, 200),
)
def test_round_trip_property(
    keys: list[bytes], msg_id: str, body: bytes, offset: int
) -> None:
    """Whatever the keys, id and UTF-8 body, every key's receiver verifies the signature."""
    timestamp = int(time.time()) + offset
    headers = signing.signature_headers(keys, msg_id, timestamp, body)
    for key in keys:
        secret = "whsec_" + base64.b64encode(key).decode()
        Webhook(secret).verify(body, headers, json_parse=False)


@pytest.mark.parametrize(
    "value",
    [
        "c2VjcmV0LXdpdGhvdXQtcHJlZml4LTAxMjM0NTY3",
        "whsec_not*base64!",
        "whsec_" + base64.b64encode(b"x" * 23).decode(),
        "whsec_" + base64.b64encode(b"x" * 65).decode(),
        "whsec_",
    ],
    ids=["no-prefix", "not-base64", "23-bytes", "65-bytes", "empty"],
)
def test_bad_secrets_are_refused_without_echoing_them(value: str) -> None:
    """A malformed secret fails with a message that does not contain it."""
    with pytest.raises(ValueError) as info:
        signing.decode_secret(value)
    payload = value.removeprefix("whsec_")
    assert not payload or payload not in str(info.value)


def test_bad_secret_in_config_names_the_key_not_the_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Configuration load refuses a malformed secret, naming the key only."""
    canary = "whsec_canary-not-base64"
    monkeypatch.setenv(
        "DISPATCHER_CHANNELS__WEBHOOK__ENDPOINTS",
        '{"monitor": {"url": "https://monitor.example.org/hook", "secrets": ["'
        + canary
        + '"]}}',
    )
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "channels.webhook.endpoints.monitor.secrets" in str(info.value)
    assert "canary" not in str(info.value)


def test_secrets_are_masked_in_config_repr() -> None:
    """Endpoint secrets and header values never show in repr."""
    secret = new_secret()
    config = WebhookChannelConfig(
        endpoints={
            "m": WebhookEndpoint(
                url="https://m.example.org/",
                secrets=[secret],
                headers={"Authorization": "Bearer tok_canary"},
            )
        }
    )
    assert secret not in repr(config)
    assert "tok_canary" not in repr(config)


@pytest.mark.parametrize(
    "msg_id", ["", "a.b", "line\nbreak"], ids=["empty", "dot", "control"]
)
def test_ambiguous_ids_are_refused(msg_id: str) -> None:
    """An id that is empty, has a '.' or a control character cannot be signed."""
    with pytest.raises(ValueError, match="webhook-id"):
        signing.signature_headers([b"k" * 32], msg_id, 1, BODY)


def test_no_key_is_refused() -> None:
    """Signing without a key is an error, never an unsigned request."""
    with pytest.raises(ValueError, match="key"):
        signing.signature_headers([], "id", 1, BODY)
