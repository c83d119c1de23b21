"""End to end on real servers: MQTT client -> mosquitto -> bridge -> Tansu -> Faust worker -> InfluxDB 1.6.

Asserts with InfluxQL on the real InfluxDB and by reading the real Kafka topics:
  * every valid reading published is stored;
  * an injected anomaly produces exactly one incident candidate;
  * invalid payloads land in the dead-letter topic with their reasons while valid ones keep flowing.
"""

from __future__ import annotations

import json
import time

import orjson
import paho.mqtt.client as mqtt
import pytest

from gridwatch.codec import decode_event
from gridwatch.devservers.stack import DevStack
from gridwatch.localrun import LocalPipeline, read_topic
from gridwatch.schemas import DeadLetter, IncidentCandidate
from gridwatch.topics import DEAD_LETTERS, INCIDENT_CANDIDATES

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    wd = tmp_path_factory.mktemp("e2e")
    with DevStack(wd / "servers") as stack:
        pipe = LocalPipeline(stack, wd, overrides={"bridge": {"health_interval_s": 1}})
        pipe.start_bridge()
        pipe.start_streams()
        yield pipe
        pipe.stop()


def publisher(pipe: LocalPipeline, client_id: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(500)
    c.max_queued_messages_set(0)
    c.connect(pipe.stack.mqtt_host, pipe.stack.mqtt_port)
    c.loop_start()
    return c


def test_readings_anomaly_and_dead_letters(pipeline: LocalPipeline):
    pipe = pipeline
    cfg = pipe.cfg
    water = [s for s in cfg.sensors if s.type == "water_level"][:20]
    anomalous = water[0]
    now = int(time.time() * 1000)
    c = publisher(pipe, "e2e-pub")
    infos = []
    invalid = {
        b"not json at all": "not_json",
        b'{"v":1,"ts":1,"value":NaN}': "not_finite",
        b'{"v":1,"value":2.0}': "schema",
    }
    n_valid = 0
    for i in range(30):  # 30 minutes of readings, one a minute
        ts = now - (30 - i) * 60_000
        for s in water:
            value = 1.0 + 0.01 * i
            if s is anomalous and i >= 20:
                value = 3.0 + 0.001 * i  # above 2.5 from minute 20 on: one episode
            payload = json.dumps({"v": 1, "ts": ts, "value": value}).encode()
            infos.append(c.publish(f"gridwatch/sensors/{s.id}/reading", payload, qos=1))
            n_valid += 1
        if i % 10 == 5:  # bad input interleaved with good
            for raw in invalid:
                infos.append(c.publish(f"gridwatch/sensors/{water[1].id}/reading", raw, qos=1))
            infos.append(
                c.publish("gridwatch/sensors/ghost-sensor/reading", b'{"v":1,"ts":1,"value":1}', qos=1)
            )
    for info in infos:
        info.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()

    ids = ",".join(f"'{s.id}'" for s in water)
    where = f"WHERE time > {now - 3_600_000}ms AND sensor_id =~ /^({'|'.join(s.id for s in water)})$/"
    assert pipe.wait_for(lambda: pipe.count("sensor_reading", where) >= n_valid, 60), (
        f"stored {pipe.count('sensor_reading', where)} of {n_valid}; ids {ids}"
    )
    assert pipe.count("sensor_reading", where) == n_valid

    # the value round-trips exactly through InfluxQL
    series = pipe.influxql(
        f"SELECT value FROM sensor_reading WHERE sensor_id='{anomalous.id}' ORDER BY time DESC LIMIT 1"
    )
    assert series[0]["values"][0][1] == pytest.approx(3.0 + 0.001 * 29)

    def candidates():
        out = [
            decode_event(raw, IncidentCandidate)
            for raw in read_topic(pipe.stack.kafka_bootstrap, INCIDENT_CANDIDATES.name)
        ]
        return [x for x in out if x.rule == "threshold_high"]

    assert pipe.wait_for(lambda: len(candidates()) >= 1, 30)
    time.sleep(2)  # anything duplicated would show up by now
    cands = candidates()
    assert len(cands) == 1, [c.model_dump() for c in cands]
    cand = cands[0]
    assert cand.source_id == anomalous.id and cand.category == "water_level"
    assert cand.observed_at == now - 10 * 60_000
    assert cand.grid_id is not None and cand.grid_id.startswith("g-")

    # the rule firing is in InfluxDB too (wall screens annotate with it)
    assert pipe.count("rule_firing", f"WHERE sensor_id='{anomalous.id}' AND rule='threshold_high'") == 1

    dls = [decode_event(raw, DeadLetter) for raw in read_topic(pipe.stack.kafka_bootstrap, DEAD_LETTERS.name)]
    reasons = sorted(d.reason_code.value for d in dls)
    assert reasons == sorted(list(invalid.values()) * 3 + ["unknown_sensor"] * 3)
    assert {d.raw for d in dls} >= set(invalid)
    assert all(d.reason for d in dls)

    # health: the bridge counted them
    def bridge_dead_letters() -> int:
        s = pipe.influxql("SELECT last(dead_letters) FROM pipeline_health WHERE component='bridge'")
        return int(s[0]["values"][0][1]) if s else 0

    assert pipe.wait_for(lambda: bridge_dead_letters() == 12, 15)

    # the broker's own drop counter ($SYS) reaches the bridge's health: nothing dropped
    def broker_dropped() -> list:
        return pipe.influxql(
            "SELECT last(broker_dropped_messages) FROM pipeline_health WHERE component='bridge'"
        )

    assert pipe.wait_for(lambda: bool(broker_dropped()), 15)
    assert broker_dropped()[0]["values"][0][1] == 0
    assert orjson.loads(orjson.dumps(cand.model_dump(mode="json")))["candidate_id"] == cand.candidate_id
