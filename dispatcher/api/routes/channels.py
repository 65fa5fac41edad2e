"""``/v1/channels``: which channel, provider or endpoint is failing now."""

from fastapi import APIRouter

from dispatcher.api.problems import PROBLEM_RESPONSES
from dispatcher.api.reader import AuditReader
from dispatcher.api.snapshot import ChannelsSnapshot

router = APIRouter(
    prefix="/v1/channels", tags=["channels"], responses=PROBLEM_RESPONSES
)


@router.get("")
async def channels(reader: AuditReader) -> ChannelsSnapshot:
    """Per channel and provider or endpoint: breakers, recent success rate, backlog, dead
    letters. Served from a snapshot refreshed in the background (see `refreshed_at`)."""
    return await reader.state["snapshot"].fresh()
