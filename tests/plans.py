"""What PostgreSQL planned for a statement of ours, as the kept connection runs it."""

from collections.abc import Iterator
from typing import Any

from dispatcher.db.sql import Statement


async def generic_plan(conn: Any, statement: Statement) -> dict[str, Any]:
    """The plan ``conn`` (an asyncpg connection of the engine, whose codecs decode the
    JSON) makes for ``statement`` with every parameter unknown, as a generic plan is
    made; prepared and deallocated here."""
    await conn.execute("PREPARE planned AS " + statement.sql)
    try:
        nulls = ", ".join(["NULL"] * len(statement.names))
        explained = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) EXECUTE planned({nulls})"
        )
    finally:
        await conn.execute("DEALLOCATE planned")
    plan: dict[str, Any] = explained[0]["Plan"]
    return plan


def nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of a plan, the node itself first (init plans and CTEs included)."""
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def scans(plan: dict[str, Any]) -> Iterator[tuple[str, str, str | None]]:
    """(node type, relation, index) of every node that names a table."""
    for node in nodes(plan):
        if "Relation Name" in node:
            yield node["Node Type"], node["Relation Name"], node.get("Index Name")
