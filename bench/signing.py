"""CPU per webhook signature: hand-written HMAC against the ``standardwebhooks`` library.

    PYTHONPATH=$PWD .venv/bin/python bench/signing.py [--number 20000] [--repeat 7] [--keys 1]

Three ways sign the same rendered webhook body (``render_body`` of a test message) with
the same ``--keys`` keys and must produce the same ``webhook-signature`` header: this
file's copy of the hand-written code signing.py had before it used the library, the
library itself, and ``signature_headers`` of the tree on ``PYTHONPATH`` (point it at
another checkout to measure that one's). Reported: the best of ``--repeat`` runs of
``--number`` signatures each, in µs per signed request (``timeit`` convention: the
minimum is the least disturbed run).
"""

import argparse
import base64
import functools
import hashlib
import hmac
import json
import os
import timeit
from collections.abc import Callable
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

from dispatcher.channels.signing import signature_headers
from dispatcher.channels.webhook import render_body
from dispatcher.testing import make_message


def hand_written(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """What dispatcher/channels/signing.py did before it used the library."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(k, content, hashlib.sha256).digest()).decode()
        for k in keys
    )


def library(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The library's ``sign`` per key, as ``signature_headers`` calls it."""
    when = datetime.fromtimestamp(timestamp, UTC)
    text = body.decode()
    return " ".join(Webhook(k).sign(msg_id, when, text) for k in keys)


def signed(keys: list[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The header as dispatcher builds it now."""
    return signature_headers(keys, msg_id, timestamp, body)["webhook-signature"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keys", type=int, default=1)
    args = parser.parse_args()
    keys = [os.urandom(32) for _ in range(args.keys)]
    message = make_message()
    body = render_body(message)
    msg_id, timestamp = str(message.delivery_id), 1_700_000_000
    expected = hand_written(keys, msg_id, timestamp, body)
    assert library(keys, msg_id, timestamp, body) == expected
    assert signed(keys, msg_id, timestamp, body) == expected
    report: dict[str, float] = {"body_bytes": len(body), "keys": args.keys}
    ways: dict[str, Callable[[list[bytes], str, int, bytes], str]] = {
        "hand_written": hand_written,
        "library": library,
        "signature_headers": signed,
    }
    for name, sign in ways.items():
        best = min(
            timeit.repeat(
                functools.partial(sign, keys, msg_id, timestamp, body),
                number=args.number,
                repeat=args.repeat,
            )
        )
        report[f"{name}_us"] = round(best / args.number * 1e6, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
