"""`python -m gridwatch.console demo`: the console on demo data, and screenshots of what a person sees.

Not part of the service. It builds a dispatch core on a temporary SQLite ledger (the demo city and
config), fills it with a few hours of incidents in every state (through the real core: fusion,
routing, the state machine, deadline escalation), optionally adds N synthetic open incidents in
bulk (`--bulk 10000`, for the scale check), mounts the console into the dispatch API app exactly
as the service would, and serves it. With `--screenshots DIR` it drives Debian's headless
chromium over the DevTools protocol instead (logging in through the real form), saves PNGs of the
log-in page, board, detail, map and review queue, measures how long a command takes to show up in
the browser, and exits.

Demo users (password `demo`): op (operator), sup (supervisor), team (team of the first grid), view.
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import shapely

from gridwatch.city import CityModel, Level
from gridwatch.config import demo_config_path, load_config
from gridwatch.console.auth import ConsoleUser, hash_password
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import Ledger
from gridwatch.dispatch.machine import Command, CommandKind, IllegalTransition, new_incident, pending_deadline
from gridwatch.dispatch.models import IncidentRow, IncidentSourceRow, TransitionRow
from gridwatch.schemas import Category, EvidenceRef, IncidentCandidate, Location, Severity, SourceKind

log = logging.getLogger(__name__)

CHROMIUM = "/usr/bin/chromium"
DEMO_PASSWORD = "demo"


class OffsetClock:
    """Real time plus an offset the seeding moves forward: incidents get a past, then time runs."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def monotonic(self) -> float:
        return time.monotonic()


def demo_users(first_grid: str) -> list[ConsoleUser]:
    h = hash_password(DEMO_PASSWORD)
    return [
        ConsoleUser(name="op", display_name="值班员 李娜", role="operator", password_hash=h),
        ConsoleUser(name="sup", display_name="督办 王强", role="supervisor", password_hash=h),
        ConsoleUser(name="team", display_name="网格员 赵磊", role="team", node=first_grid, password_hash=h),
        ConsoleUser(name="view", display_name="访客", role="viewer", password_hash=h, lang="en"),
    ]


SUMMARIES = {
    Category.SMOKE: ("烟感报警 {v:.1f} %obs/m", "smoke {v:.1f} %obs/m > 8"),
    Category.WATER_LEVEL: ("水位 {v:.2f} m 超过警戒线 2.5 m", "water level {v:.2f} m > 2.5 m"),
    Category.MANHOLE_COVER: ("井盖倾角 {v:.0f}°", "manhole tilt {v:.0f} deg"),
    Category.ILLEGAL_DUMPING: ("摄像头发现乱倒垃圾", "camera: illegal dumping"),
    Category.GATHERING: ("人员聚集约 {v:.0f} 人", "crowd of about {v:.0f}"),
    Category.ROAD_BLOCKAGE: ("车辆占道", "lane blocked by a vehicle"),
    Category.BIN_OVERFLOW: ("垃圾桶满溢 {v:.0f}%", "bin {v:.0f}% full"),
    Category.NOISE: ("噪声 {v:.0f} dB(A)", "noise {v:.0f} dB(A)"),
    Category.AIR_QUALITY: ("PM2.5 {v:.0f} ug/m3", "PM2.5 {v:.0f}"),
}
CAMERA_CATS = {Category.ILLEGAL_DUMPING, Category.GATHERING, Category.ROAD_BLOCKAGE}


def make_snapshot(path: Path, label: str, seed: int) -> None:
    """A synthetic camera frame (street, a box where the detector fired, time stamp)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    img = np.full((360, 640, 3), (92, 98, 104), np.uint8)
    cv2.rectangle(img, (0, 200), (640, 360), (70, 74, 78), -1)
    for x in range(0, 640, 80):
        cv2.rectangle(img, (x + 20, 275), (x + 60, 282), (200, 200, 200), -1)
    for _ in range(6):
        x, y = int(rng.integers(0, 560)), int(rng.integers(40, 170))
        cv2.rectangle(img, (x, y), (x + 70, 200), tuple(int(c) for c in rng.integers(110, 180, 3)), -1)
    img = cv2.add(img, rng.integers(0, 18, img.shape, dtype=np.uint8))
    x, y = int(rng.integers(120, 420)), int(rng.integers(210, 260))
    cv2.rectangle(img, (x, y), (x + 110, y + 70), (30, 30, 230), 2)
    cv2.putText(img, label, (x, y - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (30, 30, 230), 1, cv2.LINE_AA)
    cv2.putText(
        img,
        time.strftime("%Y-%m-%d %H:%M:%S"),
        (10, 24),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.6,
        (255, 255, 255),
        1,
        cv2.LINE_AA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def seed_incidents(
    core: DispatchCore, clock: OffsetClock, evidence_dir: Path, n: int = 160, hours: float = 3.0
) -> None:
    """`n` incidents over the past `hours`, handled the way teams handle them (some stay silent)."""
    rng = random.Random(7)
    grids = core.city.grids()
    start = clock.now_ms() - int(hours * 3600_000)
    cats = list(SUMMARIES)
    open_ids: list[str] = []
    for i in range(n):
        clock.offset_ms = start + int(i * hours * 3600_000 / n) - time.time_ns() // 1_000_000
        now = clock.now_ms()
        cat = rng.choice(cats)
        kind = (
            SourceKind.CAMERA
            if cat in CAMERA_CATS
            else rng.choice([SourceKind.SENSOR] * 4 + [SourceKind.CITIZEN])
        )
        grid = rng.choice(grids[:120]) if rng.random() < 0.7 else rng.choice(grids)
        p = grid.geometry.representative_point()
        lon, lat = p.x + rng.uniform(-0.0008, 0.0008), p.y + rng.uniform(-0.0008, 0.0008)
        if not grid.geometry.contains(shapely.Point(lon, lat)):
            lon, lat = p.x, p.y
        v = rng.uniform(3, 120)
        zh, _en = SUMMARIES[cat]
        src = (
            f"cam-{rng.randint(1, 40):03d}"
            if kind is SourceKind.CAMERA
            else f"{cat.value[:5]}-{rng.randint(1, 500):04d}"
        )
        evidence: list[EvidenceRef] = []
        if kind is SourceKind.CAMERA:
            snap = evidence_dir / src / f"{now}.jpg"
            make_snapshot(snap, cat.value, i)
            evidence.append(EvidenceRef(kind="snapshot", ref=snap.as_uri(), note="detector frame"))
        elif kind is SourceKind.SENSOR:
            evidence.append(
                EvidenceRef(kind="reading_window", ref=f"influx:sensor_reading?sensor_id={src}&t={now}")
            )
        sev = rng.choice([Severity.MEDIUM, Severity.HIGH, Severity.HIGH, Severity.CRITICAL, Severity.LOW])
        cand = IncidentCandidate(
            candidate_id=IncidentCandidate.make_id(kind.value, src, "demo", now),
            category=cat, severity=sev, source_kind=kind, source_id=src, grid_id=grid.id,
            location=Location(lon=lon, lat=lat), observed_at=now - 20_000, raised_at=now, rule="demo",
            summary=zh.format(v=v), confidence=round(rng.uniform(0.55, 0.98), 2) if kind is SourceKind.CAMERA else 1.0,
            evidence=evidence, model_version="nanodet-g-416@1.2.0" if kind is SourceKind.CAMERA else None,
        )  # fmt: skip
        try:
            stored = core.handle_candidate(cand)
        except Exception as e:  # no route: skip it, as the service would dead-letter it
            log.debug("seed: %s", e)
            continue
        if stored.action == "new":
            if core.ledger.incident_row(stored.incident_id).state == "pending_review":
                # An operator works the review queue: all but the last half hour's are decided.
                if i < n - 24:
                    kind = CommandKind.FALSE_ALARM if rng.random() < 0.12 else CommandKind.CONFIRM
                    params = {"reason": "树影晃动误检"} if kind is CommandKind.FALSE_ALARM else {}
                    core.command(
                        stored.incident_id, Command(f"demo-review-{i}", kind, "operator", "op", None, params)
                    )
                    if kind is CommandKind.CONFIRM:
                        open_ids.append(stored.incident_id)
            else:
                open_ids.append(stored.incident_id)
        core.escalate_due()
        # Teams answer some of what was dispatched a while ago.
        if i % 3 == 2 and open_ids:
            iid = open_ids.pop(rng.randrange(len(open_ids)))
            _team_answers(core, iid, rng)
    clock.offset_ms = 0
    core.escalate_due()
    _duplicate_pair(core, evidence_dir)


def _duplicate_pair(core: DispatchCore, evidence_dir: Path) -> None:
    """Two cameras see the same crowd from 350 m apart (beyond fusion's radius): two incidents in
    review, which an operator merges; the survivor shows what was merged into it."""
    g = core.city.grids()[40]
    p = g.geometry.representative_point()
    now = core.clock.now_ms()
    ids = []
    for k, (cam, dlon, people) in enumerate((("cam-017", 0.0, 62), ("cam-018", 0.0036, 55))):
        snap = evidence_dir / cam / f"{now}.jpg"
        make_snapshot(snap, "gathering", 900 + k)
        cand = IncidentCandidate(
            candidate_id=IncidentCandidate.make_id("camera", cam, "demo", now - k * 40_000),
            category=Category.GATHERING, severity=Severity.HIGH, source_kind=SourceKind.CAMERA, source_id=cam,
            grid_id=g.id, location=Location(lon=p.x + dlon, lat=p.y), observed_at=now - k * 40_000 - 20_000,
            raised_at=now - k * 40_000, rule="demo", summary=f"人员聚集约 {people} 人", confidence=0.71 - k * 0.05,
            evidence=[EvidenceRef(kind="snapshot", ref=snap.as_uri(), note="detector frame")],
            model_version="nanodet-g-416@1.2.0",
        )  # fmt: skip
        ids.append(core.handle_candidate(cand).incident_id)
    if ids[0] != ids[1]:
        try:
            core.command(
                ids[1], Command("demo-merge", CommandKind.MERGE, "operator", "op", None, {"into": ids[0]})
            )
        except IllegalTransition as e:
            log.debug("demo merge: %s", e)


def _team_answers(core: DispatchCore, iid: str, rng: random.Random) -> None:
    row = core.ledger.incident_row(iid)
    node = row.node_id
    fate = rng.random()
    steps: list[tuple[CommandKind, dict[str, Any], str]] = []
    who = core.city.node(node).team.leader if core.city.node(node).team else "值班"  # type: ignore[union-attr]
    if fate < 0.12:
        steps = [(CommandKind.FALSE_ALARM, {"reason": "现场核实为误报"}, "team")]
    else:
        steps = [(CommandKind.ACKNOWLEDGE, {}, "team")]
        if fate > 0.35:
            steps.append((CommandKind.ARRIVE, {}, "team"))
        if fate > 0.6:
            steps.append((CommandKind.RESOLVE, {"note": "已处置"}, "team"))
        if fate > 0.8:
            steps.append((CommandKind.VERIFY, {"ok": True}, "supervisor"))
    for k, params, actor in steps:
        cmd = Command(f"demo-{k.value}-{iid}", k, actor, "王强" if actor == "supervisor" else who,  # type: ignore[arg-type]
                      node if actor == "team" else None, params)  # fmt: skip
        try:
            core.command(iid, cmd)
        except IllegalTransition:
            break


def bulk_incidents(core: DispatchCore, n: int, *, seed: int = 1) -> list[str]:
    """`n` synthetic open incidents inserted straight into the ledger (a scale check, not a replay):
    each with its creation audit row and one source, on random grids, deadlines from the trigger list."""
    from sqlalchemy import insert

    rng = random.Random(seed)
    grids = core.city.grids()
    now = core.clock.now_ms()
    cats = [
        Category.SMOKE,
        Category.WATER_LEVEL,
        Category.BIN_OVERFLOW,
        Category.NOISE,
        Category.ROAD_BLOCKAGE,
    ]
    incs: list[dict[str, Any]] = []
    srcs: list[dict[str, Any]] = []
    trs: list[dict[str, Any]] = []
    for i in range(n):
        g = rng.choice(grids)
        cat = rng.choice(cats)
        route = core.router.route(cat, Severity.MEDIUM, g.id)
        created = now - rng.randint(0, 6 * 3600_000)
        iid = f"inc-bulk-{seed}-{i:06d}"
        inc = new_incident(iid, route.node_id, route.level, created, core.router.plan(route.rule_index))
        pend = pending_deadline(inc)
        lad = {a.level: a.id for a in core.city.ancestors(g.id)}
        p = _point_in(g.geometry, rng)
        incs.append(dict(
            incident_id=iid, category=cat.value, severity="medium", base_severity="medium", state="dispatched",
            level=route.level.value, node_id=route.node_id, first_level=route.level.value,
            first_node_id=route.node_id, grid_id=g.id, community_id=lad.get(Level.COMMUNITY),
            town_id=lad.get(Level.TOWN), lon=p.x, lat=p.y, rule_index=route.rule_index,
            platform=route.rule.platform, summary=f"bulk {cat.value} {i}", source_kind="sensor",
            created_at=created, assigned_at=created, deadlines=dict(inc.deadlines), chain=[route.node_id],
            escalations=0, reopened=0, top_level_overdue=[], last_evidence_at=created, source_count=1,
            next_due_at=pend[1] if pend else None, next_due_step=pend[0].value if pend else None, version=1,
            acknowledged_at=None, arrived_at=None, resolved_at=None, closed_at=None,
        ))  # fmt: skip
        srcs.append(dict(
            candidate_id=f"cand-bulk-{seed}-{i:06d}", incident_id=iid, action="new", source_kind="sensor",
            source_id=f"bulk-{i}", category=cat.value, severity="medium", confidence=1.0, observed_at=created,
            raised_at=created, attached_at=created, rule="bulk", summary=f"bulk {cat.value} {i}",
            model_version=None, evidence=[], candidate={},
        ))  # fmt: skip
        trs.append(dict(
            incident_id=iid, command_id=f"create:bulk-{seed}-{i:06d}", kind="dispatch", actor="system",
            by="bulk", from_state=None, to_state="dispatched", from_node=None, to_node=route.node_id,
            level=route.level.value, at_ms=created, note="bulk", changed=True, version=1, params={},
        ))  # fmt: skip
    with core.ledger.session() as s:
        s.execute(insert(IncidentRow), incs)
        s.execute(insert(IncidentSourceRow), srcs)
        s.execute(insert(TransitionRow), trs)
    return [r["incident_id"] for r in incs]


def _point_in(geom: Any, rng: random.Random) -> Any:
    """A random point inside a polygon (so that the map shows a cloud, not a stack)."""
    minx, miny, maxx, maxy = geom.bounds
    for _ in range(30):
        p = shapely.Point(rng.uniform(minx, maxx), rng.uniform(miny, maxy))
        if geom.contains(p):
            return p
    return geom.representative_point()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_demo(workdir: Path, bulk: int = 0) -> tuple[Any, DispatchCore, Any]:
    """(FastAPI app with the API and the console, the core, the console router)."""
    from gridwatch.console import build_console_router
    from gridwatch.dispatch.api import build_api

    base = load_config(demo_config_path())
    triggers = []
    for tr in base.dispatch.triggers:
        d = tr.model_dump(mode="json")
        if set(d["categories"]) & {c.value for c in CAMERA_CATS}:
            d["review"] = "always"  # camera matters wait for an operator (the review queue)
        triggers.append(d)
    cfg = load_config(
        demo_config_path(),
        overrides={
            "dispatch": {
                "ledger_url": f"sqlite:///{workdir}/ledger.db",
                "triggers": triggers,
                "hard_examples_dir": str(workdir / "hard-examples"),
            }
        },
    )
    city = CityModel.load(cfg.city.geojson)
    ledger = Ledger(cfg.dispatch.ledger_url)
    ledger.migrate()
    clock = OffsetClock()
    core = DispatchCore(cfg, city, ledger, clock)
    core.load()
    evidence = workdir / "evidence"
    seed_incidents(core, clock, evidence)
    if bulk:
        bulk_incidents(core, bulk)

    async def submit(cand: IncidentCandidate) -> None:
        await asyncio.to_thread(core.handle_candidate, cand)

    app = build_api(core, cfg.dispatch.credentials, submit)
    # The mount the service needs (docs/CONSOLE.md):
    console = build_console_router(
        core,
        demo_users(city.grids()[0].id),
        timezone=cfg.site.timezone,
        site_name=cfg.site.name,
        evidence_dir=evidence,
    )
    app.include_router(console)
    return app, core, console


def start_server(app: Any, port: int) -> tuple[Any, threading.Thread]:
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=2
        )
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    return server, th


def _deadline_loop(core: DispatchCore, stop: threading.Event) -> None:
    # What the service's scheduler does, once a second: escalate what is overdue.
    while not stop.wait(1.0):
        try:
            core.escalate_due()
        except Exception as e:
            log.warning("demo: escalation pass failed: %s", e)


def run_demo(port: int = 0, bulk: int = 0, screenshots: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-console-"))
    t0 = time.monotonic()
    app, core, console = build_demo(workdir, bulk)
    print(
        f"demo data: {core.ledger.count_incidents()} incidents in {time.monotonic() - t0:.1f} s ({workdir})"
    )
    port = port or free_port()
    server, th = start_server(app, port)
    stop = threading.Event()
    threading.Thread(target=_deadline_loop, args=(core, stop), daemon=True).start()
    base = f"http://127.0.0.1:{port}/console"
    try:
        if screenshots:
            out = Path(screenshots)
            out.mkdir(parents=True, exist_ok=True)
            take_screenshots(base, out, core)
            return 0
        print(f"console: {base}/  users op / sup / team / view, password {DEMO_PASSWORD!r}; Ctrl-C ends")
        while th.is_alive():
            th.join(0.5)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        console.close()
        server.should_exit = True
        th.join(5)
        shutil.rmtree(workdir, ignore_errors=True)


# --- screenshots with Playwright (Debian's headless chromium) --------------------------------------------


def screenshot_demo(out: Path, bulk: int = 0, browser: Any = None) -> list[Path]:
    """Build the demo console, serve it, and save a 1920x1080 PNG of every screen into `out`
    (in `browser`, a Playwright Browser, when given; else a headless chromium of its own)."""
    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-console-"))
    app, core, console = build_demo(workdir, bulk)
    server, th = start_server(app, free_port())
    try:
        return take_screenshots(f"http://127.0.0.1:{server.config.port}/console", out, core, browser)
    finally:
        console.close()
        server.should_exit = True
        th.join(5)
        shutil.rmtree(workdir, ignore_errors=True)


def _save(page: Any, path: Path, limit: int = 380_000) -> Path:
    """A screenshot; reduced to a 256-colour palette when large (UI screens lose nothing visible)."""
    page.screenshot(path=str(path))
    if path.stat().st_size > limit:
        from PIL import Image

        with Image.open(path) as im:
            im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"screenshot: {path} ({path.stat().st_size // 1024} KB)")
    return path


IMAGES_ON_SCREEN_LOADED = (
    "() => [...document.images].filter((i) => i.getBoundingClientRect().top < innerHeight)"
    ".every((i) => i.complete && i.naturalWidth > 0)"
)


def take_screenshots(base: str, out: Path, core: DispatchCore, browser: Any = None) -> list[Path]:
    """login, board, detail, map, review (and the merge dialog) in Chinese; the board in English."""
    if browser is None:
        from playwright.sync_api import sync_playwright

        from gridwatch.console.browser import launch

        with sync_playwright() as p:
            own = launch(p)
            try:
                return take_screenshots(base, out, core, own)
            finally:
                own.close()
    from gridwatch.console.browser import VIEWPORT, login

    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    ctx = browser.new_context(viewport=VIEWPORT)
    try:
        page = ctx.new_page()
        page.goto(f"{base}/login")
        page.fill("input[name=name]", "op")
        shots.append(_save(page, out / "console-login.png"))
        login(page, base, "op", DEMO_PASSWORD)
        page.wait_for_selector("#list a.row")
        page.wait_for_selector("#summary table")
        page.keyboard.press("j")
        page.keyboard.press("j")
        page.wait_for_timeout(300)
        shots.append(_save(page, out / "console-board.png"))
        cam = _camera_incident(core)
        page.goto(f"{base}/incidents/{cam}")
        page.wait_for_function(IMAGES_ON_SCREEN_LOADED)
        shots.append(_save(page, out / "console-detail.png"))
        page.goto(f"{base}/map")
        page.wait_for_selector("circle.mk")
        page.wait_for_timeout(500)
        box = page.locator("#map").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.42, box["y"] + box["height"] * 0.45)
        for _ in range(3):
            page.mouse.wheel(0, -260)
            page.wait_for_timeout(120)
        page.wait_for_timeout(500)
        shots.append(_save(page, out / "console-map.png"))
        page.goto(f"{base}/review")
        page.wait_for_selector("li.review-item .ri-evidence img")
        page.wait_for_function(IMAGES_ON_SCREEN_LOADED)
        page.wait_for_timeout(300)
        shots.append(_save(page, out / "console-review.png"))  # the oldest first, selected
        merged = page.query_selector("li.review-item:has(.ri-merged)")
        if merged is not None:
            merged.query_selector(".ri-meta").click()
        page.keyboard.press("m")
        page.wait_for_selector("#merge-suggest li")
        page.wait_for_timeout(300)
        shots.append(_save(page, out / "console-review-merge.png"))
        page.keyboard.press("Escape")
        # English: the language switch in the header, then the same board
        page.goto(f"{base}/")
        with page.expect_navigation():
            page.click("form[action$='/lang'] button")
        page.wait_for_selector("#list a.row")
        page.wait_for_selector("#summary table")
        page.wait_for_timeout(300)
        shots.append(_save(page, out / "console-board-en.png"))
    finally:
        ctx.close()
    return shots


def _camera_incident(core: DispatchCore) -> str | None:
    """An incident worth showing in detail: a camera source with a snapshot, escalated if possible."""
    from sqlalchemy import select

    with core.ledger.session() as s:
        rows = s.execute(
            select(IncidentRow.incident_id, IncidentRow.escalations)
            .where(
                IncidentRow.source_kind == "camera", IncidentRow.state.not_in(("pending_review", "merged"))
            )
            .order_by(IncidentRow.escalations.desc(), IncidentRow.created_at)
        ).all()
    return rows[0][0] if rows else None
