"""DispatchCore: fusion + routing + the state machine over the ledger, synchronous and I/O-light.

The dispatch service (service.py) feeds it candidates from Kafka, team commands from MQTT and
the HTTP API, and the clock; tests drive it directly with a `ManualClock`. All the decisions live
in the pure modules it wires together: streams/fusion.py, routing.py, machine.py.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass

from gridwatch.city import CityModel
from gridwatch.clock import Clock
from gridwatch.config import GridwatchConfig
from gridwatch.dataset.hard_examples import HardExampleStore, SourceRecord
from gridwatch.dispatch.ledger import ApplyResult, Ledger, StoredCandidate
from gridwatch.dispatch.machine import (
    TERMINAL_STATES,
    Command,
    CommandKind,
    IllegalTransition,
    InvalidParams,
    State,
    missed_params,
)
from gridwatch.dispatch.push import build_outbox
from gridwatch.dispatch.routing import NoRoute, Router
from gridwatch.schemas import Category, IncidentCandidate, Severity
from gridwatch.streams.fusion import FusionIndex

log = logging.getLogger(__name__)

__all__ = ["DispatchCore", "DispatchStats"]


@dataclass
class DispatchStats:
    candidates: int = 0
    incidents_created: int = 0
    attached: int = 0
    duplicates: int = 0
    unroutable: int = 0
    commands: int = 0
    commands_refused: int = 0
    escalations: int = 0
    stale_escalations: int = 0
    held_for_review: int = 0
    hard_examples: int = 0
    hard_example_errors: int = 0
    missed_reports: int = 0


class DispatchCore:
    def __init__(self, cfg: GridwatchConfig, city: CityModel, ledger: Ledger, clock: Clock) -> None:
        self.cfg = cfg
        self.city = city
        self.ledger = ledger
        self.clock = clock
        self.router = Router(cfg.dispatch, city, cfg.site.timezone)
        self.fusion = FusionIndex(cfg.dispatch.fusion)
        self.outbox = build_outbox(cfg.dispatch.push, cfg.dispatch.verify_clear_s)
        self.stats = DispatchStats()
        hx = cfg.dispatch.hard_examples_dir
        self.hard_examples = HardExampleStore(hx) if hx is not None else None
        # Fusion decides on the index and then stores: one candidate at a time.
        self._fuse_lock = threading.Lock()
        self._last_expire_ms = 0
        self._keep_closed_ms = int(
            max(
                [
                    cfg.dispatch.fusion.default.cooldown_s,
                    *(r.cooldown_s for r in cfg.dispatch.fusion.per_category.values()),
                ]
            )
            * 1000
        )

    def load(self) -> int:
        """Rebuild the fusion index from the ledger (start-up); returns the incidents indexed."""
        rows = self.ledger.fusion_index_rows(self.clock.now_ms(), self._keep_closed_ms)
        for inc, cand_ids in rows:
            self.fusion.add(inc, cand_ids)
        return len(rows)

    # --- candidates -----------------------------------------------------------------------
    def handle_candidate(self, cand: IncidentCandidate) -> StoredCandidate:
        """Fuse, route and store one candidate. Raises routing.NoRoute when nothing covers it."""
        with self._fuse_lock:
            self.stats.candidates += 1
            now = self.clock.now_ms()
            decision = self.fusion.decide(cand)
            if decision.action == "duplicate":
                self.stats.duplicates += 1
                return StoredCandidate("", "duplicate", cand.severity.value, None)
            route = None
            review = False
            if decision.action == "new":
                try:
                    route = self.router.route(cand.category, cand.severity, cand.grid_id)
                except Exception:
                    self.stats.unroutable += 1
                    raise
                # Machine-raised candidates wait for an operator when their trigger line says so;
                # a citizen's report or a person's call needs no review of a detector.
                review = cand.source_kind.value in ("camera", "sensor") and (
                    route.rule.review == "always" or cand.confidence < route.rule.auto_min_confidence
                )
            stored = self.ledger.store_candidate(
                cand,
                decision,
                now,
                node_id=route.node_id if route else None,
                level=route.level if route else None,
                rule_index=route.rule_index if route else None,
                platform=route.rule.platform if route else None,
                plan=self.router.plan(route.rule_index) if route else None,
                city=self.city,
                outbox=self.outbox,
                review=review,
            )
            if stored.action == "duplicate":
                self.stats.duplicates += 1
                # The ledger knew it (a replay after a restart): make the index know it too.
                self.fusion._seen_candidates.add(cand.candidate_id)
                return stored
            self.fusion.record(cand, decision, stored.incident_id)
            if stored.action == "new":
                self.stats.incidents_created += 1
                self.stats.held_for_review += review
            else:
                self.stats.attached += 1
            return stored

    # --- commands -------------------------------------------------------------------------
    def command(self, incident_id: str, cmd: Command) -> ApplyResult:
        self.stats.commands += 1
        try:
            if cmd.kind is CommandKind.RECATEGORISE:
                cmd = self._rerouted(incident_id, cmd)
            if cmd.kind is CommandKind.MISSED:
                self._known_camera(cmd)
            res = self.ledger.apply(incident_id, cmd, self.clock.now_ms(), self.router.plan, self.outbox)
        except Exception:
            self.stats.commands_refused += 1
            raise
        tr = res.transition
        if tr is not None and tr.changed:
            st = res.incident.state
            with self._fuse_lock:
                if st is State.MERGED:
                    self.fusion.merge(incident_id, str(cmd.params["into"]))
                elif st in TERMINAL_STATES:
                    self.fusion.mark_closed(incident_id, res.incident.closed_at or self.clock.now_ms())
                elif cmd.kind is CommandKind.VERIFY and st is State.DISPATCHED:
                    self.fusion.reopen(incident_id)
                elif cmd.kind is CommandKind.RECATEGORISE:
                    self.fusion.recategorise(incident_id, Category(str(cmd.params["category"])))
            if cmd.kind is CommandKind.MISSED:
                self.stats.missed_reports += 1
                self._record_missed(incident_id, cmd, tr.at_ms)
                return res
            verdict = {
                State.FALSE_ALARM: "false_alarm",
                State.CLOSED: "verified",
            }.get(st) or ("confirmed" if cmd.kind is CommandKind.CONFIRM else None)
            if verdict is not None:
                self._label(incident_id, verdict, cmd, tr.at_ms)
        return res

    def _rerouted(self, incident_id: str, cmd: Command) -> Command:
        """A recategorise command with the route of the new category (node, trigger line, platform)."""
        raw = str(cmd.params.get("category") or "")
        try:
            category = Category(raw)
        except ValueError:
            known = ", ".join(c.value for c in Category)
            raise IllegalTransition(f"recategorise: unknown category {raw!r} (known: {known})") from None
        row = self.ledger.incident_row(incident_id)
        try:
            route = self.router.route(category, Severity(row.severity), row.grid_id)
        except NoRoute as e:
            raise IllegalTransition(f"recategorise: {e}") from None
        params = {
            **cmd.params,
            "category": category.value,
            "to_node": route.node_id,
            "rule_index": route.rule_index,
            "platform": route.rule.platform,
        }
        return dataclasses.replace(cmd, params=params)

    def _known_camera(self, cmd: Command) -> None:
        """A miss names a camera of this config: its worker is the one that can fill the frame."""
        cam = cmd.params.get("camera_id")
        known = sorted(f.source.id for f in self.cfg.cameras.feeds)
        if isinstance(cam, str) and cam.strip() and cam.strip() not in known:
            raise InvalidParams(
                f"missed: params.camera_id {cam!r} is not a camera of this config "
                f"(cameras.feeds: {', '.join(known) or 'none'})"
            )

    def _record_missed(self, incident_id: str, cmd: Command, at_ms: int) -> None:
        """The example of a miss (no frame yet) and its frame request for the camera worker. Like
        `_label`, a failure is logged and counted and never undoes the audited command."""
        if self.hard_examples is None:
            return
        try:
            cam, seen_at, note = missed_params(cmd.params, at_ms)
            row = self.ledger.incident_row(incident_id)
            written = self.hard_examples.record_missed(
                incident_id=incident_id, camera_id=cam, at_ms=seen_at, category=row.category,
                grid_id=row.grid_id, by=cmd.by, verdict_at_ms=at_ms, note=note,
            )  # fmt: skip
            self.stats.hard_examples += written is not None
        except Exception:
            self.stats.hard_example_errors += 1
            log.exception("hard-example store: could not record the miss on %s", incident_id)

    def _label(self, incident_id: str, verdict: str, cmd: Command, at_ms: int) -> None:
        """An operator's verdict labels the incident's camera sources for retraining. A failure
        here never undoes the verdict (it is in the ledger): it is logged and counted."""
        if self.hard_examples is None:
            return
        try:
            srcs = [
                SourceRecord(
                    s.candidate_id,
                    s.source_kind,
                    s.source_id,
                    s.category,
                    s.confidence,
                    s.observed_at,
                    s.rule,
                    s.model_version,
                    list(s.evidence or []),
                    dict((s.candidate or {}).get("details") or {}),
                )  # fmt: skip
                for s in self.ledger.sources(incident_id)
            ]
            reason = str(cmd.params.get("reason") or cmd.params.get("note") or "")
            written = self.hard_examples.record(
                incident_id=incident_id, sources=srcs, verdict=verdict, by=cmd.by, at_ms=at_ms, reason=reason
            )
            self.stats.hard_examples += len(written)
        except Exception:
            self.stats.hard_example_errors += 1
            log.exception("hard-example store: could not label %s as %s", incident_id, verdict)

    def escalate_due(self, limit: int = 500) -> list[ApplyResult]:
        """Escalate every incident whose pending deadline has passed (one scheduler pass)."""
        out = []
        now = self.clock.now_ms()
        if now - self._last_expire_ms >= 60_000:
            # closed incidents past their cooldown leave fusion's memory (the ledger keeps them)
            with self._fuse_lock:
                self.fusion.expire(now)
            self._last_expire_ms = now
        for iid, level, step, due in self.ledger.due(now, limit):
            cmd = Command(
                command_id=f"deadline:{iid}:{level}:{step}:{due}",
                kind=CommandKind.ESCALATE,
                actor="system",
                by="deadline",
                params={"level": level, "step": step, "due_ms": due},
            )
            res = self.command(iid, cmd)
            if res.transition is not None and res.transition.changed:
                self.stats.escalations += 1
            else:
                self.stats.stale_escalations += 1
            out.append(res)
        return out
