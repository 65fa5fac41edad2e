"""Whether tracing is on, from the standard OTEL_* variables alone.

Read before anything imports the OpenTelemetry SDK (``setup.py``): a process with tracing
off never loads it (the SDK's trace and resource modules, with psutil behind them).
"""

from collections.abc import Mapping


def wanted_exporters(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the OTEL_* variables ask for; empty means tracing off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER")
    if names is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    return [] if wanted in ([], ["none"]) else [n for n in wanted if n != "none"]
