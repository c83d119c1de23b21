"""`gridwatch models compare`: the shadow detector against production (docs/MODELS.md "Shadow runs").

Two sources of evidence, one report:

* **Live records** (`cameras.shadow.record_dir`, written by detectors/shadow.py): shadow and
  production candidates of the same cameras on the same frames, and their detector cost. Paired by
  camera, category and zone when raised within `window_s` of each other: agreement (both raised),
  production-only, shadow-only (a condition production raised before the shadow started, raised
  again by the shadow after its own dwell, is agreement: `carried_over`). With the dispatch ledger, the operators' verdicts say which of
  them mattered: production candidates whose incident was dismissed as a false alarm that the
  shadow did not raise (false alarms it would have avoided), and incidents a person reported
  (citizen or patrol source, no camera source) on a grid a shadowed camera watches that the
  shadow raised within `miss_window_s` before the report (misses it would have caught).
* **Labelled clips** (`--clips`): both models through `gridwatch eval detectors` (run_eval, same
  clips, same frames): events each caught, false positives each avoided, ms per frame.

The pairing and counting are pure functions over plain records (unit-tested); reading files, the
ledger and running the evaluation are thin wrappers around them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "LedgerVerdicts",
    "MissedReport",
    "Records",
    "compare_clip_results",
    "compare_records",
    "compare_clips",
    "ledger_verdicts",
    "pair_candidates",
    "read_records",
    "resolve_model_ref",
]

PERSON_SOURCES = ("citizen", "patrol")


@dataclass
class Records:
    candidates: list[dict[str, Any]] = field(default_factory=list)
    costs: list[dict[str, Any]] = field(default_factory=list)
    #: one per camera and shadow start: the zones production held an episode in at that moment
    starts: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0


def read_records(
    root: Path,
    *,
    cameras: Sequence[str] | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> Records:
    """Every record line under `root` (`<camera>/<day>.jsonl`), optionally for some cameras and a
    time range (frame time). A line that is not JSON (a write cut by a crash) is counted, not fatal."""
    out = Records()
    root = Path(root)
    for p in sorted(root.glob("*/*.jsonl")):
        if cameras and p.parent.name not in cameras:
            continue
        for ln in p.read_text(encoding="utf-8").splitlines():
            if not ln.strip():
                continue
            try:
                r = json.loads(ln)
            except ValueError:
                out.bad_lines += 1
                continue
            ts = r.get("ts", r.get("from_ts"))
            if not isinstance(ts, int) or (since_ms is not None and ts < since_ms):
                continue
            if until_ms is not None and ts >= until_ms:
                continue
            if r.get("kind") == "candidate":
                out.candidates.append(r)
            elif r.get("kind") == "cost":
                out.costs.append(r)
            elif r.get("kind") == "start":
                out.starts.append(r)
    return out


def _key(r: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (r.get("camera"), r.get("category"), r.get("zone"))


def pair_candidates(
    production: Sequence[dict[str, Any]], shadow: Sequence[dict[str, Any]], window_ms: int
) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(pairs, production only, shadow only): a production and a shadow candidate pair when they
    have the same camera, category and zone and were raised (frame time) within `window_ms`; each
    is paired at most once. Per key, production candidates in time order each take the EARLIEST
    free shadow candidate in their window: on a line with a fixed window that gives the most pairs
    (taking the nearest one can leave a later production candidate without the one it needed)."""
    by_key: dict[Any, list[dict[str, Any]]] = {}
    for r in shadow:
        by_key.setdefault(_key(r), []).append(r)
    for v in by_key.values():
        v.sort(key=lambda r: r["ts"])
    used: set[int] = set()
    start: dict[Any, int] = dict.fromkeys(by_key, 0)
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    prod_only: list[dict[str, Any]] = []
    for p in sorted(production, key=lambda r: r["ts"]):
        k = _key(p)
        cands = by_key.get(k, [])
        i = start.get(k, 0)
        while i < len(cands) and cands[i]["ts"] < p["ts"] - window_ms:
            i += 1  # too early for this one, hence for every later production candidate too
        start[k] = i
        match = next(
            (
                j
                for j in range(i, len(cands))
                if id(cands[j]) not in used and cands[j]["ts"] <= p["ts"] + window_ms
            ),
            None,
        )
        if match is None:
            prod_only.append(p)
            continue
        used.add(id(cands[match]))
        pairs.append((p, cands[match]))
    shadow_only = sorted((r for v in by_key.values() for r in v if id(r) not in used), key=lambda r: r["ts"])
    return pairs, prod_only, shadow_only


def carried_over(
    shadow_only: Sequence[dict[str, Any]], starts: Sequence[dict[str, Any]], carry_ms: int
) -> list[dict[str, Any]]:
    """The shadow-only candidates that are a condition production already held when the shadow
    started: a shadow starts with empty rules, so the van parked for an hour is raised again by the
    shadow after its own dwell. Such a candidate (same camera, category and zone as an episode
    production held at the shadow's start, raised within `carry_ms` of that start, by the version
    that started) is agreement, not shadow-only."""
    out = []
    for r in shadow_only:
        mine = [
            st for st in starts
            if st.get("camera") == r.get("camera") and st.get("shadow_version") == r.get("registry_version")
            and st["ts"] <= r["ts"]
        ]  # fmt: skip
        if not mine:
            continue
        st = max(mine, key=lambda x: x["ts"])
        held = {(o.get("category"), o.get("zone")) for o in st.get("open", [])}
        if r["ts"] - st["ts"] <= carry_ms and (r.get("category"), r.get("zone")) in held:
            out.append(r)
    return out


@dataclass(frozen=True)
class MissedReport:
    """An incident a person reported that no camera raised."""

    incident_id: str
    category: str
    grid_id: str | None
    reported_at: int


@dataclass
class LedgerVerdicts:
    #: candidate ids of camera sources of incidents dismissed as false alarms
    false_alarm_candidates: set[str] = field(default_factory=set)
    missed: list[MissedReport] = field(default_factory=list)


def _cost(costs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    frames = shadow_frames = skipped = 0
    prod_ms = paired_ms = shadow_ms = 0.0
    for c in costs:
        frames += int(c.get("frames", 0))
        shadow_frames += int(c.get("shadow_frames", 0))
        skipped += int(c.get("shadow_skipped", 0))
        prod_ms += float(c.get("production_ms", 0.0))
        paired_ms += float(c.get("paired_production_ms", 0.0))
        shadow_ms += float(c.get("shadow_ms", 0.0))

    def per(a: float, n: int) -> float | None:
        return round(a / n, 2) if n else None

    return {
        "frames": frames,
        "shadow_frames": shadow_frames,
        "shadow_skipped": skipped,
        "share_shadowed": round(shadow_frames / frames, 3) if frames else None,
        "production_ms_per_frame": per(prod_ms, frames),
        # on the frames the shadow also saw: the like-for-like comparison
        "production_ms_per_shadowed_frame": per(paired_ms, shadow_frames),
        "shadow_ms_per_frame": per(shadow_ms, shadow_frames),
    }


def compare_records(
    records: Records,
    verdicts: LedgerVerdicts | None = None,
    *,
    window_s: float = 10.0,
    miss_window_s: float = 600.0,
    shadow_version: int | None = None,
    carry_s: float = 180.0,
) -> dict[str, Any]:
    """The compare report over records (and verdicts, if any). `shadow_version`: only that registry
    version's shadow candidates, cost windows and start records, production's candidates in that
    version's time on the same camera, and person-reported misses made while it ran. A shadow
    candidate raised within `carry_s` of the shadow's start for an episode production held at that
    start is agreement (`carried_over`), not shadow-only."""
    costs = records.costs
    shadow = [r for r in records.candidates if r.get("role") == "shadow"]
    starts = records.starts
    spans: dict[Any, list[tuple[int, int]]] = {}
    if shadow_version is not None:
        shadow = [r for r in shadow if r.get("registry_version") == shadow_version]
        costs = [c for c in costs if c.get("shadow_version") == shadow_version]
        starts = [st for st in starts if st.get("shadow_version") == shadow_version]
        # production over the same stretch of time on the same camera, so both had the same chance
        for c in costs:
            spans.setdefault(c.get("camera"), []).append((c["from_ts"], c["to_ts"]))
        production = [
            r for r in records.candidates
            if r.get("role") == "production" and any(a <= r["ts"] <= b for a, b in spans.get(r.get("camera"), []))
        ]  # fmt: skip
    else:
        production = [r for r in records.candidates if r.get("role") == "production"]
    pairs, prod_only, shadow_only = pair_candidates(production, shadow, int(window_s * 1000))
    carried = carried_over(shadow_only, starts, int(carry_s * 1000))
    shadow_only = [r for r in shadow_only if not any(r is c for c in carried)]
    report: dict[str, Any] = {
        "window_s": window_s,
        "cameras": sorted({r["camera"] for r in records.candidates} | {c["camera"] for c in costs}),
        "production_models": sorted({str(r.get("model_version")) for r in production}),
        "shadow_models": sorted({str(r.get("model_version")) for r in shadow}),
        "production_candidates": len(production),
        "shadow_candidates": len(shadow),
        "agreement": len(pairs) + len(carried),
        "carried_over": len(carried),
        "production_only": len(prod_only),
        "shadow_only": len(shadow_only),
        "agreement_rate": round(
            (len(pairs) + len(carried)) / (len(pairs) + len(carried) + len(prod_only) + len(shadow_only)), 3
        )
        if (pairs or carried or prod_only or shadow_only)
        else None,
        "cost": _cost(costs),
        "bad_lines": records.bad_lines,
    }
    if verdicts is None:
        report.update(
            {"false_alarms": None, "false_alarms_avoided": None, "missed": None, "misses_caught": None}
        )
        return report
    fa = verdicts.false_alarm_candidates
    prod_fa = [p for p in production if p["candidate_id"] in fa]
    avoided = [p for p in prod_only if p["candidate_id"] in fa]
    kept = [p for p, _ in pairs if p["candidate_id"] in fa]
    grids = {r.get("grid_id") for r in records.candidates if r.get("grid_id")}
    missed = [m for m in verdicts.missed if m.grid_id in grids]
    if spans:  # only reports the shadow had a chance to catch: made while it ran
        lo_ts = min(a for v in spans.values() for a, _ in v)
        hi_ts = max(b for v in spans.values() for _, b in v)
        missed = [m for m in missed if lo_ts <= m.reported_at <= hi_ts + int(window_s * 1000)]
    lo = int(miss_window_s * 1000)
    hi = int(window_s * 1000)
    caught = [
        m for m in missed
        if any(s.get("grid_id") == m.grid_id and s.get("category") == m.category
               and m.reported_at - lo <= s["ts"] <= m.reported_at + hi for s in shadow)
    ]  # fmt: skip
    report.update(
        {
            "miss_window_s": miss_window_s,
            "false_alarms": len(prod_fa),
            "false_alarms_avoided": len(avoided),
            "false_alarms_shared": len(kept),
            "false_alarms_avoided_ids": [p["candidate_id"] for p in avoided],
            "missed": len(missed),
            "misses_caught": len(caught),
            "misses_caught_incidents": [m.incident_id for m in caught],
        }
    )
    return report


def ledger_verdicts(ledger: Any, *, since_ms: int | None = None) -> LedgerVerdicts:
    """False-alarm verdicts and person-reported misses from the dispatch ledger (`Ledger.read()`)."""
    from sqlalchemy import select

    from gridwatch.dispatch.models import IncidentRow, IncidentSourceRow

    out = LedgerVerdicts()
    q = select(IncidentRow.incident_id, IncidentRow.state, IncidentRow.category, IncidentRow.grid_id,
               IncidentRow.created_at)  # fmt: skip
    if since_ms is not None:
        q = q.where(IncidentRow.created_at >= since_ms)
    with ledger.read() as s:
        incidents = {r.incident_id: r for r in s.execute(q)}
        sq = select(IncidentSourceRow.incident_id, IncidentSourceRow.candidate_id, IncidentSourceRow.source_kind,
                    IncidentSourceRow.observed_at)  # fmt: skip
        sources: dict[str, list[Any]] = {}
        for r in s.execute(sq):
            if r.incident_id in incidents:
                sources.setdefault(r.incident_id, []).append(r)
    for iid, inc in incidents.items():
        srcs = sources.get(iid, [])
        cams = [x for x in srcs if x.source_kind == "camera"]
        if inc.state == "false_alarm":
            out.false_alarm_candidates.update(x.candidate_id for x in cams)
        people = [x for x in srcs if x.source_kind in PERSON_SOURCES]
        if people and not cams and inc.state != "false_alarm":
            at = min(x.observed_at for x in people)
            out.missed.append(MissedReport(iid, inc.category, inc.grid_id, int(at)))
    return out


# --- labelled clips -------------------------------------------------------------------------
def _events(
    per_clip: Sequence[dict[str, Any]], all_events: Iterable[tuple[str, str, str, float]]
) -> set[Any]:
    """The events a run caught: every labelled event of its clips but those it missed."""
    missed = {
        (c["clip"], m["category"], m["zone"], round(float(m["start_s"]), 4))
        for c in per_clip
        for m in c["missed"]
    }
    return {e for e in all_events if e not in missed}


def _fps(per_clip: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "clip": c["clip"],
            "category": x["category"],
            "zone": x["zone"],
            "ts": int(round(float(x["t_s"]) * 1000)),
        }
        for c in per_clip
        for x in c["candidates"]
        if x["outcome"] in ("fp", "duplicate")
    ]


def compare_clip_results(
    production: dict[str, Any],
    shadow: dict[str, Any],
    events: Iterable[tuple[str, str, str, float]],
    *,
    window_s: float = 10.0,
) -> dict[str, Any]:
    """Two `run_eval` results on the same clips: events each caught, false positives each avoided
    (paired by clip, category, zone within `window_s`), figures and ms per frame of each."""
    events = list(events)
    caught_p, caught_s = _events(production["per_clip"], events), _events(shadow["per_clip"], events)
    fp_p = [{**f, "camera": f["clip"]} for f in _fps(production["per_clip"])]
    fp_s = [{**f, "camera": f["clip"]} for f in _fps(shadow["per_clip"])]
    shared, fp_avoided, fp_new = pair_candidates(fp_p, fp_s, int(window_s * 1000))

    def side(r: dict[str, Any]) -> dict[str, Any]:
        o = r["overall"]
        frames, n, mean = r.get("frames_analysed") or 0, r.get("inferences") or 0, r.get("infer_ms_mean")
        return {
            "detector": r.get("detector"),
            "precision": o.get("precision"),
            "recall": o.get("recall"),
            "f1": o.get("f1"),
            "s_score": o.get("s_score"),
            "tp": o.get("tp"),
            "fp": o.get("fp"),
            "misses": o.get("misses"),
            "ms_per_frame": round(mean * n / frames, 2) if mean is not None and frames else None,
            "ms_per_inference": mean,
        }

    return {
        "events": len(events),
        "fps": production.get("fps"),
        "window_s": window_s,
        "production": side(production),
        "shadow": side(shadow),
        "events_both_caught": len(caught_p & caught_s),
        "events_production_only": len(caught_p - caught_s),
        "events_shadow_only": len(caught_s - caught_p),
        "events_caught_by_shadow_missed_by_production": sorted(
            f"{c}/{cat}/{z}@{t:g}s" for c, cat, z, t in caught_s - caught_p
        ),
        "false_positives_shared": len(shared),
        "false_positives_avoided": len(fp_avoided),
        "false_positives_new": len(fp_new),
    }


def resolve_model_ref(ref: str, cfg: Any) -> Path:
    """A model directory from `ref`: an existing directory, a registry alias (production, shadow,
    candidate: its pointer file) or a registry version number (needs the `train` extra)."""
    p = Path(ref)
    if p.is_dir():
        return p
    from gridwatch.model_registry import ALIASES, read_deployed

    if ref in ALIASES:
        d = read_deployed(cfg.models.registry_dir, "detector", ref)
        if d is None:
            raise ValueError(
                f"{ref!r}: the registry at {cfg.models.registry_dir} has no detector {ref} pointer"
            )
        return d.path
    if ref.isdigit():
        from gridwatch.model_registry import ModelRegistry

        return ModelRegistry(cfg.models.registry_dir).get("detector", int(ref)).path
    raise ValueError(f"{ref!r}: not a model directory, an alias ({', '.join(ALIASES)}) or a version number")


def compare_clips(
    clips_dir: Path,
    cfg: Any,
    production_dir: Path,
    shadow_dir: Path,
    *,
    fps: float | None = None,
    window_s: float = 10.0,
    console: Any = None,
) -> dict[str, Any]:
    """Both models through `run_eval` on the same clips and frames, then `compare_clip_results`."""
    from gridwatch.detectors.evaluate import load_clips, run_eval
    from gridwatch.detectors.verifier import build_camera_detector

    det = cfg.cameras.detector
    if "model_dir" not in type(det).model_fields:
        raise ValueError(f"cameras.detector: type {det.type!r} has no model_dir to compare")
    results = []
    for d in (production_dir, shadow_dir):
        detector = build_camera_detector(cfg.cameras, det.model_copy(update={"model_dir": Path(d)}))
        try:
            results.append(run_eval(clips_dir, cfg, fps=fps, console=console, detector=detector))
        finally:
            detector.close()
    events = [
        (c.name, e.category, e.zone, round(float(e.start_s), 4))
        for c in load_clips(clips_dir)
        for e in c.sidecar.events
    ]
    return compare_clip_results(results[0], results[1], events, window_s=window_s)


def print_report(console: Any, report: dict[str, Any]) -> None:
    """The report as Rich tables (stderr); the JSON object is the caller's last stdout line."""
    from rich.table import Table

    if "production" in report and isinstance(report["production"], dict):  # labelled clips
        t = Table(title=f"shadow vs production on {report['events']} labelled events ({report['fps']} fps)")
        t.add_column("")
        t.add_column("production")
        t.add_column("shadow")
        for k in ("detector", "precision", "recall", "f1", "s_score", "tp", "fp", "misses", "ms_per_frame"):
            t.add_row(k, str(report["production"].get(k)), str(report["shadow"].get(k)))
        console.print(t)
        console.print(
            f"events: both {report['events_both_caught']}, production only {report['events_production_only']}, "
            f"shadow only {report['events_shadow_only']}; false positives: shared "
            f"{report['false_positives_shared']}, avoided by shadow {report['false_positives_avoided']}, "
            f"new with shadow {report['false_positives_new']}",
            highlight=False,
        )
        return
    t = Table(title=f"shadow vs production ({', '.join(report['cameras']) or 'no cameras'})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    c = report["cost"]
    rows = [
        ("production models", ", ".join(report["production_models"]) or "-"),
        ("shadow models", ", ".join(report["shadow_models"]) or "-"),
        ("production candidates", report["production_candidates"]),
        ("shadow candidates", report["shadow_candidates"]),
        (f"agreement (both, within {report['window_s']:g} s)", report["agreement"]),
        ("  ... of which raised by production before the shadow started", report["carried_over"]),
        ("production only", report["production_only"]),
        ("shadow only", report["shadow_only"]),
        ("false alarms (production, operators' verdict)", report["false_alarms"]),
        ("  ... the shadow would have avoided", report["false_alarms_avoided"]),
        ("missed incidents (reported by a person)", report["missed"]),
        ("  ... the shadow would have caught", report["misses_caught"]),
        ("frames / shadowed / skipped", f"{c['frames']} / {c['shadow_frames']} / {c['shadow_skipped']}"),
        ("production ms per frame (all / shadowed frames)",
         f"{c['production_ms_per_frame']} / {c['production_ms_per_shadowed_frame']}"),
        ("shadow ms per frame", c["shadow_ms_per_frame"]),
    ]  # fmt: skip
    for k, v in rows:
        t.add_row(k, "n/a (no ledger)" if v is None else str(v))
    console.print(t)
