"""Leads: an endpoint whose cap is below the worker's slots, left with critical rows
behind at its cap, has its rows claimed ahead of its attempts (up to twice its cap beyond
it), so it is refilled a few claims a cap's worth instead of one claim per attempt or two
(test_claim_ahead_capped.py); other endpoints' rows, of any severity, are claimed beside
it, and only critical rows wait ahead of a slot or a cap (delivery/leads.py)."""

from typing import Any

import pytest

from dispatcher.sinks.webhook import WebhookSink
from tests.delivery.harness import StackFactory, event_to, webhook_channel
from tests.waiting import NotYet, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

CAP = 4


def below_the_slots(sink: WebhookSink, names: list[str], **more: Any) -> Any:
    """Eight slots, none reserved, each endpoint capped at half of them: one endpoint
    never fills the slots, so nothing is claimed ahead channel-wide."""
    settings = {
        "concurrency": 8,
        "critical_reserve": 0,
        "max_inflight_per_recipient": CAP,
        **more,
    }
    return {"webhook": webhook_channel(sink.url, names, **settings)}


async def test_a_lead_holds_up_no_other_endpoint_of_any_severity(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """An endpoint hung at its cap with a critical backlog, rows claimed ahead for it:
    another endpoint's info rows are still claimed and delivered, and the hung one has
    at most its cap plus twice its cap leased."""
    webhook_sink.hang("/slow")
    channels = below_the_slots(
        webhook_sink, ["slow", "fast"], deadline_seconds=30.0, lease_seconds=90.0
    )
    async with stack(channels=channels) as s:
        await s.wait_listening_and_swept()
        slow = await s.publish(
            *[event_to(("webhook", "slow"), severity="critical") for _ in range(40)]
        )

        async def slow_led() -> bool | NotYet:
            received = len(webhook_sink.received_on("/slow"))
            leased = [r for r in await s.deliveries(slow) if r.status == "in_flight"]
            return (received == CAP and len(leased) > CAP) or NotYet(
                (received, len(leased))
            )

        await wait_for(
            slow_led, "the slow endpoint at its cap, claimed ahead", timeout=30
        )
        fast = await s.publish(
            *[event_to(("webhook", "fast"), severity="info") for _ in range(30)]
        )
        await s.wait_final(fast, count=30, timeout=60)
        leased = [r for r in await s.deliveries(slow) if r.status == "in_flight"]
        assert CAP < len(leased) <= 3 * CAP
        assert len(webhook_sink.received_on("/slow")) == CAP
        webhook_sink.clear("/slow")
        webhook_sink.release()
        rows = await s.wait_final([*slow, *fast], count=70, timeout=60)
    assert {r.status for r in rows} == {"delivered"}
    assert webhook_sink.peak_concurrent["/slow"] <= CAP
    assert webhook_sink.duplicates() == []


async def test_a_leads_allowance_leases_only_critical_rows_ahead(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """A hung endpoint with a few critical rows and many info rows behind its cap: the
    critical ones past the cap are claimed ahead, the info ones are not kept leased (a
    critical row arriving later must not queue behind them), and nothing is lost."""
    webhook_sink.hang("/slow")
    channels = below_the_slots(
        webhook_sink, ["slow"], deadline_seconds=30.0, lease_seconds=90.0
    )
    async with stack(channels=channels) as s:
        await s.wait_listening_and_swept()
        critical = await s.publish(
            *[
                event_to(("webhook", "slow"), severity="critical")
                for _ in range(CAP + 2)
            ]
        )
        info = await s.publish(
            *[event_to(("webhook", "slow"), severity="info") for _ in range(20)]
        )

        async def critical_ahead_info_not() -> bool | NotYet:
            leased_critical = [
                r for r in await s.deliveries(critical) if r.status == "in_flight"
            ]
            leased_info = [
                r for r in await s.deliveries(info) if r.status == "in_flight"
            ]
            state = (len(leased_critical), len(leased_info))
            return state == (CAP + 2, 0) or NotYet(state)

        await wait_for(
            critical_ahead_info_not,
            "every critical row leased, no info row",
            timeout=30,
        )
        assert len(webhook_sink.received_on("/slow")) == CAP
        webhook_sink.clear("/slow")
        webhook_sink.release()
        rows = await s.wait_final([*critical, *info], count=CAP + 22, timeout=60)
    assert {r.status for r in rows} == {"delivered"}
    assert webhook_sink.peak_concurrent["/slow"] <= CAP
    assert webhook_sink.duplicates() == []


async def test_a_lead_claim_keeps_no_info_row_waiting_for_a_slot(
    stack: StackFactory, webhook_sink: WebhookSink
) -> None:
    """Slots nearly full (two hung endpoints, one of them a lead with critical rows
    still behind its allowance) when an info backlog arrives for a third: the lead's
    claim, with room for rows claimed ahead, keeps only as many info rows as there are
    free slots; the rest stay due, not leased."""
    for path in ("/lead", "/other", "/late"):
        webhook_sink.hang(path)
    channels = below_the_slots(
        webhook_sink,
        ["lead", "other", "late"],
        deadline_seconds=30.0,
        lease_seconds=90.0,
    )
    async with stack(channels=channels) as s:
        await s.wait_listening_and_swept()
        other = await s.publish(
            *[event_to(("webhook", "other"), severity="info") for _ in range(CAP - 1)]
        )
        lead = await s.publish(
            *[
                event_to(("webhook", "lead"), severity="critical")
                for _ in range(3 * CAP + 4)
            ]
        )

        async def lead_claimed_ahead() -> bool | NotYet:
            received = (
                len(webhook_sink.received_on("/other")),
                len(webhook_sink.received_on("/lead")),
            )
            leased = [r for r in await s.deliveries(lead) if r.status == "in_flight"]
            state = (*received, len(leased))
            return state == (CAP - 1, CAP, 3 * CAP) or NotYet(state)

        await wait_for(lead_claimed_ahead, "a lead claimed ahead", timeout=30)
        # One slot of eight is free.
        late = await s.publish(
            *[event_to(("webhook", "late"), severity="info") for _ in range(10)]
        )

        async def one_late_leased() -> bool | NotYet:
            leased = [r for r in await s.deliveries(late) if r.status == "in_flight"]
            state = (len(webhook_sink.received_on("/late")), len(leased))
            return state == (1, 1) or NotYet(state)

        await wait_for(
            one_late_leased, "one late row sent, no other leased", timeout=30
        )
        for path in ("/lead", "/other", "/late"):
            webhook_sink.clear(path)
        webhook_sink.release()
        rows = await s.wait_final(
            [*other, *lead, *late], count=CAP - 1 + 3 * CAP + 4 + 10, timeout=60
        )
    assert {r.status for r in rows} == {"delivered"}
    assert webhook_sink.duplicates() == []
