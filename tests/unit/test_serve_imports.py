"""What a serving process loads: nothing that only the CLI's other commands, migrations
or the parts of a library we never call need (docs/benchmarks.md, "Peak RSS")."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

#: What a ``dispatcher serve`` process must not import, and why it once did.
NOT_AT_SERVE = {
    # readiness read the migration head through Alembic's ScriptDirectory
    "alembic": "db/revisions.py reads the head",
    "mako": "Alembic's templates",
    # the first SMS went through client.messages: twilio's whole 2010 API tree
    "twilio.rest.api": "channels/sms.py creates the Message through twilio's Version",
    # tracing off: the CLI imported telemetry/setup.py, and the SDK, to find that out
    "opentelemetry.sdk": "telemetry/switch.py decides before the SDK is imported",
    "psutil": "the OpenTelemetry SDK's resources",
}

#: Starts the serving process's parts the way ``dispatcher serve`` builds them (every
#: channel configured, the audit API, tracing as the OTEL_* variables say: off), reads
#: the readiness head and sends one SMS to a local Twilio-compatible server; prints the
#: modules it loaded.
SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path

    import yaml

    import dispatcher.cli  # what `python -m dispatcher` imports
    from dispatcher.app import build_engine
    from dispatcher.channels.sms import build_channels
    from dispatcher.cli.root import traced
    from dispatcher.cli.serve import serve_services
    from dispatcher.health import _head
    from dispatcher.settings import load_settings
    from dispatcher.sinks.twilio import TwilioSink
    from dispatcher.testing import make_message

    SID, TOKEN = "AC" + "0" * 32, "not-a-real-token"

    async def main() -> None:
        async with TwilioSink(SID, TOKEN) as sink:
            config = Path(sys.argv[1])
            config.write_text(yaml.safe_dump({"channels": {
                "email": {"enabled": True, "providers": [{
                    "name": "relay-1", "host": "127.0.0.1", "port": 9, "tls": "none",
                    "from_address": "dispatcher@example.org"}]},
                "sms": {"enabled": True, "providers": [{
                    "name": "twilio-1", "account_sid": SID, "auth_token": TOKEN,
                    "from_number": "+15550009999", "base_url": sink.base_url}]},
                "webhook": {"endpoints": {"monitor": {
                    "url": "http://127.0.0.1:9/hook",
                    "secrets": ["whsec_" + "A" * 32]}},
                    "allow_http": True, "allow_private_networks": ["127.0.0.0/8"]},
            }}))
            cfg = load_settings(config)
            engine = build_engine(cfg, "serve-imports")
            serve_services(cfg, engine)
            _head()
            (sms,) = build_channels(cfg.channels.sms)
            try:
                await sms.send(make_message(recipient="+15557654321"))
            finally:
                await sms.aclose()
            await engine.dispose()

    with traced():
        asyncio.run(main())
    print(json.dumps(sorted(sys.modules)))
    """
)


def test_serve_loads_only_what_it_uses(tmp_path: Path) -> None:
    """Building what ``dispatcher serve`` runs with tracing off, checking readiness's
    schema head and sending an SMS import neither Alembic (nor Mako), nor twilio's 2010
    API tree, nor the OpenTelemetry SDK."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "config.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.splitlines()[-1])
    found = {
        heavy: sorted(m for m in loaded if m == heavy or m.startswith(f"{heavy}."))[:3]
        for heavy in NOT_AT_SERVE
    }
    assert not any(found.values()), {
        heavy: (modules, NOT_AT_SERVE[heavy])
        for heavy, modules in found.items()
        if modules
    }
