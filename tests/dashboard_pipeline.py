"""A short run of the real pipeline for the dashboard tests (tests/test_dashboards.py).

    with run_pipeline(workdir, ledger_url, cameras=True) as run:
        run.pipe.influxql(...); run.start_ms; run.end_ms; run.cameras_skipped

What runs is what `gridwatch demo` runs, reused rather than copied: a `DevStack` (mosquitto, Tansu,
InfluxDB 1.6.7 + its v2 adapter), `LocalPipeline` starting the real `gridwatch bridge`,
`gridwatch streams worker`, `gridwatch dispatch serve` (ledger on the given database, here the
tests' PostgreSQL) and, when the footage and gst-rtsp-server are there, `gridwatch cameras worker`
on one simulated RTSP camera playing vtest (plus a second camera whose stream does not exist, so
it is down). The demo's `Feed` publishes a quarter of an hour of all 558 sensors' readings (replayed
in a few seconds) with its six anomalies and malformed messages; the six 5-second sensors then fall
silent. The demo's `DemoTeams` answer the pushes over MQTT (every third grid team stays silent, so
its incident escalates) and a supervisor verifies through the HTTP API.

Changes to the demo's script, so every panel has something to show once the run settles (and a
3 s acknowledgement deadline at every level instead of 6 s, so the run is short):
the anomalies are moved onto sensors of the first town (the drill-down's default town), and
nobody ever answers a water-level incident (`SilentOnFloods`): it escalates
grid -> community -> town -> district and stays open, so the map, the open-incident tables and the
backlog are not empty after everything else has been closed.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from gridwatch.city import CityModel
from gridwatch.config import demo_config_path, load_config
from gridwatch.demo import Feed
from gridwatch.demo_cameras import FOOTAGE, demo_camera_overrides, footage_missing
from gridwatch.demo_dispatch import DemoTeams, demo_dispatch_overrides, ledger_incidents
from gridwatch.devservers.rtsp import RtspServer
from gridwatch.devservers.stack import DevStack
from gridwatch.localrun import LocalPipeline
from gridwatch.registry import build_sensor_registry

HISTORY_HOURS = 0.25  # replayed in a few seconds: closes a 10-minute window, raises the anomalies
LIVE_S = 0.0  # no live phase: the six 5-second sensors fall silent when the replay ends
DEADLINE_S = 3  # every level's acknowledgement deadline (the demo's: 6 s): the flood climbs faster
SETTLE_TIMEOUT_S = 60.0


class SilentOnFloods(DemoTeams):
    """The demo's teams and supervisor, except that nobody answers a water-level incident."""

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        body = json.loads(m.payload) if m.topic.endswith("/alerts") else {}
        if body.get("category") == "water_level":
            self.alerts[body["event"]] += 1
            return  # "the grassroots blows the whistle and nobody answers", at every level
        super()._on_message(c, u, m)


@dataclass
class PipelineRun:
    pipe: LocalPipeline
    feed: Feed
    teams: DemoTeams
    start_ms: int  # before the first (replayed) reading
    end_ms: int = 0  # when the run settled
    cameras_skipped: str | None = None  # why the camera worker did not run (None: it ran)
    t0: float = 0.0  # time.monotonic() at the start
    timings: dict[str, float] = field(default_factory=dict)  # seconds from t0 to each milestone


def _first_town_anomalies(feed: Feed, pipe: LocalPipeline) -> None:
    """Move the demo's anomalies onto sensors of the first town (sorted by id), keeping their kinds."""
    city = CityModel.load(pipe.cfg.city.geojson)
    registry = build_sensor_registry(pipe.cfg, city)
    first = min(i.town_id for i in registry.values() if i.town_id)
    in_first = [s for s in pipe.cfg.sensors if registry[s.id].town_id == first and s.period_s > 5]
    for a in feed.anomalies:
        a.sensor = next(s for s in in_first if s.type == a.sensor.type)


def _camera_overrides(workdir: Path) -> tuple[RtspServer | None, dict[str, Any], str | None]:
    from tests.rtsp_fixtures import _gst_rtsp_missing

    why = footage_missing() or _gst_rtsp_missing()
    if why:
        return None, {}, why
    # one real camera (vtest: the campus road, a parked van) and one whose stream does not exist
    try:
        server = RtspServer(workdir / "rtsp", {"/campus": FOOTAGE / "vtest.h264.mp4"}).start()
    except Exception as e:  # noqa: BLE001 - the camera panels then run on synthetic data
        return None, {}, f"RTSP server could not start: {e}"

    class OneMount:  # the demo's two cameras; the second one's mount is missing, so it is down
        def url(self, mount: str) -> str:
            return server.url("/campus").replace("/campus", mount if mount == "/campus" else "/unplugged")

    try:
        city = CityModel.load(load_config(demo_config_path()).city.geojson)
        over = demo_camera_overrides(OneMount(), city, workdir / "evidence")  # type: ignore[arg-type]
    except BaseException:
        server.stop()
        raise
    return server, over, None


@contextlib.contextmanager
def run_pipeline(workdir: Path, ledger_url: str, *, cameras: bool = True) -> Iterator[PipelineRun]:
    """Start the servers and gridwatch's processes, feed them, wait until the loop settles, stop the
    processes (their data stays), yield; the servers stop on exit."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    stack = DevStack(workdir / "servers").start()
    rtsp: RtspServer | None = None
    pipe: LocalPipeline | None = None
    teams: DemoTeams | None = None
    try:
        overrides: dict[str, Any] = {"bridge": {"health_interval_s": 2}}
        base = load_config(demo_config_path())
        dispatch = demo_dispatch_overrides(base)
        dispatch["dispatch"] |= {"ledger_url": ledger_url, "kpi_interval_s": 1}
        for trigger in dispatch["dispatch"]["triggers"]:
            for deadlines in trigger["deadlines"].values():
                deadlines["ack_s"] = DEADLINE_S
        overrides |= dispatch
        skipped: str | None = "not asked for"
        if cameras:
            rtsp, cam_over, skipped = _camera_overrides(workdir)
            overrides |= cam_over
        timings["servers"] = time.monotonic() - t0
        pipe = LocalPipeline(stack, workdir, overrides=overrides)
        starts = [pipe.start_bridge, pipe.start_streams, pipe.start_dispatch]
        if rtsp is not None:
            starts.append(pipe.start_cameras)
        errors: list[BaseException] = []

        def start(fn: Any) -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - raised below
                errors.append(e)

        threads = [threading.Thread(target=start, args=(fn,)) for fn in starts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        timings["processes"] = time.monotonic() - t0
        teams = SilentOnFloods(pipe)
        feed = Feed(pipe, HISTORY_HOURS, LIVE_S)
        _first_town_anomalies(feed, pipe)
        run = PipelineRun(pipe, feed, teams, feed.start_ms - feed.history_ms, cameras_skipped=skipped,
                          t0=t0, timings=timings)  # fmt: skip
        feed.run()  # in this thread: history replay, then the live feed
        if feed.error:
            raise feed.error
        timings["feed"] = time.monotonic() - t0
        _settle(run)
        timings["settled"] = time.monotonic() - t0
        teams.close()
        teams = None
        _stop_in_parallel(pipe)
        timings["stopped"] = time.monotonic() - t0
        run.end_ms = int(time.time() * 1000)
        yield run
    finally:
        if teams is not None:
            teams.close()
        if pipe is not None:
            pipe.stop()
        if rtsp is not None:
            rtsp.stop()
        stack.stop()


def _stop_in_parallel(pipe: LocalPipeline) -> None:
    procs = [p for p in (pipe.cameras, pipe.dispatch, pipe.bridge, pipe.streams) if p.alive]
    threads = [threading.Thread(target=p.stop) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _settle(run: PipelineRun) -> None:
    """Wait until what the panels show has happened: every reading stored, the silent sensor
    noticed, the anomalies dispatched, incidents closed, the flood escalated to the district, the
    cameras reporting; then one more KPI pass and health line of every process."""
    pipe, feed = run.pipe, run.feed
    silent = feed.silent_sensor
    assert silent is not None

    def state() -> dict[str, bool]:
        incs = ledger_incidents(pipe)
        floods = [i for i in incs if i["category"] == "water_level"]
        done = {
            "readings stored": pipe.count("sensor_reading") >= feed.published,
            "silence raised": bool(
                pipe.influxql(
                    f"SELECT count(episode_start) FROM rule_firing WHERE rule='silence' AND sensor_id='{silent.id}'"
                )
            ),  # fmt: skip
            "incidents": len({i["category"] for i in incs}) >= 5,
            "flood at the district": any(i["level"] == "district" for i in floods),
            "closures": any(i["state"] == "closed" for i in incs),
        }
        if run.cameras_skipped is None:
            done["cameras"] = bool(
                pipe.influxql(
                    "SELECT count(up) FROM camera_health WHERE time > now() - 1m GROUP BY camera_id"
                )
            )
        return done

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        s = state()
        run.timings.update({k: time.monotonic() - run.t0 for k, v in s.items() if v and k not in run.timings})
        if all(s.values()):
            break
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the pipeline did not settle in {SETTLE_TIMEOUT_S:.0f} s: {s}; logs in {pipe.workdir}"
            )
        time.sleep(0.5)
    time.sleep(2.5)  # the KPI pass after the last closure, and a health line of every process
