"""The operator console end to end, in a real browser, against the real service and servers.

Headless Debian chromium driven by Playwright (`gridwatch/console/browser.py`), logging in through
the real form, against the real dispatch service (`DispatchService`: Kafka consumer, fusion,
routing, the PostgreSQL ledger, MQTT pushes, HTTP API and console) on the test fixtures' real
mosquitto, Tansu (Kafka), InfluxDB and PostgreSQL. Candidates are produced to Kafka; pushes are
read from mosquitto by a real MQTT client subscribed to every team's alert topic.

Proves: (a) a candidate on Kafka is in the review queue within 2 s; (b) confirming it (key `c`)
pushes it to its grid team's topic and nowhere else; (c) dismissing it (key `f`, a reason) puts
its camera source into the hard-example store and pushes nothing; (d) its marker lies inside its
grid on the map; (e) a team member can neither see nor act on another team's incident, in the
browser and through the HTTP API; (f) no page of the Chinese UI shows an English label or an
i18n key; (g) an operator reports a miss by a camera from the detail page: audited, translated in
the trail, a `missed` hard example with a frame request. Plus the screenshots of every screen from
the demo city (docs/img/console-*.png when GRIDWATCH_CONSOLE_SHOTS is set to a directory), and a
smoke run of `gridwatch bench console`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import paho.mqtt.client as mqtt
import pytest

from gridwatch.bench.console import (
    PASSWORD,
    CandidateProducer,
    ServiceThread,
    camera_candidate,
    console_users,
    live_config,
)
from gridwatch.config import CameraConfig, GridwatchConfig
from gridwatch.console.browser import VIEWPORT, launch, login, seen_at, watch_rows
from gridwatch.console.i18n import LABELS
from gridwatch.dataset.hard_examples import HardExampleStore
from gridwatch.devservers.process import free_port
from gridwatch.devservers.tansu import TansuServer
from gridwatch.dispatch.api import hash_token
from gridwatch.dispatch.ledger import incident_id_for
from gridwatch.schemas import IncidentCandidate, Location
from gridwatch.topics import team_alert_topic
from tests.dispatch_helpers import demo_city

pytest.importorskip("playwright")
pytestmark = [
    pytest.mark.servers,
    pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs Debian's chromium"),
]

CITY = demo_city()
TEAM_A_TOKEN = "tok-team-a-91c2"
MISS_GRID = CITY.grids()[20]


def with_cameras(cfg: GridwatchConfig) -> GridwatchConfig:
    """Three cameras (the API refuses a miss on any other), in config order: one far from
    MISS_GRID, one about 80 m from its point, one with no location. Nobody runs them here."""
    p, far = MISS_GRID.geometry.representative_point(), CITY.grids()[40].geometry.representative_point()

    def cam(cid: str, grid: str, where: tuple[float, float] | None, label: str) -> CameraConfig:
        return CameraConfig.model_validate({
            "source": {"id": cid, "url": "rtsp://127.0.0.1:9/none", "analysed_fps": 2},
            "location": {"lon": where[0], "lat": where[1]} if where else None,
            "rules": {"camera": {"camera_id": cid, "frame_size": [768, 576], "zones": [
                {"kind": "no_dumping", "id": "z1", "label": label, "grid_id": grid,
                 "polygon": [[0, 200], [768, 200], [768, 576], [0, 576]]}]}},
        })  # fmt: skip

    feeds = [
        cam("cam-0940", CITY.grids()[40].id, (far.x, far.y), "北门广场"),
        cam("cam-0920", MISS_GRID.id, (p.x, p.y + 80 / 111_195.0), "东门垃圾站"),
        cam("cam-0999", MISS_GRID.id, None, "停车场入口"),
    ]
    return cfg.model_copy(update={"cameras": cfg.cameras.model_copy(update={"feeds": feeds})})


class AlertSink:
    """A real MQTT client on every team's alert topic (`gridwatch/teams/+/alerts`)."""

    def __init__(self, port: int) -> None:
        self.q: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="console-e2e-alerts")
        ready = queue.Queue[int]()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("gridwatch/teams/+/alerts", qos=1)
        self.c.on_subscribe = lambda *a: ready.put(1)
        self.c.on_message = lambda c, u, m: self.q.put((m.topic, json.loads(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        ready.get(timeout=10)

    def _drain(self) -> None:
        while True:
            try:
                self.seen.append(self.q.get_nowait())
            except queue.Empty:
                return

    def for_incident(self, iid: str) -> list[tuple[str, dict[str, Any]]]:
        self._drain()
        return [(t, m) for t, m in self.seen if m.get("incident_id") == iid]

    def wait_for(self, iid: str, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = self.for_incident(iid)
            if got:
                return got[0]
            time.sleep(0.02)
        raise AssertionError(f"no MQTT alert for {iid} within {timeout} s")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@dataclass
class Live:
    base: str  # the console, http://127.0.0.1:PORT/console
    api: str  # the dispatch HTTP API
    work: Path
    svc: ServiceThread
    producer: CandidateProducer
    alerts: AlertSink

    @property
    def ledger(self) -> Any:
        return self.svc.svc.ledger

    def send(self, cand: IncidentCandidate) -> tuple[str, float]:
        t0 = time.time()
        self.producer.send(cand)
        return incident_id_for(cand.candidate_id), t0

    def wait_state(self, iid: str, state: str, timeout: float = 10.0) -> Any:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                row = self.ledger.incident_row(iid)
                if row.state == state:
                    return row
            except Exception:  # noqa: BLE001 - not stored yet
                pass
            time.sleep(0.05)
        raise AssertionError(f"{iid} not {state} within {timeout} s")


@pytest.fixture(scope="module")
def live(
    mosquitto: Any, influxdb: Any, influx_v2: Any, postgres: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    work = tmp_path_factory.mktemp("console-e2e")
    tansu = TansuServer(work / "tansu").start()  # its own: no other test's candidates on it
    postgres.reset_database()
    influxdb.create_database("console_e2e")
    port = free_port()
    cfg = live_config(
        ledger_url=postgres.url, api_port=port, mqtt_port=mosquitto.port, kafka_bootstrap=tansu.bootstrap_servers,
        influx_url=influx_v2.url, influx_bucket="console_e2e", workdir=work, users=console_users(CITY),
        credentials=[{"name": "team a", "role": "team", "node": CITY.grids()[0].id,
                      "token_sha256": hash_token(TEAM_A_TOKEN)}],
    )  # fmt: skip
    cfg = with_cameras(cfg)
    svc = producer = alerts = None
    try:
        alerts = AlertSink(mosquitto.port)
        svc = ServiceThread(cfg)
        producer = CandidateProducer(tansu.bootstrap_servers)
        yield Live(
            f"http://127.0.0.1:{port}/console", f"http://127.0.0.1:{port}", work, svc, producer, alerts
        )
    finally:
        for x in (producer, svc, alerts):
            if x is not None:
                x.close() if not isinstance(x, ServiceThread) else x.stop()
        tansu.stop()
    assert svc.error is None, svc.error


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def op_page(live: Live, browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    login(page, live.base, "op", PASSWORD)
    yield page
    ctx.close()


def open_review(page: Any, live: Live) -> None:
    page.goto(f"{live.base}/review")
    page.wait_for_selector("#review-count:not(:empty)")
    watch_rows(page, "li.review-item[data-id]")


def select_item(page: Any, iid: str) -> None:
    page.click(f'li.review-item[data-id="{iid}"] .ri-meta')
    page.wait_for_selector(f'li.review-item.selected[data-id="{iid}"]')


# --- (a) + (b) -------------------------------------------------------------------------------------


def test_candidate_appears_in_review_within_2s_and_confirm_pushes_to_its_team(
    live: Live, op_page: Any
) -> None:
    page = op_page
    open_review(page, live)
    grid = CITY.grids()[3]
    cand = camera_candidate(CITY, 301, grid=3, evidence_dir=live.work / "evidence", confidence=0.64)
    iid, t_sent = live.send(cand)
    item = page.wait_for_selector(f'li.review-item[data-id="{iid}"]', timeout=5000)
    latency = seen_at(page, iid) - t_sent  # type: ignore[operator]
    assert latency < 2.0, f"candidate -> review queue took {latency:.2f} s"
    text = item.inner_text()
    assert "乱倒垃圾" in text and "64%" in text and CITY.nodes[grid.id].name_zh in text
    img = item.query_selector(".ri-evidence img")  # the annotated snapshot, served by the console
    page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=img)
    row = live.ledger.incident_row(iid)
    assert row.state == "pending_review"
    assert live.alerts.for_incident(iid) == []  # nobody is told before the review

    select_item(page, iid)
    page.keyboard.press("c")
    topic, alert = live.alerts.wait_for(iid)
    assert topic == team_alert_topic("gridwatch", grid.id) == f"gridwatch/teams/{grid.id}/alerts"
    assert (alert["event"], alert["node_id"], alert["category"]) == ("dispatched", grid.id, "illegal_dumping")
    page.wait_for_selector(f'li.review-item[data-id="{iid}"]', state="detached", timeout=5000)
    row = live.ledger.incident_row(iid)
    assert (row.state, row.node_id) == ("dispatched", grid.id)
    conf = [t for t in live.ledger.transitions(iid) if t.kind == "confirm"]
    assert [(t.actor, t.by) for t in conf] == [("operator", "op")]
    time.sleep(0.3)
    assert [t for t, _ in live.alerts.for_incident(iid)] == [topic]  # no other team was told
    print(f"\nconsole e2e: candidate on Kafka -> review queue in the browser {latency * 1000:.0f} ms")


# --- (c) -------------------------------------------------------------------------------------------


def test_dismissed_false_alarm_lands_in_the_hard_example_store(live: Live, op_page: Any) -> None:
    page = op_page
    open_review(page, live)
    cand = camera_candidate(CITY, 302, grid=4, evidence_dir=live.work / "evidence", confidence=0.41)
    iid, _ = live.send(cand)
    page.wait_for_selector(f'li.review-item[data-id="{iid}"]', timeout=5000)
    select_item(page, iid)
    page.keyboard.press("f")
    page.wait_for_selector("#fa-dialog[open]")
    page.fill("#fa-reason", "树影晃动误检")
    page.keyboard.press("Enter")
    page.wait_for_selector(f'li.review-item[data-id="{iid}"]', state="detached", timeout=5000)
    row = live.wait_state(iid, "false_alarm")
    assert row.closed_at is not None
    fa = live.ledger.transitions(iid)[-1]
    assert (fa.kind, fa.actor, fa.by, fa.note) == ("false_alarm", "operator", "op", "树影晃动误检")
    ex = HardExampleStore(live.work / "hard-examples").get(cand.candidate_id)
    assert ex is not None and ex.verdict == "false_alarm"
    assert ex.data["incident_id"] == iid
    copied = list(ex.path.parent.glob("evidence-*"))  # the snapshot travels with the example
    assert copied and copied[0].stat().st_size > 1000
    time.sleep(0.3)
    assert live.alerts.for_incident(iid) == []  # a dismissed candidate is never pushed


# --- (d) -------------------------------------------------------------------------------------------


def test_incident_marker_lies_in_its_grid_on_the_map(live: Live, op_page: Any) -> None:
    page = op_page
    k = 57
    grid = CITY.grids()[k]
    p = grid.geometry.representative_point()
    now = int(time.time() * 1000)
    cand = IncidentCandidate(
        candidate_id=IncidentCandidate.make_id("sensor", "smoke-e2e-map", "threshold_high", now),
        category="smoke", severity="high", source_kind="sensor", source_id="smoke-e2e-map", grid_id=grid.id,
        location=Location(lon=p.x, lat=p.y), observed_at=now, raised_at=now, rule="threshold_high",
        summary="烟感报警 9.1 %obs/m",
    )  # fmt: skip
    iid, _ = live.send(cand)
    live.wait_state(iid, "dispatched")
    page.goto(f"{live.base}/map")
    marker = page.wait_for_selector(f'circle.mk[data-id="{iid}"]', timeout=5000)
    where = page.evaluate(
        """(id) => {
          const svg = document.getElementById('map');
          const c = document.querySelector(`circle.mk[data-id="${id}"]`);
          const pt = svg.createSVGPoint();
          pt.x = +c.getAttribute('cx'); pt.y = +c.getAttribute('cy');
          const grids = [...document.querySelectorAll('path.a-grid')].filter((g) => g.isPointInFill(pt));
          const r = c.getBoundingClientRect();
          return { grids: grids.map((g) => g.dataset.id), onScreen: r.width > 0 && r.left >= 0 && r.top >= 0
            && r.right <= innerWidth && r.bottom <= innerHeight };
        }""",
        iid,
    )
    assert where == {"grids": [grid.id], "onScreen": True}
    # the marker is the incident: a click opens its detail page
    with page.expect_navigation():
        marker.click()
    assert page.url.endswith(f"/incidents/{iid}")
    assert CITY.nodes[grid.id].name_zh in page.inner_text("main")


# --- (e) -------------------------------------------------------------------------------------------


def test_team_cannot_see_or_act_on_another_teams_incident(live: Live, browser: Any) -> None:
    g_a, g_b = CITY.grids()[0], CITY.grids()[1]
    ids = {}
    for name, g in (("a", g_a), ("b", g_b)):
        p = g.geometry.representative_point()
        now = int(time.time() * 1000)
        cand = IncidentCandidate(
            candidate_id=IncidentCandidate.make_id("sensor", f"water-{name}", "threshold_high", now),
            category="water_level", severity="high", source_kind="sensor", source_id=f"water-{name}",
            grid_id=g.id, location=Location(lon=p.x, lat=p.y), observed_at=now, raised_at=now,
            rule="threshold_high", summary="水位 2.71 m 超过警戒线 2.5 m",
        )  # fmt: skip
        ids[name], _ = live.send(cand)
    mine, other = ids["a"], ids["b"]
    live.wait_state(mine, "dispatched")
    live.wait_state(other, "dispatched")

    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    try:
        login(page, live.base, "team-a", PASSWORD)
        # the board: its own incident is listed, the other team's is not
        page.wait_for_selector(f'#list a.row[href$="/incidents/{mine}"]', timeout=5000)
        assert page.query_selector(f'#list a.row[href$="/incidents/{other}"]') is None
        listed = page.evaluate(
            "async () => (await (await fetch('/console/api/incidents?state=all&limit=500')).json()).rows.map((r) => r.id)"
        )
        assert mine in listed and other not in listed
        # the map: no marker for it
        page.goto(f"{live.base}/map")
        page.wait_for_selector(f'circle.mk[data-id="{mine}"]', timeout=5000)
        assert page.query_selector(f'circle.mk[data-id="{other}"]') is None
        # its live stream carries its own incident's changes and not the other's
        page.evaluate(
            "() => { window.__ev = []; window.liveStream().addEventListener('change', (m) => "
            "window.__ev.push(JSON.parse(m.data).incident_id)); }"
        )
        for iid, node in ((other, g_b.id), (mine, g_a.id)):
            live.svc.svc.core.command(
                iid, _cmd(f"e2e-ack-{iid}", "acknowledge", node)
            )  # the teams acknowledge (by MQTT, say)
        page.wait_for_function("(id) => window.__ev.includes(id)", arg=mine, timeout=5000)
        assert other not in page.evaluate("() => window.__ev")
        # the detail page refuses, and so does the console's action endpoint
        resp = page.goto(f"{live.base}/incidents/{other}")
        assert resp.status == 403 and "无权限" in page.inner_text("main")
        page.goto(f"{live.base}/incidents/{mine}")
        status = page.evaluate(
            """async (id) => {
              const cfg = JSON.parse(document.getElementById('gw-config').textContent);
              const r = await fetch(`/console/api/incidents/${id}/act`, { method: 'POST',
                headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': cfg.csrf },
                body: JSON.stringify({ command: 'note', note: 'x' }) });
              return r.status;
            }""",
            other,
        )
        assert status == 403
        ev = page.evaluate(
            "async (id) => (await fetch(`/console/incidents/${id}/evidence/x/0`)).status", other
        )
        assert ev in (403, 404)
    finally:
        ctx.close()
    # ... and the HTTP API with the team's own token
    h = {"Authorization": f"Bearer {TEAM_A_TOKEN}"}
    assert httpx.get(f"{live.api}/api/v1/incidents/{other}", headers=h).status_code == 403
    r = httpx.post(f"{live.api}/api/v1/incidents/{other}/arrive", json={"command_id": "spoof-1"}, headers=h)
    assert r.status_code == 403
    assert httpx.get(f"{live.api}/api/v1/incidents/{mine}", headers=h).status_code == 200
    assert [t.kind for t in live.ledger.transitions(other)] == ["dispatch", "acknowledge"]


def _cmd(cid: str, kind: str, node: str) -> Any:
    from gridwatch.dispatch.machine import Command, CommandKind

    return Command(cid, CommandKind(kind), "team", "e2e", node)


# --- (f) -------------------------------------------------------------------------------------------

# Every visible text node, and every title / placeholder / alt / aria-label / <option> of a visible
# element; not inside <code>, <kbd>, `.by` (log-in names) or `.raw` (configured or device-made
# values shown as they are: the site's name, the time zone's IANA name, a camera's evidence note):
# identifiers and data are not labels. Incident, camera and node ids in running text are dropped
# before the check (`ID`).
VISIBLE_TEXT_JS = """() => {
  const vis = (e) => e.checkVisibility({ checkOpacity: true, checkVisibilityCSS: true });
  const out = [];
  const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = w.nextNode(); n; n = w.nextNode()) {
    const p = n.parentElement;
    if (!p || p.closest('script, style, code, kbd, option, datalist, .by, .raw') || !vis(p)) continue;
    const s = n.textContent.trim();
    if (s) out.push(s);
  }
  for (const e of document.querySelectorAll('[title], [placeholder], [alt], [aria-label]')) {
    if (!vis(e)) continue;
    for (const a of ['title', 'placeholder', 'alt', 'aria-label']) if (e.getAttribute(a)) out.push(e.getAttribute(a));
  }
  for (const s of document.querySelectorAll('select')) if (vis(s)) for (const o of s.options) out.push(o.text.trim());
  for (const d of document.querySelectorAll('datalist')) for (const o of d.options) out.push(o.value);
  return out.filter(Boolean);
}"""
KEY_LIKE = re.compile(r"\b[a-z]+(?:_[a-z0-9]+)+\b")  # an i18n key or a raw enum value (pending_review)
LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
ALLOWED_LATIN = {
    "English",
    "Enter",
    "PM",
    "dB",
    "obs",
    "ug",
    "ms",
    "Grafana",
}  # language switch, a key, units, a product
ID = re.compile(
    r"\b[a-z]+-(?=[0-9a-z-]*[0-9])[0-9a-z]+(?:-[0-9a-z]+)*\b"
)  # inc-0a1b..., cam-0301, g-01-02-03
EN_ONLY = {en: k for k, (zh, en) in LABELS.items() if en != zh and LATIN_WORD.search(en)}


def untranslated(texts: list[str]) -> list[str]:
    bad = []
    for s in (ID.sub("", x).strip() for x in texts):
        if s in EN_ONLY:
            bad.append(f"{s!r} (English label {EN_ONLY[s]!r})")
        elif s in LABELS or KEY_LIKE.search(s):
            bad.append(f"{s!r} (an i18n key or raw value)")
        elif any(w not in ALLOWED_LATIN for w in LATIN_WORD.findall(s)):
            bad.append(f"{s!r} (English words)")
    return bad


def test_chinese_ui_has_no_untranslated_label(live: Live, browser: Any) -> None:
    # something in every state the pages draw: pending (with a merge), dispatched, merged
    a = camera_candidate(CITY, 401, grid=9, evidence_dir=live.work / "evidence", category="gathering",
                         summary="人员聚集约 60 人")  # fmt: skip
    b = camera_candidate(CITY, 402, grid=9, category="gathering", summary="人员聚集约 45 人")
    b = b.model_copy(update={"location": Location(lon=b.location.lon + 0.004, lat=b.location.lat)})
    ia, _ = live.send(a)
    ib, _ = live.send(b)
    live.wait_state(ia, "pending_review")
    live.wait_state(ib, "pending_review")
    ctx = browser.new_context(viewport=VIEWPORT)
    page = ctx.new_page()
    problems: dict[str, list[str]] = {}

    def check(name: str) -> None:
        assert page.evaluate("() => document.documentElement.lang") == "zh-CN"
        found = untranslated(page.evaluate(VISIBLE_TEXT_JS))
        if found:
            problems[name] = found

    try:
        page.goto(f"{live.base}/login")
        check("login")
        login(page, live.base, "op", PASSWORD)
        page.wait_for_selector("#list a.row")
        page.wait_for_selector("#summary table")
        check("board")
        page.goto(f"{live.base}/review")
        page.wait_for_selector(f'li.review-item[data-id="{ib}"]')
        check("review")
        page.click(f'li.review-item[data-id="{ib}"] .ri-meta')
        page.keyboard.press("m")
        page.wait_for_selector(f'#merge-suggest button[data-id="{ia}"]')
        check("review: merge dialog")
        page.click(f'#merge-suggest button[data-id="{ia}"]')
        page.keyboard.press("Enter")
        page.wait_for_selector(f'li.review-item[data-id="{ib}"]', state="detached")
        page.wait_for_selector(f'li.review-item[data-id="{ia}"] .ri-merged')
        for key, dialog in (("r", "#recat-dialog"), ("n", "#note-dialog"), ("f", "#fa-dialog")):
            page.click(f'li.review-item[data-id="{ia}"] .ri-meta')
            page.keyboard.press(key)
            page.wait_for_selector(f"{dialog}[open]")
            check(f"review: {dialog}")
            page.keyboard.press("Escape")
        live.wait_state(ib, "merged")
        for iid, what in ((ia, "detail: pending with a merge"), (ib, "detail: merged")):
            page.goto(f"{live.base}/incidents/{iid}")
            check(what)
        rows = sorted(_rows(live), key=lambda r: (r.state != "dispatched", r.source_kind != "camera"))
        dispatched = rows[0].incident_id
        page.goto(f"{live.base}/incidents/{dispatched}")
        check("detail: dispatched")
        page.goto(f"{live.base}/map")
        page.wait_for_selector("circle.mk")
        for colour in ("state", "level", "due"):
            page.select_option("#colour-by", colour)
            check(f"map by {colour}")
        page.goto(f"{live.base}/?state=all")
        page.wait_for_selector("#list a.row")
        check("board: all states")
    finally:
        ctx.close()
    assert not problems, json.dumps(problems, ensure_ascii=False, indent=1)
    assert untranslated(["Confirm", "state_merged", "pending_review", "确认 Merge"]) != []  # the check bites


def _rows(live: Live) -> list[Any]:
    from sqlalchemy import select

    from gridwatch.dispatch.models import IncidentRow

    with live.ledger.session() as s:
        return list(s.execute(select(IncidentRow)).scalars())


# --- a miss by a camera, reported from the detail page -------------------------------------------------


def test_operator_reports_a_miss_from_the_detail_page(live: Live, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    p = MISS_GRID.geometry.representative_point()
    now = int(time.time() * 1000)
    cand = IncidentCandidate(
        candidate_id=IncidentCandidate.make_id("citizen", "r-0920", "open311", now),
        category="illegal_dumping", severity="medium", source_kind="citizen", source_id="r-0920",
        grid_id=MISS_GRID.id, location=Location(lon=p.x, lat=p.y), observed_at=now, raised_at=now,
        rule="open311", summary="市民举报：东门有人倾倒建筑垃圾",
    )  # fmt: skip
    iid, _ = live.send(cand)
    row = live.wait_state(iid, "dispatched")
    tz = live.svc.svc.cfg.site.timezone
    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN", timezone_id="UTC")  # not the centre's zone
    page = ctx.new_page()
    try:
        login(page, live.base, "op", PASSWORD)
        page.goto(f"{live.base}/incidents/{iid}")
        page.click("#missed-open")
        page.wait_for_selector(
            '#missed-dialog[open] #missed-camera option[value="cam-0920"]', state="attached"
        )
        # the nearest camera first (and chosen), the one with no location last; the incident's time
        values = page.eval_on_selector_all("#missed-camera option", "(os) => os.map((o) => o.value)")
        assert values == ["cam-0920", "cam-0940", "cam-0999"]
        assert page.input_value("#missed-camera") == "cam-0920"
        wall = dt.datetime.fromtimestamp(row.created_at / 1000, ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M:%S")
        assert page.input_value("#missed-at") in (wall, wall.removesuffix(":00"))
        in_dialog = VISIBLE_TEXT_JS.replace("document.body", "document.getElementById('missed-dialog')")
        assert untranslated(page.evaluate(in_dialog.replace("document.querySelectorAll", "document.getElementById('missed-dialog').querySelectorAll"))) == []  # fmt: skip
        page.fill("#missed-note", "白色面包车倾倒建筑垃圾")
        shots = Path(os.environ.get("GRIDWATCH_CONSOLE_SHOTS") or tmp_path)
        page.screenshot(path=str(shots / "console-missed.png"))
        # a time in the future: the API's reason shows in the dialog, which stays open
        soon = dt.datetime.fromtimestamp(now / 1000 + 3600, ZoneInfo(tz)).strftime("%Y-%m-%dT%H:%M:%S")
        page.eval_on_selector("#missed-at", "(e, v) => { e.value = v; }", soon)
        page.click("#missed-form button[type=submit]")
        expect(page.locator("#missed-error")).to_contain_text("in the future")
        assert page.locator("#missed-dialog[open]").count() == 1
        # back to the default time: the report goes in and the trail shows its audit line
        page.eval_on_selector("#missed-at", "(e) => { e.value = e.defaultValue; }")
        with page.expect_navigation():
            page.click("#missed-form button[type=submit]")
        last = page.locator("table.trail tbody tr").last
        expect(last).to_contain_text("漏检")
        expect(last).to_contain_text("摄像头 cam-0920 于 ")
        expect(last).to_contain_text("漏检: 白色面包车倾倒建筑垃圾")
    finally:
        ctx.close()
    tr = live.ledger.transitions(iid)[-1]
    assert (tr.kind, tr.actor, tr.by, tr.to_state) == ("missed", "operator", "op", "dispatched")
    assert (tr.params["camera_id"], tr.params["at_ms"]) == ("cam-0920", row.created_at)  # exactly, in ms
    assert len([t for t in live.ledger.transitions(iid) if t.kind == "missed"]) == 1  # the refused one: not
    store = HardExampleStore(live.work / "hard-examples")
    [ex] = [x for x in store if x.data["incident_id"] == iid]
    assert (ex.verdict, ex.data["camera_id"], ex.data["observed_at"], ex.data["frame_status"]) == (
        "missed", "cam-0920", row.created_at, "requested",
    )  # fmt: skip
    reqs = [(q.example_id, q.at_ms) for q in store.frame_requests(["cam-0920"]) if q.incident_id == iid]
    assert reqs == [(ex.path.parent.name, row.created_at)]  # for the camera's worker to fill


# --- screenshots (demo city) and the bench smoke ------------------------------------------------------


def test_screenshots_of_every_screen_from_the_demo_city(tmp_path: Path, browser: Any) -> None:
    from gridwatch.console.demo import screenshot_demo

    out = Path(os.environ.get("GRIDWATCH_CONSOLE_SHOTS") or tmp_path / "shots")
    files = screenshot_demo(out, browser=browser)
    names = {f.name for f in files}
    assert {"console-login.png", "console-board.png", "console-detail.png", "console-map.png",
            "console-review.png", "console-board-en.png"} <= names  # fmt: skip
    from PIL import Image

    for f in files:
        with Image.open(f) as im:
            assert im.size == (1920, 1080), f.name
        assert 20_000 < f.stat().st_size < 400_000, (f.name, f.stat().st_size)


def test_bench_console_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", "bench", "console", "--open", "300", "--events", "4"],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout  # fmt: skip
    r = json.loads(out.strip().splitlines()[-1])
    assert r["bench"] == "console" and r["open_incidents"] == 304 and r["missing"] == 0
    assert r["stream_p50_ms"] > 0 and 0 < r["browser_p50_ms"] < 2000 and r["ratio_p50"] > 0
