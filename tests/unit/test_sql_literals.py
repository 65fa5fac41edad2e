"""SQL text names states and channels only by their enums' values.

Hot statements keep some values literal on purpose (a partial index's predicate must be
written out to be used: db/sql.py); this keeps those literals honest. A state renamed
in ``DeliveryStatus`` or a typo such as ``'in-flight'`` fails here, not in production.
"""

import ast
import re
from pathlib import Path

import pytest

from dispatcher.db.states import (
    AuditKind,
    DeliveryStatus,
    ReplayItemState,
    ReplayStatus,
)
from dispatcher.events.kinds import ChannelKind
from dispatcher.resilience.breaker import BreakerState

PACKAGE = Path(__file__).resolve().parents[2] / "dispatcher"
_STATUS = re.compile(
    r"\b(?:status|state)\s*(?:=|<>|!=|IN)\s*\(?((?:\s*'[^']*'\s*,?)+)\)?"
)
_CHANNEL = re.compile(r"\bchannel\s*=\s*'([^']*)'")
_KIND = re.compile(r"\bkind\s*=\s*'([^']*)'")
_STATES = {
    *DeliveryStatus,
    *ReplayStatus,
    *ReplayItemState,
    *BreakerState,  # breaker transitions as the audit log records them
    "active",  # pg_stat_activity.state: PostgreSQL's own vocabulary
}


def _sql_strings() -> list[tuple[str, str]]:
    """Every string constant in the package that reads like SQL, with where it is."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if re.search(r"\b(SELECT|UPDATE|INSERT|DELETE)\b", text):
                    found.append((f"{path.name}:{node.lineno}", text))
    return found


def _literals(pattern: re.Pattern[str], text: str) -> list[str]:
    values = []
    for match in pattern.finditer(text):
        values += re.findall(r"'([^']*)'", match.group(0))
    return values


def test_the_scan_finds_the_claims() -> None:
    """The scan reads the claim SQL, whose literals are the ones that matter most."""
    assert any(
        "status IN ('pending', 'in_flight')" in text for _, text in _sql_strings()
    )


@pytest.mark.parametrize(
    ("pattern", "allowed", "what"),
    [
        (_STATUS, _STATES, "a delivery, replay or replay-item state"),
        (_CHANNEL, set(ChannelKind), "a ChannelKind"),
        (_KIND, set(AuditKind), "an AuditKind"),
    ],
    ids=["states", "channels", "audit-kinds"],
)
def test_sql_literals_are_enum_values(
    pattern: re.Pattern[str], allowed: set[str], what: str
) -> None:
    """Each literal state, channel and audit kind in SQL text is a value of its enum."""
    wrong = [
        f"{where}: '{value}' is not {what}"
        for where, text in _sql_strings()
        for value in _literals(pattern, text)
        if value not in allowed
    ]
    assert wrong == []
