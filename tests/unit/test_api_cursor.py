"""Pagination cursors: opaque, bound to their list and filters, expiring, tamper-evident."""

import pytest

from dispatcher.api.pagination import CursorCodec
from dispatcher.api.problems import ApiProblem


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def codec(clock: Clock, key: bytes = b"k" * 32) -> CursorCodec:
    return CursorCodec(key, ttl_seconds=60, clock=clock)


def test_round_trip_with_filters_in_any_order() -> None:
    """A cursor gives back its position for the same filters, whatever their order."""
    c = codec(Clock())
    cursor = c.encode(
        "events", {"severity": ["high", "critical"], "type": "a.b"}, ["t", "i"]
    )
    assert c.decode(
        cursor, "events", {"type": "a.b", "severity": ["critical", "high"]}
    ) == [
        "t",
        "i",
    ]


@pytest.mark.parametrize(
    ("listing", "filters", "needle"),
    [
        ("events", {"type": "other"}, "other filters"),
        ("events", {}, "other filters"),
        ("deliveries", {"type": "a.b"}, "another list"),
    ],
    ids=["other-filters", "filters-dropped", "other-list"],
)
def test_cursor_refused_elsewhere(
    listing: str, filters: dict[str, str], needle: str
) -> None:
    """A cursor used with other filters or on another list is a 400 naming why."""
    c = codec(Clock())
    cursor = c.encode("events", {"type": "a.b"}, ["t", "i"])
    with pytest.raises(ApiProblem) as info:
        c.decode(cursor, listing, filters)
    assert info.value.status == 400
    assert needle in info.value.detail


def test_cursor_expires() -> None:
    """A cursor older than its time to live is refused."""
    clock = Clock()
    c = codec(clock)
    cursor = c.encode("events", {}, ["t", "i"])
    clock.now += 61
    with pytest.raises(ApiProblem, match="expired"):
        c.decode(cursor, "events", {})


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-2] + ("AA" if s[-2:] != "AA" else "BB"),
        lambda s: "x" + s,
        lambda s: s.split(".")[0],
        lambda s: "???",
        lambda s: "é." * 3,
        lambda s: "",
    ],
    ids=["tag-changed", "body-changed", "no-tag", "garbage", "non-ascii", "empty"],
)
def test_altered_or_garbage_cursor_is_400(mangle) -> None:
    """Anything but an intact cursor of ours is a 400, never a 500."""
    c = codec(Clock())
    cursor = c.encode("events", {}, ["t", "i"])
    with pytest.raises(ApiProblem) as info:
        c.decode(mangle(cursor), "events", {})
    assert info.value.status == 400


def test_cursor_from_a_server_with_another_key_is_refused() -> None:
    """Replicas share cursors only when they share api.cursor_key."""
    cursor = codec(Clock(), b"a" * 32).encode("events", {}, ["t", "i"])
    with pytest.raises(ApiProblem, match="not valid"):
        codec(Clock(), b"b" * 32).decode(cursor, "events", {})
