"""How SQL is written here: ``:name`` parameters, compiled once, rows read by name.

The hot paths (ingest, claims, outcomes) drive asyncpg directly, which numbers its
parameters (``$1``): a ``Statement`` rewrites the ``:name`` spelling once, when its module
is imported, and binds by name on every call. The cold paths (status, the audit API) use
SQLAlchemy's ``text()`` or Core, whose spelling is the same ``:name``. Rows become frozen
dataclasses by column name (``from_row``), never by position, so adding a column to a
``SELECT`` or ``RETURNING`` cannot shift a field.

Values are parameters, from the enums (``DeliveryStatus``, ``ChannelKind``), with one
exception: a predicate that must match a partial index's (``status IN ('pending',
'in_flight')``, ``channel = 'webhook'`` in the claims) stays a literal, because PostgreSQL
only uses a partial index for a generic plan when the predicate is written out; a test
(tests/integration/test_outbox_store.py) counts the buffers those claims read. Literal
states, channels and audit kinds in SQL text are checked against their enums by
tests/unit/test_sql_literals.py.
"""

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

# ``:name`` but not a ``::type`` cast, nor a ``:`` inside a word.
_PARAMETER = re.compile(r"(?<![:\w]):([a-z_]+)")

T = TypeVar("T")


class Executor(Protocol):
    """The part of ``asyncpg.Connection`` the stores use (a kept connection)."""

    async def fetch(self, query: str, /, *args: Any) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class Statement:
    """A ``:name`` statement compiled to asyncpg's ``$n`` form.

    Attributes:
        sql: The statement with ``$1, $2 ...``.
        names: Parameter names in ``$n`` order.
    """

    sql: str
    names: tuple[str, ...]

    @classmethod
    def compile(cls, sql: str) -> "Statement":
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        return cls(_PARAMETER.sub(number, sql), tuple(names))

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        """The values in ``$n`` order; a missing parameter is a ``KeyError``."""
        return [params[name] for name in self.names]

    async def fetch(self, conn: Executor, **params: Any) -> list[Any]:
        """Run it with these named parameters; the rows as asyncpg returns them."""
        return await conn.fetch(self.sql, *self.args(params))


def from_row(cls: type[T], row: Mapping[Any, Any]) -> T:
    """A dataclass from a row, field by column name; fields the row lacks keep their
    defaults.

    ``name in row`` asks for a column of that name, on a mapping and on an asyncpg
    ``Record`` alike (whose ``keys()`` is a one-pass iterator, not a view).
    """
    names = _FIELD_NAMES.get(cls)
    if names is None:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = _FIELD_NAMES[cls] = tuple(f.name for f in fields)
    return cls(**{name: row[name] for name in names if name in row})


#: Each dataclass's field names, read once (``dataclasses.fields`` filters per call).
_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}
