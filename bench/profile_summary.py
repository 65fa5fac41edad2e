"""Where a replica's CPU goes, from a py-spy ``--format raw`` (folded) profile.

    .venv/bin/python bench/profile_summary.py bench/results/e2e-dispatcher-drain.folded

Samples of idle thread-pool workers (aiohttp's threaded resolver, asyncio's default
executor) are dropped. Each remaining sample goes to the first category, in the order
below, whose marker appears in its stack; the top self-time functions follow.
"""

import argparse
import collections
from pathlib import Path

#: (category, markers): the first category with a marker in the stack wins.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("startup (imports, config)", ("_find_and_load", "load_settings")),
    ("email: building the message (stdlib email)", ("SmtpChannel._build",)),
    ("email: SMTP protocol (aiosmtplib)", ("SmtpChannel.send", "aiosmtplib/")),
    ("sms: twilio client + aiohttp", ("TwilioChannel.send", "twilio/")),
    ("webhook: render, sign, aiohttp POST", ("WebhookChannel.send",)),
    ("attempt bookkeeping (outcome, records)", ("delivery/attempt.py",)),
    ("claim SQL (worker fill)", ("ChannelWorker._fill",)),
    ("recorder SQL (outcomes, attempts)", ("Recorder._run", "outbox/outcomes.py")),
    (
        "ingest (FastStream, parse, batch, store)",
        ("dispatcher/ingest/", "faststream/", "aio_pika/", "aiormq/", "pamqp/"),
    ),
    ("logging", ("structlog/", "logging/__init__")),
    ("asyncpg / SQLAlchemy (outside the above)", ("asyncpg/", "sqlalchemy/")),
    ("aiohttp (outside the above)", ("aiohttp/",)),
    ("worker loop, LISTEN waker", ("delivery/worker.py", "outbox/waker.py")),
]
#: A thread whose innermost frame is one of these is waiting (a thread-pool worker for
#: work, a thread on a lock or an event); a stack that only passes through them (the
#: OpenTelemetry exporter's thread encoding spans, a resolver in the pool) is work.
IDLE = ("concurrent/futures/thread.py", "threading.py")


def summarize(
    path: Path, top: int = 20
) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    by_category: collections.Counter[str] = collections.Counter()
    by_self: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        if not stack or any(marker in leaf for marker in IDLE):
            continue
        n = int(count)
        total += n
        by_self[stack.rsplit(";", 1)[-1]] += n
        category = next(
            (name for name, markers in CATEGORIES if any(m in stack for m in markers)),
            "event loop, other",
        )
        by_category[category] += n
    return total, by_category.most_common(), by_self.most_common(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folded", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    total, categories, functions = summarize(args.folded, args.top)
    print(f"{total} samples (waiting threads excluded)")
    for name, n in categories:
        print(f"{n * 100 / total:5.1f}%  {name}")
    print("top self time:")
    for name, n in functions:
        print(f"{n * 100 / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
