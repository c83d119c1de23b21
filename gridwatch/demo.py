"""`gridwatch demo`: the whole sensor loop on embedded servers, with live progress and a summary.

1. starts mosquitto, the Tansu Kafka-protocol broker and InfluxDB 1.6 (+ the v2-compat
   adapter) as child processes on free loopback ports (no Docker, nothing to start by hand);
2. starts `gridwatch bridge` and `gridwatch streams worker` against them;
3. replays `history_hours` of readings for the demo city's 558 sensors (daily patterns and
   noise per sensor type) with a few genuine anomalies of several kinds and some malformed
   messages, then runs a short live feed in which one sensor falls silent;
4. shows what was stored, which incident candidates were raised (with their grid), which
   messages were dead-lettered and why, and the pipeline's health.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
from rich.console import Console
from rich.live import Live
from rich.table import Table

from gridwatch.city import CityModel
from gridwatch.codec import DecodeError, decode_event
from gridwatch.config import SensorConfig, _deep_merge, demo_config_path, load_config
from gridwatch.demo_cameras import demo_camera_overrides, footage_missing, start_demo_cameras
from gridwatch.demo_dispatch import DemoTeams, demo_dispatch_overrides, dispatch_summary, ledger_incidents
from gridwatch.demo_loop import demo_loop_overrides, register_bundled_production, run_loop
from gridwatch.devservers.stack import DevStack
from gridwatch.localrun import LocalPipeline, read_topic
from gridwatch.schemas import DeadLetter, IncidentCandidate
from gridwatch.topics import DEAD_LETTERS, INCIDENT_CANDIDATES, sensor_reading_topic

E = TypeVar("E", IncidentCandidate, DeadLetter)

# daily pattern (base, amplitude, noise) per sensor type; the peak is at 14:00 (noise: 19:00)
PATTERNS = {
    "water_level": (1.2, 0.15, 0.02),
    "smoke": (0.5, 0.2, 0.1),
    "pm25": (45.0, 20.0, 5.0),
    "noise": (55.0, 10.0, 3.0),
    "manhole_tilt": (1.0, 0.2, 0.1),
    "bin_fill": (40.0, 25.0, 3.0),
}


@dataclass
class Anomaly:
    sensor: SensorConfig
    kind: str
    start_ms: int
    end_ms: int

    def value(self, ts: int, normal: float) -> float:
        if not (self.start_ms <= ts < self.end_ms):
            return normal
        frac = (ts - self.start_ms) / max(1, self.end_ms - self.start_ms)
        return {
            "flood": 1.2 + 2.2 * min(1.0, frac * 3),  # water rises past 2.5 m
            "fire": 12.0 + 5 * frac,  # smoke obscuration
            "haze": 180.0 + 40 * math.sin(frac * math.pi),  # PM2.5 episode
            "manhole": 35.0,  # a lifted cover: sudden tilt
            "overflow": 96.0,  # bin full
            "nightworks": 92.0,  # construction noise
        }[self.kind]


def normal_value(sensor: SensorConfig, ts: int, rng: random.Random) -> float:
    base, amp, noise = PATTERNS[sensor.type]
    hour = (ts / 3_600_000 + 8) % 24  # Asia/Shanghai local hour
    peak = 19 if sensor.type == "noise" else 14
    v = base + amp * math.cos((hour - peak) / 24 * 2 * math.pi) + rng.gauss(0, noise)
    return round(max(0.0, v), 3)


class Feed:
    """Publishes the demo feed with paho-mqtt (QoS 1) in a background thread."""

    def __init__(self, pipe: LocalPipeline, history_hours: float, live_s: float, seed: int = 7) -> None:
        self.pipe = pipe
        self.cfg = pipe.cfg
        self.rng = random.Random(seed)
        self.history_ms = int(history_hours * 3_600_000)
        self.live_s = live_s
        self.published = 0
        self.invalid_published = 0
        self.phase = "starting"
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.start_ms = int(time.time() * 1000)
        by_type: dict[str, list[SensorConfig]] = {}
        for s in self.cfg.sensors:
            by_type.setdefault(s.type, []).append(s)
        h0 = self.start_ms - self.history_ms
        span = self.history_ms
        pick = self.rng.choice
        self.anomalies = [
            Anomaly(pick(by_type["water_level"]), "flood", h0 + span // 3, h0 + span * 2 // 3),
            Anomaly(pick(by_type["smoke"]), "fire", h0 + span // 2, h0 + span // 2 + 20 * 60_000),
            Anomaly(pick(by_type["pm25"]), "haze", h0 + span // 4, h0 + span // 4 + 45 * 60_000),
            Anomaly(pick(by_type["manhole_tilt"]), "manhole", h0 + span * 3 // 5, h0 + span),
            Anomaly(pick(by_type["bin_fill"]), "overflow", h0 + span // 2, h0 + span),
            Anomaly(pick(by_type["noise"]), "nightworks", h0 + span // 6, h0 + span // 6 + 30 * 60_000),
        ]
        fast = [s for s in self.cfg.sensors if s.period_s <= 5]
        self.live_sensors = fast
        self.silent_sensor = fast[0] if fast else None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # shown by the demo, never swallowed
            self.error = e
        finally:
            self.done.set()

    def _client(self) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="gridwatch-demo-feed", protocol=mqtt.MQTTv311
        )
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(0)  # unbounded client queue: the feed paces itself below
        c.connect(self.pipe.stack.mqtt_host, self.pipe.stack.mqtt_port)
        c.loop_start()
        return c

    def _publish(self, c: mqtt.Client, s: SensorConfig, ts: int) -> mqtt.MQTTMessageInfo:
        v = normal_value(s, ts, self.rng)
        for a in self.anomalies:
            if a.sensor.id == s.id:
                v = a.value(ts, v)
        payload = json.dumps({"v": 1, "ts": ts, "value": v}, separators=(",", ":"))
        self.published += 1
        return c.publish(sensor_reading_topic(self.cfg.mqtt.topic_prefix, s.id), payload, qos=1)

    def _run(self) -> None:
        c = self._client()
        prefix = self.cfg.mqtt.topic_prefix
        self.phase = f"replaying {self.history_ms / 3_600_000:g} h of history"
        h0 = self.start_ms - self.history_ms
        last_info = None
        step = 5_000
        for t in range(h0, self.start_ms, step):
            for s in self.cfg.sensors:
                period = int(s.period_s * 1000)
                if (t - h0) % period < step:
                    last_info = self._publish(c, s, t)
                    if self.published % 5000 == 0:  # keep the client's queue short
                        last_info.wait_for_publish(60)
            if (t - h0) % 3_600_000 < step:  # now and then, malformed traffic
                bad = [
                    (sensor_reading_topic(prefix, self.cfg.sensors[1].id), b"<xml>not json</xml>"),
                    (
                        sensor_reading_topic(prefix, self.cfg.sensors[2].id),
                        b'{"v":1,"ts":%d,"value":NaN}' % t,
                    ),
                    (sensor_reading_topic(prefix, "unregistered-007"), b'{"v":1,"ts":%d,"value":1}' % t),
                    (
                        sensor_reading_topic(prefix, self.cfg.sensors[3].id),
                        b'{"v":1,"ts":"yesterday","value":2}',
                    ),
                ]
                for topic, raw in bad:
                    c.publish(topic, raw, qos=1)
                    self.invalid_published += 1
        if last_info is not None:
            last_info.wait_for_publish(60)
        self.phase = (
            f"live feed for {self.live_s:g} s ({len(self.live_sensors)} fast sensors; one falls silent)"
        )
        t_end = time.time() + self.live_s
        while time.time() < t_end:
            now = int(time.time() * 1000)
            for s in self.live_sensors:
                if s is self.silent_sensor and time.time() > t_end - self.live_s + 2:
                    continue  # its battery died two seconds into the live phase
                self._publish(c, s, now)
            time.sleep(5)
        self.phase = "feed finished"
        c.loop_stop()
        c.disconnect()


def _events(pipe: LocalPipeline, topic: str, cls: type[E]) -> list[E]:
    """Every event of a topic (records of other schemas are skipped)."""
    out = []
    for raw in read_topic(pipe.stack.kafka_bootstrap, topic, timeout_s=5):
        with contextlib.suppress(DecodeError):
            out.append(decode_event(raw, cls))
    return out


def _candidates(pipe: LocalPipeline) -> list[IncidentCandidate]:
    return _events(pipe, INCIDENT_CANDIDATES.name, IncidentCandidate)


def _dead_letters(pipe: LocalPipeline) -> list[DeadLetter]:
    return _events(pipe, DEAD_LETTERS.name, DeadLetter)


def run_demo(
    *, workdir: Path, history_hours: float, live_s: float, keep: bool, console: Console, loop: bool = True
) -> int:
    workdir = Path(workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    t0 = time.monotonic()
    with console.status("starting mosquitto, Tansu (Kafka protocol) and InfluxDB 1.6 ..."):
        stack = DevStack(workdir / "servers").start()
    rtsp = None
    try:
        why = footage_missing()
        if why is None:
            with console.status("starting two simulated RTSP cameras (gst-rtsp-server, real footage) ..."):
                try:
                    rtsp = start_demo_cameras(workdir / "servers")
                except Exception as e:  # the demo still shows the sensor and dispatch loop
                    why = f"RTSP server could not start: {e}"
        if why:
            console.print(f"[yellow]cameras skipped[/yellow]: {why}")
        with console.status(
            "starting the MQTT -> Kafka bridge, a Faust stream worker, dispatch and cameras ..."
        ):
            base = load_config(demo_config_path())
            overrides = {"bridge": {"health_interval_s": 2}, **demo_dispatch_overrides(base)}
            if rtsp is not None:
                city_model = CityModel.load(base.city.geojson)
                overrides |= demo_camera_overrides(rtsp, city_model, workdir / "evidence")
                if loop:
                    overrides = _deep_merge(overrides, demo_loop_overrides(workdir))
            pipe = LocalPipeline(stack, workdir, overrides=overrides)
            if rtsp is not None and loop:
                register_bundled_production(pipe.cfg.models.registry_dir)
            pipe.start_bridge()
            pipe.start_streams()
            pipe.start_dispatch()
            if rtsp is not None:
                pipe.start_cameras()
            teams = DemoTeams(pipe)
        e = stack.endpoints
        console.print(
            f"[bold]servers[/bold] mqtt://{e.mqtt_host}:{e.mqtt_port}  kafka {e.kafka_bootstrap}  "
            f"influxdb {e.influx_v1_url} (db gridwatch)  logs in {workdir}"
        )
        feed = Feed(pipe, history_hours, live_s)
        threading.Thread(target=feed.run, name="demo-feed", daemon=True).start()
        stored = 0
        cands: list[IncidentCandidate] = []
        incs: list[dict] = []
        t_feed = time.monotonic()

        def view() -> Table:
            t = Table(title="gridwatch demo: sensor loop", show_header=False, min_width=70)
            t.add_row("phase", feed.phase)
            rate = stored / max(0.1, time.monotonic() - t_feed)
            t.add_row("readings published (MQTT, QoS 1)", f"{feed.published:,}")
            t.add_row("malformed messages published", f"{feed.invalid_published:,}")
            t.add_row("readings stored in InfluxDB", f"{stored:,}  ({rate:,.0f}/s)")
            t.add_row("incident candidates raised", f"{len(cands)}")
            states = Counter(i["state"] for i in incs)
            t.add_row(
                "incidents (ledger)",
                f"{len(incs)}  " + ", ".join(f"{k} {v}" for k, v in sorted(states.items())),
            )
            t.add_row("escalated on silence", str(sum(1 for i in incs if i["escalations"])))
            t.add_row(
                "pushes to teams (MQTT alerts)",
                ", ".join(f"{k} {v}" for k, v in sorted(teams.alerts.items())) or "-",
            )
            return t

        with Live(view(), console=console, refresh_per_second=4) as live:
            last_cands = 0.0
            settle_deadline = None
            while True:
                stored = pipe.count("sensor_reading")
                if time.monotonic() - last_cands > 3:
                    cands = _candidates(pipe)
                    incs = ledger_incidents(pipe)
                    last_cands = time.monotonic()
                live.update(view())
                if feed.done.is_set():
                    if settle_deadline is None:
                        settle_deadline = time.monotonic() + 90
                    silent_seen = feed.silent_sensor is None or any(
                        c.rule == "silence" and c.source_id == feed.silent_sensor.id for c in cands
                    )
                    # sensor incidents close; a camera incident is done once its camera has verified it
                    # (closed, or reopened because the crowd or the van is still there). Judged on a
                    # fresh read of the ledger, with every candidate raised so far already in it, and
                    # (with cameras) once a camera incident exists: the van needs its dwell first.
                    fresh = ledger_incidents(pipe)
                    loop_done = (
                        bool(fresh)
                        and sum(i["source_count"] for i in fresh) >= len({c.candidate_id for c in cands})
                        and (rtsp is None or any(i["source_kind"] == "camera" for i in fresh))
                        and all(
                            i["state"] in ("closed", "false_alarm", "merged")
                            or (i["source_kind"] == "camera" and i["reopened"] >= 1)
                            for i in fresh
                        )
                    )
                    if (
                        stored >= feed.published and silent_seen and loop_done
                    ) or time.monotonic() > settle_deadline:
                        break
                time.sleep(0.5)
            cands = _candidates(pipe)
            incs = ledger_incidents(pipe)
            live.update(view())
        if feed.error:
            raise feed.error
        code = _summary(console, pipe, feed, cands, stored, time.monotonic() - t0)
        time.sleep(2.5)  # one more KPI pass after the last closure
        if not dispatch_summary(console, pipe, teams, cameras=rtsp is not None):
            console.print(
                "[red]the dispatch loop did not complete: see dispatch.log in[/red] " + str(pipe.workdir)
            )
            code = 1
        teams.close()
        if rtsp is not None and loop:
            report = run_loop(pipe, console, workdir=workdir, cameras=True)
            console.print(report.table())
            if not report.ok:
                console.print("[red]the retraining loop did not complete[/red] (the table says which stage)")
                code = 1
        if keep:
            console.print("servers and workers keep running; Ctrl-C to stop")
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        pipe.stop()
        return code
    finally:
        if rtsp is not None:
            rtsp.stop()
        stack.stop()


def _summary(
    console: Console,
    pipe: LocalPipeline,
    feed: Feed,
    cands: list[IncidentCandidate],
    stored: int,
    elapsed: float,
) -> int:
    city = CityModel.load(pipe.cfg.city.geojson)
    t = Table(title="incident candidates (one per episode) -> dispatch", min_width=100)
    for col in ("category", "severity", "rule", "sensor", "grid", "town", "summary"):
        t.add_column(col)
    for c in sorted(cands, key=lambda c: c.observed_at):
        grid = city.nodes.get(c.grid_id) if c.grid_id else None
        town = next((n for n in city.ancestors(c.grid_id) if n.level == "town"), None) if c.grid_id else None
        t.add_row(
            str(c.category),
            str(c.severity),
            c.rule,
            c.source_id,
            f"{grid.name_zh} ({grid.id})" if grid else "-",
            town.name_zh if town else "-",
            c.summary,
        )
    console.print(t)
    dls = _dead_letters(pipe)
    reasons = Counter(str(d.reason_code) for d in dls)
    d = Table(title="dead letters (nothing is dropped silently)")
    d.add_column("reason")
    d.add_column("count", justify="right")
    d.add_column("example")
    for reason, n in reasons.most_common():
        ex = next(x.reason for x in dls if str(x.reason_code) == reason)
        d.add_row(reason, str(n), ex[:80])
    console.print(d)
    windows = pipe.count("sensor_window")
    injected = {a.sensor.id for a in feed.anomalies}
    found = {c.source_id for c in cands if c.rule != "silence"}
    silent_ok = feed.silent_sensor is None or any(
        c.rule == "silence" and c.source_id == feed.silent_sensor.id for c in cands
    )
    console.print(
        f"[bold]summary[/bold]: {feed.published:,} readings published, {stored:,} stored, "
        f"{windows:,} window aggregates, {len(cands)} candidates, {len(dls)} dead letters "
        f"(of {feed.invalid_published} malformed sent); injected anomalies found: "
        f"{len(injected & found)}/{len(injected)}; silent sensor noticed: {silent_ok}; {elapsed:.0f} s in all."
    )
    ok = stored >= feed.published and injected <= found and len(dls) == feed.invalid_published and silent_ok
    if not ok:
        console.print(
            "[red]the demo did not see everything it expected: see the logs in[/red] " + str(pipe.workdir)
        )
    return 0 if ok else 1
