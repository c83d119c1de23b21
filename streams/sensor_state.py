"""Per-sensor stream state: tumbling windows and rules. Pure and synchronous: no I/O, no clock.

The Faust agent (streams/app.py) owns one `PartitionState` per readings-topic partition,
feeds it a batch of readings with `apply_batch`, writes the returned lines to InfluxDB and
the returned candidates to Kafka, and stores the state's bytes in a Faust table once per
batch (one changelog record per batch, not per reading: Faust manages 1,000-2,600 table
writes/s, far below the reading rate).

Idempotency: a reading whose ts is not newer than the sensor's last one is a redelivery
(or out of order): it is still written raw to InfluxDB (idempotent: same series and time),
but does not touch windows or rules. So a replay after a crash changes nothing.

Episodes: each rule raises one candidate when an episode starts and none until it clears
(threshold hysteresis, a quiet period for the rate rule, a fresh reading for silence).
The candidate id derives from (sensor, rule, episode start), so even a candidate re-sent
after a crash carries the same id and is deduplicated downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gridwatch.codec import Reading
from gridwatch.influx import line, series_key
from gridwatch.registry import SensorInfo
from gridwatch.schemas import (
    Category,
    EvidenceRef,
    IncidentCandidate,
    Location,
    Severity,
    SourceKind,
)

STATE_VERSION = 2  # 2: win_closed_until


@dataclass(slots=True)
class SensorState:
    last_ts: int | None = None
    last_value: float | None = None
    last_seen: int | None = None  # wall-clock receive time (ms), for the silence rule
    # the open tumbling window
    win_start: int | None = None
    win_count: int = 0
    win_sum: float = 0.0
    win_min: float = 0.0
    win_max: float = 0.0
    win_last: float = 0.0
    # open episodes: their start time (ms) or None
    high_since: int | None = None
    low_since: int | None = None
    rate_since: int | None = None
    rate_last_fast: int | None = None
    silent_since: int | None = None
    # end of the last window already written: a reading before it is late, and must not
    # reopen that window (its point would overwrite the full aggregate with a partial one)
    win_closed_until: int | None = None

    def to_list(self) -> tuple[Any, ...]:
        # spelled out (in field order): a getattr loop over the slots was a fifth of the
        # worker's CPU. PartitionState.to_bytes spells it out once more, inline.
        return (
            self.last_ts, self.last_value, self.last_seen, self.win_start, self.win_count, self.win_sum,
            self.win_min, self.win_max, self.win_last, self.high_since, self.low_since, self.rate_since,
            self.rate_last_fast, self.silent_since, self.win_closed_until,
        )  # fmt: skip

    @classmethod
    def from_list(cls, values: list[Any]) -> SensorState:
        return cls(*values)


@dataclass
class StepResult:
    lines: list[str] = field(default_factory=list)
    derived: list[str] = field(default_factory=list)
    """The window aggregates and rule firings among `lines`: what a replay would not produce again."""
    candidates: list[IncidentCandidate] = field(default_factory=list)
    firings: int = 0
    duplicates: int = 0
    late: int = 0
    unknown: int = 0


def _tags(info: SensorInfo) -> dict[str, str]:
    return {
        "sensor_id": info.id,
        "type": info.type,
        "grid": info.grid_id or "",
        "community": info.community_id or "",
        "town": info.town_id or "",
    }


class PartitionState:
    """State of every sensor of one readings partition."""

    def __init__(self, registry: dict[str, SensorInfo], window_s: int, grace_s: int) -> None:
        self.registry = registry
        self.window_ms = window_s * 1000
        self.grace_ms = grace_s * 1000
        self.sensors: dict[str, SensorState] = {}
        self._tag_cache: dict[str, dict[str, str]] = {}
        # "sensor_reading,<tags>" per sensor: building line protocol for every reading from
        # scratch cost ~10 us; with the series key cached it is a format of value and time.
        self._reading_series: dict[str, str] = {}
        self._hot: dict[str, tuple[Any, ...]] = {}  # see _hot_for
        # Derived lines (windows, firings) of records whose InfluxDB write is not yet durable, by
        # record offset. They travel with the state in the changelog: after a crash the restored
        # state treats the replayed records as duplicates and would not produce them again, so
        # they are rewritten from here instead (InfluxDB overwrites an identical point).
        self.unconfirmed: dict[int, list[str]] = {}
        self._restored: list[int] = []

    # --- persistence (one Faust table value per partition) ----------------------------------
    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": STATE_VERSION,
                # SensorState.to_list inline (a third less CPU than a call per sensor: the whole
                # partition's state is serialised once per record); tests check they agree
                "sensors": {
                    k: (
                        s.last_ts,
                        s.last_value,
                        s.last_seen,
                        s.win_start,
                        s.win_count,
                        s.win_sum,
                        s.win_min,
                        s.win_max,
                        s.win_last,
                        s.high_since,
                        s.low_since,
                        s.rate_since,
                        s.rate_last_fast,
                        s.silent_since,
                        s.win_closed_until,
                    )  # fmt: skip
                    for k, s in self.sensors.items()
                },
                "unconfirmed": {str(k): v for k, v in self.unconfirmed.items()},
            }
        )

    def load_bytes(self, raw: bytes | None) -> None:
        self.sensors = {}
        if raw:
            data = orjson.loads(raw)
            if data.get("v") == STATE_VERSION:
                self.sensors = {k: SensorState.from_list(v) for k, v in data["sensors"].items()}
                self.unconfirmed = {int(k): v for k, v in (data.get("unconfirmed") or {}).items()}
                self._restored = sorted(self.unconfirmed)

    def hold(self, offset: int, derived: list[str]) -> None:
        """Keep a record's derived lines until `confirm(offset)`: they are written with the state."""
        if derived:
            self.unconfirmed[offset] = derived

    def confirm(self, offset: int) -> None:
        """The record's lines are durable in InfluxDB (or its spill)."""
        self.unconfirmed.pop(offset, None)

    def take_restored(self) -> tuple[list[int], list[str]]:
        """Once after a load: the offsets and derived lines the crashed worker may not have written."""
        offs, self._restored = self._restored, []
        return offs, [ln for o in offs for ln in self.unconfirmed.get(o, ())]

    def watch(self, sensor_ids: list[str], now_ms: int) -> None:
        """Start the silence clock for registered sensors never heard from on this partition."""
        for sid in sensor_ids:
            if sid not in self.sensors:
                self.sensors[sid] = SensorState(last_seen=now_ms)

    # --- the work ----------------------------------------------------------------------------
    def apply_batch(self, readings: list[Reading], raised_at: int) -> StepResult:
        """Apply a record's readings in order. The per-reading hot path of the stream worker.

        Written out for speed (locals instead of attribute chains, one cached lookup per sensor,
        no call per reading); `apply_batch_reference` is the same logic written plainly, and
        tests/test_sensor_state.py checks that both give identical lines, candidates and state.
        """
        out = StepResult()
        lines_append = out.lines.append
        hot = self._hot
        sensors = self.sensors
        window_ms = self.window_ms
        duplicates = late = unknown = 0
        for r in readings:
            sid, ts, value, received = r
            h = hot.get(sid)
            if h is None:
                h = self._hot_for(sid)
                if h is None:  # the bridge refuses unknown sensors; a config change can still race it
                    unknown += 1
                    continue
            series, info, tags, above, clear_below, below, clear_above, rate = h
            lines_append(f"{series} value={float(value)!r} {ts}")
            st = sensors.get(sid)
            if st is None:
                st = sensors[sid] = SensorState()
            prev_ts = st.last_ts
            if prev_ts is not None and ts <= prev_ts:
                duplicates += 1
                continue
            prev_value = st.last_value
            st.last_ts = ts
            st.last_value = value
            seen = st.last_seen or 0
            st.last_seen = received if received > seen else seen

            # silence ends with any fresh reading
            if st.silent_since is not None:
                self._firing(out, info, tags, "silence", "cleared", value, st.silent_since, ts)
                st.silent_since = None

            # window
            start = ts - ts % window_ms
            win_start = st.win_start
            closed_until = st.win_closed_until
            if closed_until is not None and start < closed_until:
                late += 1  # its window was already written (closed by a tick): leave it be
            elif win_start is not None and start != win_start:
                if start < win_start:
                    late += 1
                else:
                    self._close_window(out, info, tags, st)
                    win_start = st.win_start
                    closed_until = st.win_closed_until
            if win_start is None and not (closed_until is not None and start < closed_until):
                st.win_start = win_start = start
                st.win_count, st.win_sum = 0, 0.0
                st.win_min = st.win_max = value
            if start == win_start:
                st.win_count += 1
                st.win_sum += value
                if value < st.win_min:  # min() / max() keep the first of equals: so does this
                    st.win_min = value
                if value > st.win_max:
                    st.win_max = value
                st.win_last = value

            if above is not None:
                if st.high_since is None:
                    if value > above:
                        st.high_since = ts
                        self._raise_high(out, info, tags, r, raised_at)
                elif clear_below is not None and value < clear_below:
                    self._firing(out, info, tags, "threshold_high", "cleared", value, st.high_since, ts)
                    st.high_since = None
            if below is not None:
                if st.low_since is None:
                    if value < below:
                        st.low_since = ts
                        self._raise_low(out, info, tags, r, raised_at)
                elif clear_above is not None and value > clear_above:
                    self._firing(out, info, tags, "threshold_low", "cleared", value, st.low_since, ts)
                    st.low_since = None
            if rate is not None and prev_ts is not None and prev_value is not None:
                self._rate(out, info, tags, st, rate, r, raised_at, prev_ts, prev_value)
        out.duplicates, out.late, out.unknown = duplicates, late, unknown
        return out

    def _hot_for(self, sid: str) -> tuple[Any, ...] | None:
        """What `apply_batch` needs of a sensor, looked up once: series key, info, tags, rules."""
        info = self.registry.get(sid)
        if info is None:
            return None
        tags = self._tag_cache.get(sid) or self._tags_for(info)
        th = info.rules.threshold
        h = self._hot[sid] = (
            self._reading_series[sid],
            info,
            tags,
            th.above if th is not None else None,
            th.clear_below if th is not None else None,
            th.below if th is not None else None,
            th.clear_above if th is not None else None,
            info.rules.rate,
        )
        return h

    def _raise_high(
        self, out: StepResult, info: SensorInfo, tags: dict[str, str], r: Reading, raised_at: int
    ) -> None:
        th = info.rules.threshold
        assert th is not None and th.above is not None
        self._raise(
            out,
            info,
            tags,
            "threshold_high",
            th.severity,
            r,
            raised_at,
            f"{info.type} {r.value:g} {info.unit} above {th.above:g}",
            {"limit": th.above},
        )

    def _raise_low(
        self, out: StepResult, info: SensorInfo, tags: dict[str, str], r: Reading, raised_at: int
    ) -> None:
        th = info.rules.threshold
        assert th is not None and th.below is not None
        self._raise(
            out,
            info,
            tags,
            "threshold_low",
            th.severity,
            r,
            raised_at,
            f"{info.type} {r.value:g} {info.unit} below {th.below:g}",
            {"limit": th.below},
        )

    def _rate(
        self,
        out: StepResult,
        info: SensorInfo,
        tags: dict[str, str],
        st: SensorState,
        rate: Any,
        r: Reading,
        raised_at: int,
        prev_ts: int,
        prev_value: float,
    ) -> None:
        dt = (r.ts - prev_ts) / 1000
        speed = abs(r.value - prev_value) / dt
        if speed > rate.max_per_s:
            st.rate_last_fast = r.ts
            if st.rate_since is None:
                st.rate_since = r.ts
                self._raise(
                    out,
                    info,
                    tags,
                    "rate",
                    rate.severity,
                    r,
                    raised_at,
                    f"{info.type} changed {r.value - prev_value:+g} {info.unit} in {dt:g} s",
                    {"per_s": speed, "limit_per_s": rate.max_per_s, "previous": prev_value},
                )
        elif (
            st.rate_since is not None
            and st.rate_last_fast is not None
            and r.ts - st.rate_last_fast > rate.quiet_s * 1000
        ):
            self._firing(out, info, tags, "rate", "cleared", r.value, st.rate_since, r.ts)
            st.rate_since = st.rate_last_fast = None

    def apply_batch_reference(self, readings: list[Reading], raised_at: int) -> StepResult:
        """`apply_batch` written plainly, one reading at a time: the specification the fast path
        is tested against (tests/test_sensor_state.py). Not used by the worker."""
        out = StepResult()
        for r in readings:
            self._apply_reference(r, raised_at, out)
        return out

    def _apply_reference(self, r: Reading, raised_at: int, out: StepResult) -> None:
        info = self.registry.get(r.sensor_id)
        if info is None:  # the bridge refuses unknown sensors; a config change can still race it
            out.unknown += 1
            return
        tags = self._tag_cache.get(r.sensor_id) or self._tags_for(info)
        out.lines.append(f"{self._reading_series[r.sensor_id]} value={float(r.value)!r} {r.ts}")
        st = self.sensors.get(r.sensor_id)
        if st is None:
            st = self.sensors[r.sensor_id] = SensorState()
        if st.last_ts is not None and r.ts <= st.last_ts:
            out.duplicates += 1
            return
        prev_ts, prev_value = st.last_ts, st.last_value
        st.last_ts, st.last_value = r.ts, r.value
        st.last_seen = max(st.last_seen or 0, r.received)

        # silence ends with any fresh reading
        if st.silent_since is not None:
            self._firing(out, info, tags, "silence", "cleared", r.value, st.silent_since, r.ts)
            st.silent_since = None

        # window
        start = r.ts - r.ts % self.window_ms
        if st.win_closed_until is not None and start < st.win_closed_until:
            out.late += 1  # its window was already written (closed by a tick): leave it be
        elif st.win_start is not None and start != st.win_start:
            if start < st.win_start:
                out.late += 1
            else:
                self._close_window(out, info, tags, st)
        if st.win_start is None and not (st.win_closed_until is not None and start < st.win_closed_until):
            st.win_start, st.win_count, st.win_sum = start, 0, 0.0
            st.win_min = st.win_max = r.value
        if start == st.win_start:
            st.win_count += 1
            st.win_sum += r.value
            st.win_min = min(st.win_min, r.value)
            st.win_max = max(st.win_max, r.value)
            st.win_last = r.value

        rules = info.rules
        th = rules.threshold
        if th is not None:
            if th.above is not None:
                if st.high_since is None and r.value > th.above:
                    st.high_since = r.ts
                    self._raise(
                        out,
                        info,
                        tags,
                        "threshold_high",
                        th.severity,
                        r,
                        raised_at,
                        f"{info.type} {r.value:g} {info.unit} above {th.above:g}",
                        {"limit": th.above},
                    )
                elif st.high_since is not None and th.clear_below is not None and r.value < th.clear_below:
                    self._firing(out, info, tags, "threshold_high", "cleared", r.value, st.high_since, r.ts)
                    st.high_since = None
            if th.below is not None:
                if st.low_since is None and r.value < th.below:
                    st.low_since = r.ts
                    self._raise(
                        out,
                        info,
                        tags,
                        "threshold_low",
                        th.severity,
                        r,
                        raised_at,
                        f"{info.type} {r.value:g} {info.unit} below {th.below:g}",
                        {"limit": th.below},
                    )
                elif st.low_since is not None and th.clear_above is not None and r.value > th.clear_above:
                    self._firing(out, info, tags, "threshold_low", "cleared", r.value, st.low_since, r.ts)
                    st.low_since = None
        rate = rules.rate
        if rate is not None and prev_ts is not None and prev_value is not None:
            dt = (r.ts - prev_ts) / 1000
            speed = abs(r.value - prev_value) / dt
            if speed > rate.max_per_s:
                st.rate_last_fast = r.ts
                if st.rate_since is None:
                    st.rate_since = r.ts
                    self._raise(
                        out,
                        info,
                        tags,
                        "rate",
                        rate.severity,
                        r,
                        raised_at,
                        f"{info.type} changed {r.value - prev_value:+g} {info.unit} in {dt:g} s",
                        {"per_s": speed, "limit_per_s": rate.max_per_s, "previous": prev_value},
                    )
            elif (
                st.rate_since is not None
                and st.rate_last_fast is not None
                and r.ts - st.rate_last_fast > rate.quiet_s * 1000
            ):
                self._firing(out, info, tags, "rate", "cleared", r.value, st.rate_since, r.ts)
                st.rate_since = st.rate_last_fast = None

    def tick(self, now_ms: int, raised_at: int | None = None) -> StepResult:
        """Time-driven work: close windows past their grace, raise silent sensors."""
        out = StepResult()
        raised_at = now_ms if raised_at is None else raised_at
        for sid, st in self.sensors.items():
            info = self.registry.get(sid)
            if info is None:
                continue
            tags = self._tag_cache.get(sid) or self._tags_for(info)
            if st.win_start is not None and now_ms > st.win_start + self.window_ms + self.grace_ms:
                self._close_window(out, info, tags, st)
            sil = info.rules.silence
            if sil is not None and st.silent_since is None and st.last_seen is not None:
                due = st.last_seen + int(sil.periods * info.period_s * 1000)
                if now_ms > due:
                    st.silent_since = due
                    quiet_s = (now_ms - st.last_seen) / 1000
                    cand = self._candidate(
                        info,
                        "silence",
                        sil.severity,
                        due,
                        raised_at,
                        f"{info.type} sensor silent for {quiet_s:.0f} s (period {info.period_s:g} s)",
                        {"last_seen": st.last_seen, "periods": sil.periods},
                        category=Category.SENSOR_OFFLINE,
                    )
                    out.candidates.append(cand)
                    self._firing(out, info, tags, "silence", "raised", None, due, due, cand.candidate_id)
        return out

    # --- helpers -----------------------------------------------------------------------------
    def _tags_for(self, info: SensorInfo) -> dict[str, str]:
        tags = self._tag_cache[info.id] = _tags(info)
        self._reading_series[info.id] = series_key("sensor_reading", tags)
        return tags

    def _close_window(self, out: StepResult, info: SensorInfo, tags: dict[str, str], st: SensorState) -> None:
        if st.win_start is None or st.win_count == 0:
            st.win_start = None
            return
        st.win_closed_until = st.win_start + self.window_ms
        derived = line(
            "sensor_window",
            {**tags, "window_s": str(self.window_ms // 1000)},
            {
                "count": st.win_count,
                "mean": st.win_sum / st.win_count,
                "min": st.win_min,
                "max": st.win_max,
                "last": st.win_last,
            },
            st.win_start,
        )
        out.lines.append(derived)
        out.derived.append(derived)
        st.win_start = None
        st.win_count = 0

    def _candidate(
        self,
        info: SensorInfo,
        rule: str,
        severity: Severity,
        observed_at: int,
        raised_at: int,
        summary: str,
        details: dict[str, Any],
        category: Category | None = None,
    ) -> IncidentCandidate:
        window_start = observed_at - 10 * int(info.period_s * 1000)
        return IncidentCandidate(
            candidate_id=IncidentCandidate.make_id("sensor", info.id, rule, observed_at),
            category=category or info.category,
            severity=severity,
            source_kind=SourceKind.SENSOR,
            source_id=info.id,
            grid_id=info.grid_id,
            location=Location(lon=info.lon, lat=info.lat),
            observed_at=observed_at,
            raised_at=raised_at,
            rule=rule,
            summary=summary,
            evidence=[
                EvidenceRef(
                    kind="reading_window",
                    ref=f"influxql:SELECT value FROM sensor_reading WHERE sensor_id='{info.id}' "
                    f"AND time >= {window_start}ms AND time <= {observed_at + 60_000}ms",
                    note="readings around the episode start",
                )
            ],
            details={"sensor_type": info.type, "unit": info.unit, **details},
        )

    def _raise(
        self,
        out: StepResult,
        info: SensorInfo,
        tags: dict[str, str],
        rule: str,
        severity: Severity,
        r: Reading,
        raised_at: int,
        summary: str,
        details: dict[str, Any],
    ) -> None:
        cand = self._candidate(info, rule, severity, r.ts, raised_at, summary, {"value": r.value, **details})
        out.candidates.append(cand)
        self._firing(out, info, tags, rule, "raised", r.value, r.ts, r.ts, cand.candidate_id)

    def _firing(
        self,
        out: StepResult,
        info: SensorInfo,
        tags: dict[str, str],
        rule: str,
        state: str,
        value: float | None,
        episode_start: int,
        ts: int,
        candidate_id: str | None = None,
    ) -> None:
        out.firings += 1
        # a silent sensor is a maintenance matter, whatever the sensor measures
        category = Category.SENSOR_OFFLINE if rule == "silence" else info.category
        derived = line(
            "rule_firing",
            {**tags, "rule": rule, "state": state, "category": str(category)},
            {"value": value, "episode_start": episode_start, "candidate_id": candidate_id},
            ts,
        )
        out.lines.append(derived)
        out.derived.append(derived)
