"""Keyed hashes of recipients, so deliveries can be found by recipient without a
searchable clear-text column (a "blind index"). Pure.

Ingest stores ``recipient_digest`` beside each delivery; the audit API hashes the address
it is asked about with the same key and looks the digest up by exact match. Without the
key the digests cannot be computed, so they reveal nothing on their own.
"""

import hmac

from dispatcher.events.kinds import ChannelKind


def recipient_digest(key: bytes, channel: ChannelKind | str, recipient: str) -> bytes:
    """HMAC-SHA256 of the channel and its normalised recipient.

    ``recipient`` must already be normalised for its channel (``check_recipient``), as
    stored recipients are; email addresses are also compared without case.
    """
    kind = ChannelKind(channel)
    canonical = recipient.casefold() if kind is ChannelKind.EMAIL else recipient
    return hmac.digest(key, f"{kind.value}:{canonical}".encode(), "sha256")
