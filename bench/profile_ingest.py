"""Where the ingest drain's CPU goes, by library layer, from a py-spy folded profile.

    .venv/bin/python bench/profile_ingest.py bench/results/dispatcher-drain.folded

Unlike ``profile_summary.py`` (first matching marker from the outside in), each sample goes
to the innermost frame that matches a layer below: time spent in the JSON encoder called
by the parser counts as "parse: canonical JSON", not as "parse".
"""

import argparse
import collections
from pathlib import Path

#: (layer, markers): checked from the innermost frame outwards; first hit wins.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "aio-pika IncomingMessage + consumer task",
        ("aio_pika/message.py", "aio_pika/queue.py:", "aio_pika/tools.py"),
    ),
    ("parse: pydantic model_validate", ("model_validate",)),
    ("parse: pydantic model_dump", ("model_dump",)),
    ("parse: canonical JSON encode", ("json/encoder.py",)),
    ("parse: JSON decode", ("json/decoder.py", "_no_duplicates")),
    ("parse and route, the rest", ("dispatcher/events/",)),
    ("consumer callback, Incoming", ("ingest/incoming.py", "ingest/consumer.py")),
    ("store: building the rows", ("ingest/store.py",)),
    ("asyncpg (encoding, protocol, transactions)", ("asyncpg/",)),
    ("acker", ("ingest/acker.py",)),
    ("batcher", ("ingest/batcher.py",)),
    ("aiormq / pamqp (frames, tasks)", ("aiormq/", "pamqp/")),
    ("delivery workers (claims)", ("dispatcher/delivery/", "dispatcher/outbox/")),
]
IDLE = ("concurrent/futures/thread.py", "threading.py")


def layers(path: Path) -> tuple[int, list[tuple[str, int]]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or any(marker in stack for marker in IDLE):
            continue
        n = int(count)
        total += n
        layer = "event loop, other"
        for frame in reversed(stack.split(";")):
            hit = next(
                (name for name, ms in LAYERS if any(m in frame for m in ms)), None
            )
            if hit is not None:
                layer = hit
                break
        counts[layer] += n
    return total, counts.most_common()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folded", type=Path)
    total, rows = layers(parser.parse_args().folded)
    print(f"{total} samples (idle thread-pool workers excluded)")
    for name, n in rows:
        print(f"{100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
