"""Grafana dashboards as code: the committed JSON is the generator's, the layouts fit their screens,
and every panel's query runs on real databases holding realistic data.

No Grafana can run here, so each query is run the way Grafana would send it: template variables
are resolved by running the variables' own queries (chained ones in order, "All" expanded as
Grafana expands it), then substituted with Grafana's formatting rules for the target datasource
(InfluxQL: regex-escaped `(a|b)` for multi-value variables; SQL: quoted `'a','b'`), and the
built-ins ($timeFilter, $__interval, $__from, $__to) are replaced. InfluxQL goes to the real
InfluxDB 1.6.7 (`influxdb` fixture), SQL to the real PostgreSQL 15 with the ledger schema
(`postgres` fixture), in a read-only transaction.

The data is what gridwatch itself writes: incidents made by the dispatch core on the ledger,
their KPI lines from `compute_kpis` on the ledger's `KpiRow`s, sensor, camera and health lines
through the writers' own line helpers, with the real measurement, tag and field names.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gridwatch.clock import ManualClock
from gridwatch.dashboards_gen.__main__ import differences, main
from gridwatch.dashboards_gen.dashboards import SCREENS, build_dashboards
from gridwatch.dashboards_gen.model import DS_INFLUX, DS_LEDGER
from gridwatch.dashboards_gen.provisioning import DASHBOARDS_MOUNT, render_files
from gridwatch.dispatch.kpi import compute_kpis, period_starts
from gridwatch.dispatch.machine import Command, CommandKind
from gridwatch.influx import health_lines, line
from tests.dispatch_helpers import candidate, demo_city, make_core
from tests.helpers import demo_registry

REPO = Path(__file__).resolve().parents[1]
DASHBOARDS_DIR = REPO / "dashboards"
DASHBOARDS = {d.uid: d.to_json() for d in build_dashboards()}
TZ = "Asia/Shanghai"
MINUTE = 60_000
HOUR = 60 * MINUTE

# InfluxQL that InfluxDB 3.x does not run (docs.influxdata.com "InfluxQL feature support"), and
# writes: the panels must run on 1.x, 2.x and 3.x alike, and only read.
NOT_PORTABLE = re.compile(
    r"\b(SLIMIT|SOFFSET|SHOW\s+SERIES|INTEGRAL\s*\(|SAMPLE\s*\(|HOLT_WINTERS|CHANDE_|KAUFMANS_|INTO)\b", re.I
)


# --- what the generator produces ----------------------------------------------------------------
def test_committed_dashboards_are_the_generators_output() -> None:
    assert differences(DASHBOARDS_DIR, render_files()) == [], "run `python -m gridwatch.dashboards_gen`"


def test_generator_cli_writes_checks_and_removes_stale(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "wall" / "gridwatch-wall.json").write_text("{}")
    (tmp_path / "operations" / "old-board.json").write_text("{}")
    assert main(["--out", str(tmp_path), "--check"]) == 1
    err = capsys.readouterr().err
    assert "wall/gridwatch-wall.json" in err and "operations/old-board.json (stale)" in err
    assert main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "operations" / "old-board.json").exists()
    assert main(["--out", str(tmp_path), "--check"]) == 0


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dash["panels"] if p["type"] != "row"]


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_layout_and_references(uid: str) -> None:
    dash = DASHBOARDS[uid]
    assert dash["schemaVersion"] == 39 and dash["uid"] == uid and dash["editable"] is False
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    boxes = []
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] >= 1 and g["x"] + g["w"] <= 24 and g["h"] >= 1, p["title"]
        for other_title, o in boxes:  # no two panels on the same cells
            overlap = g["x"] < o["x"] + o["w"] and o["x"] < g["x"] + g["w"] and g["y"] < o["y"] + o["h"]
            assert not (overlap and o["y"] < g["y"] + g["h"]), f"{p['title']!r} overlaps {other_title!r}"
        boxes.append((p["title"], g))
    known = {DS_INFLUX.uid, DS_LEDGER.uid}
    for p in _panels(dash):
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] in known and t["datasource"] == p["datasource"], p["title"]
            if t["datasource"]["uid"] == DS_INFLUX.uid:
                assert t["rawQuery"] is True, p["title"]
                assert not NOT_PORTABLE.search(t["query"]), (p["title"], t["query"])
    for v in dash["templating"]["list"]:
        assert v["datasource"]["uid"] in known


def test_wall_screens_fit_1080p_and_4k_kiosk_without_scrolling() -> None:
    for screen, pixels in zip(SCREENS, (1080, 2160), strict=True):
        dash = DASHBOARDS[screen.uid]
        rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
        assert rows == screen.rows
        assert rows * 30 + (rows - 1) * 8 <= pixels, f"{screen.uid}: {rows} rows do not fit {pixels} px"
        assert dash["time"] == {"from": "now/d", "to": "now"} and dash["timezone"] == TZ
        big = [p for p in dash["panels"] if p["type"] == "stat" and p["gridPos"]["y"] == 0]
        assert len(big) == 6 and all(p["options"]["text"]["valueSize"] >= 40 * screen.scale for p in big)
        assert any(
            p["type"] == "geomap" and p["targets"][0]["datasource"]["uid"] == DS_LEDGER.uid
            for p in dash["panels"]
        )


def test_provisioning_points_at_the_dashboards_and_names_secrets_only_by_variable() -> None:
    files = render_files()
    providers = __import__("yaml").safe_load(files["provisioning/dashboards/gridwatch.yaml"])["providers"]
    dirs = {p["options"]["path"].removeprefix(DASHBOARDS_MOUNT + "/") for p in providers}
    assert dirs == {Path(rel).parent.as_posix() for rel in files if rel.endswith(".json")}
    ds = __import__("yaml").safe_load(files["provisioning/datasources/gridwatch.yaml"])["datasources"]
    assert {d["uid"] for d in ds} == {DS_INFLUX.uid, DS_LEDGER.uid}
    influx = next(d for d in ds if d["type"] == "influxdb")
    assert influx["jsonData"]["version"] == "InfluxQL" and influx["jsonData"]["dbName"].startswith("${")
    for d in ds:
        assert re.fullmatch(r"\$\{[A-Z_]+\}", d["secureJsonData"]["password"])


# --- the world: a ledger and an InfluxDB database with a few hours of gridwatch's data ------------
@dataclass
class World:
    influx: Any
    db: str
    pg: str  # psycopg conninfo
    now: int
    start: int


def _town(grid_id: str) -> str:
    return next(a.id for a in demo_city().ancestors(grid_id) if a.level == "town")


def _seed_ledger(url: str, now: int) -> Any:
    """Eight incidents in three towns: closed, acknowledged, on site, false alarm, escalated, open."""
    clock = ManualClock(now - 60 * MINUTE)
    core = make_core(url, clock)
    plan = [  # grid index, category, what the team does
        (0, "smoke", "close"),
        (1, "water_level", "ack"),
        (2, "smoke", "silent"),
        (3, "gathering", "silent"),
        (49, "smoke", "false_alarm"),
        (50, "manhole_cover", "arrive"),
        (91, "water_level", "silent"),
        (92, "bin_overflow", "open"),
    ]
    for i, (grid, category, action) in enumerate(plan):
        clock.advance(300)
        iid = core.handle_candidate(
            candidate(f"src-{i}", t=clock.now_ms(), category=category, grid=grid, severity="high")
        ).incident_id
        node = core.ledger.incident_row(iid).node_id

        def cmd(
            kind: CommandKind, actor: str = "team", params: dict | None = None, i=i, node=node, iid=iid
        ) -> None:
            by_node = node if actor == "team" else None
            core.command(iid, Command(f"{kind}-{i}", kind, actor, "王婷", by_node, params or {}))  # type: ignore[arg-type]

        clock.advance(20)
        if action in ("close", "ack", "arrive"):
            cmd(CommandKind.ACKNOWLEDGE)
        if action == "arrive":
            cmd(CommandKind.ARRIVE)
        if action == "close":
            cmd(CommandKind.RESOLVE)
            cmd(CommandKind.VERIFY, "supervisor", {"ok": True})
        if action == "false_alarm":
            cmd(CommandKind.FALSE_ALARM, params={"reason": "sensor fault"})
    clock.advance(400)
    assert core.escalate_due(), "the silent smoke/water incidents should have escalated"
    return core


def _kpi_lines(rows: list, now: int) -> list[str]:
    """What the dispatch service writes every kpi_interval_s, replayed every 5 minutes over 3 hours."""
    first = min(r.created_at for r in rows)
    lines: list[str] = []
    for ts in [*range(now - 3 * HOUR, now - MINUTE, 5 * MINUTE), now - 2000]:
        # Period starts in the centre's time zone, moved back to the first incident when the test
        # runs just after midnight or on the 1st, so the panels have something whatever the hour.
        starts = {k: min(v, first) for k, v in period_starts(ts, TZ).items()}
        rows_then = [r for r in rows if r.created_at <= ts]
        lines += compute_kpis(rows_then, ts, starts, "d-01")
    return lines


def _sensor_lines(now: int) -> list[str]:
    reg = demo_registry()
    chosen = []
    for typ in ("water_level", "smoke", "pm25", "noise", "manhole_tilt", "bin_fill"):
        chosen += [s for s in reg.values() if s.type == typ][:2]
    silent = chosen[3]  # the second smoke sensor stops reporting 40 minutes ago
    lines: list[str] = []
    base = {
        "water_level": 1.2,
        "smoke": 0.5,
        "pm25": 60.0,
        "noise": 55.0,
        "manhole_tilt": 1.0,
        "bin_fill": 40.0,
    }
    for n, s in enumerate(chosen):
        tags = {"sensor_id": s.id, "type": s.type, "grid": s.grid_id or "", "community": s.community_id or "",
                "town": s.town_id or ""}  # fmt: skip
        stop = now - 40 * MINUTE if s is silent else now
        window: list[float] = []
        for k, ts in enumerate(range(now - 3 * HOUR, stop, MINUTE)):
            v = base[s.type] * (1 + 0.1 * ((k + n) % 7) / 7)
            lines.append(line("sensor_reading", tags, {"value": round(v, 3)}, ts))
            window.append(v)
            if len(window) == 10:  # a 10-minute tumbling window closes
                fields = {
                    "count": 10,
                    "mean": sum(window) / 10,
                    "min": min(window),
                    "max": max(window),
                    "last": v,
                }
                lines.append(line("sensor_window", {**tags, "window_s": "600"}, fields, ts - 9 * MINUTE))
                window = []
        if s.type == "smoke" and s is not silent:
            episode = now - 2 * HOUR
            fire = {**tags, "rule": "threshold_high", "category": "smoke"}
            lines.append(line("rule_firing", {**fire, "state": "raised"},
                              {"value": 12.5, "episode_start": episode, "candidate_id": "cand-smoke"}, episode))  # fmt: skip
            lines.append(line("rule_firing", {**fire, "state": "cleared"},
                              {"value": 3.1, "episode_start": episode}, episode + 10 * MINUTE))  # fmt: skip
        if s is silent:
            due = now - 30 * MINUTE
            fire = {**tags, "rule": "silence", "state": "raised", "category": "sensor_offline"}
            lines.append(
                line("rule_firing", fire, {"episode_start": due, "candidate_id": "cand-silent"}, due)
            )
    return lines


def _camera_lines(now: int) -> list[str]:
    from gridwatch.ingest.camera import CameraHealth
    from gridwatch.ingest.camera import health_lines as camera_health_lines

    lines: list[str] = []
    for ts in range(now - 3 * HOUR, now, 10_000):
        for cam, down_since, reconnects in (("cam-north-gate", None, 0), ("cam-river", now - 20 * MINUTE, 2)):
            up = down_since is None or ts < down_since
            h = CameraHealth(
                camera_id=cam, url=f"rtsp://viewer:***@10.0.4.21:554/{cam}", state="up" if up else "down", up=up,
                fps=10.0 if up else 0.0, frames=int((ts - now + 3 * HOUR) / 100), reconnects=reconnects if ts > now - HOUR else 0,
                open_failures=0, stalls=0, stale_dropped=3, last_frame_age_s=0.1 if up else (ts - down_since) / 1000,
                last_error=None if up else "no frame for 10 s", ts_ms=ts,
            )  # fmt: skip
            lines += camera_health_lines([h])
    return lines


def _health_lines(now: int) -> list[str]:
    """pipeline_health of bridge, two stream workers (one restarts), dispatch and cameras; dead_letters."""
    lines: list[str] = []
    for k, ts in enumerate(range(now - 3 * HOUR, now, 10_000)):
        n = k + 1
        lines += health_lines("bridge", "gw-1:gridwatch-bridge", {
            "received": 1500 * n, "forwarded": 1500 * n - 2, "records": 15 * n, "dead_letters": n // 30,
            "mqtt_connects": 1 + n // 500, "mqtt_disconnects": n // 500, "mqtt_connect_failures": 0,
            "kafka_send_errors": n // 700, "connected": k % 400 != 399}, ts)  # fmt: skip
        for inst, restart in (("gw-2:gridwatch-streams", None), ("gw-3:gridwatch-streams", 600)):
            m = n if restart is None or k < restart else k - restart + 1  # a restart resets the counters
            lines += health_lines("streams", inst, {
                "readings": 750 * m, "batches": 10 * m, "duplicates": 0, "late": m // 100, "unknown_sensor": 0,
                "firings": m // 200, "candidates": m // 200, "dead_letters": m // 90, "consumer_lag": (k * 37) % 500,
                "latency_p50_ms": 140 + k % 20, "latency_p99_ms": 400 + k % 90, "latency_max_ms": 800,
                "latency_count": 7500, "influx_written_lines": 760 * m, "influx_write_errors": m // 300,
                "influx_retries": m // 300, "influx_rejected_lines": 0, "influx_spilled_lines": 0,
                "influx_replayed_lines": 0, "influx_dropped_lines": 0, "influx_buffered_lines": k % 50,
                "influx_spilled_bytes": 0}, ts)  # fmt: skip
        lines += health_lines("dispatch", "dispatch-0", {
            "candidates_in": n // 10, "dead_letters": 0, "feedback_in": n // 20, "feedback_refused": 0,
            "db_retries": 0, "incidents_created": n // 15, "attached": n // 40, "duplicates": 0, "unroutable": 0,
            "commands": n // 20, "commands_refused": 0, "escalations": n // 120, "stale_escalations": 0,
            "deliveries_sent": n // 8, "delivery_failed_attempts": n // 100, "deliveries_failed": n // 900,
            "escalation_lag_p50_ms": 12.0, "escalation_lag_p99_ms": 40.0, "mqtt_connected": 1}, ts)  # fmt: skip
        # The camera worker also writes latency_p50_ms / latency_p99_ms as floats, which the stream
        # workers write as integers into the same measurement: InfluxDB refuses whichever comes second
        # ("field type conflict"). Left out here; the dashboards read only frame_latency_* of cameras.
        lines += health_lines("cameras", "cameras-0", {
            "frames": 20 * n, "inferences": 4 * n, "pending": 0, "frame_latency_p50_ms": 80.0,
            "frame_latency_p99_ms": 250.0 + k % 30}, ts)  # fmt: skip
        for reason, count in (("invalid_json", n // 50), ("unknown_sensor", n // 80)):
            lines.append(
                line("dead_letters", {"component": "bridge", "reason": reason}, {"count": count}, ts)
            )
    return lines


@pytest.fixture(scope="module")
def world(influxdb, postgres) -> Iterator[World]:
    now = int(time.time() * 1000)
    postgres.reset_database()
    core = _seed_ledger(postgres.url, now)
    rows = core.ledger.kpi_rows(0)
    db = f"dashboards_{uuid.uuid4().hex[:8]}"
    influxdb.create_database(db)
    lines = _kpi_lines(rows, now) + _sensor_lines(now) + _camera_lines(now) + _health_lines(now)
    for i in range(0, len(lines), 5000):
        influxdb.write_lines(db, "\n".join(lines[i : i + 5000]), precision="ms")
    core.ledger.close()
    yield World(
        influxdb, db, postgres.url.replace("postgresql+psycopg://", "postgresql://"), now, now - 6 * HOUR
    )


# --- Grafana's template interpolation, as its InfluxDB and SQL datasources do it -----------------
@dataclass
class Selected:
    values: list[str]
    multi: bool  # multi-value or include-all: formatted as a list
    all_value: str | None = None  # "All" with a custom all value: inserted as is


_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def _format(sel: Selected, ds_uid: str) -> str:
    if sel.all_value is not None:
        return sel.all_value
    if ds_uid == DS_INFLUX.uid:
        if not sel.multi:
            return sel.values[0]
        esc = [_REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), v) for v in sel.values]
        return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"
    if not sel.multi:
        return sel.values[0].replace("'", "''")
    return ",".join("'" + v.replace("'", "''") + "'" for v in sel.values)


def interpolate(query: str, ds_uid: str, variables: dict[str, Selected], w: World) -> str:
    builtins = {
        "timeFilter": f"time >= {w.start}ms and time <= {w.now}ms",
        "__interval": "1m",
        "__interval_ms": "60000",
        "__from": str(w.start),
        "__to": str(w.now),
    }

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name in builtins:
            return builtins[name]
        if name in variables:
            return _format(variables[name], ds_uid)
        return m.group(0)

    out = re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, query)
    leftover = re.findall(r"\$\{?\w+", out)
    assert not leftover, f"unresolved {leftover} in {out}"
    return out


def run_influx(w: World, query: str) -> list[dict[str, Any]]:
    body = w.influx.query(query, db=w.db, epoch="ms")  # raises with InfluxDB's message on any error
    return [s for r in body["results"] for s in r.get("series", [])]


def run_sql(w: World, sql: str) -> list[tuple]:
    with psycopg.connect(w.pg) as conn:
        conn.read_only = True  # the read-only Grafana role can run them
        with conn.cursor() as cur:
            cur.execute(sql.encode())  # bytes: no client-side placeholder parsing
            return cur.fetchall()


def resolve_variables(dash: dict[str, Any], w: World) -> dict[str, Selected]:
    """Each variable's query run in order, with "All" (or the first value) selected."""
    chosen: dict[str, Selected] = {}
    for v in dash["templating"]["list"]:
        ds = v["datasource"]["uid"]
        q = interpolate(v["query"], ds, chosen, w)
        if ds == DS_INFLUX.uid:
            values = sorted({row[1] for s in run_influx(w, q) for row in s["values"]})
        else:
            values = [str(r[0]) for r in run_sql(w, q)]
        assert values, f"{dash['uid']}: variable {v['name']} has no values: {q}"
        if v["includeAll"]:
            chosen[v["name"]] = Selected(values, True, v.get("allValue"))
        else:
            chosen[v["name"]] = Selected(values[:1], bool(v["multi"]))
    return chosen


def _queries(
    dash: dict[str, Any], chosen: dict[str, Selected]
) -> Iterator[tuple[str, str, str, dict[str, Selected]]]:
    """(where, datasource uid, raw query, variables) for every target and annotation; a repeated
    panel once per value of its variable, as Grafana clones it."""
    for a in dash["annotations"]["list"]:
        if "target" in a:
            yield f"annotation {a['name']!r}", a["datasource"]["uid"], a["target"]["query"], chosen
    for p in _panels(dash):
        clones = [chosen]
        if p.get("repeat"):
            sel = chosen[p["repeat"]]
            clones = [{**chosen, p["repeat"]: Selected([v], True)} for v in sel.values]
        for variables in clones:
            for t in p.get("targets", []):
                raw = t["query"] if t["datasource"]["uid"] == DS_INFLUX.uid else t["rawSql"]
                yield f"panel {p['title']!r} {t['refId']}", t["datasource"]["uid"], raw, variables


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_query_runs_and_returns_data(world: World, uid: str) -> None:
    dash = DASHBOARDS[uid]
    chosen = resolve_variables(dash, world)
    problems: list[str] = []
    ran = 0
    for where, ds, raw, variables in _queries(dash, chosen):
        q = interpolate(raw, ds, variables, world)
        ran += 1
        try:
            if ds == DS_INFLUX.uid:
                series = run_influx(world, q)
                if not series:
                    problems.append(f"{where}: no series\n    {q}")
                    continue
                columns = series[0]["columns"]
                for c, name in enumerate(columns):
                    if name != "time" and all(row[c] is None for s in series for row in s["values"]):
                        problems.append(f"{where}: column {name!r} is empty everywhere\n    {q}")
            else:
                if not run_sql(world, q):
                    problems.append(f"{where}: no rows\n    {q}")
        except Exception as e:  # noqa: BLE001 - collect every failure of the dashboard at once
            problems.append(f"{where}: {e}\n    {q}")
    assert ran >= 5
    assert not problems, f"{uid}:\n" + "\n".join(problems)


def test_drilldown_ageing_and_map_see_the_ledger(world: World) -> None:
    """Spot checks of numbers: the ageing buckets count the open incidents of the town, the map
    has every open incident with its level, and the escalations table the deadline misses."""
    dash = DASHBOARDS["gridwatch-drilldown"]
    chosen = resolve_variables(dash, world)
    assert chosen["town"].values == ["t-01"]
    ageing = next(p for p in dash["panels"] if p["title"].startswith("时限分布"))
    buckets = dict(run_sql(world, interpolate(ageing["targets"][0]["rawSql"], DS_LEDGER.uid, chosen, world)))
    assert len(buckets) == 6 and sum(buckets.values()) == 3  # t-01: acknowledged, escalated, open
    assert buckets["超时 overdue"] >= 1  # the escalated smoke incident's community clock has run out
    wall = DASHBOARDS["gridwatch-wall"]
    geo = next(p for p in wall["panels"] if p["type"] == "geomap")
    with psycopg.connect(world.pg) as conn:
        cur = conn.execute(interpolate(geo["targets"][0]["rawSql"], DS_LEDGER.uid, {}, world).encode())
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    assert {"latitude", "longitude", "level", "category", "severity_rank"} <= set(cols)
    assert len(rows) == 6 and {r["level"] for r in rows} == {"grid", "community"}
    assert all(29 < r["latitude"] < 32 and 103 < r["longitude"] < 105 for r in rows)
    json.dumps(DASHBOARDS)  # the whole set serialises (no stray objects in the JSON)


# --- push_dashboards against a stand-in for Grafana -----------------------------------------------
class FakeGrafana:
    """A tiny HTTP server that stands in for Grafana, which cannot run here: it answers the HTTP API
    calls push_dashboards makes (folders, datasources, dashboards) the way Grafana 11 does, keeps
    what was saved, and records every request (method, path, headers, JSON body)."""

    def __init__(self, token: str, prefix: str = "") -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.token, self.prefix = token, prefix
        self.requests: list[dict[str, Any]] = []
        self.folders: dict[str, str] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep the test output clean
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                status, answer = fake.answer(self.command, self.path, self.headers.get("Authorization"), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{prefix}"

    def answer(self, method: str, path: str, auth: str | None, body: Any) -> tuple[int, Any]:
        from urllib.parse import unquote

        if auth != f"Bearer {self.token}":
            return 401, {"message": "Invalid API key"}
        if not path.startswith(f"{self.prefix}/api/"):
            return 404, {"message": "Not found"}
        route = path.removeprefix(f"{self.prefix}/api")
        if m := re.fullmatch(r"/folders/([\w-]+)", route):
            if method == "GET":
                uid = m.group(1)
                return (
                    (200, {"uid": uid, "title": self.folders[uid]})
                    if uid in self.folders
                    else (404, {"message": "folder not found"})
                )
            self.folders[m.group(1)] = body["title"]
            return 200, {"uid": m.group(1), "title": body["title"]}
        if route == "/folders" and method == "POST":
            self.folders[body["uid"]] = body["title"]
            return 200, {"uid": body["uid"], "title": body["title"], "id": len(self.folders)}
        if m := re.fullmatch(r"/datasources/name/(.+)", route):
            ds = self.datasources.get(unquote(m.group(1)))
            return (200, ds) if ds else (404, {"message": "Data source not found"})
        if route == "/datasources" and method == "POST":
            ds = {**body, "id": len(self.datasources) + 1}
            self.datasources[body["name"]] = ds
            return 200, {"id": ds["id"], "message": "Datasource added", "datasource": ds}
        if m := re.fullmatch(r"/datasources/(\d+)", route):
            return 200, {"id": int(m.group(1)), "message": "Datasource updated"}
        if route == "/dashboards/db" and method == "POST":
            uid = body["dashboard"]["uid"]
            if body["folderUid"] not in self.folders:
                return 400, {"message": "folder not found"}
            self.versions[uid] = self.versions.get(uid, 0) + 1
            return 200, {"status": "success", "uid": uid, "url": f"/d/{uid}/x", "version": self.versions[uid]}
        return 404, {"message": f"no route {method} {route}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


PUSH_ENV = {
    "GRIDWATCH_INFLUX_URL": "http://influxdb:8086",
    "GRIDWATCH_INFLUX_DB": "gridwatch",
    "GRIDWATCH_INFLUX_READ_USER": "grafana",
    "GRIDWATCH_INFLUX_READ_PASSWORD": "influx-secret-1b7e",
    "GRIDWATCH_LEDGER_HOST": "postgres:5432",
    "GRIDWATCH_LEDGER_DB": "gridwatch",
    "GRIDWATCH_LEDGER_READ_USER": "grafana",
    "GRIDWATCH_LEDGER_READ_PASSWORD": "ledger-secret-9c2d",
    "GRIDWATCH_LEDGER_SSLMODE": "disable",
}


@pytest.fixture
def fake_grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana("glsa_test_token_5f0c", prefix="/grafana")
    yield g
    g.close()


def test_push_creates_then_updates_folders_datasources_and_dashboards(
    fake_grafana: FakeGrafana, caplog
) -> None:
    import logging

    from gridwatch.dashboards_gen.push import push_dashboards

    caplog.set_level(logging.DEBUG)  # urllib3 and requests log at DEBUG: they must not show the token either
    g = fake_grafana
    report = push_dashboards(g.url, g.token, env=PUSH_ENV)
    assert all(r["headers"]["Authorization"] == f"Bearer {g.token}" for r in g.requests)
    assert all(r["path"].startswith("/grafana/api/") for r in g.requests)  # the sub-path is kept
    calls = [(r["method"], r["path"].removeprefix("/grafana/api")) for r in g.requests]
    assert calls[:4] == [
        ("GET", "/folders/gridwatch-wall"),
        ("POST", "/folders"),
        ("GET", "/folders/gridwatch-ops"),
        ("POST", "/folders"),
    ]
    assert g.folders == {
        "gridwatch-wall": "gridwatch 大屏 Wall screens",
        "gridwatch-ops": "gridwatch 运行 Operations",
    }
    ds_posts = [r["body"] for r in g.requests if r["path"].endswith("/api/datasources")]
    influx = next(d for d in ds_posts if d["type"] == "influxdb")
    assert (
        influx["uid"] == DS_INFLUX.uid
        and influx["url"] == "http://influxdb:8086"
        and influx["access"] == "proxy"
    )
    assert influx["jsonData"] == {
        "version": "InfluxQL",
        "dbName": "gridwatch",
        "httpMode": "POST",
        "timeInterval": "10s",
    }
    assert influx["secureJsonData"] == {"password": "influx-secret-1b7e"}
    ledger = next(d for d in ds_posts if d["type"] == DS_LEDGER.type)
    assert ledger["uid"] == DS_LEDGER.uid and ledger["url"] == "postgres:5432"
    assert ledger["jsonData"]["database"] == "gridwatch" and ledger["secureJsonData"] == {
        "password": "ledger-secret-9c2d"
    }
    saved = [r["body"] for r in g.requests if r["path"].endswith("/dashboards/db")]
    assert {b["dashboard"]["uid"] for b in saved} == set(DASHBOARDS)
    for b in saved:
        d = DASHBOARDS[b["dashboard"]["uid"]]
        assert b["dashboard"] == d and b["overwrite"] is True and b["message"]
        assert b["folderUid"] == ("gridwatch-wall" if "wall" in d["tags"] else "gridwatch-ops")
    assert [o.action for o in report.of("dashboard")] == ["created"] * len(DASHBOARDS)
    assert report.grafana_url == g.url and report.of("dashboard")[0].url == "/d/gridwatch-wall/x"

    # the second push finds everything and updates in place
    g.requests.clear()
    again = push_dashboards(g.url, g.token, env=PUSH_ENV)
    methods = [(r["method"], r["path"].removeprefix("/grafana/api")) for r in g.requests]
    assert ("POST", "/folders") not in methods and ("POST", "/datasources") not in methods
    assert [m for m in methods if m[0] == "PUT"] == [("PUT", "/datasources/1"), ("PUT", "/datasources/2")]
    assert {o.action for o in again.of("folder")} == {"unchanged"}
    assert {o.action for o in again.of("datasource")} == {"updated"}
    assert {o.action for o in again.of("dashboard")} == {"updated"}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "grafana: dashboard gridwatch-wall" in logged
    for secret in (
        g.token,
        PUSH_ENV["GRIDWATCH_INFLUX_READ_PASSWORD"],
        PUSH_ENV["GRIDWATCH_LEDGER_READ_PASSWORD"],
    ):
        assert secret not in logged and secret not in again.model_dump_json()


def test_push_refusals_name_the_problem_but_never_the_secret(
    fake_grafana: FakeGrafana, tmp_path: Path
) -> None:
    from gridwatch.dashboards_gen.push import PushError, push_dashboards

    g = fake_grafana
    with pytest.raises(PushError) as bad_token:
        push_dashboards(g.url, "glsa_wrong_token_77aa", env=PUSH_ENV)
    assert "401" in str(bad_token.value) and "Invalid API key" in str(bad_token.value)
    assert "glsa_wrong_token_77aa" not in str(bad_token.value)
    g.requests.clear()
    with pytest.raises(PushError, match="GRIDWATCH_LEDGER_READ_PASSWORD") as missing:
        push_dashboards(
            g.url, g.token, env={k: v for k, v in PUSH_ENV.items() if "LEDGER_READ_PASSWORD" not in k}
        )
    assert g.requests == [] and PUSH_ENV["GRIDWATCH_INFLUX_READ_PASSWORD"] not in str(missing.value)
    with pytest.raises(PushError, match="must not carry credentials"):
        push_dashboards(g.url.replace("http://", "http://admin:admin@"), g.token, env=PUSH_ENV)
    # dashboards only, from a dashboards directory (the committed JSON)
    report = push_dashboards(g.url, g.token, datasources=False, dashboards_dir=DASHBOARDS_DIR)
    assert report.of("datasource") == [] and {o.uid for o in report.of("dashboard")} == set(DASHBOARDS)
    assert not any("/datasources" in r["path"] for r in g.requests)
    with pytest.raises(PushError, match="no dashboards"):
        push_dashboards(g.url, g.token, datasources=False, dashboards_dir=tmp_path)
