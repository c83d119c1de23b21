"""Read-side queries of the console over the ledger's tables.

The Ledger has per-incident readers (`transitions`, `sources`, `deliveries`, `attempts`) but no
paged, filtered list and no "changes since seq": these live here for now, read-only, through
`ledger.read()` (a snapshot that never blocks the writers). They belong in `gridwatch/dispatch/ledger.py` (see docs/CONSOLE.md).

A team user sees only incidents whose `chain` contains its node. `chain` is a JSON list, and JSON
containment is spelled differently on SQLite and PostgreSQL, so the filter is a LIKE on the JSON
text (node ids cannot contain quotes, so `"id"` matches exactly one element), checked again in
Python on every row returned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, Text, cast, func, or_, select

from gridwatch.dispatch.ledger import Ledger
from gridwatch.dispatch.models import IncidentRow, IncidentSourceRow, TransitionRow

TERMINAL = ("closed", "false_alarm", "merged")


@dataclass(frozen=True)
class BoardFilter:
    town: str | None = None
    community: str | None = None
    grid: str | None = None
    category: str | None = None
    source: str | None = None
    state: str = "open"
    """`open` (not closed / false alarm), `all`, or one state."""
    level: str | None = None
    team_node: str | None = None
    """Set for team users: only incidents this node is or was assigned."""

    def apply(self, q: Select[Any]) -> Select[Any]:
        if self.state == "open":
            q = q.where(IncidentRow.state.not_in(TERMINAL))
        elif self.state != "all":
            q = q.where(IncidentRow.state == self.state)
        for col, val in (
            (IncidentRow.town_id, self.town),
            (IncidentRow.community_id, self.community),
            (IncidentRow.grid_id, self.grid),
            (IncidentRow.category, self.category),
            (IncidentRow.source_kind, self.source),
            (IncidentRow.level, self.level),
        ):
            if val:
                q = q.where(col == val)
        if self.team_node is not None:
            q = q.where(chain_contains(self.team_node))
        return q

    def admits(self, chain: Sequence[str]) -> bool:
        return self.team_node is None or self.team_node in chain


def chain_contains(node: str) -> Any:
    pat = '%"' + node.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + '"%'
    return cast(IncidentRow.chain, Text).like(pat, escape="\\")


def board_row(r: IncidentRow) -> dict[str, Any]:
    """What the board, the map and the live feed know of an incident."""
    return {
        "id": r.incident_id,
        "category": r.category,
        "severity": r.severity,
        "state": r.state,
        "level": r.level,
        "node": r.node_id,
        "grid": r.grid_id,
        "community": r.community_id,
        "town": r.town_id,
        "lon": r.lon,
        "lat": r.lat,
        "summary": r.summary,
        "source": r.source_kind,
        "sources": r.source_count,
        "created_at": r.created_at,
        "assigned_at": r.assigned_at,
        "due_at": r.next_due_at,
        "due_step": r.next_due_step,
        "escalations": r.escalations,
        "chain": list(r.chain),
    }


def board_page(
    ledger: Ledger, f: BoardFilter, *, offset: int = 0, limit: int = 100, order: str = "due"
) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, one page of rows). `order`: due (most urgent first) or new."""
    with ledger.read() as s:
        total = int(s.execute(f.apply(select(func.count()).select_from(IncidentRow))).scalar() or 0)
        q = f.apply(select(IncidentRow))
        if order == "new":
            q = q.order_by(IncidentRow.created_at.desc(), IncidentRow.incident_id)
        else:
            # NULL deadlines (resolved, returned, closed) after every running clock.
            q = q.order_by(
                IncidentRow.next_due_at.is_(None),
                IncidentRow.next_due_at,
                IncidentRow.created_at.desc(),
                IncidentRow.incident_id,
            )
        rows = s.execute(q.offset(max(0, offset)).limit(max(1, min(limit, 500)))).scalars().all()
        return total, [board_row(r) for r in rows if f.admits(r.chain)]


def summary(ledger: Ledger, f: BoardFilter, now_ms: int) -> dict[str, Any]:
    """Open incidents by level and state, and how many are overdue now (for the board's header)."""
    with ledger.read() as s:
        q = f.apply(
            select(IncidentRow.level, IncidentRow.state, func.count()).group_by(
                IncidentRow.level, IncidentRow.state
            )
        )
        cells = [{"level": lv, "state": st, "n": int(n)} for lv, st, n in s.execute(q).all()]
        overdue = int(
            s.execute(
                f.apply(
                    select(func.count())
                    .select_from(IncidentRow)
                    .where(IncidentRow.next_due_at.is_not(None), IncidentRow.next_due_at < now_ms)
                )
            ).scalar()
            or 0
        )
    return {"cells": cells, "overdue": overdue}


def markers(ledger: Ledger, f: BoardFilter, limit: int = 50_000) -> list[list[Any]]:
    """Compact map markers: [id, lon, lat, level, state, due_at, assigned_at, category]."""
    cols = (
        IncidentRow.incident_id,
        IncidentRow.lon,
        IncidentRow.lat,
        IncidentRow.level,
        IncidentRow.state,
        IncidentRow.next_due_at,
        IncidentRow.assigned_at,
        IncidentRow.category,
        IncidentRow.chain,
    )
    with ledger.read() as s:
        q = f.apply(select(*cols).where(IncidentRow.lon.is_not(None))).limit(limit)
        return [list(r[:8]) for r in s.execute(q).all() if f.admits(r[8])]


def rows_by_id(ledger: Ledger, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    ids = list(set(ids))
    out: dict[str, dict[str, Any]] = {}
    with ledger.read() as s:
        for i in range(0, len(ids), 500):
            for r in s.execute(
                select(IncidentRow).where(IncidentRow.incident_id.in_(ids[i : i + 500]))
            ).scalars():
                out[r.incident_id] = board_row(r)
    return out


def max_seq(ledger: Ledger) -> int:
    with ledger.read() as s:
        return int(s.execute(select(func.max(TransitionRow.seq))).scalar() or 0)


def transitions_since(
    ledger: Ledger, last: int, gaps: Iterable[int] = (), limit: int = 1000
) -> list[TransitionRow]:
    """Audit rows with seq > `last`, plus any of the `gaps` (seqs skipped earlier) that appeared since."""
    gaps = list(gaps)
    with ledger.read() as s:
        cond = TransitionRow.seq > last
        if gaps:
            cond = or_(cond, TransitionRow.seq.in_(gaps))
        rows = list(
            s.execute(select(TransitionRow).where(cond).order_by(TransitionRow.seq).limit(limit)).scalars()
        )
        for r in rows:
            s.expunge(r)
        return rows


def review_queue(ledger: Ledger, f: BoardFilter, *, limit: int = 200) -> tuple[int, list[dict[str, Any]]]:
    """(how many wait, the oldest `limit` of them): incidents in `pending_review`, first come first
    served, each with its sources (evidence, confidence) and what was merged into it."""
    with ledger.read() as s:
        base = f.apply(select(IncidentRow).where(IncidentRow.state == "pending_review"))
        total = int(
            s.execute(
                f.apply(
                    select(func.count()).select_from(IncidentRow).where(IncidentRow.state == "pending_review")
                )
            ).scalar()
            or 0
        )
        q = base.order_by(IncidentRow.created_at, IncidentRow.incident_id).limit(max(1, min(limit, 500)))
        rows = [board_row(r) for r in s.execute(q).scalars() if f.admits(r.chain)]
        by_id = {r["id"]: r for r in rows}
        for r in rows:
            r["source_list"] = []
            r["merged_in"] = []
        if by_id:
            srcs = s.execute(
                select(IncidentSourceRow)
                .where(IncidentSourceRow.incident_id.in_(list(by_id)))
                .order_by(IncidentSourceRow.observed_at, IncidentSourceRow.candidate_id)
            ).scalars()
            for src in srcs:
                by_id[src.incident_id]["source_list"].append(source_dict(src))
            merged = s.execute(
                select(TransitionRow)
                .where(TransitionRow.incident_id.in_(list(by_id)), TransitionRow.kind == "merged_in")
                .order_by(TransitionRow.seq)
            ).scalars()
            for tr in merged:
                by_id[tr.incident_id]["merged_in"].append(
                    {"from": (tr.params or {}).get("from"), "by": tr.by, "at_ms": tr.at_ms}
                )
        return total, rows


def source_dict(src: IncidentSourceRow) -> dict[str, Any]:
    return {
        "candidate_id": src.candidate_id,
        "kind": src.source_kind,
        "source_id": src.source_id,
        "category": src.category,
        "confidence": src.confidence,
        "severity": src.severity,
        "rule": src.rule,
        "summary": src.summary,
        "observed_at": src.observed_at,
        "model_version": src.model_version,
        "evidence": [
            {"kind": e.get("kind"), "ref": e.get("ref"), "note": e.get("note"), "n": i}
            for i, e in enumerate(src.evidence or [])
        ],
    }


def nearby(ledger: Ledger, row: IncidentRow, f: BoardFilter, *, limit: int = 6) -> list[dict[str, Any]]:
    """Open incidents of `row`'s category nearest to it (within ~2 km), nearest first."""
    if row.lon is None or row.lat is None:
        return []
    d = 0.02  # degrees: a box of about 2 km around it, then exact distances in Python
    with ledger.read() as s:
        q = f.apply(
            select(IncidentRow).where(
                IncidentRow.category == row.category,
                IncidentRow.incident_id != row.incident_id,
                IncidentRow.lon.between(row.lon - d, row.lon + d),
                IncidentRow.lat.between(row.lat - d, row.lat + d),
            )
        ).limit(2000)
        out = []
        kx = math.cos(math.radians(row.lat))
        for r in s.execute(q).scalars():
            if not f.admits(r.chain):
                continue
            dist = math.hypot((r.lon - row.lon) * kx * 111_320, (r.lat - row.lat) * 110_540)
            out.append({**board_row(r), "dist_m": round(dist)})
    out.sort(key=lambda r: (r["dist_m"], r["created_at"]))
    return out[:limit]


def cameras_near(feeds: Sequence[Any], lon: float | None, lat: float | None) -> list[dict[str, Any]]:
    """The configured cameras (`cameras.feeds`) for a miss report: id, zone labels, grids and the
    distance to (lon, lat), nearest first where both places are known, then the rest in config
    order. A camera's place is its `location`, else the mean of its zones' surveyed locations."""
    out = []
    for i, f in enumerate(feeds):
        zones = list(f.rules.camera.zones)
        place: tuple[float, float] | None = None
        if f.location is not None:
            place = (f.location.lon, f.location.lat)
        else:
            pts = [z.location for z in zones if getattr(z, "location", None) is not None]
            if pts:
                place = (sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts))
        dist = None
        if place is not None and lon is not None and lat is not None:
            kx = math.cos(math.radians(lat))
            dist = round(math.hypot((place[0] - lon) * kx * 111_320, (place[1] - lat) * 110_540))
        labels = [str(z.label) for z in zones if getattr(z, "label", None)]
        out.append(
            {
                "id": f.source.id,
                "zones": list(dict.fromkeys(labels)),
                "grids": sorted({z.grid_id for z in zones if getattr(z, "grid_id", None)}),
                "dist_m": dist,
                "_order": i,
            }
        )
    out.sort(key=lambda c: (c["dist_m"] is None, c["dist_m"] or 0, c["_order"]))
    for c in out:
        del c["_order"]
    return out
