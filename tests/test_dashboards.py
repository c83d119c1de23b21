"""Grafana dashboards as code: the committed JSON is the generator's, the layouts fit their screens,
and every panel's query returns data after a short run of the real pipeline.

No Grafana can run here, so each query is run the way Grafana would send it: template variables
are resolved by running the variables' own queries (chained ones in order, "All" expanded as
Grafana expands it), then substituted with Grafana's formatting rules for the target datasource
(InfluxQL: regex-escaped `(a|b)` for multi-value variables; SQL: quoted `'a','b'`), and the
built-ins ($timeFilter, $__interval, $__from, $__to) are replaced. InfluxQL goes to a real
InfluxDB 1.6.7, SQL to the real PostgreSQL 15 (`postgres` fixture) in a read-only transaction.

The data is what gridwatch's own processes wrote in a ~35 s run (tests/dashboard_pipeline.py):
`gridwatch bridge`, `gridwatch streams worker`, `gridwatch dispatch serve` with its ledger on the
PostgreSQL, and `gridwatch cameras worker` on a simulated RTSP camera, fed by the demo's sensor feed
and answered by the demo's teams. What such a run cannot produce would be listed in
`QUIET_COLUMNS` (nothing now), and the camera panels run on synthetic data written with the
writers' own line helpers when no camera worker can run here.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from gridwatch.dashboards_gen.__main__ import differences, main
from gridwatch.dashboards_gen.alerts import ALERT_ENV, ALERTS_FOLDER
from gridwatch.dashboards_gen.dashboards import FOLDERS, SCREENS, build_dashboards
from gridwatch.dashboards_gen.model import DS_INFLUX, DS_LEDGER
from gridwatch.dashboards_gen.provisioning import (
    ALERT_NOTIFICATIONS_FILE,
    ALERT_RULES_FILE,
    DASHBOARDS_MOUNT,
    render_files,
)
from gridwatch.dispatch.kpi import period_starts
from gridwatch.influx import health_lines

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


# --- the worlds: a short run of the real pipeline, and synthetic data for what it cannot show -----
@dataclass
class World:
    name: str  # "pipeline" or "synthetic"
    influx: Any
    db: str
    pg: str  # psycopg conninfo
    now: int
    start: int
    interval: str  # Grafana's $__interval for this time range
    cameras_skipped: str | None = None  # why the run had no camera worker (None: it had one)


#: Columns of panels that a short run of the real pipeline cannot fill: the panel's query runs on
#: the pipeline's data (and must return rows, its other columns filled), and again on the synthetic
#: data, where these columns must be filled too. {(dashboard uid, panel title): (columns, why)}
QUIET_COLUMNS: dict[tuple[str, str], tuple[set[str], str]] = {}
#: Queries of the camera panels: synthetic data instead when the run could not start the camera
#: worker (no footage or no gst-rtsp-server here; scripts/setup.sh installs both).
CAMERA_QUERY = re.compile(r"\"camera_health\"|\"component\" = 'cameras'")


def _conninfo(postgres: Any) -> str:
    return postgres.url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def pipeline_run(postgres, tmp_path_factory) -> Iterator[Any]:
    """The real bridge, streams worker, dispatch service and camera worker, fed for a short while
    (tests/dashboard_pipeline.py); the ledger is the tests' PostgreSQL."""
    from tests.dashboard_pipeline import run_pipeline

    postgres.reset_database()
    with run_pipeline(tmp_path_factory.mktemp("dashboards-pipeline"), postgres.url) as run:
        yield run


@pytest.fixture(scope="module")
def pipeline_world(pipeline_run, postgres) -> World:
    # Looked at right after the run with the time range "last 30 minutes": Grafana's $__interval
    # is then the datasource's minimum, 10 s (30 min over a panel's ~1000 px is under 2 s).
    now = int(time.time() * 1000)
    run = pipeline_run
    if run.cameras_skipped is not None:
        warnings.warn(f"camera panels run on synthetic data: {run.cameras_skipped}", stacklevel=1)
    return World("pipeline", run.pipe.stack.influxdb, run.pipe.database, _conninfo(postgres), now,
                 now - 30 * MINUTE, "10s", run.cameras_skipped)  # fmt: skip


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
    """pipeline_health of the bridge (losing MQTT now and then, failing a Kafka send) and of the
    camera worker, as they write it."""
    lines: list[str] = []
    for k, ts in enumerate(range(now - 3 * HOUR, now, 10_000)):
        n = k + 1
        lines += health_lines("bridge", "gw-1:gridwatch-bridge", {
            "received": 1500 * n, "forwarded": 1500 * n - 2, "records": 15 * n, "dead_letters": n // 30,
            "mqtt_connects": 1 + n // 500, "mqtt_disconnects": n // 500, "mqtt_connect_failures": n // 600,
            "kafka_send_errors": n // 700, "connected": k % 400 != 399}, ts)  # fmt: skip
        lines += health_lines("cameras", "cameras-0", {
            "frames": 20 * n, "inferences": 4 * n, "pending": 0, "frame_latency_p50_ms": 80.0,
            "frame_latency_p99_ms": 250.0 + k % 30}, ts)  # fmt: skip
    return lines


@pytest.fixture(scope="module")
def synthetic_world(pipeline_run, postgres) -> World:
    """Three hours of what the bridge and the camera worker write, through their own line helpers,
    in a database of its own on the run's InfluxDB: two cameras (one goes down and reconnects) and
    a bridge that loses MQTT and fails Kafka sends now and then."""
    influx = pipeline_run.pipe.stack.influxdb
    db = "dashboards_synthetic"
    influx.create_database(db)
    now = int(time.time() * 1000)
    lines = _camera_lines(now) + _health_lines(now)
    for i in range(0, len(lines), 5000):
        influx.write_lines(db, "\n".join(lines[i : i + 5000]), precision="ms")
    return World("synthetic", influx, db, _conninfo(postgres), now, now - 6 * HOUR, "1m")


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
        "__interval": w.interval,
        "__interval_ms": str(int(w.interval[:-1]) * {"s": 1000, "m": 60_000}[w.interval[-1]]),
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


def _world_for(query: str, worlds: dict[str, World]) -> World:
    """Where a query runs: the pipeline's data, unless the run had no camera worker and it is a
    camera query."""
    pipeline = worlds["pipeline"]
    if pipeline.cameras_skipped is not None and CAMERA_QUERY.search(query):
        return worlds["synthetic"]
    return pipeline


def resolve_variables(dash: dict[str, Any], worlds: dict[str, World]) -> dict[str, Selected]:
    """Each variable's query run in order, with "All" (or the first value) selected."""
    chosen: dict[str, Selected] = {}
    for v in dash["templating"]["list"]:
        ds = v["datasource"]["uid"]
        w = _world_for(v["query"], worlds)
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


@dataclass
class Query:
    where: str
    title: str  # the panel's ("" for an annotation)
    ds: str  # datasource uid
    raw: str
    variables: dict[str, Selected]


def _queries(dash: dict[str, Any], chosen: dict[str, Selected]) -> Iterator[Query]:
    """Every target and annotation; a repeated panel once per value of its variable, as Grafana
    clones it."""
    for a in dash["annotations"]["list"]:
        if "target" in a:
            yield Query(f"annotation {a['name']!r}", "", a["datasource"]["uid"], a["target"]["query"], chosen)
    for p in _panels(dash):
        clones = [chosen]
        if p.get("repeat"):
            sel = chosen[p["repeat"]]
            clones = [{**chosen, p["repeat"]: Selected([v], True)} for v in sel.values]
        for variables in clones:
            for t in p.get("targets", []):
                raw = t["query"] if t["datasource"]["uid"] == DS_INFLUX.uid else t["rawSql"]
                where = f"panel {p['title']!r} {t['refId']}"
                yield Query(where, p["title"], t["datasource"]["uid"], raw, variables)


def _problems(q: Query, w: World, may_be_empty: set[str]) -> list[str]:
    """What is wrong with a query's answer in a world: an error, no data, or an InfluxDB column
    empty everywhere (which is how a misspelt field shows up)."""
    sql = interpolate(q.raw, q.ds, q.variables, w)
    where = f"{q.where} ({w.name} data)"
    try:
        if q.ds == DS_LEDGER.uid:
            return [] if run_sql(w, sql) else [f"{where}: no rows\n    {sql}"]
        series = run_influx(w, sql)
    except Exception as e:  # noqa: BLE001 - collect every failure of the dashboard at once
        return [f"{where}: {e}\n    {sql}"]
    if not series:
        return [f"{where}: no series\n    {sql}"]
    columns = series[0]["columns"]
    return [
        f"{where}: column {name!r} is empty everywhere\n    {sql}"
        for c, name in enumerate(columns)
        if name != "time"
        and name not in may_be_empty
        and all(row[c] is None for s in series for row in s["values"])
    ]


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_query_runs_and_returns_data(pipeline_world: World, synthetic_world: World, uid: str) -> None:
    worlds = {w.name: w for w in (pipeline_world, synthetic_world)}
    dash = DASHBOARDS[uid]
    chosen = resolve_variables(dash, worlds)
    problems: list[str] = []
    ran = 0
    for q in _queries(dash, chosen):
        quiet, _why = QUIET_COLUMNS.get((uid, q.title), (set(), ""))
        problems += _problems(q, _world_for(q.raw, worlds), quiet)
        if quiet:  # the columns the run cannot fill, on the synthetic data
            problems += _problems(q, synthetic_world, set())
        ran += 1
    assert ran >= 5
    assert not problems, f"{uid}:\n" + "\n".join(problems)


def test_quiet_columns_name_real_panels() -> None:
    for (uid, title), (columns, _why) in QUIET_COLUMNS.items():
        panel = next(p for p in _panels(DASHBOARDS[uid]) if p["title"] == title)
        assert all(f'AS "{c}"' in panel["targets"][0]["query"] for c in columns), (uid, title)


def _rows(w: World, sql: str) -> list[dict[str, Any]]:
    with psycopg.connect(w.pg) as conn:
        cur = conn.execute(sql.encode())
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def test_panels_show_what_the_pipeline_did(pipeline_world: World) -> None:
    """Spot checks of numbers against the ledger the dispatch service wrote: the drill-down's town,
    its deadline ageing, the map's open incidents and levels, the escalations, today's received."""
    w = pipeline_world
    incidents = _rows(w, "SELECT * FROM incidents")
    first_town = min(i["town_id"] for i in incidents if i["town_id"])
    dash = DASHBOARDS["gridwatch-drilldown"]
    chosen = resolve_variables(dash, {"pipeline": w})
    assert chosen["town"].values == [first_town]
    ageing = next(p for p in dash["panels"] if p["title"].startswith("时限分布"))
    buckets = dict(run_sql(w, interpolate(ageing["targets"][0]["rawSql"], DS_LEDGER.uid, chosen, w)))
    open_in_town = [
        i for i in incidents if i["town_id"] == first_town and i["state"] not in ("closed", "false_alarm")
    ]
    assert len(buckets) == 6 and sum(buckets.values()) == len(open_in_town) >= 1  # the flood at least

    wall = DASHBOARDS["gridwatch-wall"]
    geo = next(p for p in wall["panels"] if p["type"] == "geomap")
    rows = _rows(w, interpolate(geo["targets"][0]["rawSql"], DS_LEDGER.uid, {}, w))
    assert {"latitude", "longitude", "level", "category", "severity_rank"} <= set(rows[0])
    assert {r["incident_id"] for r in rows} == {
        i["incident_id"] for i in incidents if i["state"] not in ("closed", "false_alarm")
    }
    assert any(r["category"] == "water_level" and r["level"] == "district" for r in rows)  # nobody answered
    assert all(29 < r["latitude"] < 32 and 103 < r["longitude"] < 105 for r in rows)

    escalations = next(p for p in wall["panels"] if p["title"] == "升级 Escalations")
    levels = {
        r["level"] for r in _rows(w, interpolate(escalations["targets"][0]["rawSql"], DS_LEDGER.uid, {}, w))
    }
    assert {"community", "town", "district"} <= levels

    received = next(p for p in wall["panels"] if p["title"] == "今日受理 Received today")
    series = run_influx(w, interpolate(received["targets"][0]["query"], DS_INFLUX.uid, {}, w))
    today = period_starts(w.now, TZ)["today"]
    if min(i["created_at"] for i in incidents) >= today:  # not run across midnight in the centre
        assert series[0]["values"][0][1] == len(incidents)
    json.dumps(DASHBOARDS)  # the whole set serialises (no stray objects in the JSON)


# --- alert rules: structure, and their queries on the pipeline's data -----------------------------
ALERTS = yaml.safe_load(render_files()[ALERT_RULES_FILE])
ALERT_RULES = {r["uid"]: r for g in ALERTS["groups"] for r in g["rules"]}
NOTIFICATIONS = yaml.safe_load(render_files()[ALERT_NOTIFICATIONS_FILE])
_CJK = re.compile(r"[\u4e00-\u9fff]")


def test_alert_rules_are_grafana_provisioning_and_portable_influxql() -> None:
    assert ALERTS["apiVersion"] == 1 and len(ALERTS["groups"]) == 1
    group = ALERTS["groups"][0]
    assert group["folder"] == ALERTS_FOLDER.title and group["orgId"] == 1 and group["interval"] == "1m"
    assert group["folder"] not in {f.title for f in FOLDERS}  # see alerts.ALERTS_FOLDER
    assert len(ALERT_RULES) == len(group["rules"]) >= 8
    panels = {(uid, p["id"]) for uid, d in DASHBOARDS.items() for p in d["panels"]}
    for uid, r in ALERT_RULES.items():
        assert re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid
        assert {
            "title",
            "condition",
            "data",
            "noDataState",
            "execErrState",
            "for",
            "annotations",
            "labels",
        } <= set(r)
        refs = [d["refId"] for d in r["data"]]
        assert len(refs) == len(set(refs)) and r["condition"] in refs, uid
        for i, d in enumerate(r["data"]):
            m = d["model"]
            assert m["refId"] == d["refId"] and set(d["relativeTimeRange"]) == {"from", "to"}
            if d["datasourceUid"] == DS_INFLUX.uid:
                assert m["rawQuery"] is True and m["datasource"] == {"type": "influxdb", "uid": DS_INFLUX.uid}
                assert not NOT_PORTABLE.search(m["query"]), (uid, m["query"])
                # alert queries have no dashboard variables and no $__interval: only $timeFilter
                assert re.findall(r"\$\w+", m["query"]) == ["$timeFilter"] * m["query"].count("$"), uid
                assert d["relativeTimeRange"]["from"] > 0
            else:
                assert d["datasourceUid"] == "__expr__" and m["type"] in ("reduce", "threshold", "math"), uid
                used = re.findall(r"\$(\w+)", m["expression"]) if m["type"] == "math" else [m["expression"]]
                assert used and set(used) <= set(refs[:i]), (uid, m)  # only earlier nodes
        assert r["noDataState"] in ("OK", "NoData", "Alerting") and r["execErrState"] == "Error"
        # Grafana expands $VAR in titles and labels of provisioning files: none there
        assert "$" not in r["title"] and not any("$" in v for v in r["labels"].values()), uid
        assert r["labels"]["severity"] in ("critical", "warning") and r["labels"]["component"], uid
        a = r["annotations"]
        assert "${" not in "".join(a.values()), uid  # annotations are templates, never environment variables
        for key in ("summary", "description"):
            assert _CJK.search(a[key]) and re.search(r"[A-Za-z]{4}", a[key]), (uid, key)
        assert len(a["runbook"]) > 30
        assert a["dashboard"] == f"/d/{r['dashboardUid']}?viewPanel={r['panelId']}"
        assert a["__dashboardUid__"] == r["dashboardUid"] and a["__panelId__"] == str(r["panelId"])
        assert (r["dashboardUid"], r["panelId"]) in panels, uid
    assert {r["labels"]["component"] for r in ALERT_RULES.values()} >= {
        "cameras", "sensors", "dispatch", "streams", "pipeline", "influxdb", "bridge"}  # fmt: skip
    # the contact point takes its URL from the environment; the policy groups by component
    (cp,) = NOTIFICATIONS["contactPoints"]
    (receiver,) = cp["receivers"]
    assert receiver["type"] == "webhook" and receiver["settings"]["url"] == "${GRAFANA_ALERT_WEBHOOK_URL}"
    assert set(re.findall(r"\$\{(\w+)\}", render_files()[ALERT_NOTIFICATIONS_FILE])) == set(ALERT_ENV)
    (policy,) = NOTIFICATIONS["policies"]
    assert policy["receiver"] == cp["name"] and policy["group_by"] == ["component"]
    assert all(route["receiver"] == cp["name"] for route in policy["routes"])


def alert_query(node: dict[str, Any], w: World) -> str:
    """An alert's InfluxQL as Grafana sends it: `$timeFilter` from the query's relativeTimeRange
    (seconds before the evaluation time, here the world's `now`)."""
    rtr = node["relativeTimeRange"]
    start, end = w.now - rtr["from"] * 1000, w.now - rtr["to"] * 1000
    return node["model"]["query"].replace("$timeFilter", f"time >= {start}ms and time <= {end}ms")


_REDUCERS = {
    "last": lambda v: v[-1],
    "min": min,
    "max": max,
    "mean": lambda v: sum(v) / len(v),
    "sum": sum,
    "count": len,
}
_OPS = {"gt": lambda v, p: v > p, "lt": lambda v, p: v < p}


def evaluate_alert(rule: dict[str, Any], w: World) -> dict[tuple, str]:
    """OUR evaluation of Grafana's server-side expressions, since no Grafana can run here: each query
    is run on the real InfluxDB; every InfluxDB series becomes one Grafana series labelled with its
    tags (one alert instance per label set); `reduce` takes its reducer over the series' numbers
    (mode dropNN: nulls dropped; none left -> no value), `threshold` gives 1 where `value op param`,
    `math` is evaluated per label set (`&&` as and), and an instance is Alerting where the condition
    node is non-zero. A rule whose queries return no series is in the NoData case, mapped by its
    noDataState (Alerting / OK / NoData). Returns {labels: "Alerting" | "Normal" | "NoData"}."""
    nodes: dict[str, dict[tuple, Any]] = {}
    got_series = False
    for d in rule["data"]:
        m = d["model"]
        if d["datasourceUid"] == DS_INFLUX.uid:
            series = run_influx(w, alert_query(d, w))
            got_series |= bool(series)
            nodes[d["refId"]] = {}
            for s in series:
                assert len(s["columns"]) == 2, s["columns"]  # time + one number: one Grafana series
                nodes[d["refId"]][tuple(sorted((s.get("tags") or {}).items()))] = [v for _, v in s["values"]]
        elif m["type"] == "reduce":
            fn = _REDUCERS[m["reducer"]]
            nodes[d["refId"]] = {
                k: (fn([x for x in v if x is not None]) if any(x is not None for x in v) else None)
                for k, v in nodes[m["expression"]].items()
            }
        elif m["type"] == "threshold":
            (cond,) = m["conditions"]
            op, (param,) = _OPS[cond["evaluator"]["type"]], cond["evaluator"]["params"]
            nodes[d["refId"]] = {
                k: None if v is None else float(op(v, param)) for k, v in nodes[m["expression"]].items()
            }
        else:  # math
            used = re.findall(r"\$(\w+)", m["expression"])
            code = (
                re.sub(r"\$(\w+)", r"v['\1']", m["expression"]).replace("&&", " and ").replace("||", " or ")
            )
            out = {}
            for k in set().union(*(nodes[u].keys() for u in used)):
                v = {u: nodes[u].get(k) for u in used}
                out[k] = None if None in v.values() else float(eval(code, {}, {"v": v}))  # noqa: S307 - our own
            nodes[d["refId"]] = out
    if not got_series:
        return {(): {"Alerting": "Alerting", "OK": "Normal"}.get(rule["noDataState"], "NoData")}
    return {k: "Alerting" if v else "Normal" for k, v in nodes[rule["condition"]].items()}


def _firing(states: dict[tuple, str]) -> set[str]:
    return {",".join(f"{k}={v}" for k, v in labels) for labels, s in states.items() if s == "Alerting"}


def test_alert_rules_run_on_the_pipelines_data(pipeline_world: World, synthetic_world: World) -> None:
    """Every rule's queries, with $timeFilter from its relativeTimeRange, return series after the
    real pipeline's run; evaluated (our evaluation, see `evaluate_alert`) they fire only for what the
    run really left wrong: the water-level incident nobody answered sits at the district, and (when
    the camera worker ran) cam-street, whose stream does not exist, has never had a frame. The six
    sensors that fall silent are in six communities: no gateway alarm."""
    worlds = {w.name: w for w in (pipeline_world, synthetic_world)}
    problems, states = [], {}
    for uid, rule in ALERT_RULES.items():
        queries = [d for d in rule["data"] if d["datasourceUid"] == DS_INFLUX.uid]
        w = _world_for(queries[0]["model"]["query"], worlds)
        for d in queries:
            q = alert_query(d, w)
            try:
                if not run_influx(w, q):
                    problems.append(f"{uid} {d['refId']} ({w.name} data): no series\n    {q}")
            except Exception as e:  # noqa: BLE001 - collect them all
                problems.append(f"{uid} {d['refId']} ({w.name} data): {e}\n    {q}")
        if not problems:
            states[uid] = (w.name, evaluate_alert(rule, w))
    assert not problems, "\n".join(problems)
    firing = {uid: _firing(s) for uid, (_w, s) in states.items() if _firing(s)}
    district = firing.pop("gridwatch-district-overdue")
    assert len(district) == 1 and next(iter(district)).startswith("node=")  # the district's own node
    cameras = firing.pop("gridwatch-camera-down", set())
    if states["gridwatch-camera-down"][0] == "pipeline":
        assert cameras == {"camera_id=cam-street"}
    assert firing == {}, f"a healthy run should not fire these: {firing}"


def _failure_lines(now: int) -> list[str]:
    """What a bad quarter of an hour looks like, written with the writers' own line helpers: a
    bridge flooded with malformed messages, stream workers whose lag keeps growing and whose
    InfluxDB writes fail and then drop lines, pushes given up, a camera dark for 15 minutes (the
    other up), six sensors of one community falling silent together (two elsewhere), two incidents
    held by the district; the camera worker writes no health at all."""
    from gridwatch.influx import line
    from gridwatch.ingest.camera import CameraHealth
    from gridwatch.ingest.camera import health_lines as camera_health_lines

    lines: list[str] = []
    for k, ts in enumerate(range(now - 15 * MINUTE, now + 1, 5_000)):
        lines += health_lines(
            "bridge", "gw-1:gridwatch-bridge", {"received": 100 * k, "dead_letters": 3 * k}, ts
        )
        for inst in ("streams-a", "streams-b"):
            lines += health_lines("streams", inst, {
                "readings": 90 * k, "consumer_lag": 12_000 + 150 * k, "influx_write_errors": k // 4,
                "influx_dropped_lines": max(0, k - 150), "influx_buffered_lines": 5000}, ts)  # fmt: skip
        lines += health_lines(
            "dispatch", "dispatch-0", {"candidates_in": k, "deliveries_failed": k // 60}, ts
        )
        for cam, up in (("cam-dark", False), ("cam-lit", True)):
            lines += camera_health_lines([CameraHealth(
                camera_id=cam, url="rtsp://viewer:***@10.0.4.22:554/x", state="up" if up else "down", up=up,
                fps=12.5 if up else 0.0, frames=100 * k if up else 0, reconnects=0, open_failures=0 if up else k,
                stalls=0, stale_dropped=0, last_frame_age_s=0.1 if up else None, last_error=None, ts_ms=ts)])  # fmt: skip
    for i, community in enumerate(["c-01-01"] * 6 + ["c-02-01"] * 2):
        tags = {"sensor_id": f"wl-{i:04d}", "type": "water_level", "grid": f"{community}-01", "community": community,
                "town": community[:4], "rule": "silence", "state": "raised", "category": "sensor_offline"}  # fmt: skip
        at = now - 10 * MINUTE + i * 20_000
        lines.append(line("rule_firing", tags, {"episode_start": at - 60_000}, at))
    lines.append(line("team_workload", {"node": "d-01", "level": "district"}, {"open": 2}, now - 30_000))
    lines.append(line("team_workload", {"node": "t-01", "level": "town"}, {"open": 5}, now - 30_000))
    return lines


def test_alert_rules_fire_on_failure_data(pipeline_run) -> None:
    """What a healthy run cannot produce, written with the production line helpers into a database
    of its own, then each rule evaluated (our evaluation of Grafana's expressions, `evaluate_alert`):
    every rule fires, for exactly the series that are failing."""
    influx = pipeline_run.pipe.stack.influxdb
    db = "alerts_failing"
    influx.create_database(db)
    now = int(time.time() * 1000)
    lines = _failure_lines(now)
    for i in range(0, len(lines), 5000):
        influx.write_lines(db, "\n".join(lines[i : i + 5000]), precision="ms")
    w = World("failing", influx, db, "", now, now - HOUR, "10s")
    firing = {uid: _firing(evaluate_alert(r, w)) for uid, r in ALERT_RULES.items()}
    assert firing == {
        "gridwatch-camera-down": {"camera_id=cam-dark"},
        "gridwatch-sensors-silent-burst": {"community=c-01-01"},
        "gridwatch-district-overdue": {"node=d-01"},
        "gridwatch-consumer-lag": {""},
        "gridwatch-dead-letters": {"component=bridge"},
        "gridwatch-influx-dropped": {"component=streams"},
        "gridwatch-influx-write-errors": {"component=streams"},
        "gridwatch-deliveries-failed": {"component=dispatch"},
        "gridwatch-heartbeat-bridge": set(),
        "gridwatch-heartbeat-streams": set(),
        "gridwatch-heartbeat-dispatch": set(),
        "gridwatch-heartbeat-cameras": {""},  # no health point at all: NoData, which alerts
    }
    # and a quarter of an hour later nothing was written: every heartbeat is missed
    later = World("failing", influx, db, "", now + 15 * MINUTE, now, "10s")
    for comp in ("bridge", "streams", "dispatch"):
        assert evaluate_alert(ALERT_RULES[f"gridwatch-heartbeat-{comp}"], later) == {(): "Alerting"}


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
        self.rules: dict[str, dict[str, Any]] = {}
        self.refuse_rules = ""  # set: rule saves are refused with this message
        self.group_intervals: dict[tuple[str, str], int] = {}
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
        if (
            self.refuse_rules
            and method in ("POST", "PUT")
            and route.startswith("/v1/provisioning/alert-rules")
        ):
            return 400, {"message": self.refuse_rules}
        if route == "/v1/provisioning/alert-rules" and method == "POST":
            if body.get("folderUID") not in self.folders:
                return 400, {"message": "folder does not exist"}
            if body["uid"] in self.rules:
                return 409, {"message": "rule uid exists"}
            self.rules[body["uid"]] = {**body, "id": len(self.rules) + 1, "provenance": "api"}
            # a new group gets Grafana's default interval, whatever the rule says
            self.group_intervals.setdefault((body["folderUID"], body["ruleGroup"]), 10)
            return 201, self.rules[body["uid"]]
        if m := re.fullmatch(r"/v1/provisioning/alert-rules/([\w-]+)", route):
            uid = m.group(1)
            if uid not in self.rules:
                return 404, {"message": "rule not found"}
            if method == "PUT":
                self.rules[uid] = {**body, "id": self.rules[uid]["id"], "provenance": "api"}
            return 200, self.rules[uid]
        if m := re.fullmatch(r"/v1/provisioning/folder/([\w-]+)/rule-groups/([\w-]+)", route):
            key = (m.group(1), m.group(2))
            if key not in self.group_intervals:
                return 404, {"message": "rule group not found"}
            if method == "PUT":
                self.group_intervals[key] = body["interval"]
            rules = [r for r in self.rules.values() if (r["folderUID"], r["ruleGroup"]) == key]
            return 200, {
                "title": key[1],
                "folderUid": key[0],
                "interval": self.group_intervals[key],
                "rules": rules,
            }
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
        "gridwatch-alerts": "gridwatch 告警 Alerts",
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
    # alert rules: looked up by uid, created in the alerts folder, the same rules as the provisioning file
    rule_calls = [c for c in calls if "/provisioning/" in c[1]]
    assert rule_calls[:2] == [
        ("GET", "/v1/provisioning/alert-rules/gridwatch-camera-down"),
        ("POST", "/v1/provisioning/alert-rules"),
    ]
    assert set(g.rules) == set(ALERT_RULES) and [o.action for o in report.of("alert_rule")] == [
        "created"
    ] * len(ALERT_RULES)
    for uid, saved in g.rules.items():
        file_rule = ALERT_RULES[uid]
        assert saved["folderUID"] == ALERTS_FOLDER.uid and saved["ruleGroup"] == "gridwatch"
        assert {k: saved[k] for k in file_rule if k not in ("dashboardUid", "panelId")} == {
            k: v for k, v in file_rule.items() if k not in ("dashboardUid", "panelId")
        }
    posts = [
        r for r in g.requests if r["method"] == "POST" and r["path"].endswith("/provisioning/alert-rules")
    ]
    assert not any("X-Disable-Provenance" in r["headers"] for r in posts)  # stay read-only in the UI
    # the new group was on Grafana's default interval: set to the file's 1m
    assert rule_calls[-2:] == [
        ("GET", "/v1/provisioning/folder/gridwatch-alerts/rule-groups/gridwatch"),
        ("PUT", "/v1/provisioning/folder/gridwatch-alerts/rule-groups/gridwatch"),
    ]
    assert g.group_intervals == {("gridwatch-alerts", "gridwatch"): 60}
    assert report.of("rule_group")[0].action == "updated"
    assert report.grafana_url == g.url and report.of("dashboard")[0].url == "/d/gridwatch-wall/x"

    # the second push finds everything and updates in place
    g.requests.clear()
    again = push_dashboards(g.url, g.token, env=PUSH_ENV)
    methods = [(r["method"], r["path"].removeprefix("/grafana/api")) for r in g.requests]
    assert ("POST", "/folders") not in methods and ("POST", "/datasources") not in methods
    assert [m for m in methods if m[0] == "PUT" and "/datasources" in m[1]] == [
        ("PUT", "/datasources/1"),
        ("PUT", "/datasources/2"),
    ]
    assert ("POST", "/v1/provisioning/alert-rules") not in methods
    assert [m for m in methods if m[0] == "PUT" and "/alert-rules/" in m[1]] == [
        ("PUT", f"/v1/provisioning/alert-rules/{uid}") for uid in ALERT_RULES
    ]
    assert {o.action for o in again.of("alert_rule")} == {"updated"}
    assert (
        again.of("rule_group")[0].action == "unchanged"
        and g.group_intervals[("gridwatch-alerts", "gridwatch")] == 60
    )
    assert {o.action for o in again.of("folder")} == {"unchanged"}
    assert {o.action for o in again.of("datasource")} == {"updated"}
    assert {o.action for o in again.of("dashboard")} == {"updated"}
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert (
        "grafana: dashboard gridwatch-wall" in logged
        and "grafana: alert rule gridwatch-camera-down" in logged
    )
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
    assert {o.uid for o in report.of("alert_rule")} == set(ALERT_RULES)  # read from its alerting file
    # without alert rules: no alerts folder, no rule requests
    g.requests.clear()
    report = push_dashboards(g.url, g.token, datasources=False, alerts=False)
    assert report.of("alert_rule") == [] and not any("/provisioning/" in r["path"] for r in g.requests)
    assert not any(r["path"].endswith("/folders/gridwatch-alerts") for r in g.requests)
    # Grafana refusing a rule is reported with Grafana's message, never the token
    g.refuse_rules = "invalid alert rule: data source not found"
    with pytest.raises(PushError, match="refused saving alert rule gridwatch-camera-down: 400") as refused:
        push_dashboards(g.url, g.token, datasources=False)
    assert "data source not found" in str(refused.value) and g.token not in str(refused.value)
    assert not any("/datasources" in r["path"] for r in g.requests)
    with pytest.raises(PushError, match="no dashboards"):
        push_dashboards(g.url, g.token, datasources=False, dashboards_dir=tmp_path)


def test_every_incident_id_links_to_the_console() -> None:
    """Issue 9: each incident shown from the ledger opens its page in the operator console."""
    linked = []
    for uid, d in DASHBOARDS.items():
        for p in _panels(d):
            sql = " ".join(t.get("rawSql", "") for t in p.get("targets", []))
            if "incident_id" not in sql.split("FROM")[0]:
                continue
            links = [
                link
                for o in p["fieldConfig"]["overrides"]
                if o["matcher"] == {"id": "byName", "options": "incident_id"}
                for prop in o["properties"]
                if prop["id"] == "links"
                for link in prop["value"]
            ]
            assert [x["url"] for x in links] == ["http://localhost:8080/console/incidents/${__value.raw}"], (
                uid,
                p["title"],
            )
            linked.append((uid, p["type"]))
    assert ("gridwatch-wall", "geomap") in linked and ("gridwatch-drilldown", "table") in linked
