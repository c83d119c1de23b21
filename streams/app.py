"""The Faust stream workers for sensor readings. Thin agents; the logic is in streams/sensor_state.py.

    gridwatch streams worker --config gridwatch.yaml

One agent consumes the readings topic (packed batches and ticks). Per record it updates the
partition's `PartitionState`, stores that state in the `sensor-state` table (its changelog
is what a restarted or replacement worker restores from), writes readings, window aggregates
and rule firings to InfluxDB, and sends incident candidates to Kafka.

A timer sends a tick per owned partition every `streams.tick_s` into the readings topic so
time-driven work (window closes, silent sensors) happens in order with the data and may
change the table (Faust refuses table writes outside stream processing).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any

import faust

from gridwatch.clock import SYSTEM_CLOCK, Clock
from gridwatch.codec import DecodeError, decode_readings_record, encode_event, encode_tick
from gridwatch.config import GridwatchConfig
from gridwatch.influx import InfluxSink, health_lines
from gridwatch.registry import SensorInfo
from gridwatch.schemas import DeadLetter, DeadLetterReason, StreamTick
from gridwatch.streams.acks import OrderedAcker
from gridwatch.streams.sensor_state import PartitionState
from gridwatch.topics import DEAD_LETTERS, INCIDENT_CANDIDATES, SENSOR_READINGS, sensor_partition

log = logging.getLogger(__name__)


class LatencyWindow:
    """Latencies of the current health interval (for p50/p99), by stage.

    `latency_*`: the reading's own stamp (publish time) -> InfluxDB acknowledged the write.
    `ingest_*`: bridge received -> worker processing (MQTT hop excluded: bridge + Kafka + Faust).
    """

    def __init__(self) -> None:
        self.samples: list[int] = []
        self.ingest: list[int] = []

    def add_batch(self, stamps: list[int], ack_ms: int) -> None:
        self.samples.extend([ack_ms - ts for ts in stamps])

    def add_ingest(self, received: list[int], now_ms: int) -> None:
        self.ingest.extend([now_ms - r for r in received])

    def take(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, samples in (("latency", self.samples), ("ingest", self.ingest)):
            s = sorted(samples)
            if s:
                out[f"{name}_count"] = len(s)
                out[f"{name}_p50_ms"] = s[len(s) // 2]
                out[f"{name}_p99_ms"] = s[min(len(s) - 1, int(len(s) * 0.99))]
                out[f"{name}_max_ms"] = s[-1]
        self.samples, self.ingest = [], []
        return out


def tune_gc() -> None:
    """Collect rarely, and never the start-up objects (as the bridge does, ingest/mqtt_bridge.py).

    Each record decodes into ~2,000 GC-tracked objects (a list per reading from orjson, then the
    `Reading` tuple), so with Python's default thresholds (700) the cyclic GC ran a few times per
    record, and its older generations walked Faust's and aiokafka's whole heap. The hot path
    makes no reference cycles that need prompt collection.
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _set_faust_fetch_max_wait(ms: int) -> None:
    """Faust hard-codes the worker consumer's `fetch_max_wait_ms=1500`; make it configurable.

    Measured with a bare Faust agent on Tansu: p50 376 ms / p99 752 ms from produce to agent
    at 1500, 28 ms / 55 ms at 100 (a plain aiokafka consumer gets 2 ms either way: Tansu does
    not end Faust's waiting fetch early when data arrives). Wraps the factory method once.
    """
    from faust.transport.drivers import aiokafka as faust_aiokafka

    cls = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls._create_worker_consumer, "__wrapped__", cls._create_worker_consumer)

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = ms  # read by AIOKafkaConsumer.start() when it builds its Fetcher
        return consumer

    create.__wrapped__ = original  # type: ignore[attr-defined]
    cls._create_worker_consumer = create


def _confirming(
    ps: PartitionState, offsets: list[int], then: Callable[[], None] | None = None
) -> Callable[[], None]:
    """The callback for lines that became durable: their records' derived lines are confirmed."""

    def fire() -> None:
        for o in offsets:
            ps.confirm(o)
        if then is not None:
            then()

    return fire


def create_app(
    cfg: GridwatchConfig, registry: dict[str, SensorInfo], *, clock: Clock = SYSTEM_CLOCK
) -> faust.App:
    k = cfg.kafka
    partitions = k.readings_partitions
    _set_faust_fetch_max_wait(k.effective_fetch_max_wait_ms())
    app = faust.App(
        cfg.streams.app_id,
        broker=";".join(f"kafka://{h.strip()}" for h in k.bootstrap_servers.split(",")),
        store="memory://",
        datadir=str(cfg.streams.data_dir) if cfg.streams.data_dir else None,
        topic_partitions=partitions,
        topic_replication_factor=k.replication_factor,
        broker_session_timeout=k.effective_session_timeout_ms() / 1000,
        broker_heartbeat_interval=max(0.5, k.effective_session_timeout_ms() / 6000),
        broker_rebalance_timeout=max(10.0, k.effective_session_timeout_ms() / 1000 * 2),
        producer_max_batch_size=k.effective_max_batch_size(),
        producer_linger=k.effective_linger_ms() / 1000,
        producer_max_request_size=8 << 20,
        consumer_max_fetch_size=8 << 20,
        consumer_auto_offset_reset="earliest",
        web_enabled=cfg.streams.web_port is not None,
        web_port=cfg.streams.web_port or 6066,
        stream_wait_empty=False,
        table_standby_replicas=0,
    )
    readings_topic = app.topic(
        SENSOR_READINGS.name,
        key_type=bytes,
        value_type=bytes,
        value_serializer="raw",
        key_serializer="raw",
        partitions=partitions,
    )
    candidates_topic = app.topic(INCIDENT_CANDIDATES.name, value_serializer="raw", key_serializer="raw")
    dead_letter_topic = app.topic(DEAD_LETTERS.name, value_serializer="raw", key_serializer="raw")
    raw_schema = faust.Schema(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    # key_type/value_type too, not just the schema: Faust derives the table's (and so its changelog
    # topic's) serializers from them, falling back to "json", which overrides the schema's "raw";
    # writes pass bytes through unchanged, but recovery then fails to JSON-decode every changelog
    # record and a restarted worker never finishes recovering.
    state_table = app.Table(
        "sensor-state",
        default=None,
        partitions=partitions,
        schema=raw_schema,
        key_type=bytes,
        value_type=bytes,
    )

    sensors_by_partition: dict[int, list[str]] = {}
    for sid in registry:
        sensors_by_partition.setdefault(sensor_partition(sid, partitions), []).append(sid)

    instance = f"{socket.gethostname()}:{cfg.streams.app_id}"
    states: dict[int, PartitionState] = {}
    stats: Counter[str] = Counter()
    latency = LatencyWindow()
    acker = OrderedAcker()
    offsets: dict[int, int] = {}
    sink_holder: dict[str, InfluxSink] = {}

    async def sink() -> InfluxSink:
        if "s" not in sink_holder:
            s = InfluxSink(cfg.influx, clock=clock, name="streams-influx")
            await s.start()
            sink_holder["s"] = s
        return sink_holder["s"]

    def partition_state(p: int) -> PartitionState:
        ps = states.get(p)
        if ps is None:
            ps = PartitionState(registry, cfg.streams.window_s, cfg.streams.window_grace_s)
            ps.load_bytes(state_table.get(f"p{p}".encode()))  # restored from the changelog on recovery
            states[p] = ps
        return ps

    @app.agent(readings_topic)
    async def process_readings(stream: faust.StreamT) -> None:
        # Acks are manual: a record is acked (so its offset may be committed) only once the
        # InfluxSink has stored or spilled its lines. Faust commits every few seconds and the
        # sink holds lines in memory while InfluxDB is slow or away: with automatic acks a crash
        # lost every line of records whose offsets were already committed (a restart never
        # reads them again). The changelog and candidates go through Faust's producer, which
        # Faust flushes before each commit.
        async for event in stream.noack().events():
            msg = event.message
            p = msg.partition
            offsets[p] = msg.offset
            try:
                record = decode_readings_record(event.value)
            except DecodeError as e:
                dl = DeadLetter.of(
                    source=f"kafka:{msg.topic}",
                    origin=f"{msg.topic}/{p}/{msg.offset}",
                    reason_code=DeadLetterReason.UNDECODABLE_RECORD,
                    reason=str(e),
                    raw=event.value or b"",
                    received=clock.now_ms(),
                )
                await dead_letter_topic.send(value=encode_event(dl))
                stats["dead_letters"] += 1
                acker.track(p, msg.offset, event.ack)()
                continue
            done = acker.track(p, msg.offset, event.ack)
            ps = partition_state(p)
            restored_offsets, restored = ps.take_restored()
            if restored:
                # derived lines the previous owner may have lost (see PartitionState.unconfirmed)
                stats["derived_rewritten"] += len(restored)
                (await sink()).write(
                    restored,
                    on_durable=_confirming(ps, restored_offsets),
                )
            now = clock.now_ms()
            if isinstance(record, StreamTick):
                ps.watch(sensors_by_partition.get(p, []), record.now)
                result = ps.tick(record.now)
                stamps: list[int] = []
            else:
                result = ps.apply_batch(record, now)
                stamps = [r.ts for r in record]
                latency.add_ingest([r.received for r in record], now)
                stats["readings"] += len(record)
                stats["batches"] += 1
            # candidates before the state that records their episode: a crash between the two
            # re-raises the candidate (same id, deduplicated downstream) rather than losing it
            for cand in result.candidates:
                await candidates_topic.send(key=cand.source_id.encode(), value=encode_event(cand))
                stats["candidates"] += 1
            ps.hold(msg.offset, result.derived)
            state_table[f"p{p}".encode()] = ps.to_bytes()  # one changelog record per batch
            stats["duplicates"] += result.duplicates
            stats["late"] += result.late
            stats["unknown_sensor"] += result.unknown
            stats["firings"] += result.firings
            s = await sink()
            s.write(
                result.lines,
                on_written=(lambda ack, st=stamps: latency.add_batch(st, ack)) if stamps else None,
                # acked in offset order once every earlier record is durable too
                on_durable=_confirming(ps, [msg.offset], done) if result.derived else done,
            )

    @app.task
    async def _tune_gc() -> None:
        tune_gc()  # once the worker has started: its start-up objects are frozen too

    @app.timer(cfg.streams.tick_s)
    async def send_ticks() -> None:
        now = clock.now_ms()
        for tp in app.assignor.assigned_actives():
            if tp.topic == SENSOR_READINGS.name:
                await readings_topic.send(value=encode_tick(now), partition=tp.partition)

    @app.timer(cfg.bridge.health_interval_s)
    async def write_health() -> None:
        s = await sink()
        now = clock.now_ms()
        fields: dict[str, Any] = {k: int(v) for k, v in stats.items()}
        lag = 0
        for tp in app.assignor.assigned_actives():
            if tp.topic != SENSOR_READINGS.name:
                continue
            hw = app.consumer.highwater(tp)
            if hw is not None and tp.partition in offsets:
                lag += max(0, hw - offsets[tp.partition] - 1)
        fields["consumer_lag"] = lag
        fields.update(latency.take())
        fields.update({f"influx_{k}": v for k, v in s.stats.items()})
        fields["influx_buffered_lines"] = s.buffered_lines
        fields["influx_spilled_bytes"] = s.spilled_bytes
        s.write(health_lines("streams", instance, fields, now))
        log.info("streams: %s", {k: fields[k] for k in sorted(fields) if not k.startswith("influx_")})

    @app.on_partitions_revoked.connect
    async def _forget_states(app_: faust.App, revoked: Any = None, **kwargs: Any) -> None:
        # After a rebalance the table is the truth: reload states from it on next use.
        states.clear()
        for tp in revoked or ():
            acker.forget(tp.partition)

    @app.on_before_shutdown.connect
    async def _close_sink(app_: faust.App, **kwargs: Any) -> None:
        if "s" in sink_holder:
            await sink_holder["s"].close()

    return app


def run_worker(cfg: GridwatchConfig, registry: dict[str, SensorInfo], loglevel: str = "info") -> None:
    """Run a worker in this process until SIGTERM / Ctrl-C."""
    from faust.worker import Worker

    app = create_app(cfg, registry)
    asyncio.set_event_loop(asyncio.new_event_loop())
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
