"""The KPIs the reforms are judged by, computed from the ledger (docs/DOMAIN.md "How they are judged").

For each period (today and this month, in the centre's time zone) and each scope (district, every
town, community and grid, by where the incident lies), over incidents received in the period:

received, closed (closed + false alarms), closure_rate = closed / received,
self_disposed (closed without escalation), self_disposal_rate = self_disposed / closed,
escalated, escalation_rate, false_alarms, false_alarm_rate, mean_response_s (dispatch ->
acknowledgement), on-time rate per step (ack, arrive, resolve: a step is late when its deadline
escalated the incident), resolved_at_{grid,community,town,district} (the level that closed it);
and, at the moment: backlog (open incidents) and the age of the oldest, workload per team node.

Written to InfluxDB as `dispatch_kpi` (tags period, scope, node, category) and `team_workload`;
see docs/INFLUX_SCHEMA.md. Pure: `compute_kpis` takes rows and returns line protocol.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from gridwatch.influx import line

__all__ = ["KpiAcc", "KpiRow", "aggregate", "compute_kpis", "period_starts"]

_CLOSED = {"closed", "false_alarm"}


@dataclass(frozen=True)
class KpiRow:
    incident_id: str
    category: str
    state: str
    level: str
    node_id: str
    grid_id: str | None
    community_id: str | None
    town_id: str | None
    created_at: int
    acknowledged_at: int | None
    closed_at: int | None
    escalations: int
    late_steps: frozenset[str] = frozenset()


@dataclass
class KpiAcc:
    received: int = 0
    closed: int = 0
    self_disposed: int = 0
    escalated: int = 0
    false_alarms: int = 0
    acked: int = 0
    response_ms: int = 0
    late: Counter[str] = field(default_factory=Counter)
    resolved_at: Counter[str] = field(default_factory=Counter)

    def add(self, r: KpiRow) -> None:
        self.received += 1
        if r.state in _CLOSED:
            self.closed += 1
            if r.escalations == 0:
                self.self_disposed += 1
            if r.state == "closed":
                self.resolved_at[r.level] += 1
        if r.state == "false_alarm":
            self.false_alarms += 1
        if r.escalations:
            self.escalated += 1
        if r.acknowledged_at is not None:
            self.acked += 1
            self.response_ms += r.acknowledged_at - r.created_at
        for s in r.late_steps:
            self.late[s] += 1

    def fields(self) -> dict[str, Any]:
        n = self.received
        f: dict[str, Any] = {
            "received": self.received,
            "closed": self.closed,
            "self_disposed": self.self_disposed,
            "escalated": self.escalated,
            "false_alarms": self.false_alarms,
            "closure_rate": self.closed / n if n else 0.0,
            "self_disposal_rate": self.self_disposed / self.closed if self.closed else 0.0,
            "escalation_rate": self.escalated / n if n else 0.0,
            "false_alarm_rate": self.false_alarms / n if n else 0.0,
            "mean_response_s": self.response_ms / self.acked / 1000 if self.acked else 0.0,
        }
        for step in ("ack", "arrive", "resolve"):
            f[f"on_time_{step}_rate"] = 1 - self.late[step] / n if n else 1.0
        for level in ("grid", "community", "town", "district"):
            f[f"resolved_at_{level}"] = self.resolved_at[level]
        return f


def period_starts(now_ms: int, timezone: str) -> dict[str, int]:
    """Start (epoch ms) of today and of this month in the centre's time zone."""
    tz = ZoneInfo(timezone)
    now = dt.datetime.fromtimestamp(now_ms / 1000, tz)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return {"today": int(day.timestamp() * 1000), "month": int(day.replace(day=1).timestamp() * 1000)}


def aggregate(
    rows: list[KpiRow], start_ms: int, end_ms: int | None, district_id: str
) -> dict[tuple[str, str, str], KpiAcc]:
    """KPIs of incidents received in [start, end), per (scope, node, category)."""
    acc: dict[tuple[str, str, str], KpiAcc] = defaultdict(KpiAcc)
    for r in rows:
        if r.created_at < start_ms or (end_ms is not None and r.created_at >= end_ms):
            continue
        scopes = [
            ("district", district_id),
            ("town", r.town_id),
            ("community", r.community_id),
            ("grid", r.grid_id),
        ]
        for scope, node in scopes:
            if node is not None:
                acc[(scope, node, "all")].add(r)
        acc[("district", district_id, r.category)].add(r)
    return acc


def compute_kpis(rows: list[KpiRow], now_ms: int, starts: dict[str, int], district_id: str) -> list[str]:
    lines: list[str] = []
    for period, start in starts.items():
        for (scope, node, category), a in sorted(aggregate(rows, start, None, district_id).items()):
            lines.append(
                line(
                    "dispatch_kpi",
                    {"period": period, "scope": scope, "node": node, "category": category},
                    a.fields(),
                    now_ms,
                )
            )
    # the moment: backlog and workload
    open_rows = [r for r in rows if r.state not in _CLOSED]
    oldest = min((r.created_at for r in open_rows), default=now_ms)
    lines.append(
        line(
            "dispatch_backlog",
            {"scope": "district", "node": district_id},
            {
                "open": len(open_rows),
                "oldest_age_s": (now_ms - oldest) / 1000,
                "pending_review": sum(1 for r in open_rows if r.state == "pending_review"),
            },
            now_ms,
        )
    )
    # a team's workload is what it has been given: incidents waiting for review are the centre's
    workload: Counter[tuple[str, str]] = Counter(
        (r.node_id, r.level) for r in open_rows if r.state != "pending_review"
    )
    for (node, level), n in sorted(workload.items()):
        lines.append(line("team_workload", {"node": node, "level": level}, {"open": n}, now_ms))
    return lines
