"""``/healthz`` and ``/readyz``: open, for load balancers and orchestrators."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from dispatcher.api.reader import api_state

router = APIRouter(tags=["health"])


class Alive(BaseModel):
    status: str


class ComponentView(BaseModel):
    name: str
    ok: bool
    detail: str


class ReadyView(BaseModel):
    ready: bool
    components: list[ComponentView]


@router.get("/healthz")
async def healthz() -> Alive:
    """The process answers; no dependency is checked."""
    return Alive(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyView,
    responses={503: {"model": ReadyView, "description": "Not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    """PostgreSQL reachable, schema at head, RabbitMQ reachable: 200, else 503."""
    result = await api_state(request)["readiness"].check()
    view = ReadyView(
        ready=result.ready,
        components=[
            ComponentView(name=c.name, ok=c.ok, detail=c.detail)
            for c in result.components
        ],
    )
    return JSONResponse(view.model_dump(), status_code=200 if result.ready else 503)
