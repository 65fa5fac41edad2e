"""Audit entries the CLI writes itself: unmasked PII shown to an operator
(``rejected show --show-body``, ``dlq show --show-recipient``), and the start of a
``rejected replay`` run. Each is committed before the command goes on, so what was shown,
or a run that died part-way, is on record; who is the OS user (``safeguards.who``)."""

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from dispatcher.cli.safeguards import who
from dispatcher.db.sql import Executor, Statement
from dispatcher.db.states import AuditKind

#: Most ids one entry lists, as for the API's ``api.pii_disclosed``.
MAX_IDS = 250

_APPEND = Statement.compile(
    """
    INSERT INTO audit_log (kind, event_id, delivery_id, detail)
    VALUES (:kind, CAST(:event_id AS uuid), CAST(:delivery_id AS uuid),
            CAST(:detail AS jsonb))
    """
)


async def append(
    conn: Executor,
    kind: AuditKind,
    detail: dict[str, Any],
    *,
    event_id: UUID | None = None,
    delivery_id: UUID | None = None,
) -> None:
    """One audit entry naming the OS user, committed (``conn`` holds no transaction)."""
    await _APPEND.fetch(
        conn,
        kind=kind.value,
        event_id=event_id,
        delivery_id=delivery_id,
        detail=json.dumps({"by": who(), **detail}),
    )


async def disclosed(
    conn: Executor,
    command: str,
    ids: Sequence[UUID | int],
    *,
    event_id: UUID | None = None,
    delivery_id: UUID | None = None,
) -> None:
    """Record, before printing, that ``command`` shows the unmasked records ``ids``."""
    await append(
        conn,
        AuditKind.CLI_PII_DISCLOSED,
        {
            "command": command,
            "count": len(ids),
            "ids": [str(i) for i in ids[:MAX_IDS]],
        },
        event_id=event_id,
        delivery_id=delivery_id,
    )
