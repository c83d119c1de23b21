"""The ledger's tables (SQLAlchemy 2 declarative). Migrations: gridwatch/dispatch/migrations.

incidents          one row per incident: its state, level, node, deadlines and the next due time
incident_sources   every candidate attached to an incident (primary key: candidate id -> replays dedupe)
transitions        the audit trail: one row per applied command (unique command id -> idempotent)
deliveries         the push outbox: one row per (transition, channel); sent by the delivery loop
delivery_attempts  every attempt at a delivery, with its error

Times are epoch milliseconds (BigInteger), as everywhere in gridwatch.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class IncidentRow(Base):
    __tablename__ = "incidents"

    incident_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str] = mapped_column(String(32), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    base_severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    level: Mapped[str] = mapped_column(String(16))
    node_id: Mapped[str] = mapped_column(String(64), index=True)
    first_level: Mapped[str] = mapped_column(String(16))
    first_node_id: Mapped[str] = mapped_column(String(64))
    grid_id: Mapped[str | None] = mapped_column(String(64), index=True)
    community_id: Mapped[str | None] = mapped_column(String(64))
    town_id: Mapped[str | None] = mapped_column(String(64))
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    rule_index: Mapped[int] = mapped_column(Integer)
    platform: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    source_kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    assigned_at: Mapped[int] = mapped_column(BigInteger)
    deadlines: Mapped[dict[str, Any]] = mapped_column(JSON)
    chain: Mapped[list[str]] = mapped_column(JSON)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    reopened: Mapped[int] = mapped_column(Integer, default=0)
    acknowledged_at: Mapped[int | None] = mapped_column(BigInteger)
    arrived_at: Mapped[int | None] = mapped_column(BigInteger)
    resolved_at: Mapped[int | None] = mapped_column(BigInteger)
    closed_at: Mapped[int | None] = mapped_column(BigInteger)
    top_level_overdue: Mapped[list[str]] = mapped_column(JSON)
    last_evidence_at: Mapped[int] = mapped_column(BigInteger)
    source_count: Mapped[int] = mapped_column(Integer, default=1)
    next_due_at: Mapped[int | None] = mapped_column(BigInteger, index=True)
    next_due_step: Mapped[str | None] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)


class IncidentSourceRow(Base):
    __tablename__ = "incident_sources"

    candidate_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.incident_id"), index=True)
    action: Mapped[str] = mapped_column(String(16))
    source_kind: Mapped[str] = mapped_column(String(16))
    source_id: Mapped[str] = mapped_column(String(128))
    category: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float] = mapped_column(Float)
    observed_at: Mapped[int] = mapped_column(BigInteger)
    raised_at: Mapped[int] = mapped_column(BigInteger)
    attached_at: Mapped[int] = mapped_column(BigInteger)
    rule: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(128))
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    candidate: Mapped[dict[str, Any]] = mapped_column(JSON)


class TransitionRow(Base):
    __tablename__ = "transitions"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.incident_id"), index=True)
    command_id: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(16))
    by: Mapped[str] = mapped_column(String(128))
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    from_node: Mapped[str | None] = mapped_column(String(64))
    to_node: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16))
    at_ms: Mapped[int] = mapped_column(BigInteger, index=True)
    note: Mapped[str] = mapped_column(Text, default="")
    changed: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)


class DeliveryRow(Base):
    __tablename__ = "deliveries"

    delivery_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.incident_id"), index=True)
    command_id: Mapped[str] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    """`mqtt` or `webhook:<name>`."""
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    """pending, sent or failed."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    sent_at: Mapped[int | None] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_deliveries_due", "status", "next_attempt_at"),)


class DeliveryAttemptRow(Base):
    __tablename__ = "delivery_attempts"

    attempt_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("deliveries.delivery_id"), index=True)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    ok: Mapped[bool] = mapped_column(Boolean)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float] = mapped_column(Float)
