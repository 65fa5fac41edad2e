"""Leads: recipients at their cap that still have critical rows behind it.

A channel worker claims ahead of its free slots while critical rows wait for *slots*
(delivery/ready.py). An endpoint whose cap is below the worker's slots (the webhook
defaults: cap 16 of 32 slots) never fills them, so its critical backlog waits for its
*cap* instead, and without leads each of its claims leased only the cap's room: about
one claim per quarter of the cap's attempts ending. A recipient whose claim left
critical rows behind at its cap becomes a lead: the next claims give it an allowance of
``2 x cap`` rows beyond its cap, and it is refilled once ``cap / 2`` or fewer of its
rows are left waiting. Other recipients' rows, of any severity, are claimed beside it;
only critical rows wait ahead of a slot or a cap (``Leads.only_critical_ahead``).
"""

from collections.abc import Mapping, Sequence

from dispatcher.events.kinds import Severity
from dispatcher.outbox.claims import Claimed

_CRITICAL = Severity.CRITICAL.priority


class Leads:
    """One worker's leads, learnt from its claims; nothing without a cap."""

    __slots__ = ("allowance", "cap", "recipients", "refill")

    def __init__(self, cap: int | None) -> None:
        self.cap = cap or 0
        #: Rows a lead's claims may lease beyond its cap.
        self.allowance = 2 * self.cap
        #: Claim for a lead again once this many or fewer of its rows wait.
        self.refill = max(1, self.cap // 2) if cap is not None else 0
        self.recipients: frozenset[str] = frozenset()

    def usable(self, blocked: Sequence[str]) -> frozenset[str]:
        """The leads a claim may give their allowance (not those behind a breaker)."""
        return self.recipients.difference(blocked)

    def allow(self, busy: Mapping[str, int], leads: frozenset[str]) -> dict[str, int]:
        """What a claim counts against each recipient's cap: ``busy`` (its attempts
        and its rows claimed ahead), less the allowance of a lead (so the claim leases
        it that many more)."""
        allowed = dict(busy)
        for recipient in leads:
            allowed[recipient] = allowed.get(recipient, 0) - self.allowance
        return allowed

    def only_critical_ahead(
        self,
        rows: Sequence[Claimed],
        leads: frozenset[str],
        busy: Mapping[str, int],
        starts: int,
    ) -> tuple[list[Claimed], list[Claimed]]:
        """Of a claim that gave ``leads`` their allowance, the rows that may wait, and
        those to give back.

        Its limit had room for rows claimed ahead, but only critical rows wait ahead of
        a slot or of their recipient's cap, so a critical row arriving later never
        queues behind less urgent ones. A row that is not critical is kept only within
        its recipient's cap and while ``starts`` (the general slots free when the claim
        began) has a slot for it; a lead's last claim may bring others (its critical
        backlog ends), and so may another recipient while the slots are nearly full.
        """
        room = {r: self.cap - busy.get(r, 0) for r in leads}
        kept: list[Claimed] = []
        back: list[Claimed] = []
        for row in rows:
            past_cap = False
            if row.recipient in room:
                room[row.recipient] -= 1
                past_cap = room[row.recipient] < 0
            if row.priority <= _CRITICAL:
                kept.append(row)
            elif not past_cap and starts > 0:
                starts -= 1
                kept.append(row)
            else:
                back.append(row)
        return kept, back

    def learn(self, capped: frozenset[str], left: Mapping[str, int]) -> None:
        """After a claim: a lead stays one while it is at its cap unread (in ``capped``,
        not in ``left``), and a recipient whose rows the claim left behind at its cap
        becomes one if the most urgent of them is critical."""
        self.recipients = frozenset(
            {r for r in self.recipients if r in capped and r not in left}
            | {r for r, priority in left.items() if priority <= _CRITICAL}
        )

    def wants_refill(self, recipient: str, waiting: int) -> bool:
        """Whether a lead with ``waiting`` rows claimed ahead should be claimed for."""
        return recipient in self.recipients and waiting <= self.refill
