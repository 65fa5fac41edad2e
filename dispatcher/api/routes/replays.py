"""``/v1/replays``: plan, create, watch and cancel dead-letter replays.

The same jobs as ``dispatcher dlq replay`` (docs/operations.md, "Replaying dead
letters"): the filters are one ``DeadFilter``, the set is frozen when the replay is
created, and the delivery service's replay runners requeue it at its rate. Writes need
`dlq:write` and are audited with the token's name; reads need an `audit:read` scope.
"""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Body, Query, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StringConstraints,
)

from dispatcher.api import resources
from dispatcher.api.filters import (
    MAX_AGE_LIMIT,
    ReplayBodyFilters,
    ReplayListQuery,
    ReplayPlanQuery,
    Timestamp,
)
from dispatcher.api.pagination import Page, paginate
from dispatcher.api.problems import PROBLEM_RESPONSES, ApiProblem, Problem
from dispatcher.api.reader import AuditReader, DlqWriter, time_keyset
from dispatcher.outbox import dead, replays

router = APIRouter(prefix="/v1/replays", tags=["replays"], responses=PROBLEM_RESPONSES)

#: Why, for the audit log: not blank, no NUL (PostgreSQL text cannot hold one).
Reason = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        max_length=500,
        pattern=r"^[^\x00]*[^\x00\s][^\x00]*$",
    ),
]


class ReplayRequest(BaseModel):
    """A replay to create: which dead letters, why, and how fast."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    filters: ReplayBodyFilters = Field(default_factory=ReplayBodyFilters)
    # Strict: a JSON false is not 0, nor 1 true (FastAPI validates bodies in lax mode).
    all: StrictBool = Field(
        default=False, description="Required to replay every dead letter (no filter)."
    )
    reason: Reason = Field(description="Why (recorded in the audit log).")
    rate: StrictFloat = Field(
        default=replays.DEFAULT_RATE,
        ge=0,
        le=100_000,
        description="Requeued per second; 0: unthrottled.",
    )
    max_age: Annotated[StrictFloat, Field(ge=0, le=MAX_AGE_LIMIT)] | None = Field(
        default=None, description="Skip events older than this many seconds."
    )
    as_of: Timestamp | None = Field(
        default=None,
        description="Freeze the dead letters dead at or before this time: the plan's "
        "`as_of`, so the set created is the set previewed. Default: now.",
    )


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Reason | None = None


@router.get("/plan", response_model=resources.ReplayPlan)
async def plan_replay(
    reader: AuditReader, q: Annotated[ReplayPlanQuery, Query()]
) -> resources.ReplayPlan:
    """What a replay with these filters would do now (read only); the sample masked
    without `audit:read-pii`."""
    async with reader.driver() as conn:
        plan = await dead.plan(
            conn,
            q.dead_filter(),
            max_age_seconds=q.max_age,
            sample=q.sample,
            masked=not reader.sees_pii,
        )
    await reader.disclosed([s.id for s in plan.sample])
    return resources.replay_plan(plan)


@router.post(
    "",
    response_model=resources.Replay,
    status_code=201,
    responses={201: {"headers": {"Location": {"schema": {"type": "string"}}}}},
)
async def create_replay(
    writer: DlqWriter, body: ReplayRequest, response: Response
) -> resources.Replay:
    """Freeze the dead letters the filters select (as of `as_of`, default now) into a
    replay; the delivery service's runners requeue them at `rate`. Refuses an empty
    filter unless `all`."""
    where = body.filters.dead_filter()
    if where.is_empty() and not body.all:
        raise ApiProblem(
            422,
            "no filter given: name what to replay, or set all: true for every dead letter",
        )
    async with writer.driver(write=True) as conn:
        now = await dead.now(conn)
        replay_id, _ = await replays.create(
            conn,
            where,
            # A later as_of selects what is dead now: nothing can die in the past.
            as_of=min(body.as_of, now) if body.as_of else now,
            by=writer.principal.name,
            reason=body.reason,
            rate=body.rate,
            max_age_seconds=body.max_age,
        )
        row = await replays.get(conn, replay_id)
    if row is None:  # created in the same transaction: cannot happen
        raise ApiProblem(500, "the replay was not recorded")
    response.headers["Location"] = f"{router.prefix}/{replay_id}"
    return resources.replay(row)


@router.get("", response_model=Page[resources.Replay])
async def list_replays(
    reader: AuditReader, q: Annotated[ReplayListQuery, Query()]
) -> Page[resources.Replay]:
    """Replays newest first, with status and counters."""
    before = time_keyset(reader.decode(q.cursor, "replays", {}), UUID)
    async with reader.driver() as conn:
        rows = await replays.recent(conn, q.limit + 1, before)
    page, iterator, done = paginate(
        rows,
        q.limit,
        lambda r: reader.encode("replays", {}, (r.created_at.isoformat(), r.id)),
    )
    return Page(data=[resources.replay(r) for r in page], iterator=iterator, done=done)


@router.get("/{replay_id}", response_model=resources.Replay)
async def get_replay(reader: AuditReader, replay_id: UUID) -> resources.Replay:
    """One replay: status and counters, running or finished."""
    async with reader.driver() as conn:
        row = await replays.get(conn, replay_id)
    if row is None:
        raise ApiProblem(404, "no replay with this id")
    return resources.replay(row)


@router.post(
    "/{replay_id}/cancel",
    response_model=resources.Replay,
    responses={409: {"model": Problem, "description": "The replay is not active"}},
)
async def cancel_replay(
    writer: DlqWriter,
    replay_id: UUID,
    body: Annotated[CancelRequest | None, Body()] = None,
) -> resources.Replay:
    """Stop a replay: nothing more is requeued; what was requeued stays requeued."""
    async with writer.driver(write=True) as conn:
        row = await replays.cancel(
            conn,
            replay_id,
            by=writer.principal.name,
            reason=body.reason if body else None,
        )
        current = row or await replays.get(conn, replay_id)
    if current is None:
        raise ApiProblem(404, "no replay with this id")
    if row is None:
        raise ApiProblem(
            409, f"the replay is not active (it is {current.status}): nothing to cancel"
        )
    return resources.replay(row)
