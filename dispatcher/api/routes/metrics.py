"""``/metrics``: Prometheus text format, open like the health routes (ids and counts only)."""

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from dispatcher.api.metrics import exposition
from dispatcher.api.reader import api_state

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(request: Request) -> Response:
    """Counters, histograms and gauges of this process and the outbox snapshot."""
    snapshot = api_state(request)["snapshot"]
    await snapshot.fresh()
    body = exposition(snapshot)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
