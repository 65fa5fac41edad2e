"""One attempt at one delivery: try the providers in order, then decide what happens next.

The attempt sends and classifies; it does not touch the database. Its ``Outcome`` (the new
status, the next attempt time, and one record per provider tried) is written by the
recorder in a batched transaction.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatcher.channels import classify
from dispatcher.channels.base import Channel, OutboundMessage, SendReceipt
from dispatcher.db.states import DeliveryStatus
from dispatcher.errors import (
    DeliveryError,
    ErrorClass,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.outbox.claims import Claimed
from dispatcher.outbox.outcomes import AttemptRecord, Outcome
from dispatcher.resilience.retry import (
    DeadLetter,
    DeadLetterReason,
    RetryPolicy,
    decide,
)
from dispatcher.telemetry import tracing

from .providers import Candidate

#: How long a delivery waits when every breaker refused it and none said when to retry,
#: or when no provider had a connection free for it.
DEFER_SECONDS = 1.0
#: Added to an adapter's own time limit: its phase limits end the try first and say how
#: (busy, timeout, indeterminate); this only stops an adapter bug.
BACKSTOP_SECONDS = 1.0
_MESSAGE_CAP = 500
#: The last error of a delivery dead-lettered for max_age while nothing could be tried.
EXPIRED = "max_age passed while no provider could be tried (breaker open)"
#: The attempt record's outcome for a failure of this class; "failed" for the others.
_OUTCOMES = {
    ErrorClass.BUSY: "not_sent",
    ErrorClass.INDETERMINATE: "indeterminate",
}


async def attempt(
    row: Claimed,
    candidates: Sequence[Candidate],
    *,
    deadline: float,
    policy_for: Callable[[Severity], RetryPolicy],
    open_until: Callable[[], float | None],
    rand: Callable[[], float],
) -> Outcome:
    """Send one claimed delivery through the first provider that takes it.

    A transient failure or an open breaker moves on to the next provider within the same
    attempt (failover); a permanent failure stops at once, since another provider would
    refuse the same message, and so does an indeterminate one (the provider may have
    it): its retry comes later, with the same id. Each provider try has its own
    deadline, so a hanging primary cannot use up the secondary's time. A provider that
    had no connection free (busy) sent nothing: like an open breaker, it is skipped, and
    when no provider sent anything the attempt is given back.
    """
    policy = policy_for(_severity(row))
    if row.attempts > policy.max_attempts:
        # Every claim counts, also one whose lease ran out before its outcome was
        # recorded: once those have spent the budget, sending again would let a stuck
        # path multiply sends without bound.
        return Outcome(
            row.id,
            row.lease_token,
            DeliveryStatus.DEAD,
            error_message="max_attempts spent before this claim (claims never recorded count)",
            dead_reason=DeadLetterReason.MAX_ATTEMPTS.value,
        )
    message = outbound(row)
    records: list[AttemptRecord] = []
    last: DeliveryError | None = None
    busy: DeliveryError | None = None
    for candidate in candidates:
        if not candidate.breaker.allow():
            continue
        channel = candidate.channel
        started, t0 = datetime.now(UTC), time.perf_counter()
        # A webhook's endpoint name comes from configuration; other recipients are PII.
        provider = (
            row.recipient if channel.kind is ChannelKind.WEBHOOK else channel.name
        )
        result = await _try(channel, message, deadline)
        tracing.provider_tried(
            provider=provider,
            outcome="delivered" if isinstance(result, SendReceipt) else "failed",
            error_class=None
            if isinstance(result, SendReceipt)
            else result.error_class.value,
            provider_code=result.provider_code,
        )
        if isinstance(result, SendReceipt):
            candidate.breaker.record_success()
            records.append(
                _record(row, channel.name, started, t0, result.provider_code)
            )
            return Outcome(
                row.id,
                row.lease_token,
                DeliveryStatus.DELIVERED,
                provider=channel.name,
                attempts=tuple(records),
            )
        error = result
        records.append(
            _record(row, channel.name, started, t0, error.provider_code, error)
        )
        if error.error_class is ErrorClass.BUSY:
            candidate.breaker.release()
            busy = error
            continue
        last = error
        if isinstance(error, PermanentDeliveryError):
            # The provider answered; the message is at fault, not the provider.
            candidate.breaker.record_success()
            break
        candidate.breaker.record_failure()
        if error.error_class is ErrorClass.INDETERMINATE:
            # A second copy through the next provider now would be the likeliest
            # duplicate; the retry (same Message-ID) waits at least retry_after.
            break
    if last is None:
        return _deferred(row, None if busy else open_until(), records, busy, policy)
    decision = decide(
        policy,
        attempts=row.attempts,
        created_at=row.created_at,
        now=datetime.now(UTC),
        permanent=isinstance(last, PermanentDeliveryError),
        retry_after=last.retry_after
        if isinstance(last, TransientDeliveryError)
        else None,
        rand=rand,
    )
    common: dict[str, Any] = {
        "error_class": last.error_class.value,
        "error_message": str(last)[:_MESSAGE_CAP],
        "provider": records[-1].provider,
        "attempts": tuple(records),
    }
    if isinstance(decision, DeadLetter):
        return Outcome(
            row.id,
            row.lease_token,
            DeliveryStatus.DEAD,
            dead_reason=decision.reason.value,
            **common,
        )
    return Outcome(
        row.id,
        row.lease_token,
        DeliveryStatus.PENDING,
        next_attempt_at=decision.at,
        **common,
    )


async def _try(
    channel: Channel, message: OutboundMessage, deadline: float
) -> SendReceipt | DeliveryError:
    """One provider try: its receipt, or what went wrong, classified."""
    limit = (
        deadline
        if channel.time_limit is None
        else channel.time_limit + BACKSTOP_SECONDS
    )
    try:
        async with asyncio.timeout(limit):
            return await channel.send(message)
    except TimeoutError:
        return classify.deadline_passed(limit)
    except Exception as exc:  # noqa: BLE001 - an adapter bug must cost a retry, not the delivery
        return classify.exception(exc)


def _deferred(
    row: Claimed,
    wake: float | None,
    records: Sequence[AttemptRecord],
    busy: DeliveryError | None,
    policy: RetryPolicy,
) -> Outcome:
    """Nothing was sent (every breaker open, or no connection free): wait, and give the
    attempt back; or, once the wait would end past ``max_age``, dead-letter it."""
    delay = max(DEFER_SECONDS if wake is None else wake - time.monotonic(), 0.05)
    now = datetime.now(UTC)
    expired = (now - row.created_at).total_seconds() + delay > policy.max_age
    return Outcome(
        row.id,
        row.lease_token,
        DeliveryStatus.DEAD if expired else DeliveryStatus.PENDING,
        next_attempt_at=None if expired else now + timedelta(seconds=delay),
        dead_reason=DeadLetterReason.MAX_AGE.value if expired else None,
        refund=1,
        error_class=None if busy is None else busy.error_class.value,
        error_message=str(busy)[:_MESSAGE_CAP]
        if busy
        else EXPIRED
        if expired
        else None,
        provider=records[-1].provider if records else None,
        attempts=tuple(records),
    )


def _severity(row: Claimed) -> Severity:
    try:
        return Severity(row.payload.get("severity", Severity.INFO))
    except ValueError:
        return Severity.INFO


def _record(  # noqa: PLR0917 - a private constructor helper
    row: Claimed,
    provider: str,
    started: datetime,
    t0: float,
    code: str | None,
    error: DeliveryError | None = None,
) -> AttemptRecord:
    return AttemptRecord(
        attempt=row.attempts,
        provider=provider,
        started_at=started,
        finished_at=datetime.now(UTC),
        outcome=_OUTCOMES.get(error.error_class, "failed") if error else "delivered",
        error_class=error.error_class.value if error else None,
        error_message=str(error)[:_MESSAGE_CAP] if error else None,
        provider_code=code,
        latency_ms=(time.perf_counter() - t0) * 1000,
    )


def outbound(row: Claimed) -> OutboundMessage:
    """The adapter-facing message for one claimed delivery, from the stored event."""
    payload = row.payload
    return OutboundMessage(
        delivery_id=row.id,
        event_id=row.event_id,
        event_type=payload["type"],
        severity=_severity(row),
        occurred_at=payload["occurred_at"],
        subject_id=str(payload["subject"]["id"]),
        recipient=row.recipient,
        data=payload.get("data") or {},
        correlation_id=payload.get("correlation_id"),
        attempt=row.attempts,
        idempotency_key=str(row.id),
        traceparent=row.traceparent,
    )
