"""The dev servers start on free loopback ports and are usable for real (see gridwatch/devservers)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import psutil
import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridwatch.devservers.influx_v1_adapter import InfluxV2CompatAdapter
from gridwatch.devservers.influxdb import InfluxDB1Server, InfluxQueryError
from gridwatch.devservers.mosquitto import MosquittoServer, mqtt_probe
from gridwatch.devservers.process import ManagedProcess, ServerStartError, free_port
from gridwatch.devservers.stack import DevStack
from gridwatch.devservers.tansu import TansuServer, kafka_api_versions_probe

# Every test here runs real server binaries (some without going through the fixtures).
pytestmark = pytest.mark.servers

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def wait_until(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


class Mqtt:
    """A tiny synchronous wrapper around paho-mqtt 2.x that records received payloads."""

    def __init__(
        self,
        server: MosquittoServer,
        client_id: str | None = None,
        *,
        clean_session: bool = True,
        mqtt5: bool = False,
    ) -> None:
        client_id = client_id or f"t-{uuid.uuid4().hex[:8]}"
        if mqtt5:
            # MQTT 5 has no clean_session flag: clean_start=False + a session expiry interval instead.
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=client_id,
                clean_session=clean_session,
                protocol=mqtt.MQTTv311,
            )
        self.mqtt5 = mqtt5
        self.clean = clean_session
        self.server = server
        self.received: list[bytes] = []
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, msg: self.received.append(msg.payload)
        self.client.on_subscribe = lambda *a: self.subscribed.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.session_present = bool(flags.session_present)
        self.connected.set()

    def __enter__(self) -> Mqtt:
        if self.mqtt5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if self.clean else 3600
            self.client.connect(
                self.server.host, self.server.port, keepalive=30, clean_start=self.clean, properties=props
            )
        else:
            self.client.connect(self.server.host, self.server.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=qos)
        assert self.subscribed.wait(10), "no SUBACK"

    def publish_all(self, topic: str, payloads: list[bytes], qos: int = 1) -> None:
        infos = [self.client.publish(topic, p, qos=qos) for p in payloads]
        for info in infos:
            info.wait_for_publish(10)
            assert info.is_published()


def pid_gone(proc: psutil.Process) -> bool:
    # is_running() compares the creation time too, so a recycled PID does not fool it.
    return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE


# --------------------------------------------------------------------------------------------------
# process helper
# --------------------------------------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_managed_process_stop_while_frozen(tmp_path: Path) -> None:
    with ManagedProcess("sleeper", stop_grace=5) as p:
        p.start(["sleep", "60"], log_path=tmp_path / "sleep.log")
        proc = psutil.Process(p.pid)
        p.freeze()
        wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, 5)
        assert p.frozen
        p.thaw()
        wait_until(lambda: proc.status() != psutil.STATUS_STOPPED, 5)
        p.freeze()
        t0 = time.monotonic()
        p.stop()  # SIGTERM is only delivered once continued: stop() must do that, not wait for SIGKILL
        assert time.monotonic() - t0 < 2
    assert not p.alive
    assert pid_gone(proc)


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    server = MosquittoServer(tmp_path / "bad", password_file=tmp_path / "does-not-exist")
    with pytest.raises(ServerStartError) as err:
        server.start(timeout=10)
    assert "exited with code" in str(err.value)
    assert "does-not-exist" in str(err.value)  # mosquitto's own complaint, from the log tail
    assert not server.alive


def test_children_die_with_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed parent takes its servers along, even if a worker thread started them."""
    script = textwrap.dedent(
        f"""
        import threading, time, sys
        from gridwatch.devservers.mosquitto import MosquittoServer
        box = {{}}
        def start():
            box["m"] = MosquittoServer({str(tmp_path / "orphan")!r}).start()
        t = threading.Thread(target=start)
        t.start(); t.join()          # the starting thread is gone now...
        time.sleep(0.5)
        assert box["m"].alive        # ...and the server must not have died with it
        print(box["m"].pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        assert line.strip().isdigit(), f"child script failed (rc={parent.poll()})"
        child = psutil.Process(int(line))
        assert child.is_running()
        parent.kill()
        parent.wait(10)
        wait_until(lambda: pid_gone(child), 10)
    finally:
        parent.kill()
        parent.wait(10)


def test_forgotten_servers_are_stopped_gracefully_at_exit(tmp_path: Path) -> None:
    """A server never stopped by its owner gets SIGTERM at interpreter exit (mosquitto saves its db)."""
    workdir = tmp_path / "forgotten"
    script = textwrap.dedent(
        f"""
        from gridwatch.devservers.mosquitto import MosquittoServer
        print(MosquittoServer({str(workdir)!r}).start().pid, flush=True)  # object dropped at once
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    pid = int(out.stdout.strip())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "Saving in-memory database" in (workdir / "mosquitto.log").read_text()


# --------------------------------------------------------------------------------------------------
# mosquitto
# --------------------------------------------------------------------------------------------------


def test_mosquitto_qos1_round_trip(mosquitto: MosquittoServer) -> None:
    topic = f"gw/test/{uuid.uuid4().hex}"
    payloads = [f"m{i}".encode() for i in range(200)]
    with Mqtt(mosquitto) as sub, Mqtt(mosquitto) as pub:
        sub.subscribe(topic)
        pub.publish_all(topic, payloads)
        wait_until(lambda: len(sub.received) >= len(payloads))
    assert sorted(sub.received) == sorted(payloads)
    assert mosquitto.dropped_message_warnings() == 0
    assert mqtt_probe(mosquitto.host, mosquitto.port) == 0
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"


@pytest.mark.parametrize(
    ("hard", "mqtt5"),
    [(False, False), (True, False), (False, True)],
    ids=["graceful-restart", "crash-after-autosave", "mqtt5-session-expiry"],
)
def test_mosquitto_restart_keeps_persistent_session(
    fresh_mosquitto: Callable[..., MosquittoServer], hard: bool, mqtt5: bool
) -> None:
    broker = fresh_mosquitto()
    port, topic, client_id = broker.port, "gw/persist", "persistent-sub"
    with Mqtt(broker, client_id, clean_session=False, mqtt5=mqtt5) as sub:
        sub.subscribe(topic)
    # More than mosquitto's default max_queued_messages (1000), which would silently drop the rest.
    payloads = [f"queued-{i}".encode() for i in range(3000)]
    with Mqtt(broker) as pub:
        pub.publish_all(topic, payloads)
    if hard:
        # A SIGKILL loses what arrived since the last autosave: wait for the next save to land.
        published_at = time.time()
        db = broker.data_dir / "mosquitto.db"
        wait_until(lambda: db.exists() and db.stat().st_mtime > published_at + 0.1, 10)
    broker.restart(hard=hard)
    assert broker.port == port
    with Mqtt(broker, client_id, clean_session=False, mqtt5=mqtt5) as sub:
        assert sub.session_present
        wait_until(lambda: len(sub.received) >= len(payloads), 30)
    assert sorted(sub.received) == sorted(payloads)
    assert broker.dropped_message_warnings() == 0


def test_mosquitto_dropped_message_metric(fresh_mosquitto: Callable[..., MosquittoServer]) -> None:
    """With a tiny queue, mosquitto drops QoS 1 messages with only a log line; we count those lines."""
    broker = fresh_mosquitto(max_queued_messages=10, max_inflight_messages=10)
    with Mqtt(broker, "slow-sub", clean_session=False) as sub:
        sub.subscribe("gw/drop")
    with Mqtt(broker) as pub:
        pub.publish_all("gw/drop", [b"x"] * 100)  # every PUBACK arrives: the publisher cannot tell
    wait_until(lambda: broker.dropped_message_warnings() >= 1, 5)


def test_mosquitto_dev_profile_config(mosquitto: MosquittoServer) -> None:
    conf = mosquitto.config_path.read_text()
    assert "max_queued_messages 1000000" in conf
    assert "persistence true" in conf
    assert f"listener {mosquitto.port} 127.0.0.1" in conf


def test_freeze_and_thaw(fresh_mosquitto: Callable[..., MosquittoServer]) -> None:
    broker = fresh_mosquitto()
    broker.freeze()
    assert broker.frozen and broker.alive
    with pytest.raises(OSError):  # the kernel still accepts the TCP connection; no CONNACK comes
        mqtt_probe(broker.host, broker.port, timeout=0.5)
    broker.thaw()
    assert not broker.frozen
    assert mqtt_probe(broker.host, broker.port) == 0


# --------------------------------------------------------------------------------------------------
# Tansu
# --------------------------------------------------------------------------------------------------


def test_tansu_produce_consume_and_create_topics(tansu: TansuServer) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    topic = f"gw-test-{uuid.uuid4().hex[:8]}"
    tansu.create_topics({topic: 3})
    tansu.create_topics({topic: 3})  # idempotent
    assert tansu.partition_counts([topic]) == {topic: 3}
    assert kafka_api_versions_probe(tansu.host, tansu.port) == 0

    async def round_trip() -> tuple[bytes | None, int]:
        producer = AIOKafkaProducer(bootstrap_servers=tansu.bootstrap_servers)
        await producer.start()
        try:
            md = await producer.send_and_wait(topic, b"hello", key=b"k", partition=2)
        finally:
            await producer.stop()
        # Manual assignment: group joins on Tansu wait half the session timeout (see tansu.py).
        consumer = AIOKafkaConsumer(bootstrap_servers=tansu.bootstrap_servers, auto_offset_reset="earliest")
        await consumer.start()
        try:
            tp = TopicPartition(topic, 2)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            record = await asyncio.wait_for(consumer.getone(), 15)
        finally:
            await consumer.stop()
        assert record.offset == md.offset
        return record.value, record.partition

    assert asyncio.run(round_trip()) == (b"hello", 2)


def test_tansu_create_topics_inside_event_loop(tansu: TansuServer) -> None:
    topic = f"gw-loop-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        tansu.create_topics({topic: 2})  # the sync wrapper must not call asyncio.run() on this loop
        assert await tansu.apartition_counts([topic]) == {topic: 2}

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------
# InfluxDB 1.6 + v2 adapter
# --------------------------------------------------------------------------------------------------


def test_influx_write_via_adapter_and_query(
    influxdb: InfluxDB1Server, influx_v2: InfluxV2CompatAdapter
) -> None:
    influxdb.create_database("testdb")
    with InfluxDBClient(url=influx_v2.url, token="x", org="-") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(bucket="testdb", record="m,t=a v=1i 1700000000000000000")
        write.write(bucket="testdb/autogen", record="m,t=b v=2i 1700000001", write_precision="s")
        assert client.ping()
    # gzip bodies pass through compressed, with their header.
    resp = httpx.post(
        f"{influx_v2.url}/api/v2/write",
        params={"bucket": "testdb", "org": "-", "precision": "ms"},
        content=gzip.compress(b"m,t=c v=3i 1700000002000"),
        headers={"Content-Encoding": "gzip", "Authorization": "Token user:pass"},
    )
    assert resp.status_code == 204, resp.text

    body = influxdb.query('SELECT "t", "v" FROM "m" ORDER BY time', db="testdb")
    values = body["results"][0]["series"][0]["values"]
    assert values == [
        [1700000000000000000, "a", 1],
        [1700000001000000000, "b", 2],
        [1700000002000000000, "c", 3],
    ]


def test_adapter_passes_upstream_errors_through(
    influxdb: InfluxDB1Server, influx_v2: InfluxV2CompatAdapter
) -> None:
    influxdb.create_database("errdb")
    bad = httpx.post(f"{influx_v2.url}/api/v2/write", params={"bucket": "errdb"}, content=b"m v=")
    assert bad.status_code == 400
    assert "unable to parse" in bad.json()["error"]
    missing = httpx.post(f"{influx_v2.url}/api/v2/write", params={"bucket": "nope"}, content=b"m v=1")
    assert missing.status_code == 404
    assert "database not found" in missing.json()["error"]
    with InfluxDBClient(url=influx_v2.url, token="x", org="-") as client:
        with pytest.raises(ApiException) as err:
            client.write_api(write_options=SYNCHRONOUS).write(bucket="nope", record="m v=1")
        assert err.value.status == 404
    assert httpx.post(f"{influx_v2.url}/api/v2/write", content=b"m v=1").status_code == 400  # no bucket
    with pytest.raises(InfluxQueryError, match="database not found"):
        influxdb.query("SELECT * FROM m", db="nope")


def test_adapter_health_follows_upstream(
    fresh_influxdb: Callable[..., InfluxDB1Server], fresh_influx_v2: Callable[..., InfluxV2CompatAdapter]
) -> None:
    influx = fresh_influxdb()
    adapter = fresh_influx_v2(influx, timeout=2.0)
    influx.create_database("h")
    assert adapter.health()[0] == 200

    influx.stop()
    t0 = time.monotonic()
    status, body = adapter.health()
    assert status == 503 and body["status"] == "fail"
    resp = httpx.post(f"{adapter.url}/api/v2/write", params={"bucket": "h"}, content=b"m v=1", timeout=10)
    assert resp.status_code == 503 and resp.json()["code"] == "unavailable"
    assert time.monotonic() - t0 < 3  # refused connections fail fast

    influx.start()
    assert adapter.health()[0] == 200
    with InfluxDBClient(url=adapter.url, token="x", org="-") as client:
        client.write_api(write_options=SYNCHRONOUS).write(bucket="h", record="m v=2i 1700000000000000000")
    assert influx.query("SELECT v FROM m", db="h")["results"][0]["series"][0]["values"] == [
        [1700000000000000000, 2]
    ]

    # A hung (SIGSTOPped) influxd: the adapter must answer 503 within its timeout, not hang.
    influx.freeze()
    try:
        t0 = time.monotonic()
        assert adapter.health(timeout=5)[0] == 503
        resp = httpx.post(f"{adapter.url}/api/v2/write", params={"bucket": "h"}, content=b"m v=3", timeout=10)
        assert resp.status_code == 503
        assert time.monotonic() - t0 < 6
    finally:
        influx.thaw()
    wait_until(lambda: adapter.health()[0] == 200, 10)


def test_influxdb_restart_keeps_data(fresh_influxdb: Callable[..., InfluxDB1Server]) -> None:
    influx = fresh_influxdb()
    influx.create_database("keep")
    influx.write_lines("keep", "m v=7i 1700000000000000000")
    port = influx.port
    influx.restart(hard=True)  # WAL is fsynced per write, so even a crash keeps it
    assert influx.port == port
    influx.stop()
    assert not influx.alive
    influx.restart()  # restart() of a stopped server just starts it again, same port and data
    assert influx.alive and influx.port == port
    assert influx.query("SELECT v FROM m", db="keep")["results"][0]["series"][0]["values"] == [
        [1700000000000000000, 7]
    ]


# --------------------------------------------------------------------------------------------------
# lifecycle: nothing survives stop()
# --------------------------------------------------------------------------------------------------


def test_stop_leaves_no_process(tmp_path: Path) -> None:
    influx = InfluxDB1Server(tmp_path / "influxdb")
    servers = [
        MosquittoServer(tmp_path / "mosquitto"),
        TansuServer(tmp_path / "tansu"),
        influx,
        InfluxV2CompatAdapter(influx.url, workdir=tmp_path / "adapter"),
    ]
    procs = []
    try:
        for s in servers:
            s.start()
            procs.append(psutil.Process(s.pid))
        servers[0].freeze()  # a frozen server must stop too
    finally:
        for s in reversed(servers):
            s.stop()
    for s, p in zip(servers, procs, strict=True):
        assert not s.alive
        assert pid_gone(p), f"{s.name} pid {p.pid} still running"
    ports = [s.port for s in servers]
    for port in ports:  # and the ports are free again
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))


def test_dev_stack(fresh_stack: Callable[..., DevStack]) -> None:
    t0 = time.monotonic()
    stack = fresh_stack()
    took = time.monotonic() - t0
    assert stack.alive
    ep = stack.endpoints
    assert mqtt_probe(ep.mqtt_host, ep.mqtt_port) == 0
    kafka_host, kafka_port = ep.kafka_bootstrap.rsplit(":", 1)
    assert kafka_api_versions_probe(kafka_host, int(kafka_port)) == 0
    assert httpx.get(f"{ep.influx_url}/health").json()["status"] == "pass"
    assert httpx.get(f"{ep.influx_v1_url}/ping").status_code == 204
    procs = [psutil.Process(pid) for pid in stack.pids.values() if pid]
    assert len(procs) == 4
    assert took < 20
    stack.stop()
    assert all(pid_gone(p) for p in procs)


# --------------------------------------------------------------------------------------------------
# optional real InfluxDB 2.x
# --------------------------------------------------------------------------------------------------


def test_real_influx2_write(influx2) -> None:  # noqa: ANN001 - Influx2Settings from conftest
    with InfluxDBClient(url=influx2.url, token=influx2.token, org=influx2.org) as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=influx2.bucket, record=f"gridwatch_devservers_test,run={uuid.uuid4().hex[:8]} v=1i"
        )
