"""`gridwatch bench sensors`: end-to-end readings/s and latency, each stage beside its raw limit.

One run, on embedded servers (mosquitto, Tansu, InfluxDB 1.6 behind the v2-compat adapter):

1. raw MQTT limit: the compiled publisher flat out into a bare gmqtt QoS 1 receive loop;
2. end to end at each offered rate: compiled publisher -> mosquitto -> `gridwatch bridge` ->
   Tansu -> `gridwatch streams worker` (windows + rules) -> InfluxDB. Achieved readings/s is
   readings stored / (last stored - first published); latency p50/p99 is publish stamp ->
   InfluxDB write acknowledged, from the worker's `pipeline_health`; machine-wide CPU by psutil;
3. bridge stage: the bridge alone (no stream worker yet) offered what (1) took, beside (1);
4. streams stage: a fresh Faust worker (new consumer group) replays every record the run
   produced into another database, beside the raw limit: a bare aiokafka consume + decode +
   InfluxDB write of the same records.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from rich.console import Console

from gridwatch.bench.loadgen import finish_publisher, start_publisher
from gridwatch.codec import decode_readings_record
from gridwatch.devservers.process import ManagedProcess
from gridwatch.devservers.stack import DevStack
from gridwatch.influx import series_key
from gridwatch.localrun import LocalPipeline
from gridwatch.schemas import StreamTick
from gridwatch.topics import SENSOR_READINGS

PREFIX = "bench-"


def bench_config(path: Path, sensors: int) -> Path:
    data = {
        "version": 1,
        "city": {"geojson": "package:demo_city.geojson"},
        "kafka": {"profile": "dev", "readings_partitions": 4},
        "influx": {"batch_max_lines": 5000, "flush_interval_ms": 100},
        "streams": {"window_s": 10, "window_grace_s": 5},
        "sensor_types": {
            "level": {
                "unit": "u",
                "category": "sensor_anomaly",
                "rules": {"threshold": {"above": 1000, "clear_below": 900}, "silence": {"periods": 10}},
            }
        },
        "sensors": [
            {
                "id": f"{PREFIX}{i:05d}",
                "type": "level",
                "period_s": 1,
                "location": {"lon": 104.06, "lat": 30.66},
            }
            for i in range(sensors)
        ],
    }
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def raw_mqtt_limit(host: str, port: int, rate: int, duration: float, sensors: int) -> dict[str, Any]:
    """A bare gmqtt QoS 1 receive loop (acknowledge on receipt, count, nothing else)."""
    from gmqtt import Client

    async def main() -> dict[str, Any]:
        got = 0
        c = Client("bench-raw-receiver", clean_session=True)

        def on_message(client, topic, payload, qos, properties):  # noqa: ANN001
            nonlocal got
            got += 1
            return 0

        c.on_message = on_message
        await c.connect(host, port)
        c.subscribe("rawbench/sensors/+/reading", qos=1)
        await asyncio.sleep(0.3)
        cpu0 = time.process_time()
        t0 = time.monotonic()
        proc = start_publisher(
            host,
            port,
            rate,
            duration,
            sensors,
            topic_template="rawbench/sensors/%s/reading",
            client_id="bench-raw-pub",
        )
        while proc.poll() is None:
            await asyncio.sleep(0.1)
        res = finish_publisher(proc, timeout=5)
        while got < res["acked"] and time.monotonic() - t0 < duration + 30:
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        await c.disconnect()
        return {
            "received": got,
            "sent": res["acked"],
            "elapsed_s": elapsed,
            "rate": got / elapsed,
            "receiver_cpu_us_per_msg": cpu / max(1, got) * 1e6,
        }

    return asyncio.run(main())


def raw_streams_limit(
    bootstrap: str, influx_v1: str, influx_url: str, db: str, series: dict[str, str]
) -> dict[str, Any]:
    """Bare aiokafka consume + decode + InfluxDB write of the same records.

    Writes the same points (same series keys) through the same v2 write endpoint the worker
    uses, so the two differ only in what gridwatch adds: Faust, windows, rules, state.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    httpx.post(f"{influx_v1}/query", params={"q": f"CREATE DATABASE {db}"}, timeout=10)

    async def main() -> dict[str, Any]:
        c = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=32 << 20,
        )
        await c.start()
        parts = c.partitions_for_topic(SENSOR_READINGS.name) or set()
        tps = [TopicPartition(SENSOR_READINGS.name, p) for p in sorted(parts)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        n = 0
        t0 = time.monotonic()
        async with httpx.AsyncClient(timeout=60) as http:
            while [tp for tp in tps if await c.position(tp) < ends[tp]]:
                batch = await c.getmany(timeout_ms=500, max_records=50)
                lines: list[str] = []
                for msgs in batch.values():
                    for m in msgs:
                        rec = decode_readings_record(m.value)
                        if isinstance(rec, StreamTick):
                            continue
                        lines.extend(f"{series[r.sensor_id]} value={float(r.value)!r} {r.ts}" for r in rec)
                for i in range(0, len(lines), 5000):
                    resp = await http.post(
                        f"{influx_url}/api/v2/write",
                        params={"bucket": db, "org": "-", "precision": "ms"},
                        content="\n".join(lines[i : i + 5000]),
                    )
                    resp.raise_for_status()
                n += len(lines)
        elapsed = time.monotonic() - t0
        await c.stop()
        return {"readings": n, "elapsed_s": elapsed, "rate": n / max(elapsed, 1e-9)}

    return asyncio.run(main())


def _forwarded(pipe: LocalPipeline) -> int:
    s = pipe.influxql("SELECT last(forwarded) FROM pipeline_health WHERE component='bridge'")
    return int(s[0]["values"][0][1]) if s else 0


def _series_keys(pipe: LocalPipeline) -> dict[str, str]:
    from gridwatch.city import CityModel
    from gridwatch.registry import build_sensor_registry
    from gridwatch.streams.sensor_state import _tags

    reg = build_sensor_registry(pipe.cfg, CityModel.load(pipe.cfg.city.geojson))
    return {sid: series_key("sensor_reading", _tags(info)) for sid, info in reg.items()}


def _latency(pipe: LocalPipeline, t_from_ms: int, t_to_ms: int) -> dict[str, float | None]:
    s = pipe.influxql(
        "SELECT latency_p50_ms, latency_p99_ms, latency_count FROM pipeline_health WHERE component='streams' "
        f"AND time >= {t_from_ms}ms AND time <= {t_to_ms}ms AND latency_count > 0"
    )
    if not s:
        return {"p50_ms": None, "p99_ms": None}
    rows = s[0]["values"]
    p50s = [r[1] for r in rows if r[1] is not None]
    p99s = [r[2] for r in rows if r[2] is not None]
    return {"p50_ms": statistics.median(p50s) if p50s else None, "p99_ms": max(p99s) if p99s else None}


def run_sensors_bench(
    *, rates: list[int], duration_s: float, sensors: int, workdir: Path, console: Console | None = None
) -> dict[str, Any]:
    console = console or Console(stderr=True)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "bench": "sensors",
        "sensors": sensors,
        "duration_s": duration_s,
        "cores": psutil.cpu_count(),
    }
    with DevStack(workdir / "servers") as stack:
        cfg_path = bench_config(workdir / "bench-base.yaml", sensors)
        with console.status("raw limit: bare MQTT receive loop ..."):
            raw_mqtt = raw_mqtt_limit(stack.mqtt_host, stack.mqtt_port, max(rates) * 2, duration_s, sensors)
        console.print(f"raw MQTT receive: {raw_mqtt['rate']:,.0f} msg/s")
        result["raw_mqtt"] = raw_mqtt

        pipe = LocalPipeline(
            stack, workdir / "run", base_config=cfg_path, overrides={"bridge": {"health_interval_s": 1}}
        )
        with console.status("bridge stage: the bridge alone, offered what the bare loop took ..."):
            pipe.start_bridge()
            offered = max(max(rates), int(raw_mqtt["rate"]))
            t0 = time.monotonic()
            proc = start_publisher(
                stack.mqtt_host,
                stack.mqtt_port,
                offered,
                duration_s,
                sensors,
                sensor_prefix=PREFIX,
                client_id="bench-bridge-stage",
            )
            pub = finish_publisher(proc, timeout=duration_s + 90)
            pipe.wait_for(lambda: _forwarded(pipe) >= pub["acked"], 60, 0.2)
            bridge_sent = pub["acked"]
            bridge_rate = bridge_sent / (time.monotonic() - t0)
        result["bridge_stage"] = {
            "offered_rate": offered,
            "sent": bridge_sent,
            "rate": bridge_rate,
            "raw_limit_rate": raw_mqtt["rate"],
            "ratio": bridge_rate / raw_mqtt["rate"],
        }
        console.print(
            f"bridge stage: {bridge_rate:,.0f}/s = {bridge_rate / raw_mqtt['rate']:.2f} of the raw loop"
        )
        with console.status("starting a stream worker ..."):
            pipe.start_streams()
            pipe.wait_for(lambda: pipe.count("sensor_reading") >= bridge_sent, 120, 0.5)
            time.sleep(3)  # past a health interval: the backlog's latencies stay out of the ladder
        ladder = []
        for rate in rates:
            with console.status(f"end to end at {rate:,}/s offered for {duration_s:g} s ..."):
                before = pipe.count("sensor_reading")
                psutil.cpu_percent(None)
                t0_ms = int(time.time() * 1000)
                t0 = time.monotonic()
                proc = start_publisher(
                    stack.mqtt_host,
                    stack.mqtt_port,
                    rate,
                    duration_s,
                    sensors,
                    sensor_prefix=PREFIX,
                    client_id=f"bench-pub-{rate}",
                )
                pub = finish_publisher(proc, timeout=duration_s + 90)
                sent = pub["acked"]
                cpu_pub = psutil.cpu_percent(None)
                ok = pipe.wait_for(lambda b=before, s=sent: pipe.count("sensor_reading") >= b + s, 120, 0.2)
                t_done = time.monotonic()
                stored = pipe.count("sensor_reading") - before
                time.sleep(max(0.0, 1.5 - (time.monotonic() - t_done)))  # let the last health line land
                lat = _latency(pipe, t0_ms, int(time.time() * 1000))
            row = {
                "offered_rate": rate,
                "publisher_rate": pub["achieved_rate"],
                "sent": sent,
                "stored": stored,
                "complete": ok and stored == sent,
                "achieved_rate": stored / (t_done - t0),
                "latency_p50_ms": lat["p50_ms"],
                "latency_p99_ms": lat["p99_ms"],
                "machine_cpu_percent": cpu_pub,
            }
            ladder.append(row)
            console.print(
                f"offered {rate:>7,}/s  achieved {row['achieved_rate']:>9,.0f}/s  p50 {row['latency_p50_ms']} ms  "
                f"p99 {row['latency_p99_ms']} ms  cpu {cpu_pub:.0f}%  complete {row['complete']}"
            )
            if row["achieved_rate"] < 0.8 * rate:
                break  # saturated: higher offered rates only queue up
        result["end_to_end"] = ladder
        pipe.stop()

        # streams stage: replay every record, (a) bare loop, (b) a fresh Faust worker
        with console.status("raw limit: bare aiokafka consume + decode + InfluxDB write ..."):
            raw_streams = raw_streams_limit(
                stack.kafka_bootstrap, stack.influx_v1_url, stack.influx_url, "rawreplay", _series_keys(pipe)
            )
        console.print(f"raw streams loop: {raw_streams['rate']:,.0f} readings/s")
        replay = LocalPipeline(
            stack,
            workdir / "replay",
            base_config=cfg_path,
            database="replay",
            # No wall-clock ticks during the replay: the readings are minutes old, so a fresh worker's
            # ticks would call every replayed sensor silent (thousands of candidates and firings that
            # live operation never produces and the raw loop does not do). Windows still close on
            # the readings themselves.
            overrides={
                "streams": {"app_id": "gridwatch-bench-replay", "tick_s": 3600},
                "bridge": {"health_interval_s": 1},
            },
        )
        with console.status("streams stage: a fresh Faust worker replays the same records ..."):
            replay.streams = ManagedProcess("gridwatch-streams-replay", stop_grace=15)
            t0 = time.monotonic()
            replay.start_streams()
            first: list[tuple[float, int]] = []

            def done() -> bool:
                n = replay.count("sensor_reading")
                if n and not first:
                    first.append((time.monotonic(), n))  # measure from the first stored batch on
                return n >= raw_streams["readings"]

            replay.wait_for(done, 300, 0.2)
            t_end = time.monotonic()
            elapsed = t_end - t0
            replayed = replay.count("sensor_reading")
            replay.stop()
        t_first, n_first = first[0] if first else (t0, 0)
        if replayed - n_first > replayed // 2 and t_end - t_first > 0.5:
            streams_rate = (replayed - n_first) / (t_end - t_first)
        else:  # too short a replay to time from the first batch: include the worker's start-up
            streams_rate = replayed / elapsed
        result["streams_stage"] = {
            "readings": replayed,
            "elapsed_s_including_startup": elapsed,
            "rate": streams_rate,
            "raw_limit_rate": raw_streams["rate"],
            "ratio": streams_rate / raw_streams["rate"],
        }
        console.print(
            f"streams stage: {streams_rate:,.0f} readings/s = {result['streams_stage']['ratio']:.2f} of raw"
        )
    best = max((r for r in ladder if r["complete"]), key=lambda r: r["achieved_rate"], default=None)
    result["summary"] = {
        "max_end_to_end_rate": best["achieved_rate"] if best else 0,
        "p99_ms_at_max": best["latency_p99_ms"] if best else None,
        "bridge_ratio": result["bridge_stage"]["ratio"],
        "machine_cpu_percent_at_max": best["machine_cpu_percent"] if best else None,
        "streams_ratio": result["streams_stage"]["ratio"],
    }
    return result
