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
