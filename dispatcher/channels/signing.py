"""Standard Webhooks 1.0 signatures: pure functions, no I/O, no clock.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}`` with the body bytes
exactly as sent; each active secret adds one ``v1,<base64 HMAC-SHA256>`` to the
space-separated ``webhook-signature`` header, so receivers can rotate keys with overlap.
Each signature is the reference library's (``standardwebhooks``); this module checks the
secrets and the id, and puts the headers together.
See https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md
"""

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

from standardwebhooks import Webhook

SECRET_PREFIX: Final = "whsec_"  # noqa: S105 - the format marker, not a secret
#: Key length bounds, in bytes, that the spec recommends (and Svix generates within).
MIN_SECRET_BYTES: Final = 24
MAX_SECRET_BYTES: Final = 64

ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"


def decode_secret(value: str) -> bytes:
    """Decode a ``whsec_<base64>`` secret into its key bytes.

    Raises:
        ValueError: the prefix, the base64 or the length is wrong. The message never
            contains the value, so it is safe in a configuration error.
    """
    if not value.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret must start with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(value.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be base64 after its prefix") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"a webhook secret must decode to {MIN_SECRET_BYTES}"
            f"-{MAX_SECRET_BYTES} bytes"
        )
    return key


def signature_headers(
    keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt.

    Args:
        keys: Every active key, newest first; each yields one signature.
        msg_id: The delivery id: the same on every retry, so receivers de-duplicate.
        timestamp: Unix seconds of this attempt; a retry gets a new one and is re-signed.
        body: The request body, byte for byte as it will be sent: UTF-8 (JSON).

    Raises:
        ValueError: no key, an id that would make the signed content ambiguous, or a
            body that is not UTF-8 (the library signs text, encoded back as UTF-8, so
            it signs exactly these bytes).
    """
    if not keys:
        raise ValueError("at least one signing key is required")
    # The id is followed by "." in the signed content; a "." inside it would let two
    # (id, timestamp) pairs share one signature.
    if not msg_id or "." in msg_id or not msg_id.isprintable():
        raise ValueError("webhook-id must be non-empty, printable and without '.'")
    when = datetime.fromtimestamp(timestamp, UTC)
    text = body.decode()
    return {
        ID_HEADER: msg_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: " ".join(Webhook(k).sign(msg_id, when, text) for k in keys),
    }
