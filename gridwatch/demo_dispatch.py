"""The dispatch part of `gridwatch demo`: simulated grid teams, a supervisor, and what they did.

Deadlines in the demo are seconds, not minutes (`demo_dispatch_overrides`), so a newcomer sees the
whole ladder work in half a minute: most grid teams acknowledge, go on site and resolve over MQTT
within seconds; every third stays silent, so its incident escalates to the community, which then
acknowledges; a supervisor verifies each resolved incident through the HTTP API and it closes.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text

from gridwatch.city import CityModel
from gridwatch.config import GridwatchConfig
from gridwatch.dataset.hard_examples import HardExampleStore
from gridwatch.localrun import LocalPipeline
from gridwatch.topics import team_feedback_topic

DEMO_DEADLINES = {"ack_s": 6, "arrive_s": 20, "resolve_s": 60}


def demo_dispatch_overrides(cfg: GridwatchConfig) -> dict[str, Any]:
    """The demo config's trigger list with second-scale deadlines on a 24/7 calendar."""
    triggers = []
    for t in cfg.dispatch.triggers:
        d = t.model_dump(mode="json")
        d["calendar"] = "always"
        d["deadlines"] = {lvl: dict(DEMO_DEADLINES) for lvl in ("grid", "community", "town", "district")}
        triggers.append(d)
    return {
        "dispatch": {
            "triggers": triggers,
            "kpi_interval_s": 2,
            "scheduler_max_sleep_s": 0.2,
            "verify_clear_s": 5,
        }
    }


def _silent(incident_id: str) -> bool:
    """Every third grid team (by incident) does not answer: its incident escalates."""
    return int(hashlib.sha1(incident_id.encode()).hexdigest(), 16) % 3 == 0


class DemoTeams:
    """Team terminals (MQTT) and a supervisor (HTTP API) acting on the pushes they receive."""

    def __init__(self, pipe: LocalPipeline) -> None:
        self.pipe = pipe
        self.prefix = pipe.cfg.mqtt.topic_prefix
        self.alerts: Counter[str] = Counter()
        self.commands = 0
        self.verified = 0
        self.confirmed = 0
        self.dismissed = 0
        self.errors: list[str] = []
        self._timers: list[threading.Timer] = []
        self._stop = threading.Event()
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="gridwatch-demo-teams", protocol=mqtt.MQTTv311
        )
        self.c.on_connect = lambda c, u, f, rc, p=None: c.subscribe(
            [(f"{self.prefix}/teams/+/alerts", 1), (f"{self.prefix}/teams/+/feedback/result", 1)]
        )
        self.c.on_message = self._on_message
        self.c.connect(pipe.stack.mqtt_host, pipe.stack.mqtt_port)
        self.c.loop_start()
        self.http = httpx.Client(
            base_url=pipe.api_url, timeout=10, headers={"Authorization": f"Bearer {pipe.supervisor_token}"}
        )
        threading.Thread(target=self._supervisor, name="demo-supervisor", daemon=True).start()

    def _later(self, delay: float, fn, *args: Any, **kwargs: Any) -> None:
        t = threading.Timer(delay, fn, args, kwargs)
        t.daemon = True
        self._timers.append(t)
        t.start()

    def _send(self, node: str, incident_id: str, command: str, **extra: Any) -> None:
        body = {"v": 1, "command_id": f"demo-{command}-{incident_id}-{node}", "incident_id": incident_id,
                "command": command, "by": "demo team", **extra}  # fmt: skip
        self.c.publish(team_feedback_topic(self.prefix, node), json.dumps(body), qos=1)
        self.commands += 1

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        body = json.loads(m.payload)
        if m.topic.endswith("/feedback/result"):
            if not body.get("ok") and "cannot" not in body.get("error", ""):
                self.errors.append(body.get("error", "?"))
            return
        self.alerts[body["event"]] += 1
        iid, node = body["incident_id"], body["node_id"]
        if body["event"] == "dispatched" and _silent(iid):
            return  # "the grassroots blows the whistle and nobody answers"
        camera = any(e.get("kind") == "snapshot" for e in body.get("evidence") or [])
        if body["event"] == "dispatched" and camera and body["category"] == "gathering":
            # the team on site finds people passing by: its verdict labels the camera's hard example
            self.dismissed += 1
            self._later(
                1.0, self._send, node, iid, "false_alarm", reason="正常人流，非聚集 people passing by"
            )
            return
        if body["event"] in ("dispatched", "escalated", "reopened"):
            self._later(1.0, self._send, node, iid, "acknowledge")
            self._later(2.0, self._send, node, iid, "arrive")
            self._later(3.5, self._send, node, iid, "resolve", note="处理完毕 handled")

    def _supervisor(self) -> None:
        """Confirms what waits for review (the trigger list holds dumping and bin alerts for an
        operator) and verifies resolved incidents through the API (closure verification by a
        supervisor), except camera incidents: the camera that saw them verifies those."""
        while not self._stop.wait(1.0):
            try:
                for inc in self.http.get("/api/v1/incidents", params={"state": "pending_review"}).json():
                    iid = inc["incident_id"]
                    r = self.http.post(
                        f"/api/v1/incidents/{iid}/confirm", json={"command_id": f"demo-confirm-{iid}"}
                    )
                    if r.status_code == 200 and r.json()["changed"]:
                        self.confirmed += 1
                for inc in self.http.get("/api/v1/incidents", params={"state": "resolved"}).json():
                    if inc["source_kind"] == "camera":
                        continue  # the camera that saw it verifies it
                    r = self.http.post(
                        f"/api/v1/incidents/{inc['incident_id']}/verify",
                        json={"command_id": f"demo-verify-{inc['incident_id']}-{inc['version']}", "ok": True},
                    )
                    if r.status_code == 200 and r.json()["changed"]:
                        self.verified += 1
            except httpx.HTTPError:
                continue  # the API is still starting

    def close(self) -> None:
        self._stop.set()
        for t in self._timers:
            t.cancel()
        self.c.loop_stop()
        self.c.disconnect()
        self.http.close()


def ledger_incidents(pipe: LocalPipeline) -> list[dict[str, Any]]:
    engine = create_engine(pipe.cfg.dispatch.ledger_url)
    try:
        with engine.connect() as conn:
            return [
                dict(r._mapping) for r in conn.execute(text("SELECT * FROM incidents ORDER BY created_at"))
            ]
    except Exception:
        return []  # not created yet
    finally:
        engine.dispose()


def deliveries_by_status(pipe: LocalPipeline) -> Counter[str]:
    engine = create_engine(pipe.cfg.dispatch.ledger_url)
    try:
        with engine.connect() as conn:
            return Counter(
                {
                    r[0]: r[1]
                    for r in conn.execute(text("SELECT status, count(*) FROM deliveries GROUP BY status"))
                }
            )
    except Exception:
        return Counter()
    finally:
        engine.dispose()


def dispatch_summary(console: Console, pipe: LocalPipeline, teams: DemoTeams, cameras: bool = False) -> bool:
    city = CityModel.load(pipe.cfg.city.geojson)
    incs = ledger_incidents(pipe)
    t = Table(title="incidents (fused, dispatched by the trigger list, escalated on silence)")
    for col in ("incident", "from", "category", "first -> now responsible", "state", "esc", "src"):
        t.add_column(col, overflow="fold")
    for i in incs:
        now = city.nodes.get(i["node_id"])
        t.add_row(
            i["incident_id"][4:12],
            i["source_kind"],
            i["category"],
            f"{i['first_node_id']} -> {i['node_id']} ({now.name_zh if now else '?'})",
            i["state"],
            str(i["escalations"]),
            str(i["source_count"]),
        )
    console.print(t)
    kpi = pipe.influxql(
        "SELECT last(received), last(closed), last(escalated), last(closure_rate), last(self_disposal_rate), "
        "last(mean_response_s) FROM dispatch_kpi WHERE period='today' AND scope='district' AND category='all'"
    )
    pushes = deliveries_by_status(pipe)
    if kpi:
        _, received, closed, escalated, closure, self_disposal, response = kpi[0]["values"][0]
        console.print(
            f"[bold]KPIs today[/bold] (InfluxDB dispatch_kpi): received {received}, closed {closed}, escalated "
            f"{escalated}, closure rate {closure:.0%}, self-disposal rate {self_disposal:.0%}, mean response "
            f"{response:.1f} s;  pushes {dict(pushes)};  team commands {teams.commands}, supervisor "
            f"verifications {teams.verified};  API {pipe.api_url}/docs"
        )
    hx_dir = pipe.cfg.dispatch.hard_examples_dir
    hx = HardExampleStore(hx_dir).counts() if hx_dir is not None else {}
    console.print(
        f"[bold]review[/bold]: {teams.confirmed} incidents confirmed by the operator before dispatch (trigger list "
        f"`review: always`); false alarms dismissed by teams {teams.dismissed}; hard-example store "
        f"{hx_dir}: {hx}"
    )
    cam = [i for i in incs if i["source_kind"] == "camera"]
    if cameras:
        reopened = sum(1 for i in cam if i["reopened"])
        console.print(
            f"[bold]cameras[/bold]: {len(cam)} camera incidents; after teams resolved them the same camera "
            f"verified the zone: {sum(1 for i in cam if i['state'] == 'closed')} closed, {reopened} reopened "
            "(the crowd or the vehicle was still there); snapshots in "
            + str(pipe.cfg.cameras.evidence.directory)
        )
    console.print(
        f"[bold]operator console[/bold]: {pipe.api_url}/console  (log in as operator or supervisor, "
        f"password {pipe.console_password}; run `gridwatch demo --keep` to keep it up)"
    )
    escalated_any = any(i["escalations"] for i in incs)
    closed_any = any(i["state"] == "closed" for i in incs)
    return (
        bool(incs)
        and escalated_any
        and closed_any
        and pushes.get("sent", 0) > 0
        and bool(kpi)
        and (bool(cam) or not cameras)
    )
