"""The fast path: deliveries ingest has just inserted go straight to this replica's workers.

Ingest's batch writer offers the deliveries it is about to insert (``outbox/handoff.py``);
each channel's worker reserves, without waiting, slots for those it can take by the rules
of a claim (``ChannelWorker.reserve``); the insert leases those rows to this replica in the
same transaction, and once it has committed they are attempted at once: no notification,
no claim statement. Rows without a slot are inserted pending and notified, for the claims,
as before; so is everything when the workers are full. A replica that dies after the commit
loses nothing: its leases run out and any replica's claim takes the rows.
"""

from collections.abc import Mapping, Sequence

from dispatcher.delivery.worker import ChannelWorker
from dispatcher.events.kinds import ChannelKind
from dispatcher.outbox.claims import Claimed
from dispatcher.outbox.handoff import Offer


class FastPath:
    """This replica's channel workers, as ingest's ``Handoff``."""

    def __init__(
        self, workers: Mapping[ChannelKind, ChannelWorker], owner: str
    ) -> None:
        self._workers = {kind.value: worker for kind, worker in workers.items()}
        self._owner = owner

    def reserve(self, offers: Sequence[Offer]) -> "HeldSlots | None":
        by_channel: dict[str, list[int]] = {}
        for n, offer in enumerate(offers):
            by_channel.setdefault(offer.channel, []).append(n)
        leases: list[float | None] = [None] * len(offers)
        held: dict[int, tuple[ChannelWorker, Offer]] = {}
        for channel, positions in by_channel.items():
            worker = self._workers.get(channel)
            if worker is None:
                continue
            mine = [(offers[n].recipient, offers[n].priority) for n in positions]
            for i in worker.reserve(mine):
                n = positions[i]
                leases[n] = worker.lease_seconds
                held[n] = (worker, offers[n])
        return HeldSlots(self._owner, leases, held) if held else None


class HeldSlots:
    """The slots one insert holds, by offer position, until it commits or fails."""

    def __init__(
        self,
        owner: str,
        leases: list[float | None],
        held: dict[int, tuple[ChannelWorker, Offer]],
    ) -> None:
        self.owner = owner
        self.leases = leases
        self._held = held
        self._rows: Sequence[tuple[int, Claimed]] = ()

    def leased(self, rows: Sequence[tuple[int, Claimed]]) -> None:
        self._rows = rows

    def start(self) -> None:
        for n, row in self._rows:
            worker, _ = self._held.pop(n)
            worker.launch(row)
        self._rows = ()
        self.release()

    def release(self) -> None:
        for worker, offer in self._held.values():
            worker.unreserve(offer.recipient, offer.priority)
        self._held.clear()
