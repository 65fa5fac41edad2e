"""OpenTelemetry spans of the dispatcher: publish, ingest, delivery attempts (provider
tries are events on the attempt's span).

Off unless installed (``telemetry.setup``, from the OTEL_* variables): then every helper
returns before touching OpenTelemetry, so tracing off costs an attribute read per call.
Spans carry ids, names, counts and codes only: never an address, number, token or a
payload field (docs/observability.md lists every attribute).
"""

import contextlib
import functools
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import AbstractContextManager
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:  # the SDK is imported only when tracing is on (telemetry/switch.py)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "dispatcher"
#: The empty context: a span started in it is a root.
_ROOT = Context()


class _State:
    __slots__ = ("drops_unsampled", "provider", "tracer")

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.tracer: trace.Tracer | None = None
        #: The sampler drops every span whose (stored, remote) parent was not sampled.
        self.drops_unsampled = False


#: The process-wide switch: set once at start-up (or by a test), read on every call.
_STATE = _State()


def install(provider: "TracerProvider") -> None:
    """Trace with ``provider`` from now on (``telemetry.setup`` or a test's)."""
    _STATE.provider = provider
    _STATE.tracer = provider.get_tracer(_SCOPE)
    _STATE.drops_unsampled = drops_unsampled_children(provider.sampler)


def uninstall() -> "TracerProvider | None":
    """Stop tracing; returns the provider that was installed (to shut it down)."""
    provider, _STATE.provider, _STATE.tracer = _STATE.provider, None, None
    _STATE.drops_unsampled = False
    return provider


def drops_unsampled_children(sampler: "Sampler") -> bool:
    """Whether ``sampler`` drops every span whose remote parent was not sampled, as the
    SDK's parent-based samplers do (the default, and every ``parentbased_*`` of
    ``OTEL_TRACES_SAMPLER``): then an attempt in an unsampled trace needs no span at all.
    Read from the sampler's public description, so any other sampler is asked per span."""
    # Only with tracing on: a replica with tracing off never imports the SDK.
    from opentelemetry.sdk.trace.sampling import ParentBased  # noqa: PLC0415

    return isinstance(sampler, ParentBased) and (
        ",remoteParentNotSampled:AlwaysOffSampler," in sampler.get_description()  # type: ignore[no-untyped-call]
    )


def provider() -> "TracerProvider | None":
    return _STATE.provider


def enabled() -> bool:
    return _STATE.tracer is not None


class _Parent(NamedTuple):
    """A stored ``traceparent``, parsed: its context, and whether it was sampled."""

    context: Context
    sampled: bool


def _context(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    parent = _parent(traceparent, tracestate)
    return None if parent is None else parent.context


def _parent(traceparent: str | None, tracestate: str | None = None) -> _Parent | None:
    if not traceparent:
        return None
    return _extracted(traceparent, tracestate)


@functools.lru_cache(maxsize=4096)
def _extracted(traceparent: str, tracestate: str | None) -> _Parent | None:
    """The parsed context of a stored ``traceparent``: an event's deliveries share one,
    and a ``Context`` is immutable, so each is parsed once while it is recent."""
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    ctx = _PROPAGATOR.extract(carrier)
    span_context = trace.get_current_span(ctx).get_span_context()
    if not span_context.is_valid:
        return None
    return _Parent(ctx, span_context.trace_flags.sampled)


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, None when there is none."""
    if _STATE.tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def log_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in hex of the current span, for log lines."""
    if _STATE.tracer is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


@contextlib.contextmanager
def producer(
    exchange: str,
    routing_key: str,
    message_id: str | None,
    headers: MutableMapping[str, object],
) -> Iterator[None]:
    """A PRODUCER span around one publish; puts ``traceparent``/``tracestate`` in
    ``headers`` (messaging semantic conventions for RabbitMQ)."""
    tracer = _STATE.tracer
    if tracer is None:
        yield
        return
    attributes: dict[str, str] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "publish",
        "messaging.operation.type": "send",
        "messaging.destination.name": exchange,
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    with tracer.start_as_current_span(
        f"publish {exchange}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        headers.update(carrier)
        yield


class Consumed(Protocol):
    """What an ingest span reads of one message (``ingest.incoming.Incoming``)."""

    @property
    def traceparent(self) -> str | None: ...
    @property
    def tracestate(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def routing_key(self) -> str | None: ...


@contextlib.contextmanager
def ingest_batch(
    batch: Callable[[], Sequence[Consumed]], queue: str
) -> Iterator[Span | None]:
    """A CONSUMER ``process`` span for one ingest transaction (``batch()`` lists its
    messages, called only when tracing is on).

    It links every message's producer context; a batch of one is also that context's
    child, so a lone alert's trace reads publish -> process in one tree.
    """
    tracer = _STATE.tracer
    if tracer is None:
        yield None
        return
    messages = batch()
    contexts = [
        (ctx, message.message_id)
        for message in messages
        if (ctx := _context(message.traceparent, message.tracestate)) is not None
    ]
    attributes: dict[str, str | int] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": queue,
        "messaging.batch.message_count": len(messages),
    }
    parent: Context | None = Context()
    if len(messages) == 1:
        only = messages[0]
        parent = contexts[0][0] if contexts else None
        if only.message_id:
            attributes["messaging.message.id"] = only.message_id
        if only.routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = only.routing_key
    with tracer.start_as_current_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        # Links after the start, and only on a sampled span: a sampler that drops the
        # batch (head sampling) then costs no link per message. The ratio and
        # parent-based samplers do not read links.
        if span.is_recording():
            for ctx, message_id in contexts:
                span.add_link(
                    trace.get_current_span(ctx).get_span_context(),
                    {"messaging.message.id": message_id or ""},
                )
        yield span


#: What ``delivery_attempt`` returns while tracing is off: one shared, reusable context.
_NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def delivery_attempt(
    channel: str,
    *,
    traceparent: str | None,
    delivery_id: str,
    event_id: str,
    attempt: int,
    severity: str,
    replay_id: str | None = None,
) -> AbstractContextManager[Span | None]:
    """A CLIENT span for one attempt at one delivery, in the event's stored trace; the
    adapter's request carries its context (a webhook receiver's ``traceparent``).

    Off, it returns ``_NO_SPAN``: an attribute read, no generator per attempt. In a trace
    whose sampling decision was "drop" (the stored context is not sampled) and with a
    parent-based sampler, no span is started: the stored context itself is made current,
    so logs and the webhook's ``traceparent`` still carry the event's trace id, and the
    SDK's sampler, ids, attributes and span cost nothing (yields None, like off)."""
    tracer = _STATE.tracer
    if tracer is None:
        return _NO_SPAN
    parent = _parent(traceparent)
    if parent is not None and not parent.sampled and _STATE.drops_unsampled:
        return _Current(parent.context, None)
    attributes: dict[str, str | int] = {
        "dispatcher.channel": channel,
        "dispatcher.delivery_id": delivery_id,
        "dispatcher.event_id": event_id,
        "dispatcher.attempt": attempt,
        "dispatcher.severity": severity,
    }
    if replay_id:
        attributes["dispatcher.replay_id"] = replay_id
    span = tracer.start_span(
        f"deliver {channel}",
        context=_ROOT if parent is None else parent.context,
        kind=SpanKind.CLIENT,
        attributes=attributes,
    )
    return _Current(trace.set_span_in_context(span), span)


class _Current:
    """Makes ``context`` current for one attempt, then ends ``span`` (if any).

    What ``start_as_current_span`` does, as a plain class (no generator layers, a few µs
    a span), and an escaping error is its type only: an exception's text may hold what a
    span must not (``record_exception`` would copy it)."""

    __slots__ = ("_context", "_span", "_token")

    def __init__(self, context: Context, span: Span | None) -> None:
        self._context = context
        self._span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span | None:
        self._token = otel_context.attach(self._context)
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
        span = self._span
        if span is None:
            return
        if isinstance(exc, Exception) and span.is_recording():
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


def attempt_ended(
    span: Span | None,
    *,
    status: str,
    provider: str | None,
    error_class: str | None,
) -> None:
    """Record how the attempt ended: the delivery's new status, and why."""
    if span is None or not span.is_recording():
        return
    attributes: dict[str, str] = {"dispatcher.outcome": status}
    if provider:
        attributes["dispatcher.provider"] = provider
    if error_class:
        attributes["error.type"] = error_class
    span.set_attributes(attributes)
    if error_class and status == "dead":
        span.set_status(Status(StatusCode.ERROR, error_class))


def provider_tried(
    *,
    provider: str,
    outcome: str,
    error_class: str | None,
    provider_code: str | None,
) -> None:
    """Record one provider try as a ``send`` event on the current (attempt's) span.

    A try is an event, not a span of its own: a span per try doubled the spans per
    delivery, and its cost (docs/benchmarks.md), for nothing an operator reads that the
    event does not carry (provider, outcome, error class, status code, time).
    """
    if _STATE.tracer is None:
        return
    span = trace.get_current_span()
    if not span.is_recording():
        return
    attributes: dict[str, str] = {
        "dispatcher.provider": provider,
        "dispatcher.outcome": outcome,
    }
    if provider_code:
        attributes["dispatcher.provider_status_code"] = provider_code
    if error_class:
        attributes["error.type"] = error_class
    span.add_event("send", attributes)
