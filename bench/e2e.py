"""End-to-end delivery benchmark: RabbitMQ -> dispatcher -> SMTP, Twilio and webhook sinks.

    source scripts/services.sh
    .venv/bin/python bench/e2e.py [--events 10000] [--latency-seconds 15] [--repeat 1]
                                  [--only dispatcher|limit|naive ...] [--replicas 1|2]
                                  [--profile]
                                  [--api-load RATE]

Every event has three recipients (email, SMS, webhook); every webhook goes to ONE endpoint,
the common case (one safety-monitoring system). The sinks (bench/sinks.py) run in a
process of their own and record receipt times. For each scenario, on a fresh database and
fresh exchange and queue names:

- **drain**: ``--events`` events preloaded into the ingest queue, then the replica(s)
  started; rates from the first to the last receipt at the sinks. Events/s counts events
  whose three deliveries all arrived; deliveries/s is per channel (email, SMS, webhook),
  first to last receipt of that channel, and ``webhook_vs_email`` / ``webhook_vs_sms``
  put the webhook's beside the others'.
- **CPU**: user+system seconds of the replica processes (psutil) from their start until
  the last receipt, minus the CPU an idle replica spends starting up (measured on the
  same database right before, with an empty queue), per 10,000 events. PostgreSQL CPU:
  the same for the backends serving the run's database (bench/pg_cpu.py), not
  subtracting their connection start-up; ``rows_delivered`` is what the database records
  as delivered once the sinks have everything.
- **RSS**: peak resident set (``VmHWM``) of each replica; the largest is reported.
- **latency**: with the replica(s) still running, events published one by one at a fixed
  ``--latency-rate`` (200 events/s) for ``--latency-seconds``; latency = last of the event's three receipts
  minus the ``time.time()`` taken just before its publish; PostgreSQL CPU per event of the
  phase as in the drain (``latency.pg_cpu_ms_per_event``, by backend type in
  ``latency_pg_cpu_s_by_backend``).
- **sms down**: the drain again at 1 replica with the SMS sink refusing connections from
  the start; email and webhook deliveries/s against the normal drain.

Settings: the dispatcher runs at its shipped defaults (concurrency, critical reserve,
per-endpoint cap 16, SMTP pool, deadlines, leases, database pool, log level). Every run
changes only what it must to reach the local sinks: email and SMS ``enabled`` with one
provider each at the sink (the relay with ``tls: none``: the sink speaks plain SMTP; the
Twilio account with ``base_url`` at the sink), and the webhook endpoint with
``allow_http`` and ``allow_private_networks: [127.0.0.0/8]`` (the sink is plain HTTP on
loopback, which the destination policy refuses by default). Events are ``critical``.

Scenarios: dispatcher at 1 and 2 replicas, the limit pipeline (bench/limit_pipeline.py:
the dispatcher's essential work hand-written, issue 15) at 1 replica, naive baseline
(bench/naive_delivery.py, no database) at 1 and 2 replicas, dispatcher at 1 replica with
the SMS sink down; ``--only`` (repeatable) picks pipelines. With dispatcher and limit in one
run, ``dispatcher_vs_limit`` gives issue 15's figures as ratios of the medians. With ``--repeat N`` the
scenarios run N times interleaved and the report gives every run and the medians.
``--api-load RATE`` also queries each dispatcher replica's audit API at RATE requests/s
(bench/api_load.py) from the moment it is ready until the end of its latency phase; the
scenario is then named ``...-api-load`` and reports the API's own p50/p99 and failures.
With ``--variant`` (repeatable) every dispatcher scenario runs once per variant, interleaved:
``off`` (tracing off, the default), ``on`` (tracing on, every span exported over OTLP/HTTP
protobuf to a stand-in collector, bench/otlp_sink.py, started by the bench), ``on@0.1``
(the same, head-sampling that fraction of traces), or
``NAME=PATH`` (the dispatcher code of another checkout, e.g. a ``git worktree add``
of an older commit, put first on the replica's ``PYTHONPATH``; tracing off unless NAME
is ``on+LABEL`` or ``on@RATIO+LABEL``).
Results go to ``bench/results/e2e-<date>.json``; ``--profile`` records a py-spy profile of
the (first) 1-replica dispatcher drain to ``bench/results/e2e-dispatcher-drain.folded``
(that run's rates are perturbed by the sampler and kept out of the medians).
``--pg-stats`` adds to each dispatcher and limit drain what PostgreSQL did per event: per
statement (``pg_stat_statements``), per table (rows, HOT updates, bytes) and WAL; it needs a
cluster of its own with ``pg_stat_statements`` preloaded (bench/pg_stats.py). With a
latency phase the figures are that phase's alone (per event published in it), else the
drain's.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import yaml
from api_load import ApiLoad
from ingest import cleanup_broker, drop_database, dsn, fresh_database
from pg_cpu import PgCpu
from pg_stats import PgStats
from proc import Proc, ProcGroup

from dispatcher.events.kinds import ChannelKind
from dispatcher.publisher import Publisher
from dispatcher.testing import make_event

ROOT = Path(__file__).resolve().parents[1]
AMQP = os.environ.get("DISPATCHER_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
CHANNELS = ("email", "sms", "webhook")
RECIPIENTS = [
    {"channel": "email", "to": "crisis-team@example.org"},
    {"channel": "sms", "to": "+15551234567"},
    {"channel": "webhook", "to": "safety-monitor"},
]
SECRET = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SMS_SID = "AC" + "0" * 32
SMS_TOKEN = "bench-token-not-secret"

#: What each run sets, all of it needed to reach the sinks (module docstring): nothing
#: else differs from the shipped defaults.
OVERRIDES = (
    "email: enabled, one relay at the sink (tls none)",
    "sms: enabled, one Twilio-compatible account at the sink (base_url)",
    "webhook: one endpoint at the sink, allow_http, allow_private_networks 127.0.0.0/8",
    "api: port 0 (a free port per replica: two replicas on one machine cannot share 8080)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dispatcher_config(ports: dict[str, int]) -> dict[str, Any]:
    """The shipped defaults, and the sinks to send to (``OVERRIDES``)."""
    return {
        "channels": {
            "email": {
                "enabled": True,
                "providers": [
                    {
                        "name": "relay-1",
                        "host": "127.0.0.1",
                        "port": ports["smtp"],
                        "tls": "none",
                        "from_address": "dispatcher@example.org",
                    }
                ],
            },
            "sms": {
                "enabled": True,
                "providers": [
                    {
                        "name": "twilio-1",
                        "account_sid": SMS_SID,
                        "auth_token": SMS_TOKEN,
                        "from_number": "+15550009999",
                        "base_url": f"http://127.0.0.1:{ports['sms']}",
                    }
                ],
            },
            "webhook": {
                "endpoints": {
                    "safety-monitor": {
                        "url": f"http://127.0.0.1:{ports['webhook']}/safety-monitor",
                        "secrets": [SECRET],
                    }
                },
                "allow_http": True,
                "allow_private_networks": ["127.0.0.0/8"],
            },
        },
    }


#: ``--split``: a dispatcher replica runs as two processes, ingest and the channel
#: workers, so it can use both cores (docs/benchmarks.md).
SPLIT = False
#: ``--pg-stats``: per statement, per table and WAL figures of each drain (bench/pg_stats.py).
PG_STATS = False


class Variant:
    """One way to run the dispatcher replicas: which code, tracing on or off."""

    def __init__(self, spec: str) -> None:
        name, _, path = spec.partition("=")
        mode, _, ratio = name.partition("+")[0].partition("@")
        if not path and mode not in {"off", "on"}:
            raise argparse.ArgumentTypeError(
                f"--variant {spec!r}: off, on, on@RATIO or NAME=PATH"
            )
        self.name = name
        self.root = Path(path).resolve() if path else ROOT
        self.tracing = mode == "on"
        self.ratio = ratio

    def env(self, otlp_port: int) -> dict[str, str]:
        env = {"PYTHONPATH": str(self.root)}
        if self.tracing:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
        else:
            env["OTEL_SDK_DISABLED"] = "true"
        if self.ratio:
            env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = self.ratio
        return env


#: ``python -m`` puts the working directory (this checkout) first on ``sys.path``, ahead of
#: ``PYTHONPATH``: without ``-P`` a ``--variant NAME=PATH`` replica ran this checkout's code.
_NO_CWD = ["-P"]


def replica(kind: str, env: dict[str, str], log: Path) -> Proc | ProcGroup:
    if kind == "dispatcher" and SPLIT:
        module = [sys.executable, *_NO_CWD, "-m", "dispatcher"]
        return ProcGroup(
            [
                Proc(
                    [*module, "serve", "--ingest-only"], env, log, "dispatcher.serving"
                ),
                Proc(
                    [*module, "worker"],
                    env,
                    log.with_suffix(".workers.log"),
                    "dispatcher.serving",
                ),
            ]
        )
    if kind == "dispatcher":
        cmd = [sys.executable, *_NO_CWD, "-m", "dispatcher", "serve"]
        return Proc(cmd, env, log, "dispatcher.serving")
    script = {"naive": "naive_delivery.py", "limit": "limit_pipeline.py"}[kind]
    cmd = [sys.executable, str(ROOT / "bench" / script)]
    return Proc(cmd, env, log, f"{kind}.serving")


class SinkControl:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.http = aiohttp.ClientSession()

    async def get(self, path: str) -> Any:
        async with self.http.get(self.url + path) as r:
            return await r.json()

    async def post(self, path: str) -> None:
        async with self.http.post(self.url + path) as r:
            r.raise_for_status()

    async def wait_counts(
        self, want: dict[str, int], stall: float = 60
    ) -> dict[str, int]:
        """Until every channel has its count; fails after ``stall`` s without progress."""
        last: dict[str, int] = {}
        progress = time.monotonic()
        while True:
            counts: dict[str, int] = await self.get("/count")
            if all(counts[c] >= n for c, n in want.items()):
                return counts
            if counts != last:
                last, progress = counts, time.monotonic()
            elif time.monotonic() - progress > stall:
                raise RuntimeError(f"no progress for {stall:.0f} s: {counts} of {want}")
            await asyncio.sleep(0.05)


async def outbox_snapshot(db: str) -> list[dict[str, Any]]:
    """Where the deliveries are, per channel and status, for a stalled run's report."""
    conn = await asyncpg.connect(dsn(db))
    try:
        rows = await conn.fetch(
            """
            SELECT channel, status, count(*) AS n, max(attempts) AS max_attempts,
                   count(lease_owner) AS leased,
                   min(next_attempt_at) - now() AS earliest_due_in,
                   max(next_attempt_at) - now() AS latest_due_in,
                   array_agg(DISTINCT last_error_class) AS errors
            FROM deliveries GROUP BY channel, status ORDER BY channel, status
            """
        )
    finally:
        await conn.close()
    return [{k: str(v) for k, v in dict(r).items()} for r in rows]


async def delivered_rows(db: str) -> int:
    """Deliveries the run's database records as delivered right after the drain (0 for
    the naive baseline, which stores nothing)."""
    conn = await asyncpg.connect(dsn(db))
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE status = 'delivered'"
            )
        )
    finally:
        await conn.close()


def receipts(dump: dict[str, list[list[Any]]]) -> dict[str, dict[str, float]]:
    """Per channel: event id -> first receipt time."""
    out: dict[str, dict[str, float]] = {}
    for channel in CHANNELS:
        seen: dict[str, float] = {}
        for event_id, at in dump[channel]:
            if event_id is not None and event_id not in seen:
                seen[event_id] = at
        out[channel] = seen
    return out


def delivery_paths(procs: list[Proc | ProcGroup]) -> dict[str, dict[str, int]]:
    """Per channel, over the whole run (drain and latency phase), summed over replicas:
    rows started on the fast path, claim statements and rows they leased, from each
    worker's ``dispatcher.delivery.worker_stopped`` line (absent from older code), which
    it writes as it stops: so this stops the replicas first."""
    paths: dict[str, dict[str, int]] = {}
    for proc in procs:
        proc.stop()
        for line in proc.log.read_text(errors="replace").splitlines():
            if "dispatcher.delivery.worker_stopped" not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            got = paths.setdefault(entry["channel"], {})
            for key in ("fast", "claims", "claimed", "buffered", "given_back"):
                got[key] = got.get(key, 0) + int(entry.get(key, 0))
    return paths


def drain_figures(
    dump: dict[str, list[list[Any]]], ids: list[str]
) -> dict[str, float | int]:
    by = receipts(dump)
    fig: dict[str, float | int] = {}
    all_times = [at for ch in CHANNELS for at in by[ch].values()]
    first = min(all_times)
    full = [
        max(by[ch][e] for ch in CHANNELS)
        for e in ids
        if all(e in by[ch] for ch in CHANNELS)
    ]
    fig["events_fully_delivered"] = len(full)
    if full:
        fig["events_per_s"] = len(full) / (max(full) - first)
    for ch in CHANNELS:
        times = sorted(by[ch].values())
        fig[f"{ch}_delivered"] = len(times)
        fig[f"{ch}_duplicates"] = len(dump[ch]) - len(times)
        if len(times) > 1:
            fig[f"{ch}_per_s"] = len(times) / (times[-1] - times[0])
    fig["deliveries_per_s"] = sum(len(by[ch]) for ch in CHANNELS) / (
        max(all_times) - first
    )
    for other in ("email", "sms"):
        if "webhook_per_s" in fig and f"{other}_per_s" in fig:
            fig[f"webhook_vs_{other}"] = fig["webhook_per_s"] / fig[f"{other}_per_s"]
    return fig


def drain_line(result: dict[str, Any]) -> str:
    """One run's drain, per channel, for reading as it goes."""
    d = result["drain"]
    rates = ", ".join(
        f"{ch} {d[f'{ch}_per_s']:.0f}" for ch in CHANNELS if f"{ch}_per_s" in d
    )
    ratios = ", ".join(
        f"webhook/{o} {d[f'webhook_vs_{o}']:.2f}"
        for o in ("email", "sms")
        if f"webhook_vs_{o}" in d
    )
    return (
        f"{result['scenario']} drain: {d.get('events_per_s', 0):.0f} events/s;"
        f" deliveries/s {rates} ({ratios})"
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def bodies(n: int) -> list[tuple[bytes, str, str | None]]:
    out = []
    for _ in range(n):
        event = make_event(recipients=RECIPIENTS)
        out.append((json.dumps(event).encode(), "crisis.detected", event["event_id"]))
    return out


async def run_scenario(
    kind: str,
    replicas: int,
    n: int,
    *,
    latency_seconds: float,
    latency_rate: float,
    tmp: Path,
    sinks: SinkControl,
    sink_proc: Proc,
    ports: dict[str, int],
    down: str | None = None,
    profile: Path | None = None,
    api_load: float = 0.0,
    variant: Variant | None = None,
) -> dict[str, Any]:
    db = await fresh_database()
    load = ApiLoad(api_load if kind == "dispatcher" else 0.0)
    tag = uuid.uuid4().hex[:8]
    prefix, exchange = f"bench.{tag}", f"bench.notifications.{tag}"
    config = tmp / f"config-{tag}.yaml"
    config.write_text(yaml.safe_dump(dispatcher_config(ports) | load.api_config()))
    env = {
        "DISPATCHER_DATABASE_URL": dsn(db, "postgresql+asyncpg"),
        "DISPATCHER_AMQP_URL": AMQP,
        "DISPATCHER_EXCHANGE": exchange,
        "DISPATCHER_QUEUE_PREFIX": prefix,
        "DISPATCHER_CONFIG": str(config),
        "DISPATCHER_API__PORT": "0",
        "PYTHONPATH": str(ROOT),
        "BENCH_QUEUE": f"{prefix}.ingest",
        "BENCH_SMTP_PORT": str(ports["smtp"]),
        "BENCH_SMS_URL": f"http://127.0.0.1:{ports['sms']}",
        "BENCH_WEBHOOK_URL": f"http://127.0.0.1:{ports['webhook']}/safety-monitor",
        "BENCH_PREFETCH": "64",
        "BENCH_PG_DSN": dsn(db),
    }
    name = f"{kind}-x{replicas}" + (f"-{down}-down" if down else "")
    name += load.suffix
    env.update(variant.env(ports["otlp"]) if variant else {})
    name += f"-{variant.name}" if variant else ""
    result: dict[str, Any] = {"scenario": name, "kind": kind, "replicas": replicas}
    procs: list[Proc | ProcGroup] = []
    try:
        # Declare the topology with a real dispatcher (empty queue), and measure what an
        # idle replica of this kind spends on starting up.
        first = replica("dispatcher", env, tmp / f"{name}-declare.log")
        first.wait_ready()
        if kind != "dispatcher":
            first.stop()
            first = replica(kind, env, tmp / f"{name}-idle.log")
            first.wait_ready()
        await asyncio.sleep(0.5)
        startup_cpu = first.cpu()
        first.stop()
        result["startup_cpu_s"] = startup_cpu
        await sinks.post("/reset")
        async with Publisher(AMQP, exchange) as pub:
            items = bodies(n)
            await pub.publish_many(items, window=512)
        ids = [str(i[2]) for i in items]
        if down:
            await sinks.post(f"/{down}/down")
        sink_cpu0 = sink_proc.cpu()
        pg = PgCpu(db)
        stats = PgStats(db, enabled=PG_STATS and kind != "naive")
        await stats.start()
        await pg.start()
        procs = [replica(kind, env, tmp / f"{name}-{i}.log") for i in range(replicas)]
        spy = None
        if profile is not None:
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    "--pid",
                    str(procs[0].proc.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "-o",
                    str(profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        for p in procs:
            p.wait_ready()
        load.start([p.log for p in procs])
        want = {ch: n for ch in CHANNELS if ch != down}
        try:
            await sinks.wait_counts(want)
        except RuntimeError:
            print(name, "stalled; outbox:", json.dumps(await outbox_snapshot(db)))
            raise
        cpu = sum(p.cpu() for p in procs) - replicas * startup_cpu
        pg_cpu = await pg.stop()
        sink_cpu = sink_proc.cpu() - sink_cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
            result["profiled"] = True
        dump = await sinks.get("/dump")
        result["drain"] = drain_figures(dump, ids)
        result["drain"]["rows_delivered"] = await delivered_rows(db)
        result["drain"]["cpu_s_per_10k_events"] = cpu * 10_000 / n
        result["drain"]["cpu_ms_per_event"] = cpu * 1000 / n
        result["drain"]["pg_cpu_ms_per_event"] = pg_cpu * 1000 / n
        result["pg_cpu_s_by_backend"] = pg.by_type()
        result["drain"]["sink_cpu_s_per_10k_events"] = sink_cpu * 10_000 / n
        result["drain"]["peak_rss_mb"] = max(p.peak_rss_mb() for p in procs)
        counted = n
        if down is None and latency_seconds > 0:
            await stats.start()  # again: with a latency phase, the figures are its own
            pg_lat = PgCpu(db)
            await pg_lat.start()
            result["latency"] = await latency_phase(
                exchange, latency_seconds, latency_rate, sinks, procs
            )
            result["latency"]["pg_cpu_ms_per_event"] = (
                await pg_lat.stop() * 1000 / result["latency"]["events"]
            )
            result["latency_pg_cpu_s_by_backend"] = pg_lat.by_type()
            result["peak_rss_mb"] = max(p.peak_rss_mb() for p in procs)
            counted = result["latency"]["events"]
        result |= await load.stop()
        # Stops the replicas first (their table counters are flushed as they exit).
        result |= await stats.stop(counted, before=[p.stop for p in procs])
        result["paths"] = delivery_paths(procs)
    finally:
        await load.stop()
        for p in procs:
            p.stop()
        if down:
            await sinks.post(f"/{down}/up")
        await drop_database(db)
        await cleanup_broker(prefix, exchange)
        await cleanup_dlq(prefix)
    return result


async def latency_phase(
    exchange: str,
    seconds: float,
    rate: float,
    sinks: SinkControl,
    procs: list[Proc | ProcGroup],
) -> dict[str, float]:
    await sinks.post("/reset")
    total = int(rate * seconds)
    sent: dict[str, float] = {}
    cpu0 = sum(p.cpu() for p in procs)
    async with Publisher(AMQP, exchange) as pub:
        start = time.monotonic()
        for i in range(total):
            event = make_event(recipients=RECIPIENTS)
            body = json.dumps(event).encode()
            sent[event["event_id"]] = time.time()
            await pub.publish(body, "crisis.detected", message_id=event["event_id"])
            delay = start + (i + 1) / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elapsed = time.monotonic() - start
    await sinks.wait_counts(dict.fromkeys(CHANNELS, total))
    cpu = sum(p.cpu() for p in procs) - cpu0
    by = receipts(await sinks.get("/dump"))
    lat = [
        (max(by[ch][e] for ch in CHANNELS) - at) * 1000
        for e, at in sent.items()
        if all(e in by[ch] for ch in CHANNELS)
    ]
    return {
        "events": total,
        "achieved_rate": total / elapsed,
        "p50_ms": statistics.median(lat),
        "p99_ms": pct(lat, 0.99),
        "max_ms": max(lat),
        "cpu_ms_per_event": cpu * 1000 / total,
    }


async def cleanup_dlq(prefix: str) -> None:
    connection = await aio_pika.connect(AMQP)
    channel = await connection.channel()
    for kind in ChannelKind:
        await channel.queue_delete(f"{prefix}.dlq.{kind.value}")
    await channel.exchange_delete(f"{prefix}.dlq")
    await connection.close()


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric figure over the runs of one scenario."""
    out: dict[str, Any] = {}
    for section in ("drain", "latency", "api_load"):
        keys = {k for r in runs for k in r.get(section, {})}
        values = {
            k: [r[section][k] for r in runs if k in r.get(section, {})] for k in keys
        }
        if values:
            out[section] = {k: statistics.median(v) for k, v in sorted(values.items())}
    return out


def scenario_list(
    args: argparse.Namespace,
) -> list[tuple[str, int, str | None, Variant | None]]:
    """(kind, replicas, sink down, variant) for every scenario the arguments select."""
    scenarios: list[tuple[str, int, str | None]] = []
    only = set(args.only or ["dispatcher", "naive", "limit"])
    if "dispatcher" in only:
        scenarios += [("dispatcher", 1, None), ("dispatcher", 2, None)]
    if "limit" in only:
        scenarios.append(("limit", 1, None))
    if "naive" in only:
        scenarios += [("naive", 1, None), ("naive", 2, None)]
    if "dispatcher" in only:
        scenarios.append(("dispatcher", 1, "sms"))
    if args.replicas is not None:
        scenarios = [s for s in scenarios if s[1] == args.replicas and s[2] is None]
    variants: list[Variant | None] = list(args.variant or [None])
    return [
        (kind, n, down, variant if kind == "dispatcher" else None)
        for kind, n, down in scenarios
        for variant in (variants if kind == "dispatcher" else [None])
    ]


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path("/tmp") / f"dispatcher-e2e-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    ports = {c: free_port() for c in ("smtp", "sms", "webhook", "control", "otlp")}
    sink_proc = Proc(
        [sys.executable, str(ROOT / "bench" / "sinks.py")]
        + [f"--{c}-port={p}" for c, p in ports.items() if c != "otlp"],
        {"PYTHONPATH": str(ROOT)},
        tmp / "sinks.log",
        "sinks.ready",
    )
    sink_proc.wait_ready()
    otlp_proc = Proc(
        [
            sys.executable,
            str(ROOT / "bench" / "otlp_sink.py"),
            f"--port={ports['otlp']}",
        ],
        {"PYTHONPATH": str(ROOT)},
        tmp / "otlp.log",
        "otlp.ready",
    )
    otlp_proc.wait_ready()
    sinks = SinkControl(ports["control"])
    scenarios = scenario_list(args)
    runs: list[dict[str, Any]] = []
    try:
        for rep in range(args.repeat):
            for kind, n_replicas, down, variant in scenarios:
                profile = None
                if (
                    args.profile
                    and rep == 0
                    and kind == "dispatcher"
                    and n_replicas == 1
                    and not down
                ):
                    suffix = f"-{variant.name}" if variant else ""
                    profile = (
                        ROOT
                        / "bench"
                        / "results"
                        / f"e2e-dispatcher-drain{suffix}.folded"
                    )
                t0 = time.monotonic()
                r = await run_scenario(
                    kind,
                    n_replicas,
                    args.events,
                    latency_seconds=args.latency_seconds,
                    latency_rate=args.latency_rate,
                    tmp=tmp,
                    sinks=sinks,
                    sink_proc=sink_proc,
                    ports=ports,
                    down=down,
                    profile=profile,
                    api_load=args.api_load,
                    variant=variant,
                )
                r["repeat"] = rep
                r["wall_s"] = time.monotonic() - t0
                runs.append(r)
                print(json.dumps(r), flush=True)
                print(drain_line(r), flush=True)
    finally:
        await sinks.http.close()
        sink_proc.stop()
        otlp_proc.stop()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "events": args.events,
        "latency_seconds": args.latency_seconds,
        "latency_rate": args.latency_rate,
        "repeat": args.repeat,
        "cpus": os.cpu_count(),
        "settings": {"defaults_except": OVERRIDES},
        "runs": runs,
        "median": {},
    }
    for name in dict.fromkeys(r["scenario"] for r in runs):
        clean = [r for r in runs if r["scenario"] == name and not r.get("profiled")]
        report["median"][name] = medians(
            clean or [r for r in runs if r["scenario"] == name]
        )
    normal = report["median"].get("dispatcher-x1", {}).get("drain", {})
    down = report["median"].get("dispatcher-x1-sms-down", {}).get("drain", {})
    if normal and down:
        report["sms_down_ratio"] = {
            ch: down.get(f"{ch}_per_s", 0) / normal[f"{ch}_per_s"]
            for ch in ("email", "webhook")
        }
    naive = report["median"].get("naive-x1", {}).get("drain", {})
    if normal and naive:
        report["ratio_to_naive_x1"] = normal["events_per_s"] / naive["events_per_s"]
    limit = report["median"].get("limit-x1", {})
    if normal and limit:
        report["dispatcher_vs_limit"] = limit_ratios(
            report["median"]["dispatcher-x1"], limit
        )
    return report


def limit_ratios(dispatcher: dict[str, Any], limit: dict[str, Any]) -> dict[str, float]:
    """Issue 15's figures as dispatcher / limit (1 replica, medians of the run)."""
    out: dict[str, float] = {}
    for section, key, name in (
        ("drain", "events_per_s", "events_per_s"),
        ("drain", "cpu_ms_per_event", "cpu_ms_per_event"),
        ("drain", "pg_cpu_ms_per_event", "pg_cpu_ms_per_event"),
        ("drain", "peak_rss_mb", "peak_rss_mb"),
        ("latency", "p50_ms", "p50_ms"),
        ("latency", "p99_ms", "p99_ms"),
        ("latency", "pg_cpu_ms_per_event", "latency_pg_cpu_ms_per_event"),
    ):
        mine, floor = (
            dispatcher.get(section, {}).get(key),
            limit.get(section, {}).get(key),
        )
        if mine is not None and floor:
            out[name] = mine / floor
    p50 = (
        dispatcher.get("latency", {}).get("p50_ms"),
        limit.get("latency", {}).get("p50_ms"),
    )
    if None not in p50:
        out["p50_ms_difference"] = p50[0] - p50[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--latency-rate", type=float, default=200.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--only",
        choices=["dispatcher", "limit", "naive"],
        action="append",
        help="only these pipelines (repeatable); default all three",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        choices=[1, 2],
        help="only the scenarios with this many replicas and every sink up",
    )
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--api-load",
        type=float,
        default=0.0,
        metavar="RATE",
        help="also query each dispatcher replica's audit API at RATE requests/s "
        "(typical list queries, bench/api_load.py) during the drain and latency phases",
    )
    parser.add_argument(
        "--variant",
        type=Variant,
        action="append",
        help="off | on | on@RATIO | NAME=PATH; repeat to interleave (see above)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="run each dispatcher replica as two processes: ingest, channel workers",
    )
    parser.add_argument(
        "--pg-stats",
        action="store_true",
        help="per statement, per table and WAL figures per event of each drain, or of "
        "its latency phase if there is one (bench/pg_stats.py; a cluster of its own "
        "with pg_stat_statements)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    global SPLIT, PG_STATS  # noqa: PLW0603 - bench-wide modes, set once from the command line
    SPLIT = args.split
    PG_STATS = args.pg_stats
    report = asyncio.run(main_async(args))
    out = (
        args.out
        or ROOT / "bench" / "results" / f"e2e-{datetime.now(UTC):%Y%m%d-%H%M}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["median"], indent=1))
    for label, key in (
        ("sms down ratio", "sms_down_ratio"),
        ("dispatcher / limit", "dispatcher_vs_limit"),
        ("ratio to naive", "ratio_to_naive_x1"),
    ):
        if key in report:
            print(label, report[key])
    print(f"written to {out}")


if __name__ == "__main__":
    main()
