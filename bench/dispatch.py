"""Benchmark: incidents/s through fusion, routing and the ledger, and escalation timeliness.

Two phases on one ledger (embedded SQLite, or a real PostgreSQL started for the run):

1. **Intake.** `incidents` candidates, each a distinct matter (different places), go through
   `DispatchCore.handle_candidate`: fusion against every open incident, routing by the trigger
   list, the ledger transaction (incident, source, audit row, push outbox rows). Beside it, in the
   same run and on the same database, the raw limit: the same number of bare single-row INSERT
   transactions into a scratch table (the least any ledger write costs). `ratio` = gridwatch / raw.
2. **Escalation timeliness.** With all those incidents open, the acknowledge deadlines of `due`
   of them fall due spread over `spread_s` seconds (by the real clock; the others later). The
   production scheduler loop (gridwatch/dispatch/scheduler.py) escalates them, each escalation a
   ledger transaction with its two pushes in the outbox; lag = applied time - due time, p50/p99.
   Target: p99 within 1 s of the deadline. (Lag is measured to the outbox row, which the delivery
   loop sends within its next pass; the push itself is not timed here.)

Run: `gridwatch bench dispatch [--incidents 10000] [--db sqlite|postgresql]`. Last line: JSON.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import text

from gridwatch.city import CityModel
from gridwatch.clock import SYSTEM_CLOCK
from gridwatch.config import demo_config_path, load_config
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.ledger import Ledger
from gridwatch.dispatch.scheduler import deadline_loop, escalation_lag_ms
from gridwatch.schemas import IncidentCandidate, Location
from gridwatch.stats import percentile

CATEGORIES = [
    "illegal_dumping",
    "gathering",
    "road_blockage",
    "water_level",
    "smoke",
    "noise",
    "bin_overflow",
]


def _candidates(city: CityModel, n: int, now_ms: int) -> list[IncidentCandidate]:
    grids = city.grids()
    out = []
    for i in range(n):
        g = grids[i % len(grids)]
        minx, miny, maxx, maxy = g.geometry.bounds
        # distinct places inside the grid's box, > fusion radius apart within one grid and category
        fx, fy = ((i // len(grids)) % 37) / 37, ((i // len(grids)) // 37 % 37) / 37
        lon, lat = minx + (maxx - minx) * fx, miny + (maxy - miny) * fy
        cat = CATEGORIES[i % len(CATEGORIES)]
        out.append(
            IncidentCandidate(
                candidate_id=IncidentCandidate.make_id("sensor", f"bench-{i}", "bench", now_ms + i),
                category=cat,
                severity="high",
                source_kind="sensor",
                source_id=f"bench-{i}",
                grid_id=g.id,
                location=Location(lon=lon, lat=lat),
                observed_at=now_ms + i,
                raised_at=now_ms + i,
                rule="bench",
                summary=f"bench {cat} {i}",
            )
        )
    return out


def run_dispatch_bench(
    *,
    incidents: int = 10_000,
    due: int = 1000,
    db: str = "sqlite",
    spread_s: float = 30.0,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-dispatch-") as tmp:
        server = None
        if db == "postgresql":
            from gridwatch.devservers.postgres import PostgresServer

            server = PostgresServer(Path(tmp) / "pg").start()
            url = server.url
        else:
            url = f"sqlite:///{Path(tmp) / 'ledger.db'}"
        try:
            return _run(url, db, incidents, min(due, incidents), spread_s, console)
        finally:
            if server is not None:
                server.stop()


def _run(url: str, db: str, n: int, due: int, spread_s: float, console: Console) -> dict[str, Any]:
    base = load_config(demo_config_path())
    # every category on a 24/7 calendar, none held for review; the ack deadline lands after intake, spread by creation order
    triggers = []
    for t in base.dispatch.triggers:
        d = t.model_dump(mode="json")
        d["calendar"] = "always"
        d["review"] = "auto"  # every incident dispatched at once: the bench measures escalation
        triggers.append(d)
    # fusion radius 5 m: every generated candidate is a distinct matter (they lie 10+ m apart), so the
    # run ends with `n` open incidents while fusion still searches all of them for each candidate
    fusion = {"default": {"radius_m": 5, "window_s": 86_400, "cooldown_s": 600}, "per_category": {}}
    cfg = load_config(
        demo_config_path(),
        overrides={"dispatch": {"ledger_url": url, "triggers": triggers, "fusion": fusion}},
    )
    city = CityModel.load(cfg.city.geojson)
    ledger = Ledger(url)
    ledger.migrate()
    core = DispatchCore(cfg, city, ledger, SYSTEM_CLOCK)
    cands = _candidates(city, n, SYSTEM_CLOCK.now_ms())

    # raw limit: bare single-row insert transactions
    with ledger.engine.begin() as c:
        c.execute(text("CREATE TABLE bench_raw (id VARCHAR(64) PRIMARY KEY, body TEXT)"))
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task(f"raw inserts ({db})", total=n)
        t0 = time.perf_counter()
        for i, cand in enumerate(cands):
            with ledger.engine.begin() as c:
                c.execute(
                    text("INSERT INTO bench_raw (id, body) VALUES (:i, :b)"),
                    {"i": cand.candidate_id, "b": cand.summary},
                )
            if i % 200 == 0:
                progress.update(task, completed=i)
        raw_s = time.perf_counter() - t0
        progress.update(task, completed=n)

        task = progress.add_task("candidates -> incidents (fusion, routing, ledger)", total=n)
        t0 = time.perf_counter()
        for i, cand in enumerate(cands):
            core.handle_candidate(cand)
            if i % 200 == 0:
                progress.update(task, completed=i)
        intake_s = time.perf_counter() - t0
        progress.update(task, completed=n)
    created = core.stats.incidents_created
    console.print(f"intake: {created} incidents in {intake_s:.1f} s; raw inserts {raw_s:.1f} s")

    # escalation timeliness: re-time the ack deadlines so they fall due over the next spread_s
    now = SYSTEM_CLOCK.now_ms()
    start_due = now + 3000
    with ledger.engine.begin() as c:
        all_rows = c.execute(text("SELECT incident_id FROM incidents ORDER BY created_at, incident_id")).all()
        rows = all_rows[:due]
        step = spread_s * 1000 / max(1, len(rows))

        def timing(k: int) -> dict[str, Any]:
            d = int(start_due + k * step) if k < due else now + 3_600_000 + k
            return {"d": d, "j": json.dumps({"ack": d, "arrive": d + 600_000, "resolve": d + 3_600_000})}

        c.execute(
            text("UPDATE incidents SET next_due_at = :d, deadlines = :j WHERE incident_id = :i"),
            [{"i": r[0], **timing(k)} for k, r in enumerate(all_rows)],
        )
    lags: list[float] = []

    async def scheduler() -> None:
        stop, wake = asyncio.Event(), asyncio.Event()

        def on_results(results: list[Any], t: int) -> None:
            for r in results:
                lag = escalation_lag_ms(r, t)
                if lag is not None:
                    lags.append(lag)

        loop_task = asyncio.create_task(deadline_loop(core, stop, wake, 0.5, on_results))
        deadline = time.monotonic() + spread_s + 3 + 30
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
        ) as p:
            task = p.add_task("deadlines -> escalations", total=len(rows))
            while len(lags) < len(rows) and time.monotonic() < deadline:
                p.update(task, completed=len(lags))
                await asyncio.sleep(0.2)
            p.update(task, completed=len(lags))
        stop.set()
        wake.set()
        await loop_task

    asyncio.run(scheduler())
    ledger.close()
    result = {
        "bench": "dispatch",
        "db": db,
        "open_incidents": created,
        "incidents_per_s": round(created / intake_s, 1),
        "raw_inserts_per_s": round(n / raw_s, 1),
        "ratio": round((created / intake_s) / (n / raw_s), 3),
        "escalations": len(lags),
        "due": len(rows),
        "escalation_spread_s": spread_s,
        "escalation_lag_p50_ms": percentile(lags, 0.5, ndigits=1),
        "escalation_lag_p99_ms": percentile(lags, 0.99, ndigits=1),
        "escalation_lag_max_ms": percentile(lags, 1.0, ndigits=1),
        "target_p99_ms": 1000,
        "pass": bool(lags) and len(lags) == len(rows) and percentile(lags, 0.99, ndigits=1) <= 1000,
    }
    return result
