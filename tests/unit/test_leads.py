"""The rules of leads (delivery/leads.py): who is one, what a claim may lease for it,
and which rows it brings may wait."""

from datetime import UTC, datetime
from uuid import uuid4

from dispatcher.delivery.leads import Leads
from dispatcher.events.kinds import Severity
from dispatcher.outbox.claims import Claimed

CRITICAL = Severity.CRITICAL.priority
INFO = Severity.INFO.priority


def row(recipient: str, priority: int) -> Claimed:
    return Claimed(
        uuid4(),
        uuid4(),
        recipient,
        1,
        uuid4(),
        priority,
        datetime.now(UTC),
        None,
        None,
        {},
    )


def test_a_lead_is_allowed_twice_its_cap_beyond_it_and_refilled_at_half() -> None:
    leads = Leads(16)
    assert leads.allow({"a": 16, "b": 3}, frozenset({"a"})) == {"a": -16, "b": 3}
    assert leads.allow({}, frozenset({"a"})) == {"a": -32}
    leads.learn(frozenset({"a"}), {"a": CRITICAL})
    assert leads.wants_refill("a", 8)
    assert not leads.wants_refill("a", 9)
    assert not leads.wants_refill("b", 0)


def test_without_a_cap_nobody_is_a_lead_for_more_than_nothing() -> None:
    leads = Leads(None)
    assert leads.allow({"a": 2}, frozenset({"a"})) == {"a": 2}


def test_who_stays_a_lead() -> None:
    leads = Leads(4)
    leads.learn(frozenset({"a", "b", "c"}), {"a": CRITICAL, "b": INFO})
    assert leads.recipients == {"a"}  # b left only info rows; c was not read
    # At its cap and not read again: still a lead; read with nothing critical left: not.
    leads.learn(frozenset({"a"}), {})
    assert leads.recipients == {"a"}
    leads.learn(frozenset({"a"}), {"a": INFO})
    assert leads.recipients == frozenset()
    leads.learn(frozenset(), {"a": CRITICAL})
    assert leads.recipients == {"a"}
    leads.learn(frozenset(), {})  # everything taken: nothing left behind
    assert leads.recipients == frozenset()
    leads.learn(frozenset({"a"}), {"a": CRITICAL})
    assert leads.usable(["a"]) == frozenset()  # behind an open breaker


def test_only_critical_rows_wait_past_a_cap_or_a_slot() -> None:
    leads = Leads(2)
    rows = [
        row("a", CRITICAL),  # within a's cap room (1)
        row("a", CRITICAL),  # past it, critical: waits
        row("b", CRITICAL),  # another recipient's critical row: waits
        row("a", INFO),  # past a's cap, not critical: back
        row("c", INFO),  # takes the one free general slot
        row("c", INFO),  # no slot left for it: back
    ]
    kept, back = leads.only_critical_ahead(rows, frozenset({"a"}), {"a": 1}, starts=1)
    assert kept == [rows[0], rows[1], rows[2], rows[4]]
    assert back == [rows[3], rows[5]]


def test_an_info_row_within_a_leads_cap_may_take_a_free_slot() -> None:
    leads = Leads(4)
    rows = [row("a", INFO), row("a", INFO)]
    kept, back = leads.only_critical_ahead(rows, frozenset({"a"}), {"a": 2}, starts=5)
    assert (kept, back) == (rows, [])
    kept, back = leads.only_critical_ahead(rows, frozenset({"a"}), {"a": 3}, starts=5)
    assert (kept, back) == (rows[:1], rows[1:])
