"""Dead-letter deliveries that wait past their ``max_age`` behind an open breaker.

A delivery whose endpoint's breaker is open, or (email, SMS) whose every provider's
breaker is open, is not claimed: it waits without spending attempts. The retry policy's
``max_age`` (no attempt past ``created_at + max_age``) is checked when an attempt fails,
so a breaker that stays open would keep such rows pending for ever, out of the
dead-letter queue and its alerts. While something is blocked, the channel's worker runs
this sweep every ``interval``: the blocked rows past their severity's ``max_age`` are
leased like a claim and handed to the recorder as dead letters (reason ``max_age``,
attempt refunded), so the audit log, the metrics, the logs and the dead-letter mirror see
them like every other dead letter.
"""

import time
from collections.abc import Awaitable, Callable

from dispatcher.db.engine import wrap_db_errors
from dispatcher.db.sql import Executor
from dispatcher.db.states import DeliveryStatus
from dispatcher.delivery.attempt import EXPIRED
from dispatcher.delivery.providers import Providers
from dispatcher.delivery.recorder import Recorder
from dispatcher.events.kinds import ChannelKind, Severity
from dispatcher.outbox.claims import claim_expired
from dispatcher.outbox.outcomes import Outcome
from dispatcher.resilience.delivery_policy import ChannelDelivery
from dispatcher.resilience.retry import DeadLetterReason
from dispatcher.telemetry import metrics

#: At most this often while a breaker is open (a tenth of it at test-sized poll intervals).
SWEEP_SECONDS = 30.0
#: Rows dead-lettered per statement; the next sweep takes the rest at once.
BATCH = 500
_SEVERITY = {s.priority: s.value for s in Severity}


class ExpirySweep:
    """One channel's sweep of blocked rows past their ``max_age``."""

    def __init__(
        self,
        kind: ChannelKind,
        settings: ChannelDelivery,
        *,
        owner: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kind = kind
        self._settings = settings
        self._owner = owner
        self._clock = clock
        self.interval = min(SWEEP_SECONDS, 30 * settings.poll_interval)
        self._next = clock() + self.interval
        self._max_ages = {s.priority: settings.policy_for(s).max_age for s in Severity}

    @staticmethod
    def blocked(providers: Providers) -> list[str] | None:
        """The recipients to sweep (empty: none), or None for the whole channel."""
        if providers.all_open_until() is not None:
            return None
        return providers.blocked_recipients()

    async def run_if_due(
        self,
        conn: Callable[[], Awaitable[Executor]],
        providers: Providers,
        recorder: Recorder,
    ) -> int:
        """Sweep if the interval has passed and something is blocked; rows dead-lettered."""
        now = self._clock()
        if now < self._next:
            return 0
        self._next = now + self.interval
        recipients = self.blocked(providers)
        if recipients == []:
            return 0
        return await self.sweep(await conn(), recipients, recorder)

    async def sweep(
        self, conn: Executor, recipients: list[str] | None, recorder: Recorder
    ) -> int:
        lease = self._settings.lease_seconds
        with wrap_db_errors():
            rows = await claim_expired(
                conn,
                self._kind.value,
                recipients=recipients,
                max_ages=self._max_ages,
                limit=BATCH,
                lease_seconds=lease,
                owner=self._owner,
            )
        for row in rows:
            recorder.add(
                Outcome(
                    row.id,
                    row.lease_token,
                    DeliveryStatus.DEAD,
                    refund=1,
                    error_message=EXPIRED,
                    dead_reason=DeadLetterReason.MAX_AGE.value,
                ),
                lease_seconds=lease,
            )
            metrics.delivery_attempted(
                self._kind.value,
                _SEVERITY.get(row.priority, "info"),
                (),
                final=DeliveryStatus.DEAD.value,
                endpoint=row.recipient if self._kind is ChannelKind.WEBHOOK else None,
            )
        if len(rows) == BATCH:
            self._next = self._clock()
        return len(rows)
