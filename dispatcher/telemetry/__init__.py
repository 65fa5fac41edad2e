"""Metrics (Prometheus), traces (OpenTelemetry) and the ids the logs carry.

A low layer: ingest, delivery, channels and the publisher call into it through small
functions; it imports nothing of ours above ``events`` (docs/observability.md).
"""
