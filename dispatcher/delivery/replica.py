"""The name of this replica in leases, breaker audit entries and logs."""

import os
import socket
import uuid


def replica_id() -> str:
    """Names this process in leases and breaker audit entries: host, pid and a nonce."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
