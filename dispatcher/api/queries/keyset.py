"""The pieces every read of the audit API shares: keyset pages newest first, time ranges,
allow-listed value sets, column lists and the planner's view of a statement.

Lists are keyset-paginated newest first on ``(time, id)``: the condition
``t <= :t AND (t < :t OR id < :id)`` lets PostgreSQL walk an index that starts with the
time column (or with an equality column and then the time) and stop after ``limit + 1``
rows, however deep the page.
"""

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    FromClause,
    Select,
    bindparam,
    or_,
    select,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import KeyedColumnElement

#: Most deliveries, attempts per delivery and audit entries one event detail returns.
DETAIL_CAP = 500

Keyset = tuple[datetime, Any]
#: A result row of any width.
Rec = Row[*tuple[Any, ...]]


def columns(table: FromClause, names: str) -> tuple[KeyedColumnElement[Any], ...]:
    """The named columns of ``table``, in order (``names`` separated by spaces)."""
    return tuple(table.c[name] for name in names.split())


def one_of(col: Any, values: Iterable[StrEnum]) -> ColumnElement[bool]:
    """``col IN (...)`` with the values written into the SQL, not bound.

    They are enum members (allow-listed), and written out they let PostgreSQL match a
    partial index such as ``WHERE status = 'dead'``; a bound ``$1`` cannot match one
    once the prepared statement switches to its generic plan."""
    listed: BindParameter[list[str]] = bindparam(
        None, [v.value for v in values], expanding=True, literal_execute=True
    )
    out: ColumnElement[bool] = col.in_(listed)
    return out


def any_of(*filters: tuple[Any, Sequence[StrEnum]]) -> list[ColumnElement[bool]]:
    """``one_of`` for each ``(column, values)`` whose list of values is not empty."""
    return [one_of(col, values) for col, values in filters if values]


def equal(*filters: tuple[Any, object]) -> list[ColumnElement[bool]]:
    """``column = value`` for each ``(column, value)`` whose value is given."""
    return [col == value for col, value in filters if value is not None]


def time_range(col: Any, low: datetime | None, high: datetime | None) -> list[Any]:
    out = []
    if low is not None:
        out.append(col >= low)
    if high is not None:
        out.append(col < high)
    return out


def newest_first(
    cols: Iterable[Any],
    conditions: Iterable[Any],
    key: tuple[Any, Any],
    after: Keyset | None,
    limit: int,
) -> Select[Any]:
    """One page newest first by ``key`` (a time column and an id column), after
    ``after``, plus one row to tell whether another page follows."""
    time_col, id_col = key
    keyset: list[ColumnElement[bool]] = []
    if after is not None:
        t, i = after
        keyset = [time_col <= t, or_(time_col < t, id_col < i)]
    return (
        select(*cols)
        .where(*conditions, *keyset)
        .order_by(time_col.desc(), id_col.desc())
        .limit(limit + 1)
    )


async def rows(conn: AsyncConnection, stmt: Select[Any]) -> list[Rec]:
    return list(await conn.execute(stmt))


async def plan(conn: AsyncConnection, stmt: Select[Any]) -> dict[str, Any]:
    """PostgreSQL's plan for ``stmt`` (``EXPLAIN (FORMAT JSON)``), not run."""
    # render_postcompile: list filters (``IN``) become one placeholder per value, as
    # they are at execution; uncompiled they would reach PostgreSQL as a marker.
    compiled = stmt.compile(
        dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
    )
    args = tuple(compiled.params[name] for name in compiled.positiontup or ())
    doc = (
        await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", args)
    ).scalar_one()
    out: dict[str, Any] = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    return out
