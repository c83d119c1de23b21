"""CPU per reading of the stream worker's per-record work, without servers.

    .venv/bin/python -m gridwatch.bench.streams_profile [--records 400] [--repeat 3] [--cprofile 25]
    .venv/bin/python -m gridwatch.bench.streams_profile --modules-from DIR   # another version's code

Reproducible where `gridwatch bench sensors` is not: it measures CPU time (`time.process_time`) of
this process only, so other jobs on the machine change it little.

What runs, per Kafka record of one readings partition, is what the agent in streams/app.py does
between receiving a record and handing its lines to the InfluxDB writer, with the real code:
`decode_readings_record`, `PartitionState.take_restored` / `apply_batch` (windows, rules, line
building) or `watch` + `tick` for a tick record, `encode_event` of each candidate, `ps.hold(...)`,
`ps.to_bytes()` (the state table's changelog value, one per record), `InfluxSink.write(...)` with
the agent's callbacks, and the sink's writer side without the network: `_take_batch()`, the
request body (`"\\n".join`), the `on_written` latency callbacks and the `on_durable` callbacks
(which confirm held derived lines). Not included: Faust, aiokafka, the HTTP request itself and
InfluxDB (`gridwatch bench sensors` has those).

Records are built like the bench's (bench/sensors.py config: 2,000 `level` sensors, period 1 s,
threshold above 1000 / clear below 900, silence after 10 periods, 10 s windows with 5 s grace,
4 partitions): readings of one partition's sensors in turn, `--per-record` (1,000) to a record,
timestamps advancing at `--rate` readings/s over all partitions (so each record covers
per-record / rate * partitions of data time), a value like the load generator's (`%.3f` of
20 + 5 sin + noise), a tick record every `tick_s` of data time. Anomalies: every
`--anomaly-every` records one sensor goes above 1000 for a few readings then falls back (a
threshold episode raised and cleared), and a few sensors go silent for 15 s then resume
(silence raised by a tick, cleared by the next reading). Every `--redeliver-every` record is
delivered twice (duplicates). The same records are fed in every repeat, into a fresh state.

`--modules-from DIR` loads `codec.py`, `influx.py` and `sensor_state.py` from DIR instead of the
installed package (for before/after comparisons side by side; app.py's callbacks are the
installed ones). The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import importlib.util
import io
import json
import math
import pstats
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_PRELOADED = (
    ("gridwatch.codec", "codec.py"),
    ("gridwatch.influx", "influx.py"),
    ("gridwatch.streams.sensor_state", "sensor_state.py"),
)


def _preload(directory: Path) -> None:
    """Put another version of the hot-path modules in place before anything imports them."""
    import gridwatch.streams  # noqa: F401  (the package, not its modules)

    for name, file in _PRELOADED:
        if name in sys.modules:
            raise SystemExit(f"--modules-from: {name} was imported already")
        spec = importlib.util.spec_from_file_location(name, directory / file)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)


def _registry(sensors: int) -> tuple[Any, dict[str, Any]]:
    from gridwatch.bench.sensors import bench_config
    from gridwatch.city import CityModel
    from gridwatch.config import load_config
    from gridwatch.registry import build_sensor_registry

    with tempfile.TemporaryDirectory() as d:
        cfg = load_config(
            bench_config(Path(d) / "bench.yaml", sensors), overrides={"influx": {"spill_dir": None}}
        )
    return cfg, build_sensor_registry(cfg, CityModel.load(cfg.city.geojson))


def make_records(
    sensor_ids: list[str],
    *,
    records: int,
    per_record: int,
    rate: int,
    partitions: int,
    tick_s: float,
    anomaly_every: int,
    silent_sensors: int,
    redeliver_every: int,
    seed: int = 7,
) -> list[tuple[bytes, bool]]:
    """Encoded records of one partition, in topic order: (value, is_tick)."""
    from gridwatch.codec import Reading, encode_reading_batch, encode_tick

    rnd = random.Random(seed)
    t0 = 1_764_000_000_000
    step_ms = partitions * 1000 / rate  # data time between two readings of this partition
    phase = {s: rnd.random() * 6.283 for s in sensor_ids}
    silent = set(rnd.sample(sensor_ids, min(silent_sensors, len(sensor_ids))))
    silent_from, silent_to = t0 + 20_000, t0 + 35_000
    out: list[tuple[bytes, bool]] = []
    next_tick = t0 + tick_s * 1000
    k = 0
    anomaly: tuple[str, int] | None = None  # sensor, readings left above the limit
    for rec in range(records):
        if anomaly is None and anomaly_every and rec % anomaly_every == anomaly_every // 2:
            anomaly = (rnd.choice(sensor_ids), 5)
        batch: list[Reading] = []
        while len(batch) < per_record:
            ts_f = t0 + k * step_ms
            ts = int(ts_f)
            sid = sensor_ids[k % len(sensor_ids)]
            k += 1
            if sid in silent and silent_from <= ts < silent_to:
                continue
            value = round(20 + 5 * math.sin(ts / 60_000 + phase[sid]) + rnd.gauss(0, 0.5), 3)
            if anomaly is not None and sid == anomaly[0]:
                value = 1200.0 + anomaly[1] if anomaly[1] > 0 else 800.0
                anomaly = (anomaly[0], anomaly[1] - 1) if anomaly[1] > 0 else None
            batch.append(Reading(sid, ts, value, ts + 3))
        raw = encode_reading_batch(batch)
        out.append((raw, False))
        if redeliver_every and rec % redeliver_every == redeliver_every - 1:
            out.append((raw, False))
        while batch[-1].ts >= next_tick:
            out.append((encode_tick(int(next_tick)), True))
            next_tick += tick_s * 1000
    return out


class _Stages:
    names = ("decode", "apply", "candidates", "hold+to_bytes", "sink")

    def __init__(self) -> None:
        self.t = dict.fromkeys(self.names, 0.0)


def run_once(
    cfg: Any, registry: dict[str, Any], sensor_ids: list[str], records: list[tuple[bytes, bool]]
) -> dict[str, Any]:
    """Feed every record through a fresh PartitionState; CPU seconds by stage."""
    from gridwatch.codec import decode_readings_record, encode_event
    from gridwatch.influx import InfluxSink, _fire
    from gridwatch.schemas import StreamTick
    from gridwatch.streams.app import LatencyWindow, _confirming
    from gridwatch.streams.sensor_state import PartitionState

    ps = PartitionState(registry, cfg.streams.window_s, cfg.streams.window_grace_s)
    ps.load_bytes(None)
    sink = InfluxSink(cfg.influx, name="profile")  # not started: the writer side is driven below
    latency = LatencyWindow()
    batch_max = cfg.influx.batch_max_lines
    st = _Stages()
    t = st.t
    clock = time.process_time
    counts = {"readings": 0, "lines": 0, "candidates": 0, "state_bytes": 0, "acked": 0, "bodies": 0}

    def done() -> None:
        counts["acked"] += 1

    for offset, (raw, _is_tick) in enumerate(records):
        c0 = clock()
        record = decode_readings_record(raw)
        c1 = clock()
        restored_offsets, restored = ps.take_restored()
        if isinstance(record, StreamTick):
            ps.watch(sensor_ids, record.now)
            now = record.now
            result = ps.tick(now)
            stamps: list[int] = []
        else:
            now = record[-1].received
            result = ps.apply_batch(record, now)
            stamps = [r.ts for r in record]
            latency.add_ingest([r.received for r in record], now)
            counts["readings"] += len(record)
        c2 = clock()
        for cand in result.candidates:
            encode_event(cand)
        counts["candidates"] += len(result.candidates)
        c3 = clock()
        ps.hold(offset, result.derived)
        state = ps.to_bytes()
        c4 = clock()
        counts["state_bytes"] += len(state)
        counts["lines"] += len(result.lines)
        sink.write(
            result.lines,
            on_written=(lambda ack, st_=stamps: latency.add_batch(st_, ack)) if stamps else None,
            on_durable=_confirming(ps, [offset], done) if result.derived else done,
        )
        while sink.buffered_lines >= batch_max or (offset == len(records) - 1 and sink.buffered_lines):
            lines, callbacks, durable = sink._take_batch()
            body = "\n".join(lines)
            counts["bodies"] += len(body)
            for cb in callbacks:
                cb(now)
            _fire(durable)
        c5 = clock()
        t["decode"] += c1 - c0
        t["apply"] += c2 - c1
        t["candidates"] += c3 - c2
        t["hold+to_bytes"] += c4 - c3
        t["sink"] += c5 - c4
    latency.take()
    return {"cpu_s": t, "counts": counts, "state": ps.to_bytes(), "unconfirmed": len(ps.unconfirmed)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sensors", type=int, default=2000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--partition", type=int, default=0, help="the partition whose records are fed")
    ap.add_argument("--records", type=int, default=400, help="reading records (ticks come on top)")
    ap.add_argument("--per-record", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=20000, help="readings/s over all partitions (data time)")
    ap.add_argument("--anomaly-every", type=int, default=20)
    ap.add_argument("--silent-sensors", type=int, default=5)
    ap.add_argument("--redeliver-every", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cprofile", type=int, default=0, metavar="N", help="also print the top N functions")
    ap.add_argument("--modules-from", type=Path, default=None)
    ap.add_argument(
        "--gc",
        choices=("worker", "default"),
        default="worker",
        help="worker: tune the cyclic GC as the stream worker does (streams/app.py tune_gc); "
        "default: Python's thresholds",
    )
    args = ap.parse_args(argv)
    if args.modules_from is not None:
        _preload(args.modules_from)

    from gridwatch.topics import sensor_partition

    cfg, registry = _registry(args.sensors)
    sensor_ids = [s for s in registry if sensor_partition(s, args.partitions) == args.partition]
    records = make_records(
        sensor_ids,
        records=args.records,
        per_record=args.per_record,
        rate=args.rate,
        partitions=args.partitions,
        tick_s=cfg.streams.tick_s,
        anomaly_every=args.anomaly_every,
        silent_sensors=args.silent_sensors,
        redeliver_every=args.redeliver_every,
    )
    run_once(cfg, registry, sensor_ids, records[:20])  # warm caches and imports
    runs: list[dict[str, Any]] = []
    gc.collect()
    if args.gc == "worker":
        from gridwatch.streams.app import tune_gc

        tune_gc()
    for _ in range(args.repeat):
        runs.append(run_once(cfg, registry, sensor_ids, records))
    counts = runs[0]["counts"]
    n = counts["readings"]
    per = [{k: v / n * 1e6 for k, v in r["cpu_s"].items()} for r in runs]
    totals = [sum(p.values()) for p in per]
    ticks = sum(1 for _, is_tick in records if is_tick)
    print(
        f"{len(records)} records ({ticks} ticks) of partition {args.partition}: {len(sensor_ids)} sensors, "
        f"{n:,} readings, {counts['lines']:,} lines, {counts['candidates']} candidates, "
        f"state {counts['state_bytes'] / len(records) / 1024:.1f} KiB a record"
        + f"  [gc: {args.gc}]"
        + (f"  [modules from {args.modules_from}]" if args.modules_from else "")
    )
    print("us CPU per reading: " + "  ".join(f"{name} " for name in _Stages.names) + " total")
    for p, tot in zip(per, totals, strict=True):
        print("  " + "  ".join(f"{name} {p[name]:.3f}" for name in _Stages.names) + f"  total {tot:.3f}")
    med = {name: statistics.median(p[name] for p in per) for name in _Stages.names}
    print(f"median total {statistics.median(totals):.3f} us CPU per reading")
    if args.cprofile:
        prof = cProfile.Profile()
        prof.enable()
        run_once(cfg, registry, sensor_ids, records)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.cprofile)
        print(buf.getvalue())
    print(
        json.dumps(
            {
                "readings": n,
                "records": len(records),
                "ticks": ticks,
                "sensors_in_partition": len(sensor_ids),
                "lines": counts["lines"],
                "candidates": counts["candidates"],
                "state_bytes_per_record": counts["state_bytes"] / len(records),
                "us_per_reading_runs": totals,
                "us_per_reading_median": statistics.median(totals),
                "us_per_reading_by_stage_median": med,
                "modules_from": str(args.modules_from) if args.modules_from else None,
                "gc": args.gc,
            }
        )
    )


if __name__ == "__main__":
    main()
