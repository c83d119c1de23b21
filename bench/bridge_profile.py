"""CPU per reading of the MQTT -> Kafka bridge's per-message path, without servers.

    .venv/bin/python -m gridwatch.bench.bridge_profile --n 200000 [--repeat 3] [--cprofile 25]

Reproducible where `gridwatch bench sensors` is not: it measures CPU time (`time.process_time`) of
this process only, so other jobs on the machine change it little (unlike wall time or the
machine-wide figures of the end-to-end benchmark).

What runs is the real `SensorBridge` of `ingest/mqtt_bridge.py` with the real gmqtt client it
configures (`SensorBridge._new_client()`, not connected): each message enters where gmqtt hands a
parsed QoS 1 PUBLISH on, `MqttPackageHandler._handle_qos_1_publish_packet(mid, payload, topic,
properties)`, and leaves as gmqtt's PUBACK packet. Everything of the bridge's hot path runs:
validation, partition lookup, adaptive batching with one record in flight per partition, the
flusher, encoding of the packed records, the per-(topic, partition) send lock, counters, and
the acknowledgement after the record is delivered.

PROFILING STAND-INS, ONLY IN THIS SCRIPT (never used by the bridge itself):
  * `_CompletedSendProducer` replaces the aiokafka producer: `send()` returns an
    already-completed delivery future (Kafka "has" the record at once, no I/O);
  * `_PubackCounter` replaces the client's network connection: gmqtt builds each PUBACK packet
    as usual, and this counts it instead of writing it to a socket.
The broker's flow control is imitated: at most `mqtt.receive_maximum` messages unacknowledged,
delivered `--burst` messages per event-loop iteration (one socket read's worth).

Not included (measured by `gridwatch bench sensors` instead): gmqtt's socket reads and packet
parsing, the real Kafka client, the kernel. `--baseline` runs the same harness with the bare
receive loop's handler (a plain function, PUBACK on receipt, as `raw_mqtt_limit` in
bench/sensors.py) to show what the bridge adds.

Payloads are generated like the compiled load generator (`bench/loadgen/publisher.c`):
`{"v":1,"ts":<epoch ms>,"value":<%.3f>}` on `gridwatch/sensors/bench-NNNNN/reading`, sensors in
turn, value 20 + 5 sin(...) + noise; `--invalid-every K` makes every K-th one not JSON.
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import json
import math
import pstats
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from gmqtt import Client as MQTTClient
from gmqtt.mqtt import package
from gmqtt.mqtt.constants import MQTTv50

from gridwatch.bench.sensors import PREFIX, bench_config
from gridwatch.config import GridwatchConfig, load_config


class _CompletedSendProducer:
    """PROFILING STAND-IN for aiokafka's producer: every send is already delivered."""

    def __init__(self) -> None:
        self.records = 0
        self.bytes = 0

    async def send(self, topic: str, value: bytes, partition: int | None = None) -> asyncio.Future[None]:
        self.records += 1
        self.bytes += len(value)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def stop(self) -> None:
        return None


def make_messages(n: int, sensors: int, *, invalid_every: int = 0, seed: int = 7) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs like bench/loadgen/publisher.c sends them."""
    rng = random.Random(seed)
    topics = [f"gridwatch/sensors/{PREFIX}{i:05d}/reading" for i in range(sensors)]
    omega = [2 * math.pi / rng.uniform(60, 600) for _ in range(sensors)]
    phase = [rng.uniform(0, 2 * math.pi) for _ in range(sensors)]
    now = time.time_ns() // 1_000_000
    out = []
    for k in range(n):
        idx = k % sensors
        ts = now + k // 20  # 20 readings per ms: within the bridge's clock-skew bounds either way
        if invalid_every and (k + 1) % invalid_every == 0:
            payload = b'{"v":1,"ts":%d,"value":' % ts
        else:
            value = 20.0 + 5.0 * math.sin(omega[idx] * k / 1000 + phase[idx]) + 0.2 * rng.gauss(0, 1)
            payload = b'{"v":1,"ts":%d,"value":%.3f}' % (ts, value)
        out.append((topics[idx], payload))
    return out


def profile_config(sensors: int) -> GridwatchConfig:
    """The configuration `gridwatch bench sensors` runs the bridge with."""
    with tempfile.TemporaryDirectory() as d:
        return load_config(bench_config(Path(d) / "bench.yaml", sensors))


class _PubackCounter:
    """PROFILING STAND-IN for gmqtt's connection: counts the PUBACK packets instead of sending them."""

    def __init__(self) -> None:
        self.pubacks = 0
        self.nonzero = 0

    def send_command_with_mid(self, cmd: int, mid: int, dup: bool, reason_code: int = 0) -> None:
        package.CommandWithMidPacket.build_package(cmd, mid, dup, reason_code=reason_code, proto_ver=MQTTv50)
        self.pubacks += 1
        if reason_code != 0:
            self.nonzero += 1


async def _drive(
    cfg: GridwatchConfig, messages: list[tuple[str, bytes]], *, burst: int, baseline: bool
) -> dict[str, Any]:
    from gridwatch.ingest.mqtt_bridge import SensorBridge, tune_gc

    bridge = SensorBridge(cfg)
    await bridge._producer.stop()  # never started: the stand-in below sends instead
    bridge._producer = _CompletedSendProducer()  # type: ignore[assignment]  # PROFILING STAND-IN
    client = bridge._new_client()
    if baseline:

        def on_message(client: Any, topic: str, payload: bytes, qos: int, properties: dict) -> int:
            return 0

        client = MQTTClient("bridge-profile-baseline", optimistic_acknowledgement=True)
        client.on_message = on_message
    conn = client._connection = _PubackCounter()  # PROFILING STAND-IN
    handler = client._package_handler
    tune_gc()  # as SensorBridge.start() does
    flusher = asyncio.create_task(bridge._flusher())

    window = cfg.mqtt.receive_maximum
    n = len(messages)
    sent = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    while sent < n:
        room = min(burst, window - (sent - conn.pubacks), n - sent)
        for k in range(sent, sent + room):
            topic, payload = messages[k]
            handler._handle_qos_1_publish_packet(k % 65535 + 1, payload, topic, {"dup": 0, "retain": 0})
        sent += max(room, 0)
        await asyncio.sleep(0)
    while conn.pubacks < n:
        await asyncio.sleep(0 if bridge._inflight else 0.001)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    flusher.cancel()
    producer = bridge._producer
    assert isinstance(producer, _CompletedSendProducer)
    stats = dict(bridge.stats)
    return {
        "messages": n,
        "acked": conn.pubacks,
        "nonzero_reason_codes": conn.nonzero,
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_us_per_msg": cpu / n * 1e6,
        "forwarded": stats.get("forwarded", 0),
        "dead_letters": stats.get("dead_letters", 0),
        "records": producer.records,
        "readings_per_record": stats.get("forwarded", 0) / max(1, stats.get("records", 0)),
    }


def run_once(
    cfg: GridwatchConfig, messages: list[tuple[str, bytes]], *, burst: int, baseline: bool = False
) -> dict[str, Any]:
    gc.collect()
    return asyncio.run(_drive(cfg, messages, burst=burst, baseline=baseline))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000, help="messages per run")
    ap.add_argument("--sensors", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs (after one warm-up run of n/10)")
    ap.add_argument("--burst", type=int, default=100, help="messages delivered per event-loop iteration")
    ap.add_argument("--invalid-every", type=int, default=0, help="every K-th payload is not JSON (0: none)")
    ap.add_argument(
        "--baseline", action="store_true", help="the bare receive loop's handler instead of the bridge"
    )
    ap.add_argument("--cprofile", type=int, default=0, metavar="TOP", help="one extra run under cProfile")
    args = ap.parse_args(argv)

    cfg = profile_config(args.sensors)
    messages = make_messages(args.n, args.sensors, invalid_every=args.invalid_every)
    run_once(cfg, messages[: max(1, args.n // 10)], burst=args.burst, baseline=args.baseline)  # warm-up
    runs = [run_once(cfg, messages, burst=args.burst, baseline=args.baseline) for _ in range(args.repeat)]
    for i, r in enumerate(runs, 1):
        print(
            f"run {i}: {r['cpu_us_per_msg']:.2f} us CPU/msg ({r['cpu_s']:.2f} s CPU, {r['wall_s']:.2f} s wall), "
            f"forwarded {r['forwarded']:,}, dead letters {r['dead_letters']:,}, "
            f"{r['readings_per_record']:.0f} readings/record"
        )
        if not args.baseline:
            assert r["acked"] == r["messages"] == r["forwarded"] + r["dead_letters"], r
            assert r["nonzero_reason_codes"] == 0, r
    per_msg = [r["cpu_us_per_msg"] for r in runs]
    result: dict[str, Any] = {
        "bench": "bridge_profile",
        "mode": "baseline" if args.baseline else "bridge",
        "n": args.n,
        "sensors": args.sensors,
        "burst": args.burst,
        "invalid_every": args.invalid_every,
        "cpu_us_per_msg": per_msg,
        "cpu_us_per_msg_median": statistics.median(per_msg),
        "cpu_us_per_msg_min": min(per_msg),
    }
    if args.cprofile:
        prof = cProfile.Profile()
        prof.enable()
        run_once(cfg, messages, burst=args.burst, baseline=args.baseline)
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.cprofile)
        print(out.getvalue())
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
