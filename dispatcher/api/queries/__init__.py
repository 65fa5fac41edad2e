"""Every read statement of the audit API, built from allow-listed filters with bound
parameters only (no value from a request is ever interpolated into SQL).

One module per thing read: ``events``, ``deliveries`` (and their attempts), ``records``
(the audit log, rejected messages), ``channels`` (the background snapshot); ``keyset``
holds what they share. Callers use the names below.
"""

from dispatcher.api.queries.channels import (
    channel_backlog,
    dead_letters,
    due_by_priority,
    recent_attempts,
)
from dispatcher.api.queries.deliveries import (
    attempts_of,
    attempts_page,
    count_deliveries,
    deliveries_page,
    deliveries_select,
    delivery,
    event_deliveries,
)
from dispatcher.api.queries.events import event, events_page, events_select
from dispatcher.api.queries.keyset import DETAIL_CAP, Keyset, Rec, plan
from dispatcher.api.queries.records import (
    audit_page,
    event_audit,
    rejected_one,
    rejected_page,
)

__all__ = [
    "DETAIL_CAP",
    "Keyset",
    "Rec",
    "attempts_of",
    "attempts_page",
    "audit_page",
    "channel_backlog",
    "count_deliveries",
    "dead_letters",
    "deliveries_page",
    "deliveries_select",
    "delivery",
    "due_by_priority",
    "event",
    "event_audit",
    "event_deliveries",
    "events_page",
    "events_select",
    "plan",
    "recent_attempts",
    "rejected_one",
    "rejected_page",
]
