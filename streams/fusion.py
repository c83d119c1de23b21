"""Fusion: many candidates about one matter become one incident. Pure and synchronous.

"One incident seen by a camera, a sensor and three citizens must become one incident, not five
tasks" (docs/DOMAIN.md). A candidate joins an open incident of the same category when it lies
within `radius_m` of it (or, without coordinates, in the same grid) and within `window_s` of its
latest evidence; the nearest such incident wins. After an incident closes, candidates of its
category and place within `cooldown_s` are attached to it as evidence and not dispatched again
(a camera that keeps seeing the same pile while the team is on the way). Severity rises one
step each time the number of distinct sources reaches a multiple of `severity_rise_sources`.

`FusionIndex` is a cache of the ledger's open and recently closed incidents: the dispatch
worker rebuilds it from the ledger on start, so it holds nothing the ledger does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from gridwatch.config import FusionConfig
from gridwatch.schemas import Category, IncidentCandidate, Severity

__all__ = ["FusedIncident", "FusionDecision", "FusionIndex", "distance_m", "raised_severity"]

_SEVERITIES = [Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL]
_EARTH_RADIUS_M = 6_371_008.8


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance (haversine), metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def raised_severity(base: Severity, candidate: Severity, distinct_sources: int, step_every: int) -> Severity:
    """The most severe of the two, plus one step per `step_every` distinct sources."""
    rank = max(_SEVERITIES.index(base), _SEVERITIES.index(candidate))
    rank += distinct_sources // step_every
    return _SEVERITIES[min(rank, len(_SEVERITIES) - 1)]


@dataclass
class FusedIncident:
    """What fusion needs to know about one incident (a projection of the ledger's row)."""

    incident_id: str
    category: Category
    grid_id: str | None
    lon: float | None
    lat: float | None
    base_severity: Severity
    severity: Severity
    last_evidence_ms: int
    closed_at: int | None = None
    sources: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class FusionDecision:
    action: Literal["new", "attach", "attach_closed", "duplicate"]
    incident_id: str | None
    severity: Severity
    distance_m: float | None = None
    severity_raised: bool = False


class FusionIndex:
    def __init__(self, cfg: FusionConfig) -> None:
        self.cfg = cfg
        self._by_category: dict[Category, dict[str, FusedIncident]] = {}
        self._seen_candidates: set[str] = set()

    # --- state ------------------------------------------------------------------------------
    def add(self, inc: FusedIncident, candidate_ids: list[str] = ()) -> None:  # type: ignore[assignment]
        self._by_category.setdefault(inc.category, {})[inc.incident_id] = inc
        self._seen_candidates.update(candidate_ids)

    def get(self, incident_id: str) -> FusedIncident | None:
        for incs in self._by_category.values():
            if incident_id in incs:
                return incs[incident_id]
        return None

    def mark_closed(self, incident_id: str, closed_at: int) -> None:
        inc = self.get(incident_id)
        if inc is not None:
            inc.closed_at = closed_at

    def reopen(self, incident_id: str) -> None:
        inc = self.get(incident_id)
        if inc is not None:
            inc.closed_at = None

    def merge(self, from_id: str, into_id: str) -> None:
        """An operator merged `from_id` into `into_id`: its sources count for the other; it is gone."""
        src, dst = self.get(from_id), self.get(into_id)
        if src is None:
            return
        del self._by_category[src.category][from_id]
        if dst is not None:
            dst.sources |= src.sources
            dst.last_evidence_ms = max(dst.last_evidence_ms, src.last_evidence_ms)

    def recategorise(self, incident_id: str, category: Category) -> None:
        """An operator corrected the category: later candidates of that category fuse with it."""
        inc = self.get(incident_id)
        if inc is None or inc.category == category:
            return
        del self._by_category[inc.category][incident_id]
        inc.category = category
        self._by_category.setdefault(category, {})[incident_id] = inc

    def expire(self, now_ms: int) -> int:
        """Forget closed incidents past their cooldown; returns how many were dropped."""
        dropped = 0
        for cat, incs in self._by_category.items():
            keep_ms = self.cfg.rule(cat).cooldown_s * 1000
            for iid in [
                i for i, inc in incs.items() if inc.closed_at is not None and inc.closed_at + keep_ms < now_ms
            ]:
                del incs[iid]
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_category.values())

    # --- the decision -----------------------------------------------------------------------
    def decide(self, cand: IncidentCandidate) -> FusionDecision:
        """What to do with a candidate. Does not change the index: call `record` once it is stored."""
        if cand.candidate_id in self._seen_candidates:
            return FusionDecision("duplicate", None, cand.severity)
        rule = self.cfg.rule(cand.category)
        best: tuple[float, FusedIncident] | None = None
        best_closed: tuple[float, FusedIncident] | None = None
        for inc in self._by_category.get(cand.category, {}).values():
            d = self._distance(cand, inc, rule.radius_m, rule.same_grid_only)
            if d is None:
                continue
            if inc.closed_at is None:
                if abs(cand.observed_at - inc.last_evidence_ms) <= rule.window_s * 1000 and (
                    best is None or d < best[0]
                ):
                    best = (d, inc)
            elif cand.observed_at <= inc.closed_at + rule.cooldown_s * 1000 and (
                best_closed is None or d < best_closed[0]
            ):
                best_closed = (d, inc)
        if best is not None:
            d, inc = best
            sources = inc.sources | {f"{cand.source_kind.value}:{cand.source_id}"}
            sev = raised_severity(
                inc.base_severity, cand.severity, len(sources), self.cfg.severity_rise_sources
            )
            return FusionDecision("attach", inc.incident_id, sev, d, sev != inc.severity)
        if best_closed is not None:
            d, inc = best_closed
            return FusionDecision("attach_closed", inc.incident_id, inc.severity, d)
        return FusionDecision("new", None, cand.severity)

    def record(self, cand: IncidentCandidate, decision: FusionDecision, incident_id: str) -> None:
        """Update the index after the ledger stored the decision."""
        self._seen_candidates.add(cand.candidate_id)
        source = f"{cand.source_kind.value}:{cand.source_id}"
        if decision.action == "new":
            loc = cand.location
            self.add(
                FusedIncident(
                    incident_id,
                    cand.category,
                    cand.grid_id,
                    loc.lon if loc else None,
                    loc.lat if loc else None,
                    cand.severity,
                    cand.severity,
                    cand.observed_at,
                    sources={source},
                )
            )
            return
        inc = self.get(incident_id)
        if inc is None:
            return
        inc.sources.add(source)
        inc.last_evidence_ms = max(inc.last_evidence_ms, cand.observed_at)
        if decision.action == "attach":
            inc.severity = decision.severity

    @staticmethod
    def _distance(
        cand: IncidentCandidate, inc: FusedIncident, radius_m: float, same_grid: bool
    ) -> float | None:
        if same_grid and cand.grid_id != inc.grid_id:
            return None
        if cand.location is not None and inc.lon is not None and inc.lat is not None:
            d = distance_m(cand.location.lon, cand.location.lat, inc.lon, inc.lat)
            return d if d <= radius_m else None
        # Without coordinates on one side, the grid is the only notion of place.
        if cand.grid_id is not None and cand.grid_id == inc.grid_id:
            return radius_m
        return None
