"""Keyset pagination with opaque cursors bound to their filter set and expiring.

A cursor names the last row of a page by its sort key; the next page is the rows after
it in the same stable order, so rows inserted meanwhile neither repeat nor shift a page.
It is signed, carries the digest of the filters it was issued for and an expiry, and is
refused (400) for other filters, after expiry or when altered.
"""

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from dispatcher.api.problems import ApiProblem

T = TypeVar("T")
_VERSION = 1
_TAG_BYTES = 16
_MAX_CURSOR = 2048


class Page(BaseModel, Generic[T]):
    """One page of a list, newest first."""

    data: list[T]
    iterator: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )
    done: bool = Field(description="True on the last page.")


def filters_digest(filters: Mapping[str, Any]) -> str:
    """A short digest of a filter set (order-independent, empty values dropped)."""
    canonical = {
        k: sorted(v) if isinstance(v, (list, tuple, set, frozenset)) else v
        for k, v in filters.items()
        if v is not None and v not in ([], ())
    }
    text = json.dumps(canonical, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class CursorCodec:
    """Encodes and checks cursors with one key (shared by replicas when configured)."""

    def __init__(
        self,
        key: bytes,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._ttl = ttl_seconds
        self._clock = clock

    def encode(
        self, listing: str, filters: Mapping[str, Any], position: Sequence[str]
    ) -> str:
        body = json.dumps(
            [
                _VERSION,
                listing,
                filters_digest(filters),
                int(self._clock()) + self._ttl,
                list(position),
            ],
            separators=(",", ":"),
        ).encode()
        return f"{_b64(body)}.{_b64(self._tag(body))}"

    def decode(
        self, cursor: str, listing: str, filters: Mapping[str, Any]
    ) -> list[str]:
        """The position a cursor points after.

        Raises:
            ApiProblem: 400 when it is malformed, altered, for another list or other
                filters, or expired.
        """
        body_part, _, tag_part = cursor.partition(".")
        try:
            body = _unb64(body_part)
            tag = _unb64(tag_part)
        except (binascii.Error, ValueError):
            raise _bad("the cursor is not valid; start again without it") from None
        if not hmac.compare_digest(tag, self._tag(body)):
            raise _bad(
                "the cursor is not valid (altered, or issued by another server); "
                "start again without it"
            )
        version, issued_for, digest, expires, position = json.loads(body)
        if version != _VERSION or issued_for != listing:
            raise _bad("the cursor belongs to another list; start again without it")
        if digest != filters_digest(filters):
            raise _bad(
                "the cursor was issued for other filters; repeat the same filters "
                "with it, or start again without it"
            )
        if self._clock() > expires:
            raise _bad("the cursor has expired; start again without it")
        return [str(p) for p in position]

    def _tag(self, body: bytes) -> bytes:
        return hmac.digest(self._key, body, "sha256")[:_TAG_BYTES]


def paginate(
    rows: Sequence[T],
    limit: int,
    next_cursor: Callable[[T], str],
) -> tuple[list[T], str | None, bool]:
    """Split ``limit + 1`` fetched rows into a page, its cursor and whether it is the last."""
    page = list(rows[:limit])
    if len(rows) > limit and page:
        return page, next_cursor(page[-1]), False
    return page, None, True


def _bad(detail: str) -> ApiProblem:
    return ApiProblem(400, detail, type_="urn:dispatcher:problem:bad-cursor")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or len(text) > _MAX_CURSOR:
        raise ValueError("empty or too long")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
