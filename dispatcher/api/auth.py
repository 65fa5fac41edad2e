"""Bearer tokens: configured as SHA-256 hashes with scopes, compared in constant time.

Several tokens may be active at once, so a token is rotated by adding the new one,
moving its holder over and deleting the old entry (which revokes it).
"""

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dispatcher.api.config import ApiToken, Scope
from dispatcher.api.problems import ApiProblem

#: Marks our tokens, so secret scanners and people recognise a leaked one.
TOKEN_PREFIX = "dsp_"  # noqa: S105 - a public marker, not a secret


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """The hex SHA-256 that configuration holds instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """The holder of an accepted token."""

    name: str
    scopes: frozenset[Scope]

    @property
    def sees_pii(self) -> bool:
        return Scope.AUDIT_READ_PII in self.scopes


class TokenRegistry:
    """The configured tokens; answers who presented a token, or nobody."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        self._tokens = tuple(
            (t.sha256.encode(), Principal(t.name, frozenset(t.scopes))) for t in tokens
        )

    def authenticate(self, presented: str) -> Principal | None:
        digest = hash_token(presented).encode()
        found: Principal | None = None
        # Every entry is compared, so the time taken says nothing about which one matched.
        for expected, principal in self._tokens:
            if hmac.compare_digest(digest, expected):
                found = principal
        return found


class RateLimiter:
    """A token bucket per principal, in this process's memory (so per replica)."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, name: str) -> float | None:
        """Spend one request; None when allowed, else the seconds until one is."""
        now = self._clock()
        tokens, last = self._buckets.get(name, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return None
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / self._rate


def authorize(
    registry: TokenRegistry,
    limiter: RateLimiter,
    authorization: str | None,
    scopes: frozenset[Scope],
) -> Principal:
    """The principal behind an ``Authorization`` header holding any of ``scopes``.

    Raises:
        ApiProblem: 401 without a valid token, 429 over the rate, 403 without the scope.
    """
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiProblem(
            401,
            "a bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="dispatcher"'},
        )
    principal = registry.authenticate(presented.strip())
    if principal is None:
        raise ApiProblem(
            401,
            "the bearer token is not valid (unknown, revoked or mistyped)",
            headers={
                "WWW-Authenticate": 'Bearer realm="dispatcher", error="invalid_token"'
            },
        )
    wait = limiter.take(principal.name)
    if wait is not None:
        raise ApiProblem(
            429,
            "too many requests for this token; retry after the delay given",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    if not principal.scopes & scopes:
        needed = " or ".join(sorted(s.value for s in scopes))
        raise ApiProblem(
            403,
            f"the token lacks the scope {needed}",
            headers={
                "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{needed}"'
            },
        )
    return principal
