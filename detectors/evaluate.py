"""`gridwatch eval detectors DIR`: the camera pipeline on labelled clips, scored event by event.

Each clip in DIR is `NAME.mp4` with a sidecar `NAME.json` (`ClipSidecar`, docs/EVALUATION.md):
frame size, zones with their dwell (and `min_people` for gatherings), labelled events. Every clip
runs through the code the RTSP cameras run: `FileSource` (the clip's own timestamps, the frames on
the analysed-rate slots, as fast as the CPU allows) -> `CameraPipeline` (motion gate, the
configured detector, ByteTrack, zones, rules). The clip's zones replace the camera's; the
detector, the motion gate and (from the config's first camera, if any) the tracker and background
settings come from the config, so a user evaluates their own settings.

Matching (`match`): a candidate of the event's category and zone whose time (when it was raised)
lies in `[start_s, end_s + 2 s]` is a true positive, the first one; later ones for the same event
are duplicates and count as false positives; candidates matching no event are false positives;
events without a candidate are misses. Delay past dwell = `t - start_s - dwell_s`. Per category
and overall: precision, recall, F1, delay median / max / RMSE and the AI City Challenge score
`S = F1 x (1 - min(RMSE, 300 s) / 300 s)`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from shapely.geometry import Polygon

from gridwatch.detectors.background import BackgroundConfig
from gridwatch.detectors.base import Detector
from gridwatch.detectors.pipeline import CameraPipeline
from gridwatch.detectors.scene_rules import CameraRulesConfig
from gridwatch.detectors.tracking import TrackerConfig
from gridwatch.detectors.zones import CameraZonesConfig, GatheringZone, NoDumpingZone, RoadwayZone
from gridwatch.ingest.camera import FileSource
from gridwatch.schemas import SENSOR_ID_PATTERN

if TYPE_CHECKING:
    from gridwatch.config import GridwatchConfig

__all__ = [
    "CATEGORIES",
    "ClipSidecar",
    "EvalError",
    "Outcome",
    "Prediction",
    "TruthEvent",
    "default_fps",
    "load_clips",
    "load_sidecar",
    "match",
    "clip_rules",
    "rules_for_clip",
    "run_eval",
    "score",
]

CATEGORIES = ("illegal_dumping", "gathering", "road_blockage")
ZONE_KIND_OF = {"illegal_dumping": "no_dumping", "gathering": "gathering", "road_blockage": "roadway"}
END_TOLERANCE_S = 2.0  # a candidate up to this long after the event's end still counts
RMSE_CAP_S = 300.0  # the AI City Challenge's normalisation
DEFAULT_FPS = 2.0
EPOCH_MS = 1_700_000_000_000  # the clips' first frame, so candidate ids are the same on every run


class EvalError(Exception):
    """A clip set that cannot be evaluated; the message names the file and the field."""


# --- the sidecar ---------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SidecarZone(_Model):
    id: str = Field(pattern=SENSOR_ID_PATTERN, title="Zone id", description="Unique within the clip.")
    kind: Literal["roadway", "no_dumping", "gathering"] = Field(
        title="Kind", description="Which rule watches the zone."
    )
    polygon: list[tuple[float, float]] = Field(
        min_length=3, title="Polygon", description="Vertices [x, y] in pixels of the clip's frames, in order."
    )
    dwell_s: float = Field(
        gt=0, le=3600, title="Dwell", description="How long the condition must hold before a candidate."
    )
    min_people: int | None = Field(
        None,
        ge=1,
        title="Minimum people",
        description="Gathering zones only: the crowd is this many people or more (the rule's max_people "
        "is min_people - 1, as it needs MORE than max_people).",
    )

    @field_validator("polygon")
    @classmethod
    def _simple(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if any(x < 0 or y < 0 for x, y in v):
            raise ValueError("vertices are pixel coordinates and cannot be negative")
        shape = Polygon(v)
        if not shape.is_valid or shape.area < 4:
            raise ValueError(
                "polygon must be simple (vertices in order around the zone) and enclose some area"
            )
        return v

    @model_validator(mode="after")
    def _people(self) -> SidecarZone:
        if self.kind == "gathering" and self.min_people is None:
            raise ValueError("min_people: a gathering zone needs it")
        if self.kind != "gathering" and self.min_people is not None:
            raise ValueError(f"min_people: only gathering zones have it (this zone is {self.kind})")
        return self


class SidecarEvent(_Model):
    category: Literal["illegal_dumping", "gathering", "road_blockage"] = Field(
        title="Category", description="What happens."
    )
    zone: str = Field(title="Zone", description="Id of the zone it happens in.")
    start_s: float = Field(
        ge=0,
        title="Start",
        description="Clip seconds when the condition begins: object placed, vehicle stopped, crowd reaches "
        "min_people.",
    )
    end_s: float = Field(gt=0, title="End", description="Clip seconds when the condition ends.")
    note: str = Field("", title="Note", description="What it is, for people reading the results.")


class SidecarSource(_Model):
    package: str = Field(title="Package", description="Where the footage comes from (package or site).")
    version: str = Field(title="Version", description="Version of that package.")
    path: str = Field(title="Path", description="The footage's path in it.")
    licence: str = Field(title="Licence", description="The footage's licence.")


class ClipSidecar(_Model):
    """`NAME.json` next to `NAME.mp4`: the clip, its zones and its labelled events."""

    version: Literal[1] = Field(title="Format version", description="Always 1.")
    video: str = Field(title="Video", description="The clip's file name: NAME.mp4 for NAME.json.")
    fps: float = Field(gt=0, le=120, title="Frame rate", description="Frames per second of the video.")
    width: int = Field(ge=16, title="Width", description="Frame width in pixels.")
    height: int = Field(ge=16, title="Height", description="Frame height in pixels.")
    duration_s: float = Field(gt=0, title="Duration", description="Length of the video in seconds.")
    zones: list[SidecarZone] = Field(min_length=1, title="Zones", description="Zones the rules watch.")
    events: list[SidecarEvent] = Field(
        default_factory=list, title="Events", description="Labelled events; none: a negative clip."
    )
    source: SidecarSource = Field(title="Source", description="Provenance of the footage.")
    notes: str = Field("", title="Notes", description="What the clip shows, how it was made.")

    @model_validator(mode="after")
    def _consistent(self) -> ClipSidecar:
        ids: dict[str, SidecarZone] = {}
        for i, z in enumerate(self.zones):
            if z.id in ids:
                raise ValueError(f"zones[{i}].id: {z.id!r} appears twice")
            ids[z.id] = z
            if any(x > self.width or y > self.height for x, y in z.polygon):
                raise ValueError(f"zones[{i}].polygon: vertices outside the {self.width}x{self.height} frame")
        for i, e in enumerate(self.events):
            z = ids.get(e.zone)
            if z is None:
                raise ValueError(f"events[{i}].zone: unknown zone {e.zone!r} (zones: {', '.join(ids)})")
            if z.kind != ZONE_KIND_OF[e.category]:
                raise ValueError(
                    f"events[{i}].zone: a {e.category} event needs a {ZONE_KIND_OF[e.category]} zone; "
                    f"{z.id!r} is {z.kind}"
                )
            if e.end_s <= e.start_s:
                raise ValueError(f"events[{i}].end_s: {e.end_s:g} is not after start_s {e.start_s:g}")
            if e.end_s > self.duration_s + 1 / self.fps:
                raise ValueError(
                    f"events[{i}].end_s: {e.end_s:g} is after the clip's end ({self.duration_s:g} s)"
                )
            if e.end_s - e.start_s < z.dwell_s:
                raise ValueError(
                    f"events[{i}]: lasts {e.end_s - e.start_s:g} s, less than the dwell_s of zone {z.id!r} "
                    f"({z.dwell_s:g} s): no rule can raise it; label it as a negative (no event) or lower "
                    "the dwell"
                )
        return self


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def load_sidecar(path: Path) -> ClipSidecar:
    """Read and validate one sidecar; errors name the file and the field."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise EvalError(f"{path}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    try:
        sc = ClipSidecar.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = str(err["msg"]).removeprefix("Value error, ")
            where = _where(tuple(err["loc"]))
            if where == "(top level)" and re.match(r"^\w+[\[.:]", msg):
                lines.append(f"{path}: {msg}")  # a cross-field check: its message starts with the field
            else:
                lines.append(f"{path}: {where}: {msg}")
        raise EvalError("\n".join(lines)) from None
    if sc.video != f"{path.stem}.mp4":
        raise EvalError(
            f"{path}: video: {sc.video!r} is not {path.stem + '.mp4'!r} (NAME.json labels NAME.mp4)"
        )
    return sc


@dataclass(frozen=True)
class Clip:
    sidecar_path: Path
    video_path: Path
    sidecar: ClipSidecar

    @property
    def name(self) -> str:
        return self.sidecar_path.stem


def check_video(clip: Clip) -> None:
    """The video exists and is what its sidecar says (size exactly: the polygons depend on it)."""
    sc, path = clip.sidecar, clip.video_path
    if not path.is_file():
        raise EvalError(f"{clip.sidecar_path}: video: {path} does not exist")
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise EvalError(f"{clip.sidecar_path}: video: OpenCV cannot open {path}")
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = cap.get(cv2.CAP_PROP_FPS)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    finally:
        cap.release()
    if (w, h) != (sc.width, sc.height):
        raise EvalError(
            f"{clip.sidecar_path}: width/height: the sidecar says {sc.width}x{sc.height}, "
            f"{path.name} is {w}x{h}"
        )
    if fps > 0 and abs(fps - sc.fps) > 0.01 * sc.fps:
        raise EvalError(f"{clip.sidecar_path}: fps: the sidecar says {sc.fps:g}, {path.name} has {fps:g}")
    if fps > 0 and count > 0 and abs(count / fps - sc.duration_s) > max(1.0, 2 / fps):
        raise EvalError(
            f"{clip.sidecar_path}: duration_s: the sidecar says {sc.duration_s:g} s, {path.name} lasts "
            f"{count / fps:.2f} s"
        )


def load_clips(clips_dir: Path) -> list[Clip]:
    """Every `*.json` sidecar in `clips_dir`, validated (all problems reported at once) with its video."""
    if not clips_dir.is_dir():
        raise EvalError(f"{clips_dir}: not a directory")
    paths = sorted(p for p in clips_dir.glob("*.json") if p.name != "MANIFEST.json")
    if not paths:
        raise EvalError(f"{clips_dir}: no clip sidecars (NAME.json next to NAME.mp4)")
    clips, problems = [], []
    for p in paths:
        try:
            clip = Clip(p, p.with_suffix(".mp4"), load_sidecar(p))
            check_video(clip)
            clips.append(clip)
        except EvalError as e:
            problems.append(str(e))
    if problems:
        raise EvalError("\n".join(problems))
    return clips


# --- matching and scoring (pure) -------------------------------------------------------------
@dataclass(frozen=True)
class Prediction:
    """One candidate: which clip, category, zone, and when it was raised (clip seconds)."""

    video: str
    category: str
    zone: str
    t_s: float


@dataclass(frozen=True)
class TruthEvent:
    video: str
    category: str
    zone: str
    start_s: float
    end_s: float
    dwell_s: float
    note: str = ""


@dataclass(frozen=True)
class Outcome:
    prediction: Prediction
    kind: Literal["tp", "duplicate", "fp"]
    event: int | None = None  # index into the events
    delay_s: float | None = None  # tp only: t - start_s - dwell_s


def match(
    predictions: Sequence[Prediction], events: Sequence[TruthEvent], tolerance_s: float = END_TOLERANCE_S
) -> tuple[list[Outcome], list[int]]:
    """Outcome of every prediction (in time order per video) and the indices of missed events.

    A prediction matches an event of its video, category and zone when `start_s <= t_s <= end_s +
    tolerance_s`. The first prediction for an event is its true positive (if several unmatched
    events fit, the earliest-starting one); a later one that fits only events already matched is a
    duplicate; one that fits none is a false positive.
    """
    matched: set[int] = set()
    outcomes: list[Outcome] = []
    for p in sorted(predictions, key=lambda p: (p.video, p.t_s, p.category, p.zone)):
        fits = [
            i
            for i, e in enumerate(events)
            if (e.video, e.category, e.zone) == (p.video, p.category, p.zone)
            and e.start_s <= p.t_s <= e.end_s + tolerance_s
        ]
        free = [i for i in fits if i not in matched]
        if free:
            i = min(free, key=lambda i: (events[i].start_s, i))
            matched.add(i)
            e = events[i]
            outcomes.append(Outcome(p, "tp", i, p.t_s - e.start_s - e.dwell_s))
        elif fits:
            outcomes.append(Outcome(p, "duplicate", min(fits, key=lambda i: (events[i].start_s, i))))
        else:
            outcomes.append(Outcome(p, "fp"))
    missed = [i for i in range(len(events)) if i not in matched]
    return outcomes, missed


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def figures(outcomes: Sequence[Outcome], n_events: int) -> dict[str, Any]:
    """Counts, precision / recall / F1, delay past dwell and S for one group of outcomes."""
    tp = sum(o.kind == "tp" for o in outcomes)
    dup = sum(o.kind == "duplicate" for o in outcomes)
    fp = dup + sum(o.kind == "fp" for o in outcomes)
    misses = n_events - tp
    delays = [o.delay_s for o in outcomes if o.kind == "tp" and o.delay_s is not None]
    rmse = math.sqrt(sum(d * d for d in delays) / len(delays)) if delays else None
    f1 = _ratio(2 * tp, 2 * tp + fp + misses)  # = 2PR / (P + R), and 0 when either is 0
    s = None if f1 is None else (f1 if rmse is None else f1 * (1 - min(rmse, RMSE_CAP_S) / RMSE_CAP_S))
    return {
        "events": n_events,
        "candidates": tp + fp,
        "tp": tp,
        "fp": fp,
        "duplicates": dup,
        "misses": misses,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, n_events),
        "f1": f1,
        "delay_median_s": statistics.median(delays) if delays else None,
        "delay_max_s": max(delays) if delays else None,
        "delay_rmse_s": rmse,
        "s_score": s,
    }


def score(
    predictions: Sequence[Prediction], events: Sequence[TruthEvent], tolerance_s: float = END_TOLERANCE_S
) -> dict[str, Any]:
    """{"categories": {category: figures}, "overall": figures} (every camera category, even if absent)."""
    outcomes, _ = match(predictions, events, tolerance_s)
    cats = list(CATEGORIES) + sorted({p.category for p in predictions} - set(CATEGORIES))
    return {
        "categories": {
            c: figures(
                [o for o in outcomes if o.prediction.category == c], sum(e.category == c for e in events)
            )
            for c in cats
        },
        "overall": figures(outcomes, len(events)),
    }


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


# --- running the pipeline ----------------------------------------------------------------------
def default_fps(cfg: GridwatchConfig) -> float:
    """The analysed rate of the config's first camera, or 2 fps when it has none."""
    feeds = cfg.cameras.feeds
    return float(feeds[0].source.analysed_fps) if feeds else DEFAULT_FPS


def camera_id_for(name: str) -> str:
    cid = re.sub(r"[^A-Za-z0-9_.\-]", "-", f"eval-{name}")
    return cid[:64]


def rules_for_clip(
    sc: ClipSidecar, camera_id: str, fps: float, base: CameraRulesConfig | None = None
) -> CameraRulesConfig:
    """The camera rules for a clip: its zones (dwell, min_people) on the base tracker and background.

    `min_people` N becomes `max_people` N - 1: the gathering rule needs MORE than max_people. Other
    zone parameters keep the zone models' defaults. The tracker runs at the analysed `fps`.
    """
    zones: list[GatheringZone | RoadwayZone | NoDumpingZone] = []
    for z in sc.zones:
        common: dict[str, Any] = {"id": z.id, "polygon": z.polygon, "dwell_s": z.dwell_s}
        if z.kind == "gathering":
            assert z.min_people is not None
            zones.append(GatheringZone(kind="gathering", max_people=z.min_people - 1, **common))
        elif z.kind == "roadway":
            zones.append(RoadwayZone(kind="roadway", **common))
        else:
            zones.append(NoDumpingZone(kind="no_dumping", **common))
    tracker = base.tracker if base is not None else TrackerConfig()
    return CameraRulesConfig(
        camera=CameraZonesConfig(camera_id=camera_id, frame_size=(sc.width, sc.height), zones=zones),
        tracker=tracker.model_copy(update={"fps": fps}),
        background=base.background if base is not None else BackgroundConfig(),
    )


@dataclass
class ClipRun:
    clip: Clip
    predictions: list[Prediction]
    frames: int
    inferences: int
    infer_ms: float
    wall_s: float
    repeated_ids: int


def clip_rules(clip: Clip, cfg: GridwatchConfig, fps: float) -> CameraRulesConfig:
    """`rules_for_clip` on the config's first camera's tracker and background (defaults without one)."""
    base = cfg.cameras.feeds[0].rules if cfg.cameras.feeds else None
    try:
        return rules_for_clip(clip.sidecar, camera_id_for(clip.name), fps, base)
    except ValidationError as e:
        raise EvalError(f"{clip.sidecar_path}: the camera rules refuse these zones: {e}") from None


def run_clip(
    clip: Clip,
    rules: CameraRulesConfig,
    cfg: GridwatchConfig,
    detector: Detector,
    fps: float,
    progress: Progress | None = None,
    task: TaskID | None = None,
) -> ClipRun:
    """One clip through FileSource -> CameraPipeline (no evidence snapshots); candidates as predictions."""
    sc = clip.sidecar
    cid = rules.camera.camera_id
    pipe = CameraPipeline(rules, detector, cfg.cameras.motion, None)
    preds: list[Prediction] = []
    seen: set[str] = set()
    repeated = 0
    t0 = time.perf_counter()
    done_s = 0.0
    with FileSource(clip.video_path, cid, analysed_fps=fps, epoch_ms=EPOCH_MS) as src:
        for frame in src.frames():
            step = pipe.process(frame.image, frame.ts_ms)
            for c in step.candidates:
                if c.candidate_id in seen:  # the same candidate again: fusion would merge it
                    repeated += 1
                    continue
                seen.add(c.candidate_id)
                zone = str(c.details.get("zone_id"))
                preds.append(Prediction(sc.video, str(c.category), zone, (c.raised_at - EPOCH_MS) / 1000))
            if progress is not None and task is not None:
                now_s = (frame.pts_ms or 0.0) / 1000
                progress.advance(task, max(0.0, now_s - done_s))
                done_s = now_s
    if progress is not None and task is not None:
        progress.advance(task, max(0.0, sc.duration_s - done_s))
    st = pipe.stats
    return ClipRun(clip, preds, st.frames, st.inferences, st.infer_ms, time.perf_counter() - t0, repeated)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


SUMMARY_COLUMNS = (
    "category",
    "events",
    "TP",
    "FP",
    "dup",
    "miss",
    "P",
    "R",
    "F1",
    "delay med",
    "max",
    "RMSE",
    "S",
)


def _print_tables(console: Console, result: dict[str, Any]) -> None:
    if not console.is_terminal:  # a log file or a pipe: don't squeeze the tables into 80 columns
        console = Console(file=console.file, width=max(console.width, 160), highlight=False)
    t = Table(title="clips", title_justify="left")
    for col in ("clip", "events", "TP", "FP", "dup", "miss"):
        t.add_column(col, justify="left" if col == "clip" else "right", no_wrap=True)
    t.add_column("candidates: category@zone, raised at (clip s), outcome, delay past dwell")
    for pc in result["per_clip"]:
        cands = [
            f"{c['category']}@{c['zone']} {c['t_s']:.1f}s {c['outcome']}"
            + (f" {c['delay_s']:+.1f}s" if c["delay_s"] is not None else "")
            for c in pc["candidates"]
        ]
        cands += [f"MISSED {m['category']}@{m['zone']} from {m['start_s']:g}s" for m in pc["missed"]]
        counts = (pc["events"], pc["tp"], pc["fp"], pc["duplicates"], pc["misses"])
        t.add_row(pc["clip"], *(str(v) for v in counts), ", ".join(cands) or "-")
    console.print(t)
    speed = result["speed_x_realtime"]
    s = Table(
        title=f"eval detectors: {result['clips']} clips, {result['fps']:g} fps analysed, "
        f"{result['detector']}" + (f", {speed:.1f}x real time" if speed is not None else ""),
        title_justify="left",
    )
    for col in SUMMARY_COLUMNS:
        s.add_column(col, justify="left" if col == "category" else "right", no_wrap=True)
    for name, f in [*result["categories"].items(), ("overall", result["overall"])]:
        counts = (f["events"], f["tp"], f["fp"], f["duplicates"], f["misses"])
        ratios = (_fmt(f["precision"]), _fmt(f["recall"]), _fmt(f["f1"]))
        delays = (_fmt(f[k], ".1f") for k in ("delay_median_s", "delay_max_s", "delay_rmse_s"))
        s.add_row(name, *(str(v) for v in counts), *ratios, *delays, _fmt(f["s_score"], ".3f"))
    console.print(s)


def run_eval(
    clips_dir: Path,
    cfg: GridwatchConfig,
    *,
    fps: float | None = None,
    predictions_path: Path | None = None,
    console: Console | None = None,
    detector: Detector | None = None,
) -> dict[str, Any]:
    """Evaluate every clip of `clips_dir`; print the tables to `console`, return the figures.

    `fps`: analysed frames per second (default `default_fps(cfg)`). `predictions_path`: also write
    every candidate as a JSON line {"video", "category", "zone", "t_s"}. `detector`: a ready
    detector to use instead of building `cfg.cameras.detector` (it is then not closed).
    Raises EvalError (message names file and field) for a clip set that cannot be evaluated.
    """
    console = console or Console(stderr=True)
    clips_dir = Path(clips_dir)
    fps = float(fps) if fps is not None else default_fps(cfg)
    if not 0 < fps <= 60:
        raise EvalError(f"--fps: {fps:g} is not in (0, 60]")
    clips = load_clips(clips_dir)
    rules = [clip_rules(c, cfg, fps) for c in clips]  # all refusals before any long work
    events = []
    for c in clips:
        dwell = {z.id: z.dwell_s for z in c.sidecar.zones}
        for e in c.sidecar.events:
            events.append(
                TruthEvent(c.sidecar.video, e.category, e.zone, e.start_s, e.end_s, dwell[e.zone], e.note)
            )
    own = detector is None
    if detector is None:
        from gridwatch.detectors.verifier import build_camera_detector

        detector = build_camera_detector(cfg.cameras)  # what the cameras run, verifier included
    det = detector
    out = None
    runs: list[ClipRun] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} clip s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    try:
        if predictions_path is not None:
            predictions_path = Path(predictions_path)
            predictions_path.parent.mkdir(parents=True, exist_ok=True)
            out = predictions_path.open("w")
        t0 = time.perf_counter()
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("clips", total=sum(c.sidecar.duration_s for c in clips))
            for c, r in zip(clips, rules, strict=True):
                progress.update(task, description=c.name)
                run = run_clip(c, r, cfg, det, fps, progress, task)
                runs.append(run)
                if out is not None:  # as we go: a long run interrupted still leaves what it saw
                    for p in run.predictions:
                        line = {
                            "video": p.video,
                            "category": p.category,
                            "zone": p.zone,
                            "t_s": round(p.t_s, 3),
                        }
                        out.write(json.dumps(line) + "\n")
                    out.flush()
        wall = time.perf_counter() - t0
    finally:
        if out is not None:
            out.close()
        if own:
            det.close()

    predictions = [p for r in runs for p in r.predictions]
    outcomes, missed = match(predictions, events)
    result: dict[str, Any] = {
        "clips_dir": str(clips_dir),
        "clips": len(clips),
        "fps": fps,
        "detector": det.model_version,
        "tolerance_s": END_TOLERANCE_S,
        **score(predictions, events),
    }
    per_clip = []
    for r in runs:
        video = r.clip.sidecar.video
        mine = [o for o in outcomes if o.prediction.video == video]
        n_ev = sum(e.video == video for e in events)
        f = figures(mine, n_ev)
        per_clip.append(
            {
                "clip": r.clip.name,
                "events": n_ev,
                "tp": f["tp"],
                "fp": f["fp"],
                "duplicates": f["duplicates"],
                "misses": f["misses"],
                "missed": [
                    {"category": events[i].category, "zone": events[i].zone, "start_s": events[i].start_s}
                    for i in missed
                    if events[i].video == video
                ],
                "candidates": [
                    {
                        "category": o.prediction.category,
                        "zone": o.prediction.zone,
                        "t_s": o.prediction.t_s,
                        "outcome": o.kind,
                        "delay_s": o.delay_s,
                    }
                    for o in mine
                ],
                "repeated_ids": r.repeated_ids,
                "wall_s": r.wall_s,
            }
        )
    clip_s = sum(c.sidecar.duration_s for c in clips)
    inferences = sum(r.inferences for r in runs)
    result.update(
        {
            "per_clip": per_clip,
            "frames_analysed": sum(r.frames for r in runs),
            "inferences": inferences,
            "infer_ms_mean": sum(r.infer_ms for r in runs) / inferences if inferences else None,
            "clip_seconds": clip_s,
            "wall_seconds": wall,
            "speed_x_realtime": clip_s / wall if wall > 0 else None,
            "predictions_path": str(predictions_path) if predictions_path is not None else None,
        }
    )
    result = _rounded(result)
    _print_tables(console, result)
    return result


# --- `python -m gridwatch.detectors.evaluate` (the same as `gridwatch eval detectors`) ----------
def main(argv: list[str] | None = None) -> int:
    from gridwatch.config import ConfigError, demo_config_path, load_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("clips_dir", type=Path, help="folder of NAME.mp4 + NAME.json clips")
    ap.add_argument(
        "--config", "-c", type=Path, help="gridwatch YAML file (default: the embedded demo config)"
    )
    ap.add_argument(
        "--fps", type=float, help="analysed frames per second (default: the config's cameras, or 2)"
    )
    ap.add_argument("--predictions", type=Path, help="also write every candidate as a JSON line")
    args = ap.parse_args(argv)
    console = Console(stderr=True)
    try:
        cfg = load_config(args.config or demo_config_path())
    except ConfigError as e:
        console.print(f"[red]configuration error[/red]\n{e}")
        return 2
    try:
        result = run_eval(
            args.clips_dir, cfg, fps=args.fps, predictions_path=args.predictions, console=console
        )
    except EvalError as e:
        console.print(f"[red]evaluation error[/red]\n{e}", highlight=False)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
