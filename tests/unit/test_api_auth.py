"""Token checks and the per-token rate limit, without a server."""

import pytest

from dispatcher.api.auth import (
    RateLimiter,
    TokenRegistry,
    authorize,
    hash_token,
    new_token,
)
from dispatcher.api.config import ApiToken, Scope
from dispatcher.api.problems import ApiProblem

READ = frozenset({Scope.AUDIT_READ, Scope.AUDIT_READ_PII})


def registry(*entries: tuple[str, str, tuple[Scope, ...]]) -> TokenRegistry:
    return TokenRegistry(
        [ApiToken(name=n, sha256=hash_token(t), scopes=s) for n, t, s in entries]
    )


def test_several_tokens_active_at_once_for_rotation() -> None:
    """Old and new tokens both authenticate until the old entry is removed."""
    old, new = new_token(), new_token()
    both = registry(
        ("old", old, (Scope.AUDIT_READ,)), ("new", new, (Scope.AUDIT_READ,))
    )
    assert both.authenticate(old).name == "old"  # type: ignore[union-attr]
    assert both.authenticate(new).name == "new"  # type: ignore[union-attr]
    rotated = registry(("new", new, (Scope.AUDIT_READ,)))
    assert rotated.authenticate(old) is None


def test_token_is_stored_only_as_its_hash() -> None:
    """The configuration holds a 64-hex SHA-256, never the token."""
    token = new_token()
    assert token.startswith("dsp_")
    assert len(hash_token(token)) == 64
    assert token not in hash_token(token)


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Basic abc", 401),
        ("Bearer ", 401),
        ("Bearer wrong", 401),
    ],
    ids=["missing", "other-scheme", "empty", "unknown"],
)
def test_without_valid_token_is_401_with_challenge(
    header: str | None, status: int
) -> None:
    """No valid bearer token: 401 with a WWW-Authenticate challenge."""
    reg = registry(("a", new_token(), (Scope.AUDIT_READ,)))
    with pytest.raises(ApiProblem) as info:
        authorize(reg, RateLimiter(10, 10), header, READ)
    assert info.value.status == status
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_scope_is_403() -> None:
    """A valid token without any of the route's scopes: 403."""
    token = new_token()
    reg = registry(("replayer", token, (Scope.DLQ_WRITE,)))
    with pytest.raises(ApiProblem) as info:
        authorize(reg, RateLimiter(10, 10), f"Bearer {token}", READ)
    assert info.value.status == 403


def test_rate_limit_per_token_with_retry_after() -> None:
    """Past its burst a token gets 429 with Retry-After; another token is unaffected;
    the bucket refills with time."""
    now = [0.0]
    limiter = RateLimiter(rate=0.5, burst=2, clock=lambda: now[0])
    a, b = new_token(), new_token()
    reg = registry(("a", a, (Scope.AUDIT_READ,)), ("b", b, (Scope.AUDIT_READ,)))
    authorize(reg, limiter, f"Bearer {a}", READ)
    authorize(reg, limiter, f"Bearer {a}", READ)
    with pytest.raises(ApiProblem) as info:
        authorize(reg, limiter, f"Bearer {a}", READ)
    assert info.value.status == 429
    assert info.value.headers["Retry-After"] == "2"
    authorize(reg, limiter, f"Bearer {b}", READ)
    now[0] = 2.0
    authorize(reg, limiter, f"Bearer {a}", READ)
