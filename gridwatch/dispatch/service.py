"""The dispatch service: `gridwatch dispatch serve`. I/O only; decisions live in DispatchCore.

    gridwatch.incident.candidates --> fuse, route, store (ledger) --> outbox --> MQTT / webhooks
    team feedback (MQTT, HTTP API) --> state machine (ledger) --> outbox
    the clock --> deadline scheduler --> escalations (ledger) --> outbox
    ledger --> KPIs --> InfluxDB

Delivery guarantees: a candidate's Kafka offset is committed only after the ledger stored it
(replays are recognised by candidate id); pushes are in the ledger's outbox before they are sent
(at least once; terminals dedupe by alert id); team feedback arrives on a persistent MQTT session.
A database that goes away is retried with backoff; nothing is acknowledged meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from sqlalchemy.exc import DBAPIError

from gridwatch.city import CityModel
from gridwatch.clock import SYSTEM_CLOCK, Clock
from gridwatch.codec import decode_event, encode_event
from gridwatch.config import GridwatchConfig, secret_from_env
from gridwatch.dispatch.api import build_api
from gridwatch.dispatch.core import DispatchCore
from gridwatch.dispatch.kpi import compute_kpis, period_starts
from gridwatch.dispatch.ledger import Ledger, UnknownIncident
from gridwatch.dispatch.machine import Command, CommandKind, IllegalTransition
from gridwatch.dispatch.push import DeliveryWorker, MqttTeamLink
from gridwatch.dispatch.routing import NoRoute
from gridwatch.dispatch.scheduler import deadline_loop, escalation_lag_ms
from gridwatch.influx import InfluxSink, health_lines, line
from gridwatch.kafka import consumer_settings, ensure_topics, make_producer
from gridwatch.schemas import (
    DeadLetter,
    DeadLetterReason,
    IncidentCandidate,
    IncidentCommandEvent,
    TeamFeedback,
    VerifyRequest,
)
from gridwatch.stats import percentile
from gridwatch.topics import (
    DEAD_LETTERS,
    INCIDENT_CANDIDATES,
    INCIDENT_COMMANDS,
    VERIFY_REQUESTS,
    parse_team_topic,
    team_feedback_result_topic,
    team_feedback_subscription,
)

log = logging.getLogger(__name__)

__all__ = ["DispatchService"]


class DispatchService:
    def __init__(
        self, cfg: GridwatchConfig, *, clock: Clock = SYSTEM_CLOCK, instance: str = "dispatch-0"
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.instance = instance
        d = cfg.dispatch
        self.city = CityModel.load(cfg.city.geojson)
        self.ledger = Ledger(
            d.ledger_url, password=secret_from_env(d.ledger_password_env, what="dispatch.ledger_password_env")
        )
        self.core = DispatchCore(cfg, self.city, self.ledger, clock)
        self.prefix = cfg.mqtt.topic_prefix
        self._loop: asyncio.AbstractEventLoop | None = None
        self._feedback: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize=10_000)
        self._wake_deliveries = asyncio.Event()
        self._wake_scheduler = asyncio.Event()
        self.escalation_lag_ms: list[float] = []
        self.counters: dict[str, int] = {
            "candidates_in": 0,
            "dead_letters": 0,
            "feedback_in": 0,
            "feedback_refused": 0,
            "db_retries": 0,
            "feedback_dropped": 0,
        }
        self.link: MqttTeamLink | None = None
        self.influx: InfluxSink | None = None
        self.api_server: Any = None
        self.ready = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.ledger.migrate)
        n = await asyncio.to_thread(self.core.load)
        log.info("dispatch: %d open or recent incidents loaded from the ledger", n)
        await ensure_topics(self.cfg.kafka)
        self.link = MqttTeamLink(
            self.cfg.mqtt,
            f"{self.cfg.mqtt.client_id}-dispatch",
            username=self.cfg.dispatch.mqtt_username,
            password_env=self.cfg.dispatch.mqtt_password_env,
            on_message=self._on_mqtt,
            subscriptions=(team_feedback_subscription(self.prefix),),
        )
        self.influx = InfluxSink(self.cfg.influx, clock=self.clock, name="dispatch")
        await self.influx.start()
        self.producer = make_producer(self.cfg.kafka)
        await self.producer.start()
        loop = asyncio.get_running_loop()

        def send_verify_request(payload: dict[str, Any]) -> None:  # delivery thread -> Kafka
            req = VerifyRequest.model_validate(payload)
            fut = asyncio.run_coroutine_threadsafe(
                self.producer.send_and_wait(
                    VERIFY_REQUESTS.name, encode_event(req), key=req.camera_id.encode()
                ),
                loop,
            )
            fut.result(timeout=15)

        self.delivery = DeliveryWorker(
            self.ledger, self.cfg.dispatch.push, self.prefix, self.link, self.clock.now_ms, self.city,
            verify_sender=send_verify_request,
        )  # fmt: skip
        tasks = [
            asyncio.create_task(self._consume(stop), name="consume"),
            asyncio.create_task(self._scheduler(stop), name="scheduler"),
            asyncio.create_task(self._deliveries(stop), name="deliveries"),
            asyncio.create_task(self._feedback_loop(stop), name="feedback"),
            asyncio.create_task(self._metrics(stop), name="metrics"),
        ]
        if self.cfg.dispatch.api_port:
            tasks.append(asyncio.create_task(self._serve_api(stop), name="api"))
        self.ready.set()
        log.info(
            "dispatch: ready (API %s)",
            f"http://{self.cfg.dispatch.api_host}:{self.cfg.dispatch.api_port}"
            if self.cfg.dispatch.api_port
            else "off",
        )
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.producer.stop()
            await self.influx.close()
            self.link.close()
            self.ledger.close()

    # --- candidates from Kafka ------------------------------------------------------------
    async def _consume(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            INCIDENT_CANDIDATES.name,
            INCIDENT_COMMANDS.name,
            **consumer_settings(self.cfg.kafka, self.cfg.dispatch.consumer_group),
        )
        await consumer.start()
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                for tp, records in batch.items():
                    for rec in records:
                        await self._handle_record(tp, rec.offset, rec.value)
                    await consumer.commit({tp: records[-1].offset + 1})
        finally:
            await consumer.stop()

    async def _handle_record(self, tp: TopicPartition, offset: int, raw: bytes) -> None:
        origin = f"{tp.topic}/{tp.partition}/{offset}"
        if tp.topic == INCIDENT_COMMANDS.name:
            await self._handle_command(origin, raw)
            return
        self.counters["candidates_in"] += 1
        try:
            cand = decode_event(raw, IncidentCandidate)
        except Exception as e:
            await self._dead_letter(origin, raw, DeadLetterReason.UNDECODABLE_RECORD, str(e)[:500])
            return
        try:
            await self._until_stored(f"candidate {cand.candidate_id}", self.core.handle_candidate, cand)
        except NoRoute as e:
            await self._dead_letter(origin, raw, DeadLetterReason.NO_ROUTE, str(e))
            return
        except Exception as e:  # a bug must not stop the consumer: dead-letter the record, loudly
            log.exception("dispatch: candidate %s could not be processed", cand.candidate_id)
            await self._dead_letter(
                origin, raw, DeadLetterReason.SCHEMA, f"internal error: {type(e).__name__}: {e}"[:500]
            )
            return
        self._wake_deliveries.set()
        self._wake_scheduler.set()

    async def _until_stored(self, what: str, fn: Any, *args: Any) -> Any:
        """Run a ledger call in a thread; while the database is away, retry with backoff (the Kafka
        offset is not committed meanwhile). Any other error is about the input: the caller's."""
        delay = 0.2
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except (DBAPIError, OSError, TimeoutError) as e:
                self.counters["db_retries"] += 1
                log.warning(
                    "dispatch: storing %s failed (%s); retrying in %.1fs", what, type(e).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _handle_command(self, origin: str, raw: bytes) -> None:
        """A camera's verification result (or another service's command) -> the state machine."""
        try:
            ev = decode_event(raw, IncidentCommandEvent)
        except Exception as e:
            await self._dead_letter(origin, raw, DeadLetterReason.UNDECODABLE_RECORD, str(e)[:500])
            return
        cmd = Command(ev.command_id, CommandKind(ev.command), ev.actor, ev.by, None, ev.params)
        try:
            await self._until_stored(f"command {ev.command_id}", self.core.command, ev.incident_id, cmd)
        except (IllegalTransition, UnknownIncident, KeyError) as e:
            # e.g. a supervisor verified first: the camera's answer is late, recorded as a dead letter
            await self._dead_letter(origin, raw, DeadLetterReason.BAD_COMMAND, str(e))
            return
        except Exception as e:  # a bug must not stop the consumer
            log.exception("dispatch: command %s could not be processed", ev.command_id)
            await self._dead_letter(
                origin, raw, DeadLetterReason.BAD_COMMAND, f"internal error: {type(e).__name__}"[:500]
            )
            return
        self._wake_deliveries.set()
        self._wake_scheduler.set()

    async def _dead_letter(self, origin: str, raw: bytes, code: DeadLetterReason, reason: str) -> None:
        self.counters["dead_letters"] += 1
        dl = DeadLetter.of(
            source="dispatch",
            origin=origin,
            reason_code=code,
            reason=reason,
            raw=raw,
            received=self.clock.now_ms(),
        )
        await self.producer.send_and_wait(DEAD_LETTERS.name, encode_event(dl))

    async def submit_candidate(self, cand: IncidentCandidate) -> None:
        """Citizen reports from the API go through Kafka like every other candidate."""
        await self.producer.send_and_wait(
            INCIDENT_CANDIDATES.name, encode_event(cand), key=(cand.grid_id or "none").encode()
        )

    # --- deadlines ------------------------------------------------------------------------
    async def _scheduler(self, stop: asyncio.Event) -> None:
        def on_results(results: list[Any], now: int) -> None:
            for r in results:
                lag = escalation_lag_ms(r, now)
                if lag is not None:
                    self.escalation_lag_ms.append(lag)
            self._wake_deliveries.set()

        def on_error(_e: BaseException) -> None:
            self.counters["db_retries"] += 1

        await deadline_loop(
            self.core,
            stop,
            self._wake_scheduler,
            self.cfg.dispatch.scheduler_max_sleep_s,
            on_results,
            on_error,
        )

    # --- pushes ---------------------------------------------------------------------------
    async def _deliveries(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                n = await asyncio.to_thread(self.delivery.run_once)
            except Exception as e:
                log.warning("dispatch: delivery pass failed (%s); retrying", type(e).__name__)
                n = 0
            if n:
                continue
            self._wake_deliveries.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_deliveries.wait(), timeout=0.25)

    # --- team feedback over MQTT ----------------------------------------------------------
    def _on_mqtt(self, topic: str, payload: bytes) -> None:  # paho's thread
        loop = self._loop
        if loop is None:
            return

        def put() -> None:
            try:
                self._feedback.put_nowait((topic, payload))
            except asyncio.QueueFull:
                self.counters["feedback_dropped"] += 1

        loop.call_soon_threadsafe(put)

    async def _feedback_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            topic, payload = await self._feedback.get()
            self.counters["feedback_in"] += 1
            node = parse_team_topic(self.prefix, topic)
            if node is None or not topic.endswith("/feedback"):
                continue
            try:
                fb = TeamFeedback.model_validate_json(payload)
            except Exception as e:
                self.counters["feedback_refused"] += 1
                await self._dead_letter(f"mqtt:{topic}", payload, DeadLetterReason.BAD_COMMAND, str(e)[:500])
                await self._reply(node, {"ok": False, "error": f"invalid command: {str(e)[:300]}"})
                continue
            params = {
                k: v
                for k, v in {
                    "note": fb.note,
                    "reason": fb.reason,
                    "photo": fb.photo,
                    "to_node": fb.to_node,
                }.items()
                if v
            }
            cmd = Command(fb.command_id, CommandKind(fb.command), "team", fb.by or node, node, params)
            try:
                res = await asyncio.to_thread(self.core.command, fb.incident_id, cmd)
                await self._reply(node, {"ok": True, "command_id": fb.command_id, "incident_id": fb.incident_id,
                                         "state": res.incident.state.value, "duplicate": res.duplicate})  # fmt: skip
                self._wake_deliveries.set()
                self._wake_scheduler.set()
            except (IllegalTransition, UnknownIncident, KeyError) as e:
                self.counters["feedback_refused"] += 1
                await self._reply(
                    node,
                    {
                        "ok": False,
                        "command_id": fb.command_id,
                        "incident_id": fb.incident_id,
                        "error": str(e),
                    },
                )
            except Exception as e:  # database away: the team's terminal retries with the same command id
                self.counters["db_retries"] += 1
                await self._reply(
                    node,
                    {
                        "ok": False,
                        "command_id": fb.command_id,
                        "error": f"temporarily unavailable ({type(e).__name__}); retry",
                    },
                )

    async def _reply(self, node: str, body: dict[str, Any]) -> None:
        assert self.link is not None
        try:
            await asyncio.to_thread(
                self.link.publish, team_feedback_result_topic(self.prefix, node), orjson.dumps(body), 1
            )
        except Exception as e:
            log.warning("dispatch: reply to team %s failed: %s", node, e)

    # --- KPIs and health ------------------------------------------------------------------
    async def _metrics(self, stop: asyncio.Event) -> None:
        assert self.influx is not None
        district = next(n.id for n in self.city.nodes.values() if n.level == "district")
        last_kpi = 0.0
        workload_nodes: set[str] = set()
        while not stop.is_set():
            now = self.clock.now_ms()
            if time.monotonic() - last_kpi >= self.cfg.dispatch.kpi_interval_s:
                last_kpi = time.monotonic()
                try:
                    starts = period_starts(now, self.cfg.site.timezone)
                    rows = await asyncio.to_thread(self.ledger.kpi_rows, min(starts.values()))
                    lines = compute_kpis(rows, now, starts, district)
                    busy = {r.node_id for r in rows if r.state not in ("closed", "false_alarm")}
                    # a team whose last open incident closed reads 0, not its last non-zero value
                    lines += [
                        line(
                            "team_workload",
                            {"node": n, "level": self.city.level_of(n).value},
                            {"open": 0},
                            now,
                        )
                        for n in workload_nodes - busy
                    ]
                    workload_nodes = busy
                    self.influx.write(lines)
                except Exception as e:
                    log.warning("dispatch: KPI pass failed: %s", type(e).__name__)
            stats: dict[str, Any] = {**self.counters, **self.core.stats.__dict__}
            stats["deliveries_sent"] = self.delivery.sent
            stats["delivery_failed_attempts"] = self.delivery.failed_attempts
            stats["deliveries_failed"] = self.delivery.failed
            lag = self.escalation_lag_ms[-5000:]
            stats["escalation_lag_p50_ms"] = percentile(lag, 0.5)
            stats["escalation_lag_p99_ms"] = percentile(lag, 0.99)
            stats["mqtt_connected"] = int(bool(self.link and self.link.connected))
            self.influx.write(health_lines("dispatch", self.instance, stats, now))
            await asyncio.sleep(min(5.0, self.cfg.dispatch.kpi_interval_s))

    async def _serve_api(self, stop: asyncio.Event) -> None:
        import uvicorn

        app = build_api(self.core, self.cfg.dispatch.credentials, self.submit_candidate)
        console = None
        if self.cfg.console.users:
            from gridwatch.console.router import build_console_router

            console = build_console_router(
                self.core,
                self.cfg.console.users,
                timezone=self.cfg.site.timezone,
                site_name=self.cfg.site.name,
                evidence_dir=self.cfg.cameras.evidence.directory,
                cookie_secure=self.cfg.console.cookie_secure,
                grafana_url=self.cfg.console.grafana_url,
            )
            app.include_router(console)
        config = uvicorn.Config(app, host=self.cfg.dispatch.api_host, port=self.cfg.dispatch.api_port,
                                log_level="warning", access_log=False, lifespan="off")  # fmt: skip
        self.api_server = uvicorn.Server(config)
        self.api_server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        try:
            await self.api_server.serve()
        finally:
            if console is not None:
                console.close()  # ends the live streams, which uvicorn would otherwise wait for


def run_service(cfg: GridwatchConfig) -> None:
    """Entry point of `gridwatch dispatch serve`: runs until SIGINT / SIGTERM."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await DispatchService(cfg).run(stop)

    random.seed()
    asyncio.run(main())
