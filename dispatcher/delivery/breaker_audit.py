"""What a breaker transition leaves behind: a log line, an audit entry and its metrics."""

import structlog

from dispatcher.db.states import AuditKind
from dispatcher.delivery.recorder import Recorder
from dispatcher.events.kinds import ChannelKind
from dispatcher.resilience.breaker import BreakerState
from dispatcher.telemetry import metrics

log = structlog.get_logger("dispatcher.delivery")


class BreakerAudit:
    """The transition hook of every breaker: one log line and one audit entry per change."""

    def __init__(self, recorder: Recorder, owner: str, channel: ChannelKind) -> None:
        self._recorder = recorder
        self._owner = owner
        self._channel = channel

    def __call__(
        self, name: str, old: BreakerState, new: BreakerState, reason: str
    ) -> None:
        metrics.breaker_changed(self._channel.value, name, new.value)
        log.warning(
            "dispatcher.breaker.transition",
            channel=self._channel.value,
            provider=name,
            old=old.value,
            new=new.value,
            reason=str(reason),
        )
        self._recorder.note(
            AuditKind.BREAKER_TRANSITION,
            owner=self._owner,
            channel=self._channel.value,
            provider=name,
            old=old.value,
            new=new.value,
            reason=str(reason),
        )
