"""The fast path's contract between ingest and this replica's channel workers.

A batch writer that is about to insert deliveries offers them to the workers; each worker
reserves, without waiting, a slot for the offers it can take now (``Reservation.leases``),
and the insert leases those rows to this replica in the same transaction. After the
commit the writer hands the leased rows over (``start``); if the transaction fails it
gives the slots back (``release``). An offer that got no slot is inserted unleased, for
the claims, as before. Here, a layer below both, so neither imports the other.
"""

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from dispatcher.outbox.claims import Claimed


class Offer(NamedTuple):
    """One delivery about to be inserted."""

    channel: str
    recipient: str
    priority: int


class Reservation(Protocol):
    """Slots held for some offers of one insert, until it commits or fails."""

    @property
    def owner(self) -> str:
        """The replica the rows are leased to (``lease_owner``)."""
        ...

    @property
    def leases(self) -> Sequence[float | None]:
        """Per offer, in order: the lease in seconds its row is inserted with, None for
        an offer without a slot (inserted pending)."""
        ...

    def leased(self, rows: Sequence[tuple[int, Claimed]]) -> None:
        """What the insert leased: (offer position, row); not yet committed."""
        ...

    def start(self) -> None:
        """After the commit: attempt the leased rows; give back the other slots."""
        ...

    def release(self) -> None:
        """The insert did not commit: give every slot back."""
        ...


class Handoff(Protocol):
    """Takes new deliveries straight to this replica's channel workers."""

    def reserve(self, offers: Sequence[Offer]) -> Reservation | None:
        """Slots for the offers the workers can take now; None when none."""
        ...
