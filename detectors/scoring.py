"""Event-level precision and recall of camera candidates against ground-truth events.

A candidate matches a ground-truth event when the category and zone agree (and the camera, if
the event names one) and the candidate's span `[observed_at, raised_at]` overlaps the event's
`[start_ms - tolerance, end_ms + tolerance]`. Matching is one-to-one, earliest candidate first:
a second candidate for an already matched event is a false positive (the rules promise one
candidate per episode, so a duplicate is an error). Candidates sharing an id count once, as fusion
deduplicates them: two objects given one id (a collision) show up as a missed event. Used by the
scenario tests and by `gridwatch eval detectors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gridwatch.schemas import Category, IncidentCandidate


@dataclass(frozen=True)
class GroundTruthEvent:
    category: Category
    zone_id: str
    start_ms: int
    end_ms: int
    camera_id: str | None = None
    note: str = ""


@dataclass
class Score:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    matches: list[tuple[str, GroundTruthEvent]] = field(default_factory=list)  # (candidate id, event)
    false_positives: list[IncidentCandidate] = field(default_factory=list)
    missed: list[GroundTruthEvent] = field(default_factory=list)

    @property
    def precision(self) -> float:
        # no candidates at all is perfect precision (nothing wrong was said)
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    def __add__(self, other: Score) -> Score:
        return Score(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.matches + other.matches,
            self.false_positives + other.false_positives,
            self.missed + other.missed,
        )


def _matches(c: IncidentCandidate, e: GroundTruthEvent, tol_ms: int) -> bool:
    if c.category != e.category or c.details.get("zone_id") != e.zone_id:
        return False
    if e.camera_id is not None and c.source_id != e.camera_id:
        return False
    return c.observed_at <= e.end_ms + tol_ms and c.raised_at >= e.start_ms - tol_ms


def score_events(
    candidates: Sequence[IncidentCandidate], truth: Sequence[GroundTruthEvent], tolerance_s: float = 10.0
) -> Score:
    tol = int(tolerance_s * 1000)
    out = Score()
    used: set[int] = set()
    seen: set[str] = set()
    for c in sorted(candidates, key=lambda c: (c.raised_at, c.candidate_id)):
        if c.candidate_id in seen:
            continue
        seen.add(c.candidate_id)
        hit = next((i for i, e in enumerate(truth) if i not in used and _matches(c, e, tol)), None)
        if hit is None:
            out.fp += 1
            out.false_positives.append(c)
        else:
            used.add(hit)
            out.tp += 1
            out.matches.append((c.candidate_id, truth[hit]))
    out.missed = [e for i, e in enumerate(truth) if i not in used]
    out.fn = len(out.missed)
    return out


def score_by_category(
    runs: Iterable[tuple[Sequence[IncidentCandidate], Sequence[GroundTruthEvent]]], tolerance_s: float = 10.0
) -> dict[str, Score]:
    """Score several scenario runs; totals per category and `"all"`."""
    per: dict[str, Score] = {}
    for cands, truth in runs:
        cats = {str(c.category) for c in cands} | {str(e.category) for e in truth}
        for cat in cats:
            s = score_events(
                [c for c in cands if str(c.category) == cat],
                [e for e in truth if str(e.category) == cat],
                tolerance_s,
            )
            per[cat] = per.get(cat, Score()) + s
            per["all"] = per.get("all", Score()) + s
    return per
