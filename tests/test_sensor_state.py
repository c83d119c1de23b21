"""Windows and rules (pure): aggregates, hysteresis, rate, silence, idempotent replays, persistence."""

from __future__ import annotations

from gridwatch.codec import Reading
from gridwatch.streams.sensor_state import PartitionState
from tests.helpers import demo_config, demo_registry

CFG = demo_config()
REG = demo_registry(CFG)
WL = next(
    s for s in REG.values() if s.type == "water_level" and s.period_s == 60
)  # above 2.5, clear below 2.2, rate 0.01/s
MH = next(s for s in REG.values() if s.type == "manhole_tilt" and s.period_s == 60)
T0 = 1_764_000_000_000 - 1_764_000_000_000 % 600_000  # a window boundary


def state() -> PartitionState:
    return PartitionState(REG, window_s=600, grace_s=30)


def feed(ps, sensor, values, t0=T0, step_s=60):
    readings = [
        Reading(sensor.id, t0 + i * step_s * 1000, v, t0 + i * step_s * 1000 + 5)
        for i, v in enumerate(values)
    ]
    return ps.apply_batch(readings, raised_at=t0), readings


def test_window_aggregate_closes_when_next_window_starts():
    ps = state()
    vals = [1.0, 1.2, 1.4, 1.1, 1.0, 1.3, 1.2, 1.1, 1.0, 1.2]  # 10 readings at 60 s = one 600 s window
    res, _ = feed(ps, WL, vals + [1.0])  # the 11th opens the next window
    windows = [ln for ln in res.lines if ln.startswith("sensor_window")]
    assert len(windows) == 1
    w = windows[0]
    assert "count=10i" in w and "min=1.0" in w and "max=1.4" in w and f" {T0}" in w
    assert f"mean={sum(vals) / 10!r}" in w
    assert res.candidates == []


def test_threshold_hysteresis_one_candidate_per_episode():
    ps = state()
    # rises over 2.5, wobbles around it (stays above 2.2), falls below 2.2, rises again
    vals = [2.0, 2.3, 2.6, 2.4, 2.7, 2.3, 2.1, 2.6]
    res, rs = feed(ps, WL, vals, step_s=3600)  # slow: stays under the rate rule (0.01 m/s)
    highs = [c for c in res.candidates if c.rule == "threshold_high"]
    assert [c.observed_at for c in highs] == [rs[2].ts, rs[7].ts]
    assert highs[0].category == "water_level" and highs[0].grid_id == WL.grid_id
    assert highs[0].candidate_id != highs[1].candidate_id
    cleared = [ln for ln in res.lines if "rule_firing" in ln and "state=cleared" in ln]
    assert len(cleared) == 1


def test_rate_rule_and_quiet_period():
    ps = state()
    res, rs = feed(ps, MH, [1.0, 1.0, 40.0, 41.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 60.0], step_s=60)
    rate = [c for c in res.candidates if c.rule == "rate"]
    # 39 deg in 60 s > 0.5 deg/s; the drop back at i=4 is in the same episode; quiet for 300 s clears it
    assert [c.observed_at for c in rate] == [rs[2].ts, rs[11].ts]
    th = [c for c in res.candidates if c.rule == "threshold_high"]
    assert [c.observed_at for c in th] == [rs[2].ts, rs[11].ts]


def test_replayed_batch_changes_nothing():
    ps = state()
    res1, rs = feed(ps, WL, [2.0, 2.6, 2.7])
    before = ps.to_bytes()
    res2 = ps.apply_batch(rs, raised_at=T0 + 999)  # redelivery after a crash
    assert res2.candidates == [] and res2.duplicates == 3
    assert ps.to_bytes() == before
    assert len([ln for ln in res2.lines if ln.startswith("sensor_reading")]) == 3  # rewritten: idempotent


def test_state_survives_serialisation_without_reraising():
    ps = state()
    feed(ps, WL, [2.0, 2.6])
    restored = state()
    restored.load_bytes(ps.to_bytes())
    res, _ = feed(restored, WL, [2.7, 2.8], t0=T0 + 180_000)
    assert res.candidates == []  # still the same episode


def test_silence_raises_once_and_clears_on_next_reading():
    ps = state()
    ps.watch([WL.id], T0)
    assert ps.tick(T0 + 179_000).candidates == []  # 3 periods of 60 s not yet passed
    c = ps.tick(T0 + 181_000).candidates
    assert len(c) == 1 and c[0].category == "sensor_offline" and c[0].observed_at == T0 + 180_000
    assert ps.tick(T0 + 400_000).candidates == []  # still the same silence
    res, _ = feed(ps, WL, [1.0], t0=T0 + 500_000)
    cleared = [ln for ln in res.lines if "state=cleared" in ln and "rule=silence" in ln]
    assert len(cleared) == 1 and "category=sensor_offline" in cleared[0]


def test_tick_closes_stale_window():
    ps = state()
    feed(ps, WL, [1.0, 2.0])
    assert not [ln for ln in ps.tick(T0 + 600_000 + 29_000).lines if ln.startswith("sensor_window")]
    closed = [ln for ln in ps.tick(T0 + 600_000 + 31_000).lines if ln.startswith("sensor_window")]
    assert len(closed) == 1 and "count=2i" in closed[0]


def test_candidate_ids_are_deterministic():
    a, _ = feed(state(), WL, [2.0, 2.6])
    b, _ = feed(state(), WL, [2.0, 2.6])
    assert [c.candidate_id for c in a.candidates] == [c.candidate_id for c in b.candidates]


def test_state_record_round_trips_every_field():
    from dataclasses import fields

    from gridwatch.streams.sensor_state import SensorState

    st = SensorState(*range(1, len(fields(SensorState)) + 1))
    assert SensorState.from_list(list(st.to_list())) == st
    assert len(st.to_list()) == len(fields(SensorState))


def test_reading_for_a_window_a_tick_already_closed_is_late_not_a_second_point():
    ps = state()
    feed(ps, WL, [1.0, 2.0, 3.0, 4.0, 5.0])  # minutes 0-4 of the window
    closed = [ln for ln in ps.tick(T0 + 600_000 + 31_000).lines if ln.startswith("sensor_window")]
    assert len(closed) == 1 and "count=5i" in closed[0]
    res, _ = feed(ps, WL, [6.0], t0=T0 + 5 * 60_000)  # newer than last_ts, same (closed) window
    assert res.late == 1
    assert not [ln for ln in res.lines if ln.startswith("sensor_window")]
    assert not [ln for ln in ps.tick(T0 + 2 * 600_000 + 31_000).lines if ln.startswith("sensor_window")]
    res, _ = feed(ps, WL, [7.0, 8.0], t0=T0 + 600_000)  # the next window opens normally
    assert res.late == 0


def test_derived_lines_of_unconfirmed_records_survive_a_crash():
    """The state written to the changelog carries the derived lines (firings, windows) of records
    not yet durable in InfluxDB; a restored state hands them back once for rewriting."""
    ps = state()
    res, rs = feed(ps, WL, [2.0, 2.6, 2.7])  # offset 41: the episode's firing
    assert [ln for ln in res.derived if ln.startswith("rule_firing")] and all(
        ln in res.lines for ln in res.derived
    )
    ps.hold(41, res.derived)
    ps.hold(42, [])  # a record without derived lines is not kept
    crashed = ps.to_bytes()  # the changelog record written before the crash
    restored = state()
    restored.load_bytes(crashed)
    # the replay is a duplicate for the restored state: no firing again ...
    assert restored.apply_batch(rs, raised_at=T0 + 999).derived == []
    # ... so the lost firing comes back from the state, once
    offs, lines = restored.take_restored()
    assert offs == [41] and lines == res.derived
    assert restored.take_restored() == ([], [])
    restored.confirm(41)  # its rewrite is durable
    again = state()
    again.load_bytes(restored.to_bytes())
    assert again.take_restored() == ([], []) and again.unconfirmed == {}
    # a confirmed record leaves the state (the changelog stays small)
    ps.confirm(41)
    assert b"rule_firing" not in ps.to_bytes()


# --- the fast path against the plain reference ------------------------------------------------


def _mixed_registry():
    """The demo's sensors (threshold above + rate + silence) plus a few with a `below` rule."""
    import dataclasses

    from gridwatch.config import RulesConfig, ThresholdRule

    reg = dict(list(REG.items())[:12])
    for i, info in enumerate(list(REG.values())[12:16]):
        th = ThresholdRule(above=2.5, clear_below=2.2, below=0.5, clear_above=0.8)
        reg[info.id] = dataclasses.replace(info, rules=RulesConfig(threshold=th, rate=info.rules.rate))
        assert i < 4
    return reg


def _random_feed(reg, rnd, n_readings=6000):
    """Batches and ticks: noise around each sensor's limits, spikes, drops, silences, redeliveries,
    readings out of order and late for closed windows, unknown sensors, int values."""
    sids = list(reg)
    last = dict.fromkeys(sids, T0)
    steps: list[tuple[str, object]] = []
    now = T0
    made = 0
    while made < n_readings:
        if rnd.random() < 0.15:
            now += rnd.choice([5_000, 60_000, 200_000, 700_000])
            steps.append(("tick", now))
            continue
        batch = []
        for _ in range(rnd.randint(1, 60)):
            sid = rnd.choice(sids)
            if rnd.random() < 0.3 and sid in (sids[0], sids[1]):
                continue  # these two go silent now and then
            kind = rnd.random()
            if kind < 0.05:  # out of order / redelivered
                ts = last[sid] - rnd.choice([0, 1_000, 60_000, 650_000])
            else:
                ts = last[sid] + rnd.choice([1, 5_000, 60_000, 61_000, 600_000, 1_300_000])
                last[sid] = ts
            value = rnd.choice(
                [rnd.uniform(0.0, 3.5), rnd.uniform(-1, 200), 2.6, 2.1, 0.4, 0.9, 16.0, 4.0, 1.0, 0.0, -0.0]
            )
            if rnd.random() < 0.05:
                value = int(value)
            batch.append(Reading(sid, ts, value, max(now, ts) + rnd.randint(0, 500)))
            made += 1
        if rnd.random() < 0.05:
            batch.append(Reading("no-such-sensor", now, 1.0, now))
        steps.append(("batch", batch))
        now = max(now, max((r.ts for r in batch), default=now))
    return steps


def _outcome(res):
    return (
        res.lines,
        res.derived,
        [c.model_dump() for c in res.candidates],
        (res.firings, res.duplicates, res.late, res.unknown),
    )


def test_fast_apply_batch_matches_the_reference_on_random_feeds():
    import random

    import orjson

    reg = _mixed_registry()
    totals = {"candidates": 0, "late": 0, "duplicates": 0, "unknown": 0, "windows": 0}
    for seed in range(4):
        rnd = random.Random(seed)
        fast, ref = PartitionState(reg, 600, 30), PartitionState(reg, 600, 30)
        fast.watch(list(reg), T0)
        ref.watch(list(reg), T0)
        for i, (kind, arg) in enumerate(_random_feed(reg, rnd)):
            if kind == "tick":
                a, b = fast.tick(arg), ref.tick(arg)
            else:
                a = fast.apply_batch(arg, raised_at=T0 + i)
                b = ref.apply_batch_reference(arg, raised_at=T0 + i)
            assert _outcome(a) == _outcome(b), (seed, i)
            fast.hold(i, a.derived)
            ref.hold(i, b.derived)
            if i % 3 == 0:
                fast.confirm(i - 3)
                ref.confirm(i - 3)
            assert fast.to_bytes() == ref.to_bytes(), (seed, i)
            if i % 100 == 0:  # to_bytes spells SensorState.to_list out inline: they agree
                saved = orjson.loads(fast.to_bytes())["sensors"]
                assert saved == {k: list(s.to_list()) for k, s in fast.sensors.items()}
            if i % 50 == 49:  # a restart: both continue from the restored state
                raw = fast.to_bytes()
                fast, ref = PartitionState(reg, 600, 30), PartitionState(reg, 600, 30)
                fast.load_bytes(raw)
                ref.load_bytes(raw)
                assert fast.take_restored() == ref.take_restored()
                assert fast.to_bytes() == raw
            totals["candidates"] += len(a.candidates)
            totals["late"] += a.late
            totals["duplicates"] += a.duplicates
            totals["unknown"] += a.unknown
            totals["windows"] += sum(ln.startswith("sensor_window") for ln in a.lines)
    # the feed exercised every branch worth comparing
    assert all(v > 10 for v in totals.values()), totals


def _reference_batch_from(readings):
    """codec._batch_from's checks before the fast path (the specification)."""
    from gridwatch.codec import DecodeError

    out = []
    for i, r in enumerate(readings):
        if not (
            isinstance(r, list)
            and len(r) == 4
            and isinstance(r[0], str)
            and isinstance(r[1], int)
            and isinstance(r[2], int | float)
            and isinstance(r[3], int)
        ):
            raise DecodeError(
                f"sensor_reading_batch: readings[{i}]: expected [sensor_id, ts, value, received]"
            )
        out.append(Reading(r[0], r[1], float(r[2]), r[3]))
    return out


def test_decode_fast_path_matches_the_checks():
    import json
    import math

    import orjson

    from gridwatch.codec import DecodeError, decode_readings_record, encode_reading_batch

    good = [
        ["s", 1, 2.5, 3],
        ["s", 1, 2, 3],
        ["s", True, 2.0, False],
        ["s", 1, False, 3],
        ["s", 10**30, -0.0, 1],
    ]
    bad = [
        ["s", 1, 2.5],
        ["s", 1.0, 2.5, 3],
        [1, 1, 2.5, 3],
        ["s", 1, "2", 3],
        ["s", 1, None, 3],
        {"a": 1},
        "x",
    ]
    for case in [[g] for g in good] + [good] + [good + [b] for b in bad] + [[b] for b in bad]:
        raw = json.dumps({"schema": "sensor_reading_batch", "v": 1, "readings": case}).encode()
        try:
            want = _reference_batch_from(orjson.loads(raw)["readings"])
        except DecodeError as e:
            try:
                decode_readings_record(raw)
            except DecodeError as got:
                assert str(got) == str(e)
            else:
                raise AssertionError(f"accepted {case!r}") from None
            continue
        got = decode_readings_record(raw)
        assert got == want and all(type(r) is Reading and type(r.value) is float for r in got)
        assert all(
            math.copysign(1, a.value) == math.copysign(1, b.value) for a, b in zip(got, want, strict=True)
        )
    # the wire format is unchanged: what the bridge encodes decodes to the same readings
    rs = [Reading("bench-00001", 1_764_000_000_000 + i, i * 0.125, 1_764_000_000_003 + i) for i in range(50)]
    assert decode_readings_record(encode_reading_batch(rs)) == rs
