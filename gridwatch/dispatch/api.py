"""The dispatch HTTP API (FastAPI; OpenAPI at /docs and /openapi.json).

(No `from __future__ import annotations` here: FastAPI resolves the local `Auth` dependency
alias from real annotation objects.)

    GET  /api/v1/incidents                     list (a team sees incidents it is or was assigned)
    GET  /api/v1/incidents/{id}                detail: audit trail, sources, deliveries
    POST /api/v1/incidents/{id}/{command}      acknowledge | arrive | resolve | reject | transfer | false_alarm
    POST /api/v1/incidents/{id}/verify         supervisor / operator: closure verification
    POST /api/v1/incidents/{id}/escalate       operator / supervisor: push it up the ladder by hand
    POST /api/v1/incidents/{id}/redispatch     operator / supervisor: assign a returned incident
    POST /api/v1/incidents/{id}/missed         operator / supervisor: camera X showed it at T and no
                                               detector raised it (a hard example; any state but merged)
    GET  /api/v1/deliveries?status=failed      push deliveries and their attempts
    GET  /open311/v2/services.json             Open311 GeoReport v2: what citizens may report
    POST /open311/v2/requests.json             a citizen report (hotline 12345, apps) -> the same loop
    GET  /open311/v2/requests/{id}.json        its status

Authentication: `Authorization: Bearer <token>`; tokens are configured hashed (sha256) with a role
(`dispatch.credentials`). One function, `authorise`, decides what a caller may do. Tokens never
appear in logs, errors or the audit trail.
"""

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from gridwatch.config import ApiCredential
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import UnknownIncident, incident_dict
from gridwatch.dispatch.machine import Command, CommandKind, IllegalTransition, InvalidParams
from gridwatch.dispatch.models import IncidentRow, IncidentSourceRow
from gridwatch.dispatch.routing import NoRoute
from gridwatch.schemas import Category, IncidentCandidate, Location, Severity, SourceKind

log = logging.getLogger(__name__)

__all__ = ["Caller", "authorise", "build_api", "hash_token"]

TEAM_COMMANDS = {"acknowledge", "arrive", "resolve", "reject", "transfer", "false_alarm"}

# Open311 services: what a citizen may report, and the category it becomes.
OPEN311_SERVICES: dict[str, tuple[Category, str, str]] = {
    "dumping": (
        Category.ILLEGAL_DUMPING,
        "乱倒垃圾 Illegal dumping",
        "Rubbish or waste dumped in a public place.",
    ),
    "gathering": (
        Category.GATHERING,
        "人员聚集 Crowd gathering",
        "A crowd gathering that may need attention.",
    ),
    "road": (
        Category.ROAD_BLOCKAGE,
        "道路阻塞 Road blocked",
        "A road or lane blocked by a vehicle or object.",
    ),
    "manhole": (
        Category.MANHOLE_COVER,
        "井盖异常 Manhole cover",
        "A missing, broken or tilted manhole cover.",
    ),
    "water": (Category.WATER_LEVEL, "积水内涝 Flooding", "Standing water or flooding."),
    "bin": (Category.BIN_OVERFLOW, "垃圾桶满溢 Overflowing bin", "A public bin is full or overflowing."),
    "noise": (Category.NOISE, "噪声扰民 Noise", "Noise disturbance."),
    "smoke": (Category.SMOKE, "烟雾 Smoke", "Smoke or a smell of burning."),
}


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Caller(BaseModel):
    name: str
    role: Literal["team", "operator", "supervisor", "viewer", "citizen"]
    node: str | None = None


Action = Literal["read", "team_command", "verify", "escalate", "redispatch", "report", "review", "note"]

REVIEW_COMMANDS = {"confirm", "recategorise", "merge", "missed"}
"""The centre's judgements of a machine's work: a miss too (operators and supervisors only)."""


def command_action(command: str, state: str | None = None) -> Action | None:
    """The `authorise` action a command needs (None: no such command). A false alarm on an
    incident still in review is the centre's dismissal, not a team's report."""
    if command == "false_alarm" and state == "pending_review":
        return "review"
    if command in TEAM_COMMANDS:
        return "team_command"
    if command in REVIEW_COMMANDS:
        return "review"
    return {"verify": "verify", "escalate": "escalate", "redispatch": "redispatch", "note": "note"}.get(
        command
    )


def authorise(caller: Caller, action: Action, chain: tuple[str, ...] | list[str] | None = None) -> None:
    """The one place that decides who may do what. Raises HTTPException(403) with the reason."""
    role = caller.role
    allowed = {
        "read": {"team", "operator", "supervisor", "viewer"},
        "team_command": {"team", "operator", "supervisor"},
        "verify": {"supervisor"},  # closure verification is a supervisor's (or the camera's) call
        "escalate": {"operator", "supervisor"},
        "redispatch": {"operator", "supervisor"},
        "report": {"citizen", "operator", "supervisor", "team"},
        "review": {"operator", "supervisor"},  # confirm, dismiss, merge, recategorise machine alerts
        "note": {"team", "operator", "supervisor"},
    }[action]
    if role not in allowed:
        raise HTTPException(403, f"role {role!r} may not {action.replace('_', ' ')}")
    if role == "team" and chain is not None and caller.node not in chain:
        raise HTTPException(403, f"team {caller.name!r} is not assigned to this incident")


class CommandBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    command_id: str = Field(
        min_length=1, max_length=128, description="Unique per command; a retry reuses it."
    )
    by: str = Field("", max_length=128, description="Team member's name or id.")
    note: str = Field("", max_length=2000, description="Resolution note.")
    reason: str = Field("", max_length=2000, description="Why (reject, transfer, false alarm, escalation).")
    photo: str | None = Field(None, max_length=1000, description="Reference to a photo (resolve).")
    to_node: str | None = Field(None, max_length=64, description="Target node (transfer, redispatch).")
    ok: bool | None = Field(None, description="Verification result (verify).")
    category: str | None = Field(None, max_length=64, description="Corrected category (recategorise).")
    into: str | None = Field(None, max_length=128, description="Incident to merge into (merge).")
    camera_id: str | None = Field(
        None, max_length=128, description="The camera that showed it and raised nothing (missed)."
    )
    at_ms: int | None = Field(
        None, description="When it was visible on that camera, epoch ms (missed; not in the future)."
    )


def build_api(
    core: DispatchCore,
    credentials: list[ApiCredential],
    submit_candidate: Callable[[IncidentCandidate], Awaitable[None]],
) -> FastAPI:
    """The FastAPI app. `submit_candidate` puts citizen reports on the candidates topic."""
    app = FastAPI(
        title="gridwatch dispatch API",
        version="1",
        description="Incidents, team feedback, closure verification and Open311 citizen reports.",
    )
    by_hash = {c.token_sha256: c for c in credentials}
    bearer = HTTPBearer(auto_error=False)

    def caller(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
        if cred is None:
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        digest = hash_token(cred.credentials)
        found = next((c for h, c in by_hash.items() if hmac.compare_digest(h, digest)), None)
        if found is None:
            raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
        return Caller(name=found.name, role=found.role, node=found.node)

    Auth = Annotated[Caller, Depends(caller)]

    async def run(fn: Callable[[], Any]) -> Any:
        # The ledger is synchronous SQL: keep it off the event loop.
        return await asyncio.to_thread(fn)

    def chain_of(iid: str) -> list[str]:
        try:
            return list(core.ledger.incident_row(iid).chain)
        except UnknownIncident as e:
            raise HTTPException(404, str(e)) from None

    async def do(iid: str, kind: CommandKind, who: Caller, body: CommandBody) -> dict[str, Any]:
        actor = "team" if who.role == "team" else who.role
        params = {
            k: v
            for k, v in body.model_dump().items()
            if v not in (None, "") and k not in ("command_id", "by")
        }
        by_node = who.node
        if who.role != "team" and kind.value in TEAM_COMMANDS:
            row = await run(lambda: core.ledger.incident_row(iid))
            if row.state != "pending_review":
                # An operator acting for the team on the phone: recorded as the operator, for the current node.
                actor, by_node = "team", row.node_id
        cmd = Command(
            body.command_id, kind, actor, f"{who.name}:{body.by}" if body.by else who.name, by_node, params
        )  # type: ignore[arg-type]
        try:
            res = await run(lambda: core.command(iid, cmd))
        except UnknownIncident as e:
            raise HTTPException(404, str(e)) from None
        except InvalidParams as e:  # wrong in any state: the request, not the incident
            raise HTTPException(422, str(e)) from None
        except IllegalTransition as e:
            raise HTTPException(409, str(e)) from None
        except KeyError as e:  # unknown target node
            raise HTTPException(422, str(e).strip("'\"")) from None
        row = await run(lambda: core.ledger.incident_row(iid))
        return {
            "duplicate": res.duplicate,
            "changed": bool(res.transition and res.transition.changed),
            "incident": incident_dict(row),
        }

    @app.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "stats": core.stats.__dict__}

    @app.get("/api/v1/incidents", tags=["incidents"])
    async def list_incidents(
        who: Auth, state: str | None = None, node: str | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        authorise(who, "read")

        def q() -> list[dict[str, Any]]:
            with core.ledger.read() as s:
                stmt = select(IncidentRow).order_by(IncidentRow.created_at.desc()).limit(min(limit, 2000))
                if state:
                    stmt = stmt.where(IncidentRow.state == state)
                if node:
                    stmt = stmt.where(IncidentRow.node_id == node)
                rows = [incident_dict(r) for r in s.execute(stmt).scalars()]
            if who.role == "team":
                rows = [r for r in rows if who.node in r["chain"]]
            return rows

        return await run(q)

    @app.get("/api/v1/incidents/{incident_id}", tags=["incidents"])
    async def get_incident(incident_id: str, who: Auth) -> dict[str, Any]:
        authorise(who, "read", chain_of(incident_id))

        def q() -> dict[str, Any]:
            row = core.ledger.incident_row(incident_id)
            cols = lambda r: {c.key: getattr(r, c.key) for c in r.__table__.columns}  # noqa: E731
            return {
                "incident": incident_dict(row),
                "transitions": [cols(t) for t in core.ledger.transitions(incident_id)],
                "sources": [cols(s) for s in core.ledger.sources(incident_id)],
                "deliveries": [cols(d) for d in core.ledger.deliveries(incident_id)],
            }

        return await run(q)

    @app.post("/api/v1/incidents/{incident_id}/verify", tags=["incidents"])
    async def verify(incident_id: str, body: CommandBody, who: Auth) -> dict[str, Any]:
        authorise(who, "verify", chain_of(incident_id))
        if body.ok is None:
            raise HTTPException(422, "verify needs `ok` (true: fixed, close it; false: reopen)")
        return await do(incident_id, CommandKind.VERIFY, who, body)

    @app.post("/api/v1/incidents/{incident_id}/escalate", tags=["incidents"])
    async def escalate(incident_id: str, body: CommandBody, who: Auth) -> dict[str, Any]:
        authorise(who, "escalate", chain_of(incident_id))
        return await do(incident_id, CommandKind.ESCALATE, who, body)

    @app.post("/api/v1/incidents/{incident_id}/redispatch", tags=["incidents"])
    async def redispatch(incident_id: str, body: CommandBody, who: Auth) -> dict[str, Any]:
        authorise(who, "redispatch", chain_of(incident_id))
        return await do(incident_id, CommandKind.REDISPATCH, who, body)

    @app.post("/api/v1/incidents/{incident_id}/{command}", tags=["incidents"])
    async def command(incident_id: str, command: str, body: CommandBody, who: Auth) -> dict[str, Any]:
        """Team commands (acknowledge, arrive, resolve, reject, transfer, false_alarm), review
        decisions (confirm, recategorise, merge; false_alarm while pending review dismisses), misses
        (`camera_id`, `at_ms`, `note`) and notes."""
        known = TEAM_COMMANDS | REVIEW_COMMANDS | {"note"}
        if command not in known:
            raise HTTPException(404, f"unknown command {command!r} (one of: {', '.join(sorted(known))})")
        try:
            row = await run(lambda: core.ledger.incident_row(incident_id))
        except UnknownIncident as e:
            raise HTTPException(404, str(e)) from None
        authorise(who, command_action(command, row.state), list(row.chain))  # type: ignore[arg-type]
        if command == "recategorise" and not body.category:
            raise HTTPException(422, "recategorise needs `category`")
        if command == "merge" and not body.into:
            raise HTTPException(422, "merge needs `into` (an incident id)")
        if command == "note" and not body.note:
            raise HTTPException(422, "note needs `note`")
        if command == "missed" and (not body.camera_id or body.at_ms is None):
            raise HTTPException(
                422, "missed needs `camera_id` (a camera of the config) and `at_ms` (epoch ms it was visible)"
            )
        return await do(incident_id, CommandKind(command), who, body)

    @app.get("/api/v1/deliveries", tags=["pushes"])
    async def deliveries(
        who: Auth, status: str | None = None, incident_id: str | None = None
    ) -> list[dict[str, Any]]:
        authorise(who, "read")
        if who.role == "team":
            raise HTTPException(403, "role 'team' may not list deliveries")

        def q() -> list[dict[str, Any]]:
            out = []
            for d in core.ledger.deliveries(incident_id, status)[-1000:]:
                item = {c.key: getattr(d, c.key) for c in d.__table__.columns if c.key != "payload"}
                item["attempt_log"] = [
                    {"at_ms": a.at_ms, "ok": a.ok, "error": a.error, "duration_ms": a.duration_ms}
                    for a in core.ledger.attempts(d.delivery_id)
                ]
                out.append(item)
            return out

        return await run(q)

    # --- Open311 GeoReport v2 ---------------------------------------------------------------
    @app.get("/open311/v2/services.json", tags=["open311"])
    async def services() -> list[dict[str, Any]]:
        return [
            {"service_code": code, "service_name": name, "description": desc, "metadata": False,
             "type": "realtime", "keywords": cat.value, "group": "city"}
            for code, (cat, name, desc) in OPEN311_SERVICES.items()
        ]  # fmt: skip

    @app.post("/open311/v2/requests.json", tags=["open311"])
    async def post_request(
        request: Request,
        service_code: Annotated[str, Form()],
        lat: Annotated[float, Form()],
        long: Annotated[float, Form()],
        description: Annotated[str, Form()] = "",
        media_url: Annotated[str | None, Form()] = None,
        device_id: Annotated[str | None, Form()] = None,
        api_key: Annotated[str | None, Form()] = None,
    ) -> JSONResponse:
        if service_code not in OPEN311_SERVICES:
            return JSONResponse(
                [{"code": 400, "description": f"service_code {service_code!r} is not offered"}], 400
            )
        if not (-90 <= lat <= 90 and -180 <= long <= 180):
            return JSONResponse([{"code": 400, "description": "lat/long out of range"}], 400)
        who = "anonymous"
        if api_key:
            digest = hash_token(api_key)
            cred = by_hash.get(digest)
            if cred is None:
                return JSONResponse([{"code": 403, "description": "unknown api_key"}], 403)
            who = cred.name
        cat, name, _ = OPEN311_SERVICES[service_code]
        now = core.clock.now_ms()
        grid = core.city.grid_at(long, lat)
        report_id = hashlib.sha1(f"{who}|{device_id}|{lat}|{long}|{description}|{now}".encode()).hexdigest()[
            :16
        ]
        cand = IncidentCandidate(
            candidate_id=IncidentCandidate.make_id("citizen", report_id, "open311", now),
            category=cat,
            severity=Severity.MEDIUM,
            source_kind=SourceKind.CITIZEN,
            source_id=report_id,
            grid_id=grid.id if grid else None,
            location=Location(lon=long, lat=lat),
            observed_at=now,
            raised_at=now,
            rule="open311",
            summary=(description or name)[:500],
            evidence=[{"kind": "photo", "ref": media_url}] if media_url else [],
            details={"service_code": service_code, "submitted_by": who},
        )
        await submit_candidate(cand)
        return JSONResponse([{"service_request_id": cand.candidate_id, "service_notice": "received"}])

    @app.get("/open311/v2/requests/{request_id}.json", tags=["open311"])
    async def get_request(request_id: str) -> JSONResponse:
        def q() -> dict[str, Any] | None:
            with core.ledger.read() as s:
                src = s.get(IncidentSourceRow, request_id)
                if src is None:
                    return None
                row = s.get(IncidentRow, src.incident_id)
                assert row is not None
                closed = row.state in ("closed", "false_alarm", "merged")
                return {
                    "service_request_id": request_id,
                    "status": "closed" if closed else "open",
                    "status_notes": row.state,
                    "service_name": OPEN311_SERVICES.get(
                        src.candidate.get("details", {}).get("service_code", ""), ("", "", "")
                    )[1],
                    "service_code": src.candidate.get("details", {}).get("service_code"),
                    "description": src.summary,
                    "agency_responsible": row.node_id,
                    "requested_datetime": _iso(src.observed_at),
                    "updated_datetime": _iso(row.closed_at or row.assigned_at),
                    "lat": row.lat,
                    "long": row.lon,
                }

        found = await run(q)
        if found is None:
            return JSONResponse([{"code": 404, "description": f"no request {request_id!r} (yet)"}], 404)
        return JSONResponse([found])

    @app.exception_handler(NoRoute)
    async def _no_route(_: Request, exc: NoRoute) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 422)

    return app


def _iso(ms: int | None) -> str | None:
    import datetime as dt

    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat().replace("+00:00", "Z")
