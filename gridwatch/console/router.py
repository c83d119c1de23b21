"""The operator console: a FastAPI router with pages, a small JSON API and a live event stream.

    GET  {prefix}/login, POST {prefix}/login, POST {prefix}/logout, POST {prefix}/lang
    GET  {prefix}/                 incident board (filters, deadline ageing, live)
    GET  {prefix}/map              grid map (SVG from the city model, incidents as markers)
    GET  {prefix}/review           incoming incidents to review (keyboard driven)
    GET  {prefix}/incidents/{id}   detail: facts, actions, escalations, audit trail, sources, pushes
    POST {prefix}/incidents/{id}/act          an action from a form (redirects back)
    POST {prefix}/api/incidents/{id}/act      the same from a script (JSON, X-CSRF-Token header)
    GET  {prefix}/incidents/{id}/evidence/{candidate}/{n}   a local snapshot, only under evidence_dir
    GET  {prefix}/api/incidents | summary | markers | review | nodes | city.geojson
    GET  {prefix}/api/incidents/{id}/nearby | cameras   merge suggestions; cameras for a miss report
    GET  {prefix}/events           server-sent events: audit-trail deltas (see feed.py)

Who may do what is decided by `gridwatch.dispatch.api.authorise`, the same function as the HTTP
API's; every command goes through `core.command` with the user's login name as `by`, so it lands
in the audit trail. See docs/CONSOLE.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse
from zoneinfo import ZoneInfo

import shapely
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)

from gridwatch.city import Level
from gridwatch.console import queries
from gridwatch.console.auth import ConsoleUser, LoginThrottle, Session, SessionStore, check_login, csrf_ok
from gridwatch.console.feed import RESYNC, ChangeFeed
from gridwatch.console.i18n import LANGS, Lang, t, tv
from gridwatch.console.pages import (
    PageCtx,
    detail_page,
    e,
    evidence_url,
    frame,
    login_page,
    message_page,
    times_in,
)
from gridwatch.dispatch.api import TEAM_COMMANDS, Caller, authorise, command_action
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import UnknownIncident
from gridwatch.dispatch.machine import Command, CommandKind, IllegalTransition, InvalidParams, apply
from gridwatch.dispatch.models import IncidentRow
from gridwatch.schemas import Category, SourceKind

log = logging.getLogger(__name__)

__all__ = ["ConsoleRouter", "build_console_router"]

STATIC_DIR = Path(__file__).parent / "static"
IMAGE_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
}
SESSION_COOKIE, LANG_COOKIE, LOGIN_COOKIE = "gw_session", "gw_lang", "gw_login"
STATES = (
    "pending_review", "dispatched", "acknowledged", "on_site", "resolved", "returned", "closed", "false_alarm",
    "merged",
)  # fmt: skip
# The order actions appear in on the detail page, and the authorise() action each one needs.
COMMAND_ORDER = (
    "confirm",
    "recategorise",
    "acknowledge",
    "arrive",
    "resolve",
    "verify",
    "escalate",
    "redispatch",
    "transfer",
    "reject",
    "merge",
    "false_alarm",
    "missed",
    "note",
)
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)


def action_of(command: str, state: str | None = None) -> str | None:
    """The `authorise` action a console command needs: the HTTP API's own mapping (review decisions
    - confirm, recategorise, merge, a false alarm while pending review - are `review`; a note is
    `note`), so neither copies the other."""
    return command_action(command, state)


def caller_of(user: ConsoleUser) -> Caller:
    return Caller(name=user.name, role=user.role, node=user.node)


class ConsoleRouter(APIRouter):
    """The router, plus the console's live parts: `close()` ends open event streams (call it when
    the server shuts down; uvicorn otherwise waits for them)."""

    feed: ChangeFeed
    sessions: SessionStore

    def close(self) -> None:
        self.feed.close()


def build_console_router(
    core: DispatchCore,
    users: list[ConsoleUser],
    *,
    timezone: str = "Asia/Shanghai",
    site_name: str = "gridwatch",
    evidence_dir: str | Path | None = None,
    prefix: str = "/console",
    cookie_secure: bool = False,
    grafana_url: str | None = None,
    session_idle_s: float = 8 * 3600,
    poll_interval_s: float = 0.5,
    sse_max_s: float = 300.0,
) -> ConsoleRouter:
    """The console as a router to include in the dispatch API app: `app.include_router(router)`.

    `users`: who may log in (docs/CONSOLE.md); `timezone`: the centre's (config `site.timezone`);
    `evidence_dir`: local snapshots under it are served to logged-in users (file:// evidence refs);
    `cookie_secure`: set the Secure flag (behind HTTPS); `grafana_url`: the centre's Grafana, linked
    from the header (city wall) and each incident (its drill-down); `sse_max_s`: an event stream ends after
    this long and the browser resumes it at once (bounds how long a graceful shutdown waits).
    """
    ZoneInfo(timezone)  # an unknown zone fails here, not on the first page
    city = core.city
    by_name: dict[str, ConsoleUser] = {}
    for u in users:
        if u.name in by_name:
            raise ValueError(f"console users: duplicate name {u.name!r}")
        if u.node is not None and u.node not in city.nodes:
            raise ValueError(
                f"console user {u.name!r}: node {u.node!r} is not in the city model {city.source}"
            )
        by_name[u.name] = u
    ev_dir = Path(evidence_dir).resolve() if evidence_dir else None
    prefix = prefix.rstrip("/")

    router = ConsoleRouter(prefix=prefix, tags=["console"], include_in_schema=False)
    sessions = router.sessions = SessionStore(idle_s=session_idle_s)
    throttle = LoginThrottle()
    feed = router.feed = ChangeFeed(core.ledger, interval_s=poll_interval_s)
    static_v = _static_version()
    geojson_bytes = _city_geojson(city)
    geojson_etag = '"' + hashlib.sha1(geojson_bytes).hexdigest()[:16] + '"'
    nodes_bytes = json.dumps(
        {n.id: [n.level.value, n.parent, n.name_zh, n.name_en or n.name_zh] for n in city.nodes.values()},
        ensure_ascii=False,
    ).encode()

    async def run(fn: Callable[[], Any]) -> Any:
        # The ledger is synchronous SQL: keep it off the event loop.
        return await asyncio.to_thread(fn)

    # --- sessions, language, responses -----------------------------------------------------
    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(SESSION_COOKIE))

    def lang_of(request: Request, sess: Session | None = None) -> Lang:
        if sess is not None:
            return sess.lang
        c = request.cookies.get(LANG_COOKIE)
        return c if c in LANGS else "zh"  # type: ignore[return-value]

    def ctx_of(request: Request, sess: Session | None) -> PageCtx:
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        flash = []
        if sess is not None:
            flash, sess.flash = sess.flash, []
        return PageCtx(
            lang=lang_of(request, sess), prefix=prefix, tz=timezone, site=site_name, now_ms=core.clock.now_ms(),
            static_v=static_v, user=sess.user if sess else None, csrf=sess.csrf if sess else "", flash=flash,
            path=path, grafana=(grafana_url or "").rstrip("/"),
        )  # fmt: skip

    def page(html: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(html, status, headers=_security_headers())

    def set_cookie(resp: Response, name: str, value: str, max_age: int | None = None) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            path=prefix or "/",
            httponly=True,
            samesite="strict",
            secure=cookie_secure,
        )

    def to_login(request: Request) -> RedirectResponse:
        nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{prefix}/login?next={quote(nxt)}", 303)

    def local_path(url: str | None, default: str) -> str:
        # Only paths inside the console: no open redirect to another host (`//evil`, `https:`).
        if url and url.startswith(prefix + "/") and not url.startswith("//") and "\\" not in url:
            return url
        return default

    def api_session(request: Request) -> Session:
        sess = session_of(request)
        if sess is None:
            raise HTTPException(401, "not logged in")
        return sess

    def forbidden_page(request: Request, sess: Session, exc: HTTPException) -> HTMLResponse:
        ctx = ctx_of(request, sess)
        title = t(ctx.lang, "forbidden" if exc.status_code == 403 else "not_found")
        return page(message_page(ctx, title, str(exc.detail)), exc.status_code)

    def board_filter(request: Request, user: ConsoleUser) -> queries.BoardFilter:
        q = request.query_params
        return queries.BoardFilter(
            town=q.get("town") or None, community=q.get("community") or None, grid=q.get("grid") or None,
            category=q.get("category") or None, source=q.get("source") or None,
            state=q.get("state") or "open", level=q.get("level") or None,
            team_node=user.node if user.role == "team" else None,
        )  # fmt: skip

    def incident_or_404(iid: str) -> IncidentRow:
        try:
            return core.ledger.incident_row(iid)
        except UnknownIncident as exc:
            raise HTTPException(404, str(exc)) from None

    # --- log-in / log-out / language ---------------------------------------------------------
    @router.get("/login")
    async def login_form(request: Request, next: str = "", lang: str | None = None) -> Response:
        token = secrets.token_urlsafe(24)
        ctx = ctx_of(request, None)
        if lang in LANGS:
            ctx.lang = lang  # type: ignore[assignment]
        resp = page(login_page(ctx, login_token=token, error=None, name="", next_url=local_path(next, "")))
        set_cookie(resp, LOGIN_COOKIE, token, 3600)
        if lang in LANGS:
            set_cookie(resp, LANG_COOKIE, lang, 365 * 86400)  # type: ignore[arg-type]
        return resp

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))
        ctx = ctx_of(request, None)
        nxt = local_path(str(form.get("next", "")), f"{prefix}/")

        def fail(key: str, status: int) -> Response:
            token = secrets.token_urlsafe(24)
            resp = page(
                login_page(ctx, login_token=token, error=t(ctx.lang, key), name=name, next_url=nxt), status
            )
            set_cookie(resp, LOGIN_COOKIE, token, 3600)
            return resp

        # Double-submit token: a form posted from another site cannot know the cookie's value.
        cookie_token = request.cookies.get(LOGIN_COOKIE, "")
        if not cookie_token or not secrets.compare_digest(cookie_token, str(form.get("login_token", ""))):
            return fail("login_expired", 403)
        if throttle.locked(name):
            return fail("login_locked", 429)
        user = await run(lambda: check_login(by_name, name, password))
        if user is None:
            throttle.failed(name)
            log.info("console: failed log-in for %r", name)
            return fail("login_bad", 401)
        throttle.succeeded(name)
        c = request.cookies.get(LANG_COOKIE)
        sess = sessions.create(user, c if c in LANGS else None)  # type: ignore[arg-type]
        log.info("console: %s (%s) logged in", user.name, user.role)
        resp = RedirectResponse(nxt, 303)
        set_cookie(resp, SESSION_COOKIE, sess.sid)
        resp.delete_cookie(LOGIN_COOKIE, path=prefix or "/")
        return resp

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        sess = session_of(request)
        if sess is not None:
            form = await request.form()
            if not csrf_ok(sess, str(form.get("csrf", ""))):
                return page(
                    message_page(ctx_of(request, sess), t(sess.lang, "forbidden"), t(sess.lang, "err_csrf")),
                    403,
                )
            sessions.drop(sess.sid)
        resp = RedirectResponse(f"{prefix}/login", 303)
        resp.delete_cookie(SESSION_COOKIE, path=prefix or "/")
        return resp

    @router.post("/lang")
    async def set_lang(request: Request) -> Response:
        sess = session_of(request)
        if sess is None:
            return to_login(request)
        form = await request.form()
        if not csrf_ok(sess, str(form.get("csrf", ""))):
            return page(
                message_page(ctx_of(request, sess), t(sess.lang, "forbidden"), t(sess.lang, "err_csrf")), 403
            )
        lang = str(form.get("lang", ""))
        if lang in LANGS:
            sess.lang = lang  # type: ignore[assignment]
        resp = RedirectResponse(local_path(str(form.get("back", "")), f"{prefix}/"), 303)
        set_cookie(resp, LANG_COOKIE, sess.lang, 365 * 86400)
        return resp

    # --- pages ---------------------------------------------------------------------------------
    def simple_page(request: Request, name: str, title_key: str, body: Callable[[PageCtx], str]) -> Response:
        sess = session_of(request)
        if sess is None:
            return to_login(request)
        try:
            authorise(caller_of(sess.user), "read")
        except HTTPException as exc:
            return forbidden_page(request, sess, exc)
        ctx = ctx_of(request, sess)
        return page(frame(ctx, title=t(ctx.lang, title_key), body=body(ctx), page=name))

    @router.get("", include_in_schema=False)
    async def root_redirect() -> Response:
        return RedirectResponse(f"{prefix}/", 307)

    @router.get("/")
    async def board(request: Request) -> Response:
        return simple_page(request, "board", "nav_board", _board_body)

    @router.get("/map")
    async def map_page(request: Request) -> Response:
        return simple_page(request, "map", "nav_map", _map_body)

    @router.get("/review")
    async def review_page(request: Request) -> Response:
        return simple_page(request, "review", "nav_review", _review_body)

    @router.get("/incidents/{incident_id}")
    async def detail(request: Request, incident_id: str) -> Response:
        sess = session_of(request)
        if sess is None:
            return to_login(request)
        who = caller_of(sess.user)
        try:
            row = await run(lambda: incident_or_404(incident_id))
            authorise(who, "read", row.chain)
        except HTTPException as exc:
            return forbidden_page(request, sess, exc)

        def q() -> tuple[Any, ...]:
            trs = core.ledger.transitions(incident_id)
            srcs = core.ledger.sources(incident_id)
            dels = [(d, core.ledger.attempts(d.delivery_id)) for d in core.ledger.deliveries(incident_id)]
            return trs, srcs, dels, allowed_commands(who, row)

        trs, srcs, dels, allowed = await run(q)
        ctx = ctx_of(request, sess)
        acting_for = sess.user.role != "team" and any(
            c in TEAM_COMMANDS and actor_for(who, c, row)[0] == "team" for c in allowed
        )
        cmd_id = f"console-{secrets.token_hex(12)}"  # one per rendered form: a double submit is a duplicate
        return page(detail_page(ctx, city, row, trs, srcs, dels, allowed, cmd_id, acting_for))

    def allowed_commands(who: Caller, row: IncidentRow) -> list[str]:
        """The commands this user may give now: authorise() says whether the role may, and a dry run
        of the pure state machine whether the incident's state allows it (one source of truth each)."""
        inc = core.ledger.incident(row.incident_id)
        plan = core.router.plan(row.rule_index)
        other = next(n for n in city.nodes if n != row.node_id)
        other_cat = next(c.value for c in Category if c.value != row.category)
        now = core.clock.now_ms()
        cameras = [f.source.id for f in core.cfg.cameras.feeds]
        out = []
        for cmd in COMMAND_ORDER:
            if cmd == "missed" and not cameras:
                continue  # the API refuses any camera that is not configured: nothing to report
            try:
                authorise(who, action_of(cmd, row.state), row.chain)  # type: ignore[arg-type]
            except HTTPException:
                continue
            actor, by_node = actor_for(who, cmd, row)
            params = {"reason": "-", "note": "-", "ok": True, "to_node": other, "into": "dry-run-other",
                      "category": other_cat, "from_category": row.category, "rule_index": row.rule_index,
                      "platform": row.platform, "camera_id": cameras[0] if cameras else "-",
                      "at_ms": now}  # fmt: skip
            try:
                apply(inc, Command("dry-run", CommandKind(cmd), actor, who.name, by_node, params), now, plan)  # type: ignore[arg-type]
            except IllegalTransition:
                continue
            except Exception:  # unexpected: offer it, the real command will say what is wrong
                pass
            out.append(cmd)
        return out

    def actor_for(who: Caller, cmd: str, row: IncidentRow) -> tuple[str, str | None]:
        if who.role == "team":
            return "team", who.node
        if cmd in TEAM_COMMANDS and not (cmd == "false_alarm" and row.state == "pending_review"):
            # An operator acting for the team (feedback by phone), as the HTTP API records it:
            # actor team, for the node now responsible, `by` the operator.
            return "team", row.node_id
        return who.role, None

    # --- actions -------------------------------------------------------------------------------
    async def act(sess: Session, iid: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Authorise and apply one command. Raises HTTPException (403, 404, 409, 422)."""
        user, who = sess.user, caller_of(sess.user)
        command = str(fields.get("command", ""))
        if action_of(command) is None:
            raise HTTPException(422, f"unknown command {command!r}")
        row = await run(lambda: incident_or_404(iid))
        authorise(who, action_of(command, row.state), row.chain)  # type: ignore[arg-type]
        actor, by_node = actor_for(who, command, row)
        params: dict[str, Any] = {"via": "console"}
        for k in ("note", "reason", "to_node", "category", "into"):
            v = str(fields.get(k) or "").strip()[:2000]
            if v:
                params[k] = v
        if command == "recategorise" and params.get("category") not in {c.value for c in Category}:
            raise HTTPException(422, f"unknown category {params.get('category')!r}")
        if command == "merge" and "into" in params:
            try:
                target = await run(lambda: core.ledger.incident_row(params["into"]))
            except UnknownIncident:
                raise HTTPException(422, f"no incident {params['into']!r}") from None
            authorise(who, "read", target.chain)  # a team may not merge into what it may not see
        if command == "missed":
            params.update(missed_fields(fields))
        if command == "verify":
            ok = fields.get("ok")
            if ok in (None, ""):
                raise HTTPException(422, "verify needs ok (1: fixed, close it; 0: reopen)")
            params["ok"] = ok in (True, 1, "1", "true", "on")
        if who.role != "team" and actor == "team":
            params["on_behalf_of"] = row.node_id
        cmd_id = str(fields.get("command_id") or f"console-{secrets.token_hex(12)}")[:128]
        cmd = Command(cmd_id, CommandKind(command), actor, user.name, by_node, params)  # type: ignore[arg-type]
        try:
            res = await run(lambda: core.command(iid, cmd))
        except UnknownIncident as exc:
            raise HTTPException(404, str(exc)) from None
        except InvalidParams as exc:  # wrong in any state (a miss's camera or time): the API's 422
            raise HTTPException(422, str(exc)) from None
        except IllegalTransition as exc:
            raise HTTPException(409, str(exc)) from None
        except KeyError as exc:  # unknown target node
            raise HTTPException(422, str(exc).strip("'\"")) from None
        log.info("console: %s %s %s -> %s", user.name, command, iid, res.incident.state.value)
        feed.poke()  # the user's own change shows at once, not at the next poll
        return {"ok": True, "command": command, "duplicate": res.duplicate, "state": res.incident.state.value}

    @router.post("/incidents/{incident_id}/act")
    async def act_form(request: Request, incident_id: str) -> Response:
        sess = session_of(request)
        if sess is None:
            return to_login(request)
        form = dict(await request.form())
        L = sess.lang
        if not csrf_ok(sess, str(form.get("csrf", ""))):
            return page(message_page(ctx_of(request, sess), t(L, "forbidden"), t(L, "err_csrf")), 403)
        back = f"{prefix}/incidents/{quote(incident_id)}"
        try:
            res = await act(sess, incident_id, form)
        except HTTPException as exc:
            if exc.status_code in (401, 403, 404):
                return forbidden_page(request, sess, exc)
            unknown_node = exc.status_code == 422 and form.get("command") != "missed"
            key = "err_unknown_node" if unknown_node else "err_illegal"
            sess.flash.append(("error", t(L, key, why=exc.detail)))
            return RedirectResponse(back, 303)
        msg = t(L, "done_dup") if res["duplicate"] else t(L, "done_ok", cmd=tv(L, "cmd", res["command"]))
        sess.flash.append(("ok", msg))
        return RedirectResponse(back, 303)

    @router.post("/api/incidents/{incident_id}/act")
    async def act_json(request: Request, incident_id: str) -> JSONResponse:
        sess = api_session(request)
        if not csrf_ok(sess, request.headers.get("x-csrf-token")):
            raise HTTPException(403, "missing or wrong CSRF token")
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(422, "body must be JSON") from None
        if not isinstance(body, dict):
            raise HTTPException(422, "body must be a JSON object")
        return JSONResponse(await act(sess, incident_id, body))

    # --- evidence ------------------------------------------------------------------------------
    @router.get("/incidents/{incident_id}/evidence/{candidate_id}/{n}")
    async def evidence(request: Request, incident_id: str, candidate_id: str, n: int) -> Response:
        sess = api_session(request)
        row = await run(lambda: incident_or_404(incident_id))
        authorise(caller_of(sess.user), "read", row.chain)
        srcs = await run(lambda: core.ledger.sources(incident_id))
        src = next((s for s in srcs if s.candidate_id == candidate_id), None)
        if src is None or not 0 <= n < len(src.evidence or []):
            raise HTTPException(404, "no such evidence")
        path = evidence_path(str(src.evidence[n].get("ref") or ""))
        return FileResponse(
            path,
            media_type=IMAGE_TYPES[path.suffix.lower()],
            headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
                     "Cache-Control": "private, max-age=3600"},
        )  # fmt: skip

    def evidence_path(ref: str) -> Path:
        """The local file a file:// reference names, if it is an image under evidence_dir (403 otherwise)."""
        u = urlparse(ref)
        if u.scheme.lower() != "file" or u.netloc not in ("", "localhost"):
            raise HTTPException(404, "not a local file reference")
        if ev_dir is None:
            raise HTTPException(404, "no evidence directory is configured")
        raw = Path(unquote(u.path))
        if not raw.is_absolute():
            raise HTTPException(403, "evidence path must be absolute")
        # resolve() follows symlinks and removes `..`, so the containment check sees the real file.
        real = raw.resolve()
        if not real.is_relative_to(ev_dir):
            log.warning("console: refused evidence outside %s: %s", ev_dir, ref[:200])
            raise HTTPException(403, "outside the evidence directory")
        if real.suffix.lower() not in IMAGE_TYPES:
            raise HTTPException(403, "not an image")
        if not real.is_file():
            raise HTTPException(404, "evidence file not found")
        return real

    # --- JSON for the scripts ----------------------------------------------------------------------
    def read_session(request: Request) -> Session:
        sess = api_session(request)
        authorise(caller_of(sess.user), "read")
        return sess

    @router.get("/api/incidents")
    async def api_incidents(
        request: Request, offset: int = 0, limit: int = 100, order: str = "due"
    ) -> JSONResponse:
        sess = read_session(request)
        f = board_filter(request, sess.user)
        total, rows = await run(
            lambda: queries.board_page(core.ledger, f, offset=offset, limit=limit, order=order)
        )
        return JSONResponse({"total": total, "offset": offset, "rows": rows, "now_ms": core.clock.now_ms()})

    @router.get("/api/summary")
    async def api_summary(request: Request) -> JSONResponse:
        sess = read_session(request)
        f = board_filter(request, sess.user)
        now = core.clock.now_ms()
        out = await run(lambda: queries.summary(core.ledger, f, now))
        return JSONResponse({**out, "now_ms": now})

    @router.get("/api/markers")
    async def api_markers(request: Request) -> JSONResponse:
        sess = read_session(request)
        f = board_filter(request, sess.user)
        rows = await run(lambda: queries.markers(core.ledger, f))
        return JSONResponse({"markers": rows, "now_ms": core.clock.now_ms()})

    @router.get("/api/review")
    async def api_review(request: Request, limit: int = 200) -> JSONResponse:
        sess = read_session(request)
        f = queries.BoardFilter(team_node=sess.user.node if sess.user.role == "team" else None)
        total, rows = await run(lambda: queries.review_queue(core.ledger, f, limit=limit))
        for r in rows:
            for s in r["source_list"]:
                for ev in s["evidence"]:
                    ev["url"] = evidence_url(
                        prefix, r["id"], s["candidate_id"], ev["n"], str(ev["ref"] or "")
                    )
        who = caller_of(sess.user)
        return JSONResponse(
            {
                "rows": rows,
                "total": total,
                "now_ms": core.clock.now_ms(),
                "can_review": _may(who, "review"),
                "can_note": _may(who, "note"),
            }
        )

    @router.get("/api/incidents/{incident_id}/nearby")
    async def api_nearby(request: Request, incident_id: str, limit: int = 6) -> JSONResponse:
        """Open incidents of the same category nearest to this one: what a merge most likely wants."""
        sess = read_session(request)
        row = await run(lambda: incident_or_404(incident_id))
        authorise(caller_of(sess.user), "read", row.chain)
        f = queries.BoardFilter(team_node=sess.user.node if sess.user.role == "team" else None)
        rows = await run(lambda: queries.nearby(core.ledger, row, f, limit=min(limit, 20)))
        return JSONResponse({"rows": rows, "now_ms": core.clock.now_ms()})

    @router.get("/api/incidents/{incident_id}/cameras")
    async def api_cameras(request: Request, incident_id: str) -> JSONResponse:
        """The configured cameras for a miss report on this incident, nearest first (where the
        camera's and the incident's locations are known; the rest in config order)."""
        sess = read_session(request)
        row = await run(lambda: incident_or_404(incident_id))
        authorise(caller_of(sess.user), "review", row.chain)  # who may report a miss
        rows = queries.cameras_near(core.cfg.cameras.feeds, row.lon, row.lat)
        return JSONResponse({"rows": rows, "created_at": row.created_at, "now_ms": core.clock.now_ms()})

    @router.get("/api/nodes")
    async def api_nodes(request: Request) -> Response:
        read_session(request)
        return Response(
            nodes_bytes, media_type="application/json", headers={"Cache-Control": "private, max-age=300"}
        )

    @router.get("/api/city.geojson")
    async def api_city(request: Request) -> Response:
        read_session(request)
        if request.headers.get("if-none-match") == geojson_etag:
            return Response(status_code=304, headers={"ETag": geojson_etag})
        return Response(
            geojson_bytes, media_type="application/geo+json",
            headers={"ETag": geojson_etag, "Cache-Control": "private, no-cache"},
        )  # fmt: skip

    # --- live ------------------------------------------------------------------------------------
    @router.get("/events")
    async def events(request: Request, since: int | None = None) -> Response:
        sess = read_session(request)
        sid, user = sess.sid, sess.user
        last_id = request.headers.get("last-event-id")
        if last_id and last_id.isdigit():
            since = int(last_id)

        def may_see(ev: dict[str, Any]) -> bool:
            if user.role != "team":
                return True
            inc = ev.get("incident")
            return bool(inc) and user.node in inc["chain"]

        sub = await feed.subscribe(may_see)
        backlog = await feed.catch_up(since, sub.start_seq, may_see) if since is not None else []

        async def stream() -> AsyncIterator[str]:
            loop = asyncio.get_running_loop()
            end = loop.time() + sse_max_s
            try:
                yield f"retry: 1000\nevent: hello\ndata: {json.dumps({'seq': sub.start_seq})}\n\n"
                if backlog == RESYNC:
                    yield "event: resync\ndata: {}\n\n"
                    return
                for ev in backlog:
                    yield _sse(ev)
                while loop.time() < end:
                    try:
                        item = await asyncio.wait_for(
                            sub.queue.get(), timeout=min(15.0, max(0.1, end - loop.time()))
                        )
                    except TimeoutError:
                        yield ": ping\n\n"
                        continue
                    if item is None or sessions.get(sid) is None:
                        return  # console closing, or logged out
                    if item == RESYNC:
                        yield "event: resync\ndata: {}\n\n"
                        return
                    for ev in item:
                        yield _sse(ev)
            finally:
                feed.unsubscribe(sub)

        return StreamingResponse(
            stream(), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    # --- static files ------------------------------------------------------------------------------
    @router.get("/static/{name}")
    async def static(request: Request, name: str) -> Response:
        if not re.fullmatch(r"[a-z][a-z0-9_-]*\.(js|css|svg)", name):
            raise HTTPException(404)
        path = STATIC_DIR / name
        if not path.is_file():
            raise HTTPException(404)
        data = path.read_bytes()
        etag = '"' + hashlib.sha1(data).hexdigest()[:16] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        ctype = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}[name.rsplit(".", 1)[1]]
        return Response(data, media_type=f"{ctype}; charset=utf-8", headers=headers)

    return router


def missed_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """`camera_id` and `at_ms` of a miss report from a form or JSON body. Whether the camera is
    configured and the time plausible is the dispatch core's check (422 with its reason)."""
    out: dict[str, Any] = {}
    cam = str(fields.get("camera_id") or "").strip()[:128]
    if cam:
        out["camera_id"] = cam
    at = fields.get("at_ms")
    if at not in (None, ""):
        try:
            if isinstance(at, bool):
                raise ValueError
            out["at_ms"] = int(at)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise HTTPException(
                422, f"missed: at_ms must be epoch milliseconds (an integer), not {str(at)[:40]!r}"
            ) from None
    return out


def _may(who: Caller, action: str) -> bool:
    try:
        authorise(who, action)  # type: ignore[arg-type]
    except HTTPException:
        return False
    return True


def _sse(ev: dict[str, Any]) -> str:
    return f"id: {ev['seq']}\nevent: change\ndata: {json.dumps(ev, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _security_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _static_version() -> str:
    h = hashlib.sha1()
    for p in sorted(STATIC_DIR.glob("*")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:10]


def _city_geojson(city: Any) -> bytes:
    """The ladder's polygons for the map, simplified (a grid map needs ~1 m, not survey detail)."""
    feats = []
    order = {Level.DISTRICT: 0, Level.TOWN: 1, Level.COMMUNITY: 2, Level.GRID: 3}
    for n in sorted(city.nodes.values(), key=lambda n: (order[n.level], n.id)):
        g = n.geometry.simplify(0.00001, preserve_topology=True)
        g = shapely.set_precision(g, 1e-6)
        lp = n.geometry.representative_point()
        feats.append(
            {
                "type": "Feature",
                "geometry": shapely.geometry.mapping(g),
                "properties": {
                    "id": n.id, "level": n.level.value, "parent": n.parent, "zh": n.name_zh,
                    "en": n.name_en or n.name_zh, "lx": round(lp.x, 6), "ly": round(lp.y, 6),
                },
            }
        )  # fmt: skip
    return json.dumps({"type": "FeatureCollection", "features": feats}, ensure_ascii=False).encode()


# --- page bodies (the scripts fill them in) -------------------------------------------------------------


def _options(L: Lang, prefix: str, values: list[str], first: tuple[str, str] | None = None) -> str:
    out = [f'<option value="{e(first[0])}">{e(first[1])}</option>'] if first else []
    out += [f'<option value="{e(v)}">{e(tv(L, prefix, v))}</option>' for v in values]
    return "".join(out)


def _filters_html(ctx: PageCtx, with_state: bool = True) -> str:
    L = ctx.lang
    all_ = ("", t(L, "f_all"))
    state = (
        f'<label>{e(t(L, "f_state"))}<select name="state"><option value="open">{e(t(L, "f_open"))}</option>'
        f'<option value="all">{e(t(L, "f_all"))}</option>{_options(L, "state", list(STATES))}</select></label>'
        if with_state
        else ""
    )
    return f"""
  <form class="filters" id="filters">
    <label>{e(t(L, "f_town"))}<select name="town"><option value="">{e(t(L, "f_all"))}</option></select></label>
    <label>{e(t(L, "f_community"))}<select name="community"><option value="">{e(t(L, "f_all"))}</option></select></label>
    <label>{e(t(L, "f_grid"))}<select name="grid"><option value="">{e(t(L, "f_all"))}</option></select></label>
    <label>{e(t(L, "f_category"))}<select name="category">{_options(L, "cat", [c.value for c in Category], all_)}</select></label>
    <label>{e(t(L, "f_source"))}<select name="source">{_options(L, "src", [s.value for s in SourceKind], all_)}</select></label>
    {state}
    <label>{e(t(L, "f_level"))}<select name="level">{_options(L, "level", [lv.value for lv in Level], all_)}</select></label>
    <button type="reset" class="link">{e(t(L, "f_clear"))}</button>
  </form>"""


def _legend(L: Lang) -> str:
    items = "".join(
        f'<span class="due due-{k}">{e(t(L, "due_" + k))}</span>'
        for k in ("ok", "soon", "near", "late", "none")
    )
    return f'<div class="legend"><span class="muted">{e(t(L, "legend_due"))}</span>{items}</div>'


def _board_body(ctx: PageCtx) -> str:
    L = ctx.lang
    cols = "".join(
        f'<span class="c-{k}">{e(t(L, "col_" + k))}</span>'
        for k in ("due", "incident", "state", "node", "where", "source", "severity", "created")
    )
    return f"""
<main class="board">
  <section class="summary card" id="summary"><span class="muted">{e(t(L, "loading"))}</span></section>
  {_filters_html(ctx)}
  {_legend(L)}
  <section class="list card">
    <div class="list-head row">{cols}</div>
    <div class="list-body" id="list" tabindex="0"><div class="spacer" id="spacer"></div></div>
    <div class="list-foot"><span id="count"></span> <span id="live-count" class="muted"></span>
      <span class="muted small">{times_in(ctx)}</span></div>
  </section>
</main>"""


def _map_body(ctx: PageCtx) -> str:
    L = ctx.lang
    return f"""
<main class="map">
  <div class="map-tools">
    {_filters_html(ctx)}
    <div class="map-buttons">
      <label>{e(t(L, "map_colour"))}<select id="colour-by">
        <option value="state">{e(t(L, "map_by_state"))}</option>
        <option value="level">{e(t(L, "map_by_level"))}</option>
        <option value="due">{e(t(L, "map_by_due"))}</option></select></label>
      <button type="button" id="zoom-in" title="{e(t(L, "map_zoom_in"))}">+</button>
      <button type="button" id="zoom-out" title="{e(t(L, "map_zoom_out"))}">−</button>
      <button type="button" id="zoom-reset">{e(t(L, "map_reset"))}</button>
      <span class="muted small">{e(t(L, "map_hint"))}</span>
    </div>
  </div>
  <div class="map-wrap"><svg id="map" xmlns="http://www.w3.org/2000/svg"></svg>
    <div class="map-legend card" id="map-legend"></div>
    <div class="map-count card" id="map-count"></div>
  </div>
</main>"""


def _review_body(ctx: PageCtx) -> str:
    L = ctx.lang
    reasons = "".join(f'<option value="{e(r)}">' for r in t(L, "fa_reasons").split("|"))
    cats = _options(L, "cat", [c.value for c in Category])
    buttons = (
        f'<menu><button value="cancel" type="button" class="cancel">{e(t(L, "cancel"))}</button>'
        f'<button value="ok" class="primary" type="submit">{e(t(L, "submit"))}</button></menu>'
    )
    return f"""
<main class="review">
  <header class="review-head">
    <h1>{e(t(L, "review_title"))} <span class="muted small" id="review-count"></span></h1>
    <p class="muted">{e(t(L, "review_hint"))}</p>
    <p class="muted small">{e(t(L, "review_order"))}</p>
  </header>
  <ol class="review-list" id="queue"><li class="muted">{e(t(L, "loading"))}</li></ol>
  <dialog id="fa-dialog">
    <form method="dialog" id="fa-form">
      <h2>{e(t(L, "fa_reason_prompt"))}</h2>
      <input name="reason" id="fa-reason" list="fa-reasons" required maxlength="2000" autocomplete="off">
      <datalist id="fa-reasons">{reasons}</datalist>
      {buttons}
    </form>
  </dialog>
  <dialog id="merge-dialog">
    <form method="dialog" id="merge-form">
      <h2>{e(t(L, "merge_prompt"))}</h2>
      <input name="into" id="merge-into" required maxlength="128" autocomplete="off" placeholder="{e(t(L, "merge_into"))}">
      <p class="muted small">{e(t(L, "merge_suggest"))}</p>
      <ul class="plain suggestions" id="merge-suggest"></ul>
      {buttons}
    </form>
  </dialog>
  <dialog id="recat-dialog">
    <form method="dialog" id="recat-form">
      <h2>{e(t(L, "recat_prompt"))}</h2>
      <select name="category" id="recat-category" required>{cats}</select>
      {buttons}
    </form>
  </dialog>
  <dialog id="note-dialog">
    <form method="dialog" id="note-form">
      <h2>{e(t(L, "note_prompt"))}</h2>
      <input name="note" id="note-text" required maxlength="2000" autocomplete="off">
      {buttons}
    </form>
  </dialog>
</main>"""
