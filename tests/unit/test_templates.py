"""Template selection and rendering: variables, defaults, errors as permanent deliveries."""

from typing import Any

import pytest
from pydantic import ValidationError

from dispatcher.channels.base import OutboundMessage
from dispatcher.channels.email_config import EmailChannelConfig
from dispatcher.channels.sms_config import SmsChannelConfig
from dispatcher.channels.templates import (
    SMS_MAX_CHARS,
    SUBJECT_MAX_CHARS,
    EmailTemplate,
    check_template,
    render,
    render_email,
    render_sms,
    select,
    variables,
)
from dispatcher.errors import ErrorClass, PermanentDeliveryError
from dispatcher.testing import make_message


def _message(**overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "recipient": "canary-pii@example.org",
        "data": {"score": 0.97, "signal": "self-harm-language"},
        "correlation_id": "corr-7",
    }
    return make_message(**{**values, **overrides})


def test_variables_envelope_and_data() -> None:
    """Envelope fields and data fields (dotted and underscored) are strings."""
    message = _message(
        data={
            "score": 0.5,
            "geo": {"region": "north"},
            "tags": ["a", "b"],
            "none": None,
        }
    )
    values = variables(message)
    assert values["event_type"] == "crisis.detected"
    assert values["severity"] == "critical"
    assert values["event_id"] == str(message.event_id)
    assert values["delivery_id"] == str(message.delivery_id)
    assert values["correlation_id"] == "corr-7"
    assert values["data.score"] == values["data_score"] == "0.5"
    assert values["data.geo.region"] == values["data_geo_region"] == "north"
    assert values["data_tags"] == "a, b"
    assert values["data_none"] == ""
    assert "recipient" not in values


def test_missing_correlation_id_is_empty() -> None:
    """An event without a correlation id renders it as an empty string."""
    assert variables(_message(correlation_id=None))["correlation_id"] == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("$event_type/$severity", "crisis.detected/critical", id="plain"),
        pytest.param("${data.score}", "0.97", id="dotted"),
        pytest.param("$data_score", "0.97", id="underscored"),
        pytest.param("score ${data.score}.", "score 0.97.", id="dotted-then-dot"),
        pytest.param("cost $$5", "cost $5", id="literal-dollar"),
        pytest.param(
            "$subject_id at $occurred_at",
            "person-42 at 2025-03-01T12:00:00+00:00",
            id="envelope",
        ),
    ],
)
def test_render(text: str, expected: str) -> None:
    """Placeholders resolve against the flat mapping."""
    assert render(text, _message()) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("$data_missing", id="missing-data-field"),
        pytest.param("${data.__class__}", id="no-attribute-access"),
        pytest.param("$nope", id="unknown-variable"),
        pytest.param("costs $5", id="bad-placeholder"),
        pytest.param("${unterminated", id="unterminated"),
    ],
)
def test_render_errors_are_permanent_template_errors(text: str) -> None:
    """A template that cannot render is a permanent TEMPLATE error, never a crash."""
    message = _message(data={"score": "canary-value"})
    with pytest.raises(PermanentDeliveryError) as caught:
        render(text, message)
    assert caught.value.error_class is ErrorClass.TEMPLATE
    assert "canary-value" not in str(caught.value)
    assert caught.value.__cause__ is None


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        pytest.param(
            ["*", "crisis.*", "crisis.detected"],
            "crisis.detected",
            "crisis.detected",
            id="exact-wins",
        ),
        pytest.param(
            ["crisis.detected", "crisis.*"],
            "crisis.escalated",
            "crisis.*",
            id="wildcard",
        ),
        pytest.param(
            ["*", "crisis.*"], "crisis.detected", "crisis.*", id="longer-literal"
        ),
        pytest.param(
            ["crisis.*", "crisis.detected.*"],
            "crisis.detected.again",
            "crisis.detected.*",
            id="deeper",
        ),
        pytest.param(["*"], "anything.at.all", "*", id="catch-all"),
        pytest.param(["crisis.*", "wellbeing.*"], "system.heartbeat", None, id="none"),
        pytest.param(
            ["crisis.?etected", "crisis.d*"],
            "crisis.detected",
            "crisis.?etected",
            id="tie-more-literal",
        ),
        pytest.param(
            ["crisis.*", "*isis.de*"],
            "crisis.detected",
            "crisis.*",
            id="tie-first-listed",
        ),
    ],
)
def test_select_most_specific(
    patterns: list[str], event_type: str, expected: str | None
) -> None:
    """The most specific matching pattern wins; exact beats any wildcard."""
    assert select({p: p for p in patterns}, event_type) == expected


def test_render_email_default_is_ids_only() -> None:
    """Without a matching template, the default names ids and never data values."""
    message = _message(data={"note": "canary-data-value"})
    rendered = render_email(
        {"wellbeing.*": EmailTemplate(subject="x", body="y")}, message
    )
    assert rendered.subject == "[critical] crisis.detected"
    assert str(message.event_id) in rendered.body
    assert "person-42" in rendered.body
    assert "canary-data-value" not in rendered.body


def test_render_email_uses_matching_template() -> None:
    """A matching template renders subject and body from the event."""
    templates = {
        "crisis.*": EmailTemplate(
            subject="Alert $subject_id", body="Score ${data.score}"
        ),
        "*": EmailTemplate(subject="generic", body="generic"),
    }
    rendered = render_email(templates, _message())
    assert (rendered.subject, rendered.body) == ("Alert person-42", "Score 0.97")


def test_render_email_subject_is_one_line_and_bounded() -> None:
    """Line breaks in a subject are folded (no header injection) and length is capped."""
    templates = {"*": EmailTemplate(subject="${data.title}", body="b")}
    injected = _message(data={"title": "hi\r\nBcc: x@example.org\n"})
    assert render_email(templates, injected).subject == "hi Bcc: x@example.org"
    long = _message(data={"title": "x" * 1000})
    assert len(render_email(templates, long).subject) == SUBJECT_MAX_CHARS


def test_render_sms_truncates() -> None:
    """SMS text is cut to Twilio's 1600-character limit."""
    text = render_sms("${data.text}", _message(data={"text": "y" * 5000}))
    assert len(text) == SMS_MAX_CHARS


def test_render_sms_default() -> None:
    """The default SMS names severity, type, subject and event id."""
    message = _message()
    text = render_sms(SmsChannelConfig().template, message)
    assert text.startswith("[critical] crisis.detected for person-42")
    assert str(message.event_id) in text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        pytest.param("costs $5", "invalid placeholder", id="bad-placeholder"),
        pytest.param("$recipient", "unknown template variable", id="unknown"),
        pytest.param("${subject}", "unknown template variable", id="unknown-braced"),
    ],
)
def test_check_template_rejects(text: str, error: str) -> None:
    """Configured templates are checked at start-up: syntax and variable names."""
    with pytest.raises(ValueError, match=error):
        check_template(text)


def test_check_template_accepts_known_variables() -> None:
    """Envelope variables and any data field pass the start-up check."""
    text = "$event_type $severity ${data.a.b} $data_c $$"
    assert check_template(text) == text


def test_config_rejects_bad_templates() -> None:
    """A bad template in channel config fails validation and names the key."""
    with pytest.raises(ValidationError, match="subject"):
        EmailChannelConfig(templates={"crisis.*": {"subject": "$oops", "body": "b"}})
    with pytest.raises(ValidationError, match="template"):
        SmsChannelConfig(template="$5")


def test_data_lines_lists_every_data_field() -> None:
    """``$data_lines`` is the whole alert, one field per line, for bodies that show it all."""
    message = _message(data={"score": 0.9, "geo": {"region": "north"}})
    assert variables(message)["data_lines"] == "score: 0.9\ngeo.region: north"
    assert (
        render("Alert:\n$data_lines", message)
        == "Alert:\nscore: 0.9\ngeo.region: north"
    )
