"""Names of everything the dispatcher declares on RabbitMQ, derived in one place."""

from dispatcher.events.kinds import ChannelKind


def ingest_queue(prefix: str) -> str:
    """The quorum queue events are consumed from."""
    return f"{prefix}.ingest"


def ingest_dlx(prefix: str) -> str:
    """The exchange the ingest queue dead-letters to."""
    return f"{prefix}.ingest.dlx"


def ingest_dlq(prefix: str) -> str:
    """The queue behind the ingest DLX; it is consumed too, so nothing can vanish."""
    return f"{prefix}.ingest.dlq"


def channel_dlq(prefix: str, channel: ChannelKind) -> str:
    """The per-channel queue that mirrors dead-lettered deliveries for RabbitMQ tooling."""
    return f"{prefix}.dlq.{channel.value}"


def dlq_exchange(prefix: str) -> str:
    """The direct exchange dead-lettered deliveries are published to (routing key = channel)."""
    return f"{prefix}.dlq"
