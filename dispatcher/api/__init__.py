"""The audit query API: an ASGI application over the dispatcher's records (docs/api.md)."""
