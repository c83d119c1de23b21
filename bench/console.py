"""Benchmark: a candidate on Kafka -> its row in the operator console in a real browser.

One run, real servers (mosquitto, Tansu, InfluxDB started for it; the ledger on SQLite), the real
dispatch service (`DispatchService`: Kafka consumer, fusion, routing, ledger, pushes, API, console):

1. `open_incidents` open incidents are put in the ledger (`bulk_incidents`, as the console demo's
   `--bulk`), so every query the console runs meets a city-sized ledger.
2. Headless Debian chromium (Playwright) logs in as an operator and opens the **review queue**
   (`/console/review`); a MutationObserver records when each incident's row enters the DOM
   (`performance.timeOrigin + performance.now()`: wall-clock ms, sub-ms resolution).
3. Beside it, the raw limit, in the same run: a bare HTTP client (httpx, no browser) holds the
   console's server-sent event stream (`/console/events`) and timestamps the first event of
   each incident.
4. `events` camera candidates (category `illegal_dumping`, whose trigger line says
   `review: always`) are produced to `gridwatch.incident.candidates` one at a time; each is timed
   from just before the produce call to (a) the event at the bare client and (b) the row in the
   browser. p50 / p99 of both, and their ratio (browser / stream).

What the two share (Kafka -> service -> ledger -> the console's change feed, which polls every
0.5 s) is the bulk of it; what the browser adds is EventSource parsing, a re-read of the queue
(`/api/review`) and drawing it.

Run: `gridwatch bench console [--open 10000] [--events 200]`. Progress on stderr (rich); the last
line of stdout is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import queue
import random
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from gridwatch.city import CityModel
from gridwatch.clock import SYSTEM_CLOCK, Clock
from gridwatch.codec import encode_event
from gridwatch.config import GridwatchConfig, demo_config_path, load_config
from gridwatch.console.auth import ConsoleUser, hash_password
from gridwatch.dispatch.ledger import incident_id_for
from gridwatch.schemas import EvidenceRef, IncidentCandidate, Location
from gridwatch.stats import percentile
from gridwatch.topics import INCIDENT_CANDIDATES

REVIEW_CATEGORIES = ("illegal_dumping", "gathering", "road_blockage")
"""Camera matters an operator looks at before a team is sent (`review: always` in live_config)."""
PASSWORD = "console-pw"


# --- the service, its config and its users ----------------------------------------------------------


def console_users(city: CityModel, password: str = PASSWORD) -> list[ConsoleUser]:
    """op (operator), sup (supervisor), view (viewer), team-a / team-b (the first two grids' teams)."""
    h = hash_password(password)
    g = city.grids()
    return [
        ConsoleUser(name="op", display_name="值班员 李娜", role="operator", password_hash=h),
        ConsoleUser(name="sup", display_name="督办 王强", role="supervisor", password_hash=h),
        ConsoleUser(name="view", display_name="访客", role="viewer", password_hash=h),
        ConsoleUser(name="team-a", display_name="网格员 赵磊", role="team", node=g[0].id, password_hash=h),
        ConsoleUser(name="team-b", display_name="网格员 孙丽", role="team", node=g[1].id, password_hash=h),
    ]


def live_config(
    *,
    ledger_url: str,
    api_port: int,
    mqtt_port: int,
    kafka_bootstrap: str,
    influx_url: str,
    influx_bucket: str,
    workdir: Path,
    users: list[ConsoleUser],
    credentials: list[dict[str, Any]] | None = None,
) -> GridwatchConfig:
    """The demo config pointed at these servers, with the console's users, evidence and hard-example
    directories under `workdir`, and the camera categories held for review (`review: always`)."""
    base = load_config(demo_config_path())
    triggers = []
    for t in base.dispatch.triggers:
        d = t.model_dump(mode="json")
        if set(d["categories"]) & set(REVIEW_CATEGORIES):
            d["review"] = "always"
        d["calendar"] = "always"  # deadlines run at any hour of the test or bench
        triggers.append(d)
    # camera categories on their own line (always reviewed), whatever the demo groups them with
    return load_config(
        demo_config_path(),
        overrides={
            "dispatch": {
                "ledger_url": ledger_url, "api_host": "127.0.0.1", "api_port": api_port, "triggers": triggers,
                "hard_examples_dir": str(workdir / "hard-examples"), "scheduler_max_sleep_s": 0.2,
                "credentials": credentials or [],
            },
            "console": {"users": [u.model_dump(mode="json") for u in users]},
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
            "kafka": {"bootstrap_servers": kafka_bootstrap},
            "influx": {"url": influx_url, "bucket": influx_bucket, "spill_dir": str(workdir / "spill")},
            "cameras": {"evidence": {"directory": str(workdir / "evidence")}},
        },
    )  # fmt: skip


class ServiceThread:
    """The dispatch service (API and console included) in its own thread and event loop."""

    def __init__(self, cfg: GridwatchConfig, clock: Clock = SYSTEM_CLOCK) -> None:
        from gridwatch.dispatch.service import DispatchService

        self.svc = DispatchService(cfg, clock=clock)
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="dispatch-service")
        self.thread.start()
        deadline = time.monotonic() + 60
        while not (self.stop_event and self.svc.ready.is_set()):
            if self.error is not None:
                raise RuntimeError(f"dispatch service failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("dispatch service did not start within 60 s")
            time.sleep(0.05)
        base = f"http://127.0.0.1:{cfg.dispatch.api_port}"
        while time.monotonic() < deadline:  # the API answers
            try:
                if httpx.get(f"{base}/console/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    def _run(self) -> None:
        async def main() -> None:
            self.stop_event = asyncio.Event()
            await self.svc.run(self.stop_event)

        try:
            self.loop.run_until_complete(main())
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            self.error = e

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        if self.svc.api_server is not None:
            self.svc.api_server.should_exit = True
        self.thread.join(30)


class CandidateProducer:
    """A Kafka producer (aiokafka) on its own loop: `send(candidate)` returns once Kafka has it."""

    def __init__(self, bootstrap: str) -> None:
        from aiokafka import AIOKafkaProducer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="producer")
        self.thread.start()

        async def start() -> Any:
            p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
            await p.start()
            return p

        self.producer = asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def send(self, cand: IncidentCandidate) -> None:
        fut = self.producer.send_and_wait(
            INCIDENT_CANDIDATES.name, encode_event(cand), key=(cand.grid_id or "none").encode()
        )
        asyncio.run_coroutine_threadsafe(fut, self.loop).result(30)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.producer.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def camera_candidate(
    city: CityModel,
    n: int,
    *,
    grid: int | None = None,
    category: str = "illegal_dumping",
    confidence: float = 0.62,
    evidence_dir: Path | None = None,
    summary: str = "摄像头发现乱倒垃圾",
    now_ms: int | None = None,
) -> IncidentCandidate:
    """A camera's candidate on grid `grid` (default: the n-th), with an annotated snapshot under
    `evidence_dir` when given; distinct matters for distinct `n` (own place, own camera)."""
    grids = city.grids()
    g = grids[(n if grid is None else grid) % len(grids)]
    p = g.geometry.representative_point()
    now = SYSTEM_CLOCK.now_ms() if now_ms is None else now_ms
    cam = f"cam-{n:04d}"
    evidence: list[EvidenceRef] = []
    if evidence_dir is not None:
        from gridwatch.console.demo import make_snapshot

        snap = evidence_dir / cam / f"{now}.jpg"
        make_snapshot(snap, category, n)
        evidence.append(EvidenceRef(kind="snapshot", ref=snap.as_uri(), note="detector frame"))
    return IncidentCandidate(
        candidate_id=IncidentCandidate.make_id("camera", cam, f"{category}_rule", now),
        category=category, severity="medium", source_kind="camera", source_id=cam, grid_id=g.id,
        location=Location(lon=p.x, lat=p.y), observed_at=now - 1000, raised_at=now, rule=f"{category}_rule",
        summary=summary, confidence=confidence, evidence=evidence, model_version="nanodet-g-416@1.2.0",
    )  # fmt: skip


# --- the bare HTTP client on the event stream -------------------------------------------------------


def http_login(client: httpx.Client, name: str, password: str = PASSWORD) -> None:
    client.get("/console/login")
    r = client.post(
        "/console/login",
        data={"name": name, "password": password, "login_token": client.cookies.get("gw_login"), "next": ""},
        follow_redirects=False,
    )
    if r.status_code != 303:
        raise RuntimeError(f"log-in as {name!r} failed: {r.status_code}")


class StreamWatcher:
    """Holds `/console/events` open and records when each incident's first event arrived (epoch s)."""

    def __init__(self, base: str, name: str = "op") -> None:
        self.client = httpx.Client(base_url=base, timeout=httpx.Timeout(10, read=60))
        http_login(self.client, name)
        self.first: dict[str, float] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="sse-watcher")
        self.thread.start()
        if not self.ready.wait(15):
            raise RuntimeError("event stream did not open")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.client.stream("GET", "/console/events") as r:
                    event, data = "message", ""
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data = line[5:].strip()
                        elif line == "":
                            if event == "hello":
                                self.ready.set()
                            elif event == "change" and data:
                                t = time.time()
                                ev = json.loads(data)
                                self.first.setdefault(ev["incident_id"], t)
                                self.events.put(ev)
                            event, data = "message", ""
            except httpx.HTTPError:
                if self._stop.is_set():
                    return
                time.sleep(0.2)

    def act(self, incident_id: str, command: str, **fields: Any) -> dict[str, Any]:
        """A command through the console's JSON API, as the logged-in user."""
        if not hasattr(self, "_csrf"):
            m = re.search(r'name="csrf" value="([^"]+)"', self.client.get("/console/").text)
            assert m, "no CSRF token on the board page"
            self._csrf = m.group(1)
        r = self.client.post(
            f"/console/api/incidents/{incident_id}/act",
            json={"command": command, **fields},
            headers={"X-CSRF-Token": self._csrf},
        )
        r.raise_for_status()
        return dict(r.json())

    def close(self) -> None:
        self._stop.set()
        self.client.close()


# --- the run -------------------------------------------------------------------------------------


def run_console_bench(
    *,
    open_incidents: int = 10_000,
    events: int = 200,
    timeout_s: float = 10.0,
    console: Console | None = None,
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="gridwatch-bench-console-") as tmp:
        from gridwatch.devservers.stack import DevStack

        work = Path(tmp)
        with console.status("starting mosquitto, Tansu, InfluxDB"):
            stack = DevStack(work / "servers").start()
        try:
            stack.influxdb.create_database("gridwatch")
            ep = stack.endpoints
            return _run(work, ep, open_incidents, events, timeout_s, console)
        finally:
            stack.stop()


def _run(
    work: Path, ep: Any, n_open: int, n_events: int, timeout_s: float, console: Console
) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from gridwatch.console.browser import launch, login, seen_at, watch_rows
    from gridwatch.console.demo import bulk_incidents
    from gridwatch.devservers.process import free_port
    from gridwatch.dispatch.core import DispatchCore
    from gridwatch.dispatch.ledger import Ledger

    city = CityModel.load(load_config(demo_config_path()).city.geojson)
    port = free_port()
    cfg = live_config(
        ledger_url=f"sqlite:///{work / 'ledger.db'}", api_port=port, mqtt_port=ep.mqtt_port,
        kafka_bootstrap=ep.kafka_bootstrap, influx_url=ep.influx_url, influx_bucket="gridwatch", workdir=work,
        users=console_users(city),
    )  # fmt: skip
    t0 = time.monotonic()
    ledger = Ledger(cfg.dispatch.ledger_url)
    ledger.migrate()
    core = DispatchCore(cfg, city, ledger, SYSTEM_CLOCK)
    bulk_incidents(core, n_open)
    ledger.close()
    console.print(f"ledger: {n_open} open incidents in {time.monotonic() - t0:.1f} s")
    svc = ServiceThread(cfg)
    base = f"http://127.0.0.1:{port}/console"
    producer = CandidateProducer(ep.kafka_bootstrap)
    watcher = StreamWatcher(f"http://127.0.0.1:{port}")
    browser_ms: list[float] = []
    stream_ms: list[float] = []
    missing = 0
    rng = random.Random(5)
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            login(page, base, "op", PASSWORD)
            page.goto(f"{base}/review")
            page.wait_for_selector("#review-count:not(:empty)")
            watch_rows(page, "li.review-item[data-id]")
            # one warm-up event (first EventSource connection, first queue read), not counted
            with Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
            ) as prog:
                task = prog.add_task("candidate on Kafka -> row in the browser", total=n_events)
                for i in range(-1, n_events):
                    cand = camera_candidate(city, i + 1, grid=(i + 1) * 7)
                    iid = incident_id_for(cand.candidate_id)
                    t_send = time.time()
                    producer.send(cand)
                    end = time.monotonic() + timeout_s
                    t_browser = None
                    while time.monotonic() < end:
                        t_browser = seen_at(page, iid)
                        if t_browser is not None and iid in watcher.first:
                            break
                        time.sleep(0.005)
                    t_stream = watcher.first.get(iid)
                    if i >= 0:
                        if t_browser is None or t_stream is None:
                            missing += 1
                        else:
                            browser_ms.append((t_browser - t_send) * 1000)
                            stream_ms.append((t_stream - t_send) * 1000)
                        prog.update(task, completed=i + 1)
                    if t_browser is not None:  # the operator works the queue: it stays short
                        watcher.act(iid, "confirm")
                    time.sleep(rng.uniform(0.05, 0.6))  # de-phase from the feed's 0.5 s poll
            open_now = len(page.query_selector_all("li.review-item"))
            browser.close()
    finally:
        watcher.close()
        producer.close()
        svc.stop()
    b50, b99 = (
        percentile(browser_ms, 0.5, empty=None, ndigits=1),
        percentile(browser_ms, 0.99, empty=None, ndigits=1),
    )
    s50, s99 = (
        percentile(stream_ms, 0.5, empty=None, ndigits=1),
        percentile(stream_ms, 0.99, empty=None, ndigits=1),
    )
    result = {
        "bench": "console",
        "db": "sqlite",
        "open_incidents": n_open + n_events,
        "events": n_events,
        "measured": len(browser_ms),
        "missing": missing,
        "page": "review queue",
        "queue_rows_at_end": open_now,
        "browser_p50_ms": b50,
        "browser_p99_ms": b99,
        "browser_max_ms": percentile(browser_ms, 1.0, empty=None, ndigits=1),
        "stream_p50_ms": s50,
        "stream_p99_ms": s99,
        "stream_max_ms": percentile(stream_ms, 1.0, empty=None, ndigits=1),
        "ratio_p50": round(b50 / s50, 3) if b50 and s50 else None,
        "ratio_p99": round(b99 / s99, 3) if b99 and s99 else None,
        "target_p99_ms": 2000,
        "pass": missing == 0 and b99 is not None and b99 <= 2000,
    }
    return result
