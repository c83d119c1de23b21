"""The ledger: incidents, their sources, the audit trail and the push outbox, in one SQL database.

PostgreSQL in production, SQLite embedded (demo). Every change is one transaction that locks the
incident's row (`SELECT ... FOR UPDATE` on PostgreSQL; `BEGIN IMMEDIATE` serialises writers on
SQLite), so a team's acknowledgement and a deadline's escalation arriving together are applied
one after the other, each to the state the other left (see gridwatch/dispatch/machine.py).

Replays change nothing: a candidate already attached (primary key `candidate_id`) and a command
already applied (unique `command_id`) are recognised and answered with what is stored. Pushes
are written to the `deliveries` outbox in the same transaction as the change that causes them,
so a worker that dies between the two loses no push; the delivery loop sends them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from gridwatch.city import CityModel, Level
from gridwatch.dispatch.kpi import KpiRow
from gridwatch.dispatch.machine import (
    TERMINAL_STATES,
    Command,
    CommandKind,
    IllegalTransition,
    Incident,
    Plan,
    State,
    Transition,
    apply,
    new_incident,
    pending_deadline,
)
from gridwatch.dispatch.models import (
    DeliveryAttemptRow,
    DeliveryRow,
    IncidentRow,
    IncidentSourceRow,
    TransitionRow,
)
from gridwatch.schemas import Category, IncidentCandidate, Severity
from gridwatch.streams.fusion import FusedIncident, FusionDecision

log = logging.getLogger(__name__)

__all__ = ["ApplyResult", "Ledger", "OutboxItem", "StoredCandidate", "UnknownIncident"]

MIGRATIONS = Path(__file__).parent / "migrations"


class UnknownIncident(KeyError):
    def __str__(self) -> str:
        return f"no incident {self.args[0]!r} in the ledger"


@dataclass(frozen=True)
class OutboxItem:
    delivery_id: str
    node_id: str
    channel: str
    event: str
    payload: dict[str, Any]


Outbox = Callable[
    [IncidentRow, TransitionRow, tuple[str, ...], list[dict[str, Any]], list[dict[str, Any]]],
    list[OutboxItem],
]
"""Builds the pushes a transition causes (gridwatch/dispatch/push.py): (incident, transition, nodes
to tell, the incident's evidence references, its sources (kind, id, zone))."""


@dataclass(frozen=True)
class StoredCandidate:
    incident_id: str
    action: str
    """new, attach, attach_closed or duplicate."""
    severity: str
    transition_seq: int | None


@dataclass(frozen=True)
class ApplyResult:
    incident: Incident
    transition: Transition | None
    duplicate: bool
    """True when this command id had been applied before: nothing changed now."""


def _sqlite_setup(engine: Engine, *, immediate: bool = True) -> None:
    # pysqlite's own transaction handling defers BEGIN; take the write lock at BEGIN instead
    # (BEGIN IMMEDIATE) so two writers never both read a row and then both update it.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, password: str | None = None, *, writer: bool = True) -> Engine:
    """An engine on the ledger. On SQLite a `writer` engine takes the write lock at BEGIN
    (`BEGIN IMMEDIATE`); a reader's transactions are deferred and, in WAL mode, never wait for a
    writer nor hold one up."""
    u: URL = make_url(url)
    if password is not None:
        u = u.set(password=password)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": 30})
        _sqlite_setup(engine, immediate=writer)
        return engine
    return create_engine(u, pool_pre_ping=True, pool_size=8, max_overflow=8)


def _to_incident(row: IncidentRow) -> Incident:
    return Incident(
        incident_id=row.incident_id,
        state=State(row.state),
        level=Level(row.level),
        node_id=row.node_id,
        assigned_at=row.assigned_at,
        deadlines=dict(row.deadlines),
        chain=tuple(row.chain),
        escalations=row.escalations,
        reopened=row.reopened,
        first_level=Level(row.first_level),
        acknowledged_at=row.acknowledged_at,
        arrived_at=row.arrived_at,
        resolved_at=row.resolved_at,
        closed_at=row.closed_at,
        top_level_overdue=tuple(row.top_level_overdue),
        version=row.version,
    )


def _write_incident(row: IncidentRow, inc: Incident) -> None:
    row.state = inc.state.value
    row.level = inc.level.value
    row.node_id = inc.node_id
    row.assigned_at = inc.assigned_at
    row.deadlines = dict(inc.deadlines)
    row.chain = list(inc.chain)
    row.escalations = inc.escalations
    row.reopened = inc.reopened
    row.acknowledged_at = inc.acknowledged_at
    row.arrived_at = inc.arrived_at
    row.resolved_at = inc.resolved_at
    row.closed_at = inc.closed_at
    row.top_level_overdue = list(inc.top_level_overdue)
    row.version = inc.version
    pending = pending_deadline(inc)
    row.next_due_at = pending[1] if pending else None
    row.next_due_step = pending[0].value if pending else None


def incident_id_for(candidate_id: str) -> str:
    """An incident's id derives from its first candidate's, so a replay recreates the same id."""
    return "inc-" + candidate_id.removeprefix("cand-")


class Ledger:
    def __init__(self, url: str, *, password: str | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, password)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        # Reads (console, API lists, KPIs, the scheduler's queries) must not queue behind, or hold
        # up, the writers: on SQLite they get their own engine with deferred transactions. Measured
        # with the console at 10,000 open incidents: every read took SQLite's write lock and a
        # candidate waited behind the board's queries (p99 candidate -> browser 3-4 s).
        # (An in-memory SQLite database exists once per connection pool: it keeps one engine.)
        in_memory = self.engine.url.database in (None, "", ":memory:")
        self.read_engine = (
            self.engine if self.is_postgres or in_memory else make_engine(url, password, writer=False)
        )
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    # --- schema ---------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic `upgrade head`)."""
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            alembic_command.upgrade(cfg, "head")

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read-write transaction (SQLite: holds the write lock from its start)."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction: a consistent snapshot that never blocks a writer."""
        with self._read_sessions() as s, s.begin():
            yield s

    def _detached(self, query: Any) -> list[Any]:
        """Rows of a query, detached from their session (safe to read after it closes)."""
        with self.read() as s:
            rows = list(s.execute(query).scalars())
            for r in rows:
                s.expunge(r)
            return rows

    def _lock(self, s: Session, incident_id: str) -> IncidentRow:
        q = select(IncidentRow).where(IncidentRow.incident_id == incident_id)
        if self.is_postgres:
            q = q.with_for_update()
        row = s.execute(q).scalar_one_or_none()
        if row is None:
            raise UnknownIncident(incident_id)
        return row

    # --- candidates -----------------------------------------------------------------------
    def store_candidate(
        self,
        cand: IncidentCandidate,
        decision: FusionDecision,
        now_ms: int,
        *,
        node_id: str | None,
        level: Level | None,
        rule_index: int | None,
        platform: str | None,
        plan: Plan | None,
        city: CityModel,
        outbox: Outbox,
        review: bool = False,
    ) -> StoredCandidate:
        """Create an incident for a new candidate, or attach it to the incident fusion chose.
        With `review`, a new incident waits in `pending_review` and nobody is told yet."""
        with self.session() as s:
            seen = s.get(IncidentSourceRow, cand.candidate_id)
            if seen is not None:
                row = s.get(IncidentRow, seen.incident_id)
                return StoredCandidate(seen.incident_id, "duplicate", row.severity if row else "", None)
            if decision.action == "new":
                assert node_id is not None and level is not None and plan is not None
                assert rule_index is not None and platform is not None
                iid = incident_id_for(cand.candidate_id)
                inc = new_incident(iid, node_id, level, now_ms, plan, review=review)
                ladder = {n.level: n.id for n in city.ancestors(cand.grid_id)} if cand.grid_id else {}
                row = IncidentRow(
                    incident_id=iid,
                    category=cand.category.value,
                    severity=cand.severity.value,
                    base_severity=cand.severity.value,
                    first_level=level.value,
                    first_node_id=node_id,
                    grid_id=cand.grid_id,
                    community_id=ladder.get(Level.COMMUNITY),
                    town_id=ladder.get(Level.TOWN),
                    lon=cand.location.lon if cand.location else None,
                    lat=cand.location.lat if cand.location else None,
                    rule_index=rule_index,
                    platform=platform,
                    summary=cand.summary,
                    source_kind=cand.source_kind.value,
                    created_at=now_ms,
                    last_evidence_at=cand.observed_at,
                    source_count=1,
                )
                _write_incident(row, inc)
                s.add(row)
                s.flush()
                tr = self._add_transition(
                    s, row, f"create:{cand.candidate_id}", "review" if review else "dispatch", "system",
                    "fusion", None, inc.state.value, None, node_id, now_ms, cand.summary, True, {},
                )  # fmt: skip
                self._add_source(s, cand, iid, "new", now_ms)
                if not review:
                    self._add_outbox(s, row, tr, (node_id,), outbox, now_ms)
                return StoredCandidate(iid, "new", row.severity, tr.seq)

            assert decision.incident_id is not None
            row = self._lock(s, decision.incident_id)
            self._add_source(s, cand, row.incident_id, decision.action, now_ms)
            row.last_evidence_at = max(row.last_evidence_at, cand.observed_at)
            row.source_count = row.source_count + 1
            raised = decision.action == "attach" and Severity(decision.severity) != Severity(row.severity)
            note = f"{cand.source_kind.value} {cand.source_id}: {cand.summary}"
            if raised:
                note += f" (severity {row.severity} -> {decision.severity.value})"
                row.severity = decision.severity.value
            row.version += 1
            tr = self._add_transition(
                s, row, f"attach:{cand.candidate_id}", "attach", "system", "fusion", row.state, row.state,
                row.node_id, row.node_id, now_ms, note, raised, {"action": decision.action},
            )  # fmt: skip
            if raised and row.state not in {t.value for t in TERMINAL_STATES} | {State.PENDING_REVIEW.value}:
                self._add_outbox(s, row, tr, (row.node_id,), outbox, now_ms)
            return StoredCandidate(row.incident_id, decision.action, row.severity, tr.seq)

    def _add_source(self, s: Session, cand: IncidentCandidate, iid: str, action: str, now_ms: int) -> None:
        s.add(
            IncidentSourceRow(
                candidate_id=cand.candidate_id,
                incident_id=iid,
                action=action,
                source_kind=cand.source_kind.value,
                source_id=cand.source_id,
                category=cand.category.value,
                severity=cand.severity.value,
                confidence=cand.confidence,
                observed_at=cand.observed_at,
                raised_at=cand.raised_at,
                attached_at=now_ms,
                rule=cand.rule,
                summary=cand.summary,
                model_version=cand.model_version,
                evidence=[e.model_dump() for e in cand.evidence],
                candidate=cand.model_dump(mode="json"),
            )
        )

    def _add_transition(
        self, s: Session, row: IncidentRow, command_id: str, kind: str, actor: str, by: str,
        from_state: str | None, to_state: str, from_node: str | None, to_node: str, at_ms: int,
        note: str, changed: bool, params: dict[str, Any],
    ) -> TransitionRow:  # fmt: skip
        tr = TransitionRow(
            incident_id=row.incident_id,
            command_id=command_id,
            kind=kind,
            actor=actor,
            by=by,
            from_state=from_state,
            to_state=to_state,
            from_node=from_node,
            to_node=to_node,
            level=row.level,
            at_ms=at_ms,
            note=note,
            changed=changed,
            version=row.version,
            params=params,
        )
        s.add(tr)
        s.flush()
        return tr

    def _add_outbox(
        self,
        s: Session,
        row: IncidentRow,
        tr: TransitionRow,
        nodes: tuple[str, ...],
        outbox: Outbox,
        now_ms: int,
    ) -> None:
        evidence: list[dict[str, Any]] = []
        sources: list[dict[str, Any]] = []
        for src in s.execute(
            select(IncidentSourceRow)
            .where(IncidentSourceRow.incident_id == row.incident_id)
            .order_by(IncidentSourceRow.observed_at, IncidentSourceRow.candidate_id)
        ).scalars():
            evidence.extend(src.evidence)
            details = (src.candidate or {}).get("details") or {}
            sources.append(
                {
                    "source_kind": src.source_kind,
                    "source_id": src.source_id,
                    "zone_id": details.get("zone_id"),
                }
            )
        # Delivery ids derive from the transition's command id, which is applied once: no duplicates.
        for item in outbox(row, tr, nodes, evidence, sources):
            s.add(
                DeliveryRow(
                    delivery_id=item.delivery_id,
                    incident_id=row.incident_id,
                    command_id=tr.command_id,
                    node_id=item.node_id,
                    channel=item.channel,
                    event=item.event,
                    payload=item.payload,
                    status="pending",
                    attempts=0,
                    next_attempt_at=now_ms,
                    created_at=now_ms,
                )
            )

    # --- commands -------------------------------------------------------------------------
    def apply(
        self, incident_id: str, cmd: Command, now_ms: int, plan_for: Callable[[int], Plan], outbox: Outbox
    ) -> ApplyResult:
        """Apply a command in one transaction. Raises IllegalTransition or UnknownIncident."""
        with self.session() as s:
            row = self._lock(s, incident_id)
            done = s.execute(
                select(TransitionRow).where(TransitionRow.command_id == cmd.command_id)
            ).scalar_one_or_none()
            if done is not None:
                if done.incident_id != incident_id:
                    raise IllegalTransition(
                        f"command id {cmd.command_id!r} was already used for incident {done.incident_id}"
                    )
                return ApplyResult(_to_incident(row), None, True)
            before = _to_incident(row)
            if cmd.kind is CommandKind.RECATEGORISE:
                cmd = dataclasses.replace(cmd, params={**cmd.params, "from_category": row.category})
            after, tr = apply(before, cmd, now_ms, plan_for(row.rule_index))
            if not tr.changed:
                # A stale deadline: audit it once (so the scheduler does not retry it), change nothing.
                self._add_transition(
                    s, row, cmd.command_id, cmd.kind.value, cmd.actor, cmd.by, tr.from_state.value,
                    tr.to_state.value, tr.from_node, tr.to_node, now_ms, tr.note, False, dict(cmd.params),
                )  # fmt: skip
                return ApplyResult(before, tr, False)
            if cmd.kind is CommandKind.MERGE:
                self._merge_into(s, row, str(cmd.params["into"]), cmd, now_ms)
            if cmd.kind is CommandKind.RECATEGORISE:
                p = cmd.params
                row.category, row.rule_index, row.platform = (
                    str(p["category"]),
                    int(p["rule_index"]),
                    p["platform"],
                )
                row.first_node_id, row.first_level = after.node_id, after.level.value
            _write_incident(row, after)
            trow = self._add_transition(
                s, row, cmd.command_id, cmd.kind.value, cmd.actor, cmd.by, tr.from_state.value,
                tr.to_state.value, tr.from_node, tr.to_node, now_ms, tr.note, True,
                {k: v for k, v in cmd.params.items() if k != "token"},
            )  # fmt: skip
            self._add_outbox(s, row, trow, tr.notify, outbox, now_ms)
            return ApplyResult(after, tr, False)

    def _merge_into(self, s: Session, row: IncidentRow, into: str, cmd: Command, now_ms: int) -> None:
        """Move `row`'s sources to the open incident `into` and audit it there (same transaction)."""
        try:
            target = self._lock(s, into)
        except UnknownIncident:
            raise IllegalTransition(f"merge: no incident {into!r} in the ledger") from None
        if target.state in {t.value for t in TERMINAL_STATES}:
            raise IllegalTransition(f"merge: incident {into} is {target.state}; merge into an open one")
        moved = list(
            s.execute(
                select(IncidentSourceRow).where(IncidentSourceRow.incident_id == row.incident_id)
            ).scalars()
        )
        for src in moved:
            src.incident_id = into
        target.source_count += len(moved)
        target.last_evidence_at = max(target.last_evidence_at, row.last_evidence_at)
        target.version += 1
        self._add_transition(
            s, target, f"merged-in:{row.incident_id}", "merged_in", cmd.actor, cmd.by, target.state, target.state,
            target.node_id, target.node_id, now_ms,
            f"merged from {row.incident_id} ({row.category}): {len(moved)} source(s)", True,
            {"from": row.incident_id, "candidates": [m.candidate_id for m in moved]},
        )  # fmt: skip

    # --- queries --------------------------------------------------------------------------
    def due(self, now_ms: int, limit: int = 500) -> list[tuple[str, str, str, int]]:
        """(incident id, level, step, due ms) of every pending deadline that has passed."""
        with self.read() as s:
            rows = s.execute(
                select(
                    IncidentRow.incident_id,
                    IncidentRow.level,
                    IncidentRow.next_due_step,
                    IncidentRow.next_due_at,
                )
                .where(IncidentRow.next_due_at.is_not(None), IncidentRow.next_due_at <= now_ms)
                .order_by(IncidentRow.next_due_at)
                .limit(limit)
            ).all()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def next_due_at(self) -> int | None:
        with self.read() as s:
            return s.execute(select(func.min(IncidentRow.next_due_at))).scalar()

    def incident_row(self, incident_id: str) -> IncidentRow:
        with self.read() as s:
            row = s.get(IncidentRow, incident_id)
            if row is None:
                raise UnknownIncident(incident_id)
            s.expunge(row)
            return row

    def incident(self, incident_id: str) -> Incident:
        return _to_incident(self.incident_row(incident_id))

    def transitions(self, incident_id: str) -> list[TransitionRow]:
        return self._detached(
            select(TransitionRow).where(TransitionRow.incident_id == incident_id).order_by(TransitionRow.seq)
        )

    def sources(self, incident_id: str) -> list[IncidentSourceRow]:
        return self._detached(
            select(IncidentSourceRow)
            .where(IncidentSourceRow.incident_id == incident_id)
            .order_by(IncidentSourceRow.observed_at, IncidentSourceRow.candidate_id)
        )

    def deliveries(self, incident_id: str | None = None, status: str | None = None) -> list[DeliveryRow]:
        q = select(DeliveryRow).order_by(DeliveryRow.created_at, DeliveryRow.delivery_id)
        if incident_id is not None:
            q = q.where(DeliveryRow.incident_id == incident_id)
        if status is not None:
            q = q.where(DeliveryRow.status == status)
        return self._detached(q)

    def due_deliveries(self, now_ms: int, limit: int = 200) -> list[DeliveryRow]:
        return self._detached(
            select(DeliveryRow)
            .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= now_ms)
            .order_by(DeliveryRow.next_attempt_at)
            .limit(limit)
        )

    def next_delivery_at(self) -> int | None:
        with self.read() as s:
            return s.execute(
                select(func.min(DeliveryRow.next_attempt_at)).where(DeliveryRow.status == "pending")
            ).scalar()

    def record_attempt(
        self, delivery_id: str, *, ok: bool, error: str | None, now_ms: int, duration_ms: float,
        retry_at: int | None, max_attempts: int,
    ) -> str:  # fmt: skip
        """Record one push attempt; returns the delivery's new status (sent, pending or failed)."""
        with self.session() as s:
            d = s.get(DeliveryRow, delivery_id)
            if d is None:
                raise KeyError(delivery_id)
            d.attempts += 1
            s.add(
                DeliveryAttemptRow(
                    delivery_id=delivery_id, at_ms=now_ms, ok=ok, error=error, duration_ms=duration_ms
                )
            )
            if ok:
                d.status, d.sent_at, d.last_error = "sent", now_ms, None
            else:
                d.last_error = error
                if d.attempts >= max_attempts or retry_at is None:
                    d.status = "failed"
                else:
                    d.next_attempt_at = retry_at
            return d.status

    def attempts(self, delivery_id: str) -> list[DeliveryAttemptRow]:
        return self._detached(
            select(DeliveryAttemptRow)
            .where(DeliveryAttemptRow.delivery_id == delivery_id)
            .order_by(DeliveryAttemptRow.attempt_id)
        )

    def fusion_index_rows(self, now_ms: int, keep_closed_ms: int) -> list[tuple[FusedIncident, list[str]]]:
        """Open incidents and those closed within `keep_closed_ms`: what fusion needs on start."""
        out: list[tuple[FusedIncident, list[str]]] = []
        with self.read() as s:
            rows = s.execute(
                select(IncidentRow).where(
                    IncidentRow.state != State.MERGED.value,  # lives on in the incident it merged into
                    (IncidentRow.closed_at.is_(None)) | (IncidentRow.closed_at >= now_ms - keep_closed_ms),
                )
            ).scalars()
            for r in rows:
                srcs = s.execute(
                    select(
                        IncidentSourceRow.candidate_id,
                        IncidentSourceRow.source_kind,
                        IncidentSourceRow.source_id,
                    ).where(IncidentSourceRow.incident_id == r.incident_id)
                ).all()
                inc = FusedIncident(
                    r.incident_id, Category(r.category), r.grid_id, r.lon, r.lat, Severity(r.base_severity),
                    Severity(r.severity), r.last_evidence_at, r.closed_at, {f"{k}:{i}" for _, k, i in srcs},
                )  # fmt: skip
                out.append((inc, [c for c, _, _ in srcs]))
        return out

    def kpi_rows(self, since_ms: int) -> list[KpiRow]:
        """Incidents received since `since_ms` or still open, with the steps whose deadline escalated them."""
        with self.read() as s:
            rows = list(
                s.execute(
                    select(IncidentRow).where(
                        # a merged incident is a duplicate that lives on in another: not counted
                        IncidentRow.state != State.MERGED.value,
                        (IncidentRow.created_at >= since_ms)
                        | (IncidentRow.state.not_in(["closed", "false_alarm"])),
                    )
                ).scalars()
            )
            late: dict[str, set[str]] = {}
            esc = s.execute(
                select(TransitionRow.incident_id, TransitionRow.params).where(
                    TransitionRow.kind == "escalate",
                    TransitionRow.actor == "system",
                    TransitionRow.changed.is_(True),
                )
            ).all()
            for iid, params in esc:
                late.setdefault(iid, set()).add(str((params or {}).get("step")))
            return [
                KpiRow(
                    r.incident_id,
                    r.category,
                    r.state,
                    r.level,
                    r.node_id,
                    r.grid_id,
                    r.community_id,
                    r.town_id,
                    r.created_at,
                    r.acknowledged_at,
                    r.closed_at,
                    r.escalations,
                    frozenset(late.get(r.incident_id, ())),
                )  # fmt: skip
                for r in rows
            ]

    def count_incidents(self, state: str | None = None) -> int:
        with self.read() as s:
            q = select(func.count()).select_from(IncidentRow)
            if state is not None:
                q = q.where(IncidentRow.state == state)
            return int(s.execute(q).scalar() or 0)


def incident_dict(row: IncidentRow) -> dict[str, Any]:
    """A row as a plain dict (API responses, pushes)."""
    return {c.key: getattr(row, c.key) for c in row.__table__.columns}
