"""What every dispatcher connection to PostgreSQL is told, whatever the server's own
configuration: bounded connect and statement times, and dead-peer detection on both
sides of the socket."""

import socket
from typing import Any

import asyncpg

#: Seconds to open a connection (TCP, TLS and start-up), and the default bound of a
#: statement. Dead connections are found much sooner (below); this bounds the rest.
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 60.0

#: Dead-peer detection on every connection, by both kernels: an idle connection is
#: probed after 10 s, every 5 s, and dropped after 3 unanswered probes (25 s in all).
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
#: Linux: bytes we sent that stay unacknowledged this long fail the connection, so a
#: statement written into a dead path fails instead of waiting for the command timeout.
TCP_USER_TIMEOUT_MS = 15_000
#: The server ends a session that sits in an open transaction this long without a word
#: from us (we died, or the path to us did) and so releases its row locks. Our longest
#: legitimate pause inside a transaction is the dead-letter sweep's 5 s broker publish.
IDLE_IN_TRANSACTION_TIMEOUT = "10s"


def server_settings(application_name: str) -> dict[str, str]:
    """Session settings of every dispatcher connection, sent at start-up: the dispatcher
    protects itself whatever the server's configuration says."""
    return {
        "application_name": application_name,
        # Every statement here is short. With JIT on (PostgreSQL's default) a
        # claim whose estimate crosses jit_above_cost on a large outbox spent
        # ~24 ms compiling to run for 1.5 (docs/benchmarks.md, "Claims").
        "jit": "off",
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT,
        # The server's side of keepalive (ignored on a Unix socket).
        "tcp_keepalives_idle": str(KEEPALIVE_IDLE),
        "tcp_keepalives_interval": str(KEEPALIVE_INTERVAL),
        "tcp_keepalives_count": str(KEEPALIVE_COUNT),
    }


def connect_options(application_name: str = "dispatcher") -> dict[str, Any]:
    """``asyncpg.connect()`` options of every dispatcher connection (pooled or not)."""
    return {
        "timeout": CONNECT_TIMEOUT,
        "command_timeout": COMMAND_TIMEOUT,
        "server_settings": server_settings(application_name),
        "connection_class": KeepaliveConnection,
    }


class KeepaliveConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection with the client's side of dead-peer detection on its socket:
    TCP keepalive, and on Linux ``TCP_USER_TIMEOUT``. asyncpg has no option for either."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The transport is asyncpg's own attribute; tests/integration/test_db_liveness.py
        # reads the options back from a real connection, so a change cannot go unnoticed.
        tune_socket(self._transport.get_extra_info("socket"))


def tune_socket(sock: Any) -> None:
    """Keepalive and user timeout on a TCP socket; a Unix socket is left alone."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS),
    ):
        option = getattr(socket, name, None)  # TCP_USER_TIMEOUT is Linux only
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
