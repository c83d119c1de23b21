"""The closed loop end to end on real servers, driven by a test clock (no sleeps for deadlines):

candidate on Kafka -> pushed to the grid team's MQTT topic -> no acknowledgement -> escalated to the
community after the deadline -> acknowledged (MQTT) -> resolved (HTTP API) -> verified -> closed,
with the ledger (PostgreSQL) and the KPI series (InfluxDB) checked at each step. The broker runs
with password authentication and the ACLs of `gridwatch dispatch mqtt-acl`: a team cannot read
another team's alerts, and tokens never reach the logs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from gridwatch.clock import ManualClock
from gridwatch.codec import encode_event
from gridwatch.devservers.process import free_port
from gridwatch.dispatch.api import hash_token
from gridwatch.dispatch.mqtt_acl import acl_text
from gridwatch.dispatch.service import DispatchService
from gridwatch.localrun import read_topic
from gridwatch.topics import (
    DEAD_LETTERS,
    INCIDENT_CANDIDATES,
    team_alert_topic,
    team_feedback_result_topic,
    team_feedback_topic,
)
from tests.dispatch_helpers import T0, candidate, demo_city, demo_config

pytestmark = [pytest.mark.servers]

GRID = demo_city().grids()[0]
COMMUNITY = GRID.parent
OTHER_GRID = demo_city().grids()[1].id
PASSWORDS = {
    "gridwatch-dispatch": "dispatch-pw",
    GRID.id: "grid-pw",
    COMMUNITY: "community-pw",
    OTHER_GRID: "other-pw",
}
TOKENS = {"grid": "tok-grid-5b1e", "community": "tok-community-77aa", "supervisor": "tok-super-0c3d"}


@pytest.fixture
def secured_mosquitto(fresh_mosquitto, tmp_path: Path):
    pw = tmp_path / "passwd"
    pw.touch()
    for user, password in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True, capture_output=True)
    pw.chmod(0o600)
    acl = tmp_path / "acl"
    acl.write_text(acl_text("gridwatch", dispatch_user="gridwatch-dispatch"))
    return fresh_mosquitto(password_file=pw, acl_file=acl, allow_anonymous=False)


class TeamTerminal:
    """A grid team's handheld terminal: a real MQTT client with the team's own credentials."""

    def __init__(self, port: int, user: str, topic: str) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.suback: list[Any] = []
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"term-{user}", protocol=mqtt.MQTTv5)
        self.c.username_pw_set(user, PASSWORDS[user])
        ready = threading.Event()
        result_topic = team_feedback_result_topic("gridwatch", user)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe([(topic, 1), (result_topic, 1)])
        self.c.on_subscribe = lambda c, u, mid, codes, p: (self.suback.extend(codes), ready.set())
        self.c.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload)))
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert ready.wait(10)

    def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]]:
        return self.messages.get(timeout=timeout)

    def none_within(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
            return False
        except queue.Empty:
            return True

    def publish(self, topic: str, body: dict[str, Any]) -> int:
        info = self.c.publish(topic, json.dumps(body), qos=1)
        info.wait_for_publish(5)
        return info.rc

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


class ServiceThread:
    """The dispatch service in its own event loop and thread, so the test can drive its clock."""

    def __init__(self, svc: DispatchService) -> None:
        self.svc = svc
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.stop_event and svc.ready.is_set()):
            assert self.error is None, self.error
            assert time.monotonic() < deadline, "dispatch service did not start"
            time.sleep(0.05)

    def _run(self) -> None:
        async def main() -> None:
            self.stop_event = asyncio.Event()
            await self.svc.run(self.stop_event)

        try:
            self.loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


def wait_until(pred, timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def produce(bootstrap: str, payloads: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer

    async def go() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=1 << 16)
        await p.start()
        try:
            for v in payloads:
                await p.send_and_wait(INCIDENT_CANDIDATES.name, v, key=b"k")
        finally:
            await p.stop()

    asyncio.run(go())


def test_closed_loop_end_to_end(
    secured_mosquitto, fresh_tansu, influxdb, influx_v2, postgres, tmp_path, caplog
) -> None:
    caplog.set_level(logging.DEBUG)
    tansu = fresh_tansu()
    postgres.reset_database()
    influxdb.create_database("dispatch_e2e")
    api_port = free_port()
    cfg = demo_config(
        postgres.url,
        api_port=api_port,
        scheduler_max_sleep_s=0.05,
        kpi_interval_s=0.3,
        mqtt_username="gridwatch-dispatch",
        mqtt_password_env="GW_TEST_DISPATCH_MQTT_PW",
        credentials=[
            {
                "name": "grid team",
                "role": "team",
                "node": GRID.id,
                "token_sha256": hash_token(TOKENS["grid"]),
            },
            {
                "name": "community team",
                "role": "team",
                "node": COMMUNITY,
                "token_sha256": hash_token(TOKENS["community"]),
            },
            {"name": "supervisor", "role": "supervisor", "token_sha256": hash_token(TOKENS["supervisor"])},
        ],
    )
    cfg = cfg.model_copy(
        update={
            "mqtt": cfg.mqtt.model_copy(update={"host": "127.0.0.1", "port": secured_mosquitto.port}),
            "kafka": cfg.kafka.model_copy(update={"bootstrap_servers": tansu.bootstrap_servers}),
            "influx": cfg.influx.model_copy(
                update={"url": influx_v2.url, "bucket": "dispatch_e2e", "spill_dir": tmp_path / "spill"}
            ),
        }
    )
    import os

    os.environ["GW_TEST_DISPATCH_MQTT_PW"] = PASSWORDS["gridwatch-dispatch"]
    clock = ManualClock(T0)
    grid_term = TeamTerminal(secured_mosquitto.port, GRID.id, team_alert_topic("gridwatch", GRID.id))
    comm_term = TeamTerminal(secured_mosquitto.port, COMMUNITY, team_alert_topic("gridwatch", COMMUNITY))
    # the neighbouring grid's team tries to read the first grid's alerts. Mosquitto 2 grants the
    # SUBACK and then never delivers (its ACL is checked per message): asserted after the push below.
    nosy = TeamTerminal(secured_mosquitto.port, OTHER_GRID, team_alert_topic("gridwatch", GRID.id))

    svc = ServiceThread(DispatchService(cfg, clock=clock))
    api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=10)
    try:
        led = svc.svc.ledger
        # 1. a candidate arrives on Kafka (plus one that no trigger line covers -> dead letter)
        cand = candidate("smoke-e2e", t=T0)
        produce(tansu.bootstrap_servers, [encode_event(cand), b"{not json"])
        topic, alert = grid_term.next(20)
        assert topic == team_alert_topic("gridwatch", GRID.id)
        assert alert["event"] == "dispatched" and alert["category"] == "smoke" and alert["node_id"] == GRID.id
        assert alert["map_url"] and alert["actions"][0]["url"].endswith("/acknowledge")
        iid = alert["incident_id"]
        row = led.incident_row(iid)
        assert (row.state, row.node_id, row.level) == ("dispatched", GRID.id, "grid")
        assert nosy.none_within(0.5)
        dls = wait_until(
            lambda: read_topic(tansu.bootstrap_servers, DEAD_LETTERS.name, 3), what="dead letter"
        )
        assert b"undecodable_record" in dls[0]

        # 2. silence: 299 s is not late, 300 s is -> escalated to the community, both told
        clock.advance(299)
        assert comm_term.none_within(0.5)
        clock.advance(1)
        topic, esc = comm_term.next(10)
        assert esc["event"] == "escalated" and esc["node_id"] == COMMUNITY and esc["level"] == "community"
        topic, away = grid_term.next(10)
        assert away["event"] == "escalated_away"
        row = led.incident_row(iid)
        assert (row.node_id, row.escalations) == (COMMUNITY, 1)

        # 3. the community acknowledges over MQTT (twice: a retry counts once)
        fb = {"v": 1, "command_id": "ack-c-1", "incident_id": iid, "command": "acknowledge", "by": "李强"}
        assert comm_term.publish(team_feedback_topic("gridwatch", COMMUNITY), fb) == 0
        topic, reply = comm_term.next(10)
        assert topic.endswith("/feedback/result") and reply["ok"] and reply["state"] == "acknowledged"
        comm_term.publish(team_feedback_topic("gridwatch", COMMUNITY), fb)
        _, reply2 = comm_term.next(10)
        assert reply2["ok"] and reply2["duplicate"]
        # a note from the terminal lands in the audit trail, by the team, and changes nothing else
        note = {"v": 1, "command_id": "note-c-1", "incident_id": iid, "command": "note", "by": "李强",
                "note": "已联系物业 called the property manager"}  # fmt: skip
        comm_term.publish(team_feedback_topic("gridwatch", COMMUNITY), note)
        _, reply3 = comm_term.next(10)
        assert reply3["ok"] and reply3["state"] == "acknowledged", reply3
        last = led.transitions(iid)[-1]
        assert (last.kind, last.actor, last.by, last.note) == ("note", "team", "李强", note["note"])
        # a team cannot publish commands as another team: the broker drops it (ACL)
        grid_term.publish(team_feedback_topic("gridwatch", COMMUNITY), {**fb, "command_id": "spoof"})

        # 4. resolved over the HTTP API with the community's token; the grid's token may read but
        #    an unrelated caller may not act
        r = api.post(f"/api/v1/incidents/{iid}/resolve", json={"command_id": "res-1", "note": "extinguished"},
                     headers={"Authorization": f"Bearer {TOKENS['community']}"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["incident"]["state"] == "resolved"
        r = api.post(
            f"/api/v1/incidents/{iid}/resolve",
            json={"command_id": "res-2"},
            headers={"Authorization": "Bearer nope"},
        )
        assert r.status_code == 401
        r = api.post(f"/api/v1/incidents/{iid}/verify", json={"command_id": "v-0", "ok": True},
                     headers={"Authorization": f"Bearer {TOKENS['grid']}"})  # fmt: skip
        assert r.status_code == 403 and "may not verify" in r.json()["detail"]

        # 5. verified by the supervisor -> closed
        r = api.post(f"/api/v1/incidents/{iid}/verify", json={"command_id": "v-1", "ok": True},
                     headers={"Authorization": f"Bearer {TOKENS['supervisor']}"})  # fmt: skip
        assert r.status_code == 200 and r.json()["incident"]["state"] == "closed"
        detail = api.get(
            f"/api/v1/incidents/{iid}", headers={"Authorization": f"Bearer {TOKENS['supervisor']}"}
        ).json()
        kinds = [t["kind"] for t in detail["transitions"]]
        assert kinds == ["dispatch", "escalate", "acknowledge", "note", "resolve", "verify"]
        assert "spoof" not in {t["command_id"] for t in detail["transitions"]}
        assert all(d["status"] == "sent" for d in detail["deliveries"])

        # 6. the KPI series in InfluxDB
        def kpi() -> dict[str, Any] | None:
            res = influxdb.query(
                "SELECT last(received) AS received, last(closed) AS closed, last(escalated) AS escalated, "
                "last(self_disposed) AS self_disposed, last(on_time_ack_rate) AS ack_rate, last(closure_rate) AS cr "
                "FROM dispatch_kpi WHERE period='today' AND scope='district' AND category='all'",
                db="dispatch_e2e",
            )
            series = res["results"][0].get("series")
            if not series:
                return None
            d = dict(zip(series[0]["columns"], series[0]["values"][0], strict=True))
            return d if d["closed"] == 1 else None

        k = wait_until(kpi, 20, "KPI series")
        assert (k["received"], k["closed"], k["escalated"], k["self_disposed"]) == (1, 1, 1, 0)
        assert k["ack_rate"] == 0.0 and k["cr"] == 1.0
        health = influxdb.query(
            "SELECT last(escalations) FROM pipeline_health WHERE component='dispatch'", db="dispatch_e2e"
        )
        assert health["results"][0]["series"][0]["values"][0][1] >= 1
    finally:
        api.close()
        svc.stop()
        for t in (grid_term, comm_term, nosy):
            t.close()
    assert svc.error is None
    logs = caplog.text
    for secret in [*TOKENS.values(), *PASSWORDS.values()]:
        assert secret not in logs
