"""``dispatcher dlq show`` as text: a delivery, its attempts and its replays."""

from datetime import datetime

from dispatcher.outbox.history import AttemptRow, DeliveryHistory, ReplayLink


def _at(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _attempt(a: AttemptRow) -> str:
    words = [
        f"    #{a.attempt}",
        _at(a.started_at),
        f"{a.lineage:<7}",
        f"{a.outcome:<9}",
        a.provider or "-",
        a.error_class or "-",
    ]
    if a.provider_code:
        words.append(f"code={a.provider_code}")
    if a.replay_id:
        words.append(f"replay={a.replay_id}")
    if a.error_message:
        words.append(f": {a.error_message}")
    return " ".join(words)


def _replay(r: ReplayLink) -> str:
    item = r.state + (f" ({r.skip_reason})" if r.skip_reason else "")
    return (
        f"    {r.replay_id} {_at(r.created_at)} {r.status} item={item} "
        f"by={r.created_by} reason={r.reason!r}"
    )


def story_text(h: DeliveryHistory) -> str:
    """Several lines: the delivery, its event (no payload), attempts, replays."""
    error = f"{h.error_class or '-'} via {h.provider or '-'}"
    if h.error_message:
        error += f": {h.error_message}"
    head = f"delivery {h.id} {h.status} ({h.channel} to {h.recipient})"
    event = f"event {h.event_id} {h.type} {h.severity} subject {h.subject_id}"
    times = [
        f"occurred {_at(h.occurred_at)}",
        f"created {_at(h.created_at)}",
        f"dead {_at(h.dead_at)}",
        f"delivered {_at(h.delivered_at)}",
    ]
    return "\n".join(
        [
            f"{head} priority {h.priority}",
            f"  {event}",
            "  " + ", ".join(times),
            f"  last error: {error}",
            f"  attempts ({h.attempts}):",
            *(_attempt(a) for a in h.timeline),
            f"  replays ({len(h.replays)}):",
            *(_replay(r) for r in h.replays),
        ]
    )
