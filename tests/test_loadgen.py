"""The compiled MQTT load generator (bench/loadgen) against a real, private mosquitto.

Self-contained on purpose: the broker is started here on a free loopback port with its own config file
and stopped by PID at the end, independent of the shared fixtures in conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gridwatch.bench.loadgen import (
    BuildError,
    PublisherError,
    build_publisher,
    finish_publisher,
    parse_result,
    run_publisher,
    start_publisher,
)

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PAYLOAD_RE = re.compile(rb'^\{"v":1,"ts":(\d{13}),"value":(-?\d+\.\d{3})\}$')


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def publisher_bin() -> Path:
    try:
        return build_publisher()
    except BuildError as exc:
        if exc.missing:  # a missing tool is an environment problem; a compile error must fail
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto broker not installed (Debian package `mosquitto`)")
    workdir = tmp_path_factory.mktemp("loadgen-mosquitto")
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        # Never drop or throttle towards the test subscriber: unlimited in-flight, a deep queue.
        "max_queued_messages 1000000\n"
        "max_inflight_messages 0\n"
        "set_tcp_nodelay true\n"
        # Logged to stderr (captured below): a broker started as root runs as user `mosquitto` and
        # could not open a log file in tmp_path.
        "log_dest stderr\n"
    )
    log_path = workdir / "mosquitto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mosquitto exited ({proc.returncode}): {log_path.read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mosquitto not listening on {port}: {log_path.read_text(errors='replace')}")
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


class Collector:
    """A paho QoS 1 subscriber that records (topic, payload, receive time in epoch ms)."""

    def __init__(self, host: str, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._topic = topic
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"loadgen-test-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"no SUBACK for {topic}")

    def _on_connect(
        self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object
    ) -> None:
        client.subscribe(self._topic, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: object, mid: int, rcs: object, props: object
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), now_ms))

    def wait_for(
        self, count: int, timeout: float = 15.0, settle: float = 0.5
    ) -> list[tuple[str, bytes, int]]:
        """Wait until ``count`` messages arrived, then ``settle`` more seconds to catch any extras."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(settle)
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prefix() -> str:
    return f"lg{uuid.uuid4().hex[:6]}-"


def test_parse_result_takes_last_json_line() -> None:
    line = {
        "offered_rate": 10.0,
        "sent": 10,
        "acked": 10,
        "invalid_sent": 0,
        "elapsed_s": 1.0,
        "achieved_rate": 10.0,
        "max_behind": 0,
        "cpu_s": 0.01,
    }
    assert parse_result("warming up\n" + json.dumps(line) + "\n\n") == line
    with pytest.raises(ValueError, match="lacks"):
        parse_result('{"sent": 1}\n')
    with pytest.raises(ValueError, match="no JSON"):
        parse_result("nothing here\n")


def test_build_is_cached(publisher_bin: Path) -> None:
    mtime = publisher_bin.stat().st_mtime_ns
    assert build_publisher() == publisher_bin
    assert publisher_bin.stat().st_mtime_ns == mtime


@pytest.mark.servers
def test_delivers_exactly_what_it_acked(broker: tuple[str, int], publisher_bin: Path) -> None:
    host, port = broker
    prefix = _prefix()
    topic_re = re.compile(rf"^gridwatch/sensors/{re.escape(prefix)}(\d{{5}})/reading$")
    with Collector(host, port, "gridwatch/sensors/+/reading") as sub:
        start_ms = time.time_ns() // 1_000_000
        result = run_publisher(host, port, 2000, 2, 50, binary=publisher_bin, sensor_prefix=prefix)
        end_ms = time.time_ns() // 1_000_000
        got = sub.wait_for(result["acked"])

    assert result["sent"] == 4000
    assert result["acked"] == result["sent"]
    assert result["invalid_sent"] == 0
    assert result["achieved_rate"] == pytest.approx(2000, rel=0.1)
    assert len(got) == result["acked"]

    per_sensor: Counter[int] = Counter()
    for topic, payload, recv_ms in got:
        m = topic_re.match(topic)
        assert m, topic
        per_sensor[int(m.group(1))] += 1
        assert PAYLOAD_RE.match(payload), payload
        reading = json.loads(payload)
        assert set(reading) == {"v", "ts", "value"}
        assert reading["v"] == 1
        assert isinstance(reading["ts"], int)
        assert start_ms - 1000 <= reading["ts"] <= end_ms + 1000
        assert recv_ms - reading["ts"] < 2000  # stamped at publish time, not at startup
        assert 14.0 < reading["value"] < 26.0  # 20 + 5 sin(...) + a little noise
    assert per_sensor == dict.fromkeys(range(50), 80)  # round robin over all 50 sensors


@pytest.mark.servers
def test_invalid_every_sends_that_many_malformed_payloads(
    broker: tuple[str, int], publisher_bin: Path
) -> None:
    host, port = broker
    prefix = _prefix()
    template = f"loadgen-test/{prefix}/%s/r"
    with Collector(host, port, f"loadgen-test/{prefix}/+/r") as sub:
        result = run_publisher(
            host,
            port,
            1000,
            1,
            7,
            binary=publisher_bin,
            sensor_prefix=prefix,
            topic_template=template,
            invalid_every=10,
        )
        got = sub.wait_for(result["acked"])

    assert result["sent"] == 1000
    assert result["invalid_sent"] == result["sent"] // 10 == 100
    assert len(got) == result["acked"] == result["sent"]
    invalid = 0
    for topic, payload, _ in got:
        assert re.fullmatch(rf"loadgen-test/{re.escape(prefix)}/{re.escape(prefix)}\d{{5}}/r", topic)
        try:
            json.loads(payload)
        except ValueError:
            invalid += 1
        else:
            assert PAYLOAD_RE.match(payload), payload
    assert invalid == result["invalid_sent"]


@pytest.mark.servers
def test_anomaly_sets_the_value_from_the_given_time(broker: tuple[str, int], publisher_bin: Path) -> None:
    host, port = broker
    prefix = _prefix()
    target = f"{prefix}00003"
    with Collector(host, port, "gridwatch/sensors/+/reading") as sub:
        result = run_publisher(
            host,
            port,
            500,
            2,
            5,
            binary=publisher_bin,
            sensor_prefix=prefix,
            anomaly_sensor=target,
            anomaly_at=1.0,
            anomaly_value=99.5,
        )
        got = sub.wait_for(result["acked"])
    assert len(got) == result["acked"] == 1000

    first_ts = min(json.loads(p)["ts"] for _, p, _ in got)
    series = [json.loads(p) for t, p, _ in got if t == f"gridwatch/sensors/{target}/reading"]
    others = [json.loads(p)["value"] for t, p, _ in got if t != f"gridwatch/sensors/{target}/reading"]
    assert len(series) == 200
    assert 99.5 not in others
    values = [r["value"] for r in series]
    switch = values.index(99.5)
    assert all(v < 30 for v in values[:switch])  # normal before ...
    assert all(v == 99.5 for v in values[switch:])  # ... anomalous from then on
    assert 800 <= series[switch]["ts"] - first_ts <= 1300
    assert 0.35 < switch / len(values) < 0.65


@pytest.mark.servers
def test_start_publisher_can_be_stopped_early(broker: tuple[str, int], publisher_bin: Path) -> None:
    host, port = broker
    proc = start_publisher(host, port, 1000, 60, 10, binary=publisher_bin, sensor_prefix=_prefix())
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    result = finish_publisher(proc, timeout=30)
    assert result["interrupted"] is True
    assert 300 < result["sent"] < 5000
    assert result["acked"] == result["sent"]


def test_connect_failure_is_reported(publisher_bin: Path) -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(PublisherError, match="cannot connect") as info:
        run_publisher("127.0.0.1", port, 100, 1, 1, binary=publisher_bin)
    assert info.value.returncode == 2


def test_unknown_option_is_rejected(publisher_bin: Path) -> None:
    with pytest.raises(TypeError, match="no_such_option"):
        run_publisher("127.0.0.1", 1, 100, 1, 1, binary=publisher_bin, no_such_option=1)
