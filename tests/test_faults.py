"""Fault injection on the real pipeline: mosquitto -> bridge -> Tansu -> Faust worker -> InfluxDB 1.6.

Each test starts its own DevStack and LocalPipeline (faults leave state behind), breaks one piece
while readings keep flowing, and ends with count equality: every reading published (and PUBACKed by
mosquitto) is in InfluxDB, counted with InfluxQL.

  * InfluxDB stopped for 30 s under load, then restarted: InfluxSink retries, spills, replays;
  * the bridge SIGKILLed and restarted: mosquitto's persistent session redelivers;
  * the Faust worker SIGKILLed and restarted: state restored from the table changelog, one
    candidate per episode, the window spanning the kill has its full count;
  * the bridge frozen (SIGSTOP) for 60 s: mosquitto queues without dropping.

Readings carry synthetic timestamps (unique per sensor, within the bridge's accepted range) so that
InfluxDB's (series, time) idempotency can never hide a loss behind a duplicate.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest

from gridwatch.codec import decode_event
from gridwatch.devservers.stack import DevStack
from gridwatch.localrun import LocalPipeline, read_topic
from gridwatch.schemas import IncidentCandidate
from gridwatch.topics import INCIDENT_CANDIDATES

pytestmark = [pytest.mark.servers, pytest.mark.slow]

Message = tuple[str, int, float]  # sensor_id, ts (epoch ms), value


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_pipeline(workdir: Path, overrides: dict[str, Any] | None = None) -> Iterator[LocalPipeline]:
    """A private DevStack with the bridge and a stream worker running; everything killed at the end."""
    base = {"bridge": {"health_interval_s": 1}}
    with DevStack(workdir / "servers") as stack:
        pipe = LocalPipeline(stack, workdir, overrides=_merge(base, overrides or {}))
        try:
            pipe.start_bridge()
            pipe.start_streams()
            yield pipe
        finally:
            # teardown speed matters more than a graceful exit here (the test has already asserted)
            for p in (pipe.bridge, pipe.streams):
                if p.alive:
                    p.kill()


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Feed(threading.Thread):
    """Publishes ``messages`` with QoS 1 at ``rate`` per second from its own paho client.

    ``sent`` counts messages handed to paho so far (the test times its faults on it); after
    ``join()``, ``acked`` is how many mosquitto acknowledged (PUBACK).
    """

    def __init__(self, pipe: LocalPipeline, client_id: str, messages: Sequence[Message], rate: float) -> None:
        super().__init__(name=f"feed-{client_id}", daemon=True)
        self.pipe = pipe
        self.client_id = client_id
        self.messages = messages
        self.rate = rate
        self.prefix = pipe.cfg.mqtt.topic_prefix
        self.sent = 0
        self.acked = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported by finish()
            self.error = e

    def _run(self) -> None:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)  # unbounded client-side queue: publish() never refuses
        c.connect(self.pipe.stack.mqtt_host, self.pipe.stack.mqtt_port)
        c.loop_start()
        try:
            infos = []
            t0 = time.monotonic()
            for i, (sid, ts, value) in enumerate(self.messages):
                delay = t0 + i / self.rate - time.monotonic()
                if delay > 0.002:
                    time.sleep(delay)
                payload = orjson.dumps({"v": 1, "ts": ts, "value": value})
                info = c.publish(f"{self.prefix}/sensors/{sid}/reading", payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"publish refused by paho: rc={info.rc}")
                infos.append(info)
                self.sent = i + 1
            deadline = time.monotonic() + 60
            for info in infos:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            self.acked = sum(1 for info in infos if info.is_published())
        finally:
            c.loop_stop()
            c.disconnect()

    def wait_sent(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sent < n and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.02)
        assert self.sent >= n, f"feed stalled at {self.sent} of {n} ({self.error!r})"

    def finish(self, timeout: float = 120) -> int:
        self.join(timeout)
        assert not self.is_alive(), f"feed {self.client_id} still running after {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.acked == len(self.messages), (
            f"mosquitto acknowledged {self.acked} of {len(self.messages)}"
        )
        return self.acked


def steady_messages(sensor_ids: Sequence[str], n: int, base_ms: int, value: float) -> list[Message]:
    """``n`` readings round robin over ``sensor_ids``, one millisecond apart from ``base_ms``.

    Timestamps are unique across all readings, so each (sensor, ts) is stored as its own point.
    """
    return [(sensor_ids[i % len(sensor_ids)], base_ms + i, value) for i in range(n)]


def time_where(messages: Sequence[Message]) -> str:
    lo = min(m[1] for m in messages)
    hi = max(m[1] for m in messages)
    return f"WHERE time >= {lo}ms AND time <= {hi}ms"


def sensors_of_type(pipe: LocalPipeline, kind: str, n: int, skip: int = 0) -> list[str]:
    ids = [s.id for s in pipe.cfg.sensors if s.type == kind][skip : skip + n]
    assert len(ids) == n, f"demo config has fewer than {skip + n} {kind} sensors"
    return ids


def assert_all_stored(pipe: LocalPipeline, messages: Sequence[Message], timeout: float) -> None:
    """Count equality: exactly one stored point per published reading (InfluxQL count)."""
    where = time_where(messages)
    expected = len(messages)
    pipe.wait_for(lambda: pipe.count("sensor_reading", where) >= expected, timeout, interval=1.0)
    stored = pipe.count("sensor_reading", where)
    assert stored == expected, (
        f"stored {stored} of {expected} readings\n{pipe.bridge.log_tail(30)}\n{pipe.streams.log_tail(30)}"
    )


def streams_health(pipe: LocalPipeline, *fields: str) -> dict[str, int]:
    """The largest value each (cumulative) streams health counter reached."""
    sel = ", ".join(f'max("{f}") AS "{f}"' for f in fields)
    series = pipe.influxql(f"SELECT {sel} FROM pipeline_health WHERE component='streams'")
    if not series:
        return {}
    cols, row = series[0]["columns"], series[0]["values"][0]
    return {f: int(row[cols.index(f)] or 0) for f in fields}


def threshold_candidates(pipe: LocalPipeline, sensor_id: str) -> list[IncidentCandidate]:
    """Every threshold_high candidate record for the sensor (records, not distinct ids)."""
    out = []
    for raw in read_topic(pipe.stack.kafka_bootstrap, INCIDENT_CANDIDATES.name):
        c = decode_event(raw, IncidentCandidate)
        if c.rule == "threshold_high" and c.source_id == sensor_id:
            out.append(c)
    return out


# --------------------------------------------------------------------------------------------------
# 1. InfluxDB away for 30 s under load
# --------------------------------------------------------------------------------------------------


def test_influxdb_stopped_30s_under_load(tmp_path: Path) -> None:
    rate, seconds = 1000, 45
    # A small memory bound, so the outage also exercises the disk spill and its replay.
    overrides = {"influx": {"max_buffer_lines": 5000, "retry_max_s": 5}}
    with running_pipeline(tmp_path, overrides) as pipe:
        stack = pipe.stack
        sensors = sensors_of_type(pipe, "noise", 60)
        msgs = steady_messages(sensors, rate * seconds, int(time.time() * 1000) - 3_600_000, 50.0)
        feed = Feed(pipe, "fault-influx-pub", msgs, rate)
        feed.start()
        feed.wait_sent(5 * rate, 30)
        stack.influxdb.stop()  # the adapter stays up and answers 503 meanwhile
        time.sleep(30)
        assert feed.is_alive(), "the outage must end while readings are still coming"
        stack.influxdb.restart()  # same port, same data directory
        feed.finish()

        assert_all_stored(pipe, msgs, 90)

        # the outage is visible in pipeline_health, and nothing was dropped
        fields = (
            "influx_write_errors",
            "influx_dropped_lines",
            "influx_spilled_lines",
            "influx_replayed_lines",
        )
        assert pipe.wait_for(
            lambda: streams_health(pipe, *fields).get("influx_replayed_lines", 0) > 0, 30, interval=1.0
        ), streams_health(pipe, *fields)
        health = streams_health(pipe, *fields)
        assert health["influx_write_errors"] > 0, health
        assert health["influx_dropped_lines"] == 0, health
        assert health["influx_spilled_lines"] > 0, health


# --------------------------------------------------------------------------------------------------
# 2. Bridge SIGKILLed mid-stream
# --------------------------------------------------------------------------------------------------


def test_bridge_killed_and_restarted(tmp_path: Path) -> None:
    rate, seconds = 1000, 15
    with running_pipeline(tmp_path) as pipe:
        sensors = sensors_of_type(pipe, "pm25", 60)
        msgs = steady_messages(sensors, rate * seconds, int(time.time() * 1000) - 3_600_000, 40.0)
        feed = Feed(pipe, "fault-bridge-kill-pub", msgs, rate)
        feed.start()
        feed.wait_sent(4 * rate, 30)
        assert pipe.wait_for(lambda: pipe.count("sensor_reading", time_where(msgs)) > 0, 15)
        pipe.bridge.kill()  # SIGKILL: no disconnect, un-acked readings stay with mosquitto
        assert feed.is_alive(), "the kill must come mid-stream"
        log = pipe.workdir / "bridge.log"
        connects = log.read_text(errors="replace").count("connected to MQTT")
        time.sleep(4)
        pipe.start_bridge()
        # start_bridge's ready check also matches the first start's log line: wait for this one
        assert pipe.wait_for(
            lambda: log.read_text(errors="replace").count("connected to MQTT") > connects, 60
        ), pipe.bridge.log_tail()
        feed.finish()

        assert_all_stored(pipe, msgs, 60)


# --------------------------------------------------------------------------------------------------
# 3. Faust worker SIGKILLed mid-stream, mid-window and mid-episode
# --------------------------------------------------------------------------------------------------


def test_streams_worker_killed_and_restarted(tmp_path: Path) -> None:
    # A long grace keeps windows open until a later reading closes them (the readings below are
    # back-dated, and the default 30 s grace would let the wall-clock tick close them meanwhile).
    overrides = {"streams": {"window_grace_s": 7200}}
    with running_pipeline(tmp_path, overrides) as pipe:
        window_ms = pipe.cfg.streams.window_s * 1000
        assert window_ms == 600_000
        water = sensors_of_type(pipe, "water_level", 40)
        anomalous = water[0]
        now = int(time.time() * 1000)
        w0 = (now - 3_600_000) // window_ms * window_ms  # a window 50-60 minutes ago
        steps = 70  # a reading every 10 s per sensor: steps 0-59 fill window w0, 60-69 the next
        high_from, high_until = 20, 55  # the anomaly episode (value above 2.5), then it clears
        msgs: list[Message] = []
        for k in range(steps):
            for i, sid in enumerate(water):
                value = 1.0 + 0.0001 * i
                if sid == anomalous and high_from <= k < high_until:
                    value = 3.0
                msgs.append((sid, w0 + k * 10_000, value))
        per_step = len(water)
        feed = Feed(pipe, "fault-streams-kill-pub", msgs, rate=per_step * 3)  # 3 steps a second
        feed.start()

        # The worst moment for a crash: InfluxDB hangs first, so the worker dies holding buffered
        # lines while Faust has gone on committing offsets (every 2.8 s) and writing its state
        # changelog. The hang starts before the episode does, so the episode's rule_firing line
        # (a derived line: the replayed records are duplicates for the restored state and do not
        # produce it again) is among the lost buffered lines; the kill comes once the episode's
        # candidate is out, well inside window w0.
        stack = pipe.stack
        assert pipe.wait_for(lambda: feed.sent // per_step >= high_from - 6, 60)
        stack.influxdb.freeze()
        try:
            assert pipe.wait_for(lambda: len(threshold_candidates(pipe, anomalous)) >= 1, 60), (
                pipe.streams.log_tail()
            )
            time.sleep(3)
            killed_at_step = feed.sent // per_step
            pipe.streams.kill()
        finally:
            stack.influxdb.thaw()
        assert high_from < killed_at_step < high_until, "the kill must come inside the episode"
        assert feed.is_alive(), "the kill must come mid-stream"
        time.sleep(1)
        pipe.start_streams()
        feed.finish()

        assert_all_stored(pipe, msgs, 90)

        # exactly one candidate record for the episode that spanned the kill
        time.sleep(2)  # a duplicate produced after the restart would show up by now
        cands = threshold_candidates(pipe, anomalous)
        assert len(cands) == 1, [c.model_dump() for c in cands]
        assert cands[0].observed_at == w0 + high_from * 10_000

        # window state survived: window w0 (60 readings per sensor, the kill in the middle) was closed
        # by the step-60 reading with its full count, for every sensor
        ids = "|".join(water)
        series = pipe.influxql(
            f'SELECT "count" FROM sensor_window WHERE time = {w0}ms AND sensor_id =~ /^({ids})$/ '
            "GROUP BY sensor_id"
        )
        counts = {s["tags"]["sensor_id"]: [v[1] for v in s["values"]] for s in series}
        assert counts == {sid: [60] for sid in water}, (killed_at_step, counts)

        # the episode's firing, produced while InfluxDB hung and lost with the worker's buffer, was
        # rewritten from the state's unconfirmed derived lines on restore
        firing = pipe.influxql(
            f'SELECT "value", "state" FROM rule_firing WHERE sensor_id = \'{anomalous}\' '
            f"AND time = {w0 + high_from * 10_000}ms"
        )
        assert firing and firing[0]["values"], (killed_at_step, pipe.streams.log_tail())


# --------------------------------------------------------------------------------------------------
# 4. Downstream away for a minute while the feed goes on
# --------------------------------------------------------------------------------------------------


def test_bridge_frozen_60s_broker_queues(tmp_path: Path) -> None:
    rate, seconds, frozen_s = 600, 70, 60
    with running_pipeline(tmp_path) as pipe:
        sensors = sensors_of_type(pipe, "bin_fill", 60)
        msgs = steady_messages(sensors, rate * seconds, int(time.time() * 1000) - 3_600_000, 30.0)
        feed = Feed(pipe, "fault-bridge-freeze-pub", msgs, rate)
        feed.start()
        feed.wait_sent(3 * rate, 30)
        pipe.bridge.freeze()  # SIGSTOP: the socket stays open, nothing is read or acknowledged
        try:
            time.sleep(frozen_s)
        finally:
            pipe.bridge.thaw()
        queued = feed.sent - 3 * rate
        assert queued > 10 * 1000, f"only {queued} readings were published while the bridge was frozen"
        feed.finish()

        assert_all_stored(pipe, msgs, 120)
        assert pipe.stack.mosquitto.dropped_message_warnings() == 0
