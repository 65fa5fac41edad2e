"""The values the tables hold: delivery and replay states, audit kinds (``db/models.py``
has the tables; SQL literals of these are checked by tests/unit/test_sql_literals.py)."""

from enum import StrEnum


class DeliveryStatus(StrEnum):
    """Where a delivery is in its lifecycle (docs/delivery.md has the diagram)."""

    #: Waiting to be claimed once ``next_attempt_at`` has passed.
    PENDING = "pending"
    #: Claimed by a worker; ``next_attempt_at`` is the lease expiry, then it is claimable again.
    IN_FLIGHT = "in_flight"
    #: Accepted by the provider. Final.
    DELIVERED = "delivered"
    #: Dead-lettered: a permanent error or the retry policy ran out. Final until replayed.
    DEAD = "dead"
    #: A dead letter an operator decided not to send (``dispatcher dlq discard``); kept.
    DISCARDED = "discarded"


class AuditKind(StrEnum):
    """Kinds of append-only audit-log entries."""

    #: An event was stored with its deliveries.
    EVENT_RECEIVED = "event.received"
    #: An event was stored but no recipient matched: it reaches nobody.
    EVENT_UNROUTED = "event.unrouted"
    #: The same event_id arrived again with the same content; nothing changed.
    EVENT_DUPLICATE = "event.duplicate"
    #: The same event_id arrived again with different content; the original is kept.
    EVENT_CONFLICT = "event.conflict"
    #: A message was refused and stored in rejected_messages.
    MESSAGE_REJECTED = "message.rejected"
    #: A delivery was dead-lettered.
    DELIVERY_DEAD = "delivery.dead_lettered"
    #: A dead delivery was put back into the queue by an operator.
    DELIVERY_REPLAYED = "delivery.replayed"
    #: An operator created a replay of dead letters (who, filters, count, reason).
    REPLAY_CREATED = "replay.created"
    #: An operator cancelled a replay; what was already requeued stays requeued.
    REPLAY_CANCELLED = "replay.cancelled"
    #: A replay has no delivery left to requeue or to wait for.
    REPLAY_FINISHED = "replay.finished"
    #: A dead letter was discarded by an operator (kept, never deleted).
    DELIVERY_DISCARDED = "delivery.discarded"
    #: An operator started ``rejected replay``: who, why, the filters and the planned
    #: count, committed before the first message is read again.
    REJECTED_REPLAY_STARTED = "message.replay_started"
    #: A rejected ingest message was parsed again by an operator.
    REJECTED_REPLAYED = "message.replayed"
    #: A circuit breaker changed state.
    BREAKER_TRANSITION = "breaker.transition"
    #: The audit API showed unmasked PII to a token with ``audit:read-pii``.
    PII_DISCLOSED = "api.pii_disclosed"
    #: The CLI showed unmasked PII to an operator (``--show-body``, ``--show-recipient``).
    CLI_PII_DISCLOSED = "cli.pii_disclosed"


class ReplayStatus(StrEnum):
    """Where a replay of dead letters is (docs/operations.md, "Replaying dead letters")."""

    #: Created, its deliveries frozen; no runner has picked it up yet.
    PLANNED = "planned"
    #: A runner requeues its deliveries at its rate, or waits for their outcomes.
    RUNNING = "running"
    #: Held: a breaker of a channel it replays to is open.
    PAUSED = "paused"
    #: Stopped by an operator; what was requeued stays requeued. Final.
    CANCELLED = "cancelled"
    #: Every delivery was requeued or skipped, and every requeued one reached an outcome.
    DONE = "done"
    #: The runner gave up (a bug, or the set could not be read). Final.
    FAILED = "failed"


class ReplayItemState(StrEnum):
    """What a replay did with one of its deliveries."""

    #: Not requeued yet.
    WAITING = "waiting"
    #: Put back into the outbox (status pending, fresh attempt budget).
    REQUEUED = "requeued"
    #: Not requeued; ``reason`` says why (too old, recipient reached, cancelled, ...).
    SKIPPED = "skipped"
    #: Requeued and delivered.
    DELIVERED = "delivered"
    #: Requeued and dead-lettered again.
    FAILED_AGAIN = "failed_again"
