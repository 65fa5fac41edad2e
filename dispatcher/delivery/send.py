"""One leased row sent: its log context and span, its attempt, its metrics, and its
outcome handed to the recorder. A channel worker runs one per slot (delivery/worker.py),
for rows it claimed and rows the fast path leased alike."""

from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from dispatcher.db.states import DeliveryStatus
from dispatcher.delivery.attempt import attempt
from dispatcher.delivery.providers import Providers
from dispatcher.delivery.recorder import Recorder
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.outbox.claims import Claimed
from dispatcher.resilience.delivery_policy import ChannelDelivery
from dispatcher.telemetry import metrics, tracing

_SEVERITY = {s.priority: s.value for s in Severity}
_FINAL = frozenset({DeliveryStatus.DELIVERED, DeliveryStatus.DEAD})


async def send(
    row: Claimed,
    *,
    kind: ChannelKind,
    providers: Providers,
    settings: ChannelDelivery,
    recorder: Recorder,
    rand: Callable[[], float],
) -> None:
    """Attempt ``row`` on ``kind``'s providers and hand its outcome to ``recorder``."""
    channel = kind.value
    severity = _SEVERITY.get(row.priority, "info")
    with (
        structlog.contextvars.bound_contextvars(
            delivery_id=str(row.id), event_id=str(row.event_id)
        ),
        tracing.delivery_attempt(
            channel,
            traceparent=row.traceparent,
            delivery_id=str(row.id),
            event_id=str(row.event_id),
            attempt=row.attempts,
            severity=severity,
            replay_id=str(row.replay_id) if row.replay_id else None,
        ) as span,
    ):
        outcome = await attempt(
            row,
            providers.candidates(row.recipient),
            deadline=settings.deadline_seconds,
            policy_for=settings.policy_for,
            open_until=providers.all_open_until,
            rand=rand,
        )
        tracing.attempt_ended(
            span,
            status=outcome.status.value,
            provider=outcome.provider,
            error_class=outcome.error_class,
        )
    final = outcome.status.value if outcome.status in _FINAL else None
    metrics.delivery_attempted(
        channel,
        severity,
        outcome.attempts,
        final=final,
        endpoint=row.recipient if kind is ChannelKind.WEBHOOK else None,
        age_seconds=(datetime.now(UTC) - row.created_at).total_seconds()
        if final == "delivered"
        else None,
    )
    # Logged by the recorder once committed: a claim whose lease ran out may not
    # change the row any more.
    recorder.add(outcome, lease_seconds=settings.lease_seconds)
