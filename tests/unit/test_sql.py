"""The one SQL convention: ``:name`` parameters compiled once, rows mapped by name."""

from dataclasses import dataclass

import pytest

from dispatcher.db.sql import Statement, from_row


def test_names_become_numbers_in_first_use_order() -> None:
    """Each distinct name gets one number, reused where it repeats; casts are left alone."""
    stmt = Statement.compile(
        "SELECT :b::int, CAST(:a AS text), :b WHERE x = 'a:b' AND y::text = :c_d"
    )
    assert (
        stmt.sql
        == "SELECT $1::int, CAST($2 AS text), $1 WHERE x = 'a:b' AND y::text = $3"
    )
    assert stmt.names == ("b", "a", "c_d")
    assert stmt.args({"a": 1, "b": 2, "c_d": 3, "unused": 4}) == [2, 1, 3]


def test_a_missing_parameter_fails_loudly() -> None:
    """Binding never silently passes None for a name the caller forgot."""
    with pytest.raises(KeyError, match="a"):
        Statement.compile("SELECT :a").args({})


@dataclass(frozen=True, slots=True)
class _Row:
    id: int
    name: str
    note: str | None = None


def test_rows_map_by_column_name_not_position() -> None:
    """Column order does not matter; extra columns are ignored; missing ones default."""
    assert from_row(_Row, {"name": "n", "extra": 1, "id": 7}) == _Row(7, "n")
    assert from_row(_Row, {"note": "x", "id": 1, "name": "m"}) == _Row(1, "m", "x")
