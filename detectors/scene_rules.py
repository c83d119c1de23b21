"""The camera incident rules: gathering, road blockage, illegal dumping. Pure and synchronous.

Each rule watches one zone and is fed, per analysed frame, `(ts_ms, tracked detections, static
foreground or None)`; it returns `IncidentCandidate`s, exactly one per episode, and re-arms only
when the episode has ended (hysteresis). There is no clock and no I/O here: time is the frame's
timestamp, so a replay of the same frames and detections gives the same candidates with the same
ids (`IncidentCandidate.make_id(camera, camera_id, "<rule>:<zone>[@<cell>]", episode start)`, the
cell being the object's place on a 40 px grid for per-object rules; `raised_at` is the frame time
too). Evidence is the caller's job (`detectors/evidence.py`).

`CameraRules` wires one camera: ByteTrack (detectors/tracking.py), the dual background model
(detectors/background.py, only when the camera has a no-dumping zone and frames are given) and
one rule per zone. docs/CAMERA_RULES.md explains the thresholds.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gridwatch.detectors.background import BackgroundConfig, DualBackground, StaticForeground
from gridwatch.detectors.tracking import StillObjectRegistry, Tracker, TrackerConfig, box_iou, class_group
from gridwatch.detectors.zones import (
    CameraZonesConfig,
    GatheringZone,
    NoDumpingZone,
    RoadwayZone,
    ZoneConfig,
    ZoneGeometry,
)
from gridwatch.schemas import Category, IncidentCandidate, SourceKind

Box = tuple[float, float, float, float]


# --- helpers --------------------------------------------------------------------------------
def class_names(detections: sv.Detections) -> np.ndarray:
    """The detector's class names (`data["class_name"]`), or empty strings if it gave none."""
    names = detections.data.get("class_name") if detections.data else None
    if names is None:
        return np.full(len(detections), "", dtype=object)
    return np.asarray(names)


def _track_ids(detections: sv.Detections, sel: np.ndarray) -> list[int]:
    if detections.tracker_id is None:
        return []
    return sorted(int(t) for t in detections.tracker_id[sel] if t is not None and t >= 0)


def _box(b: np.ndarray | Box) -> Box:
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


def _round_box(b: Box) -> list[float]:
    return [round(v, 1) for v in b]


def _overlap_fraction(inner: Box, outer: Box) -> float:
    """Fraction of `inner`'s area that lies inside `outer`."""
    iw = min(inner[2], outer[2]) - max(inner[0], outer[0])
    ih = min(inner[3], outer[3]) - max(inner[1], outer[1])
    area = (inner[2] - inner[0]) * (inner[3] - inner[1])
    if iw <= 0 or ih <= 0 or area <= 0:
        return 0.0
    return iw * ih / area


def _same_place(a: Box, b: Box) -> bool:
    # blob outlines grow and shrink as the models absorb and passers-by occlude, so "the same
    # object" is a loose test: some overlap, or one's centre inside the other
    if box_iou(a, b) >= 0.2:
        return True
    ax, ay = (a[0] + a[2]) / 2, (a[1] + a[3]) / 2
    bx, by = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return (b[0] <= ax <= b[2] and b[1] <= ay <= b[3]) or (a[0] <= bx <= a[2] and a[1] <= by <= a[3])


def _one_per_object(idx: np.ndarray, names: np.ndarray, detections: sv.Detections) -> list[int]:
    """`idx` without boxes that overlap a higher-scoring box of the same class group (IoU >= 0.7).

    The detector's NMS is per class: a parked van comes as a "car" and a "truck" box on the same
    pixels, which would otherwise be two still objects and two candidates.
    """
    conf = detections.confidence if detections.confidence is not None else np.ones(len(detections))
    kept: list[int] = []
    for i in sorted((int(i) for i in idx), key=lambda i: -float(conf[i])):
        g = class_group(str(names[i]))
        if not any(
            class_group(str(names[k])) == g and box_iou(detections.xyxy[i], detections.xyxy[k]) >= 0.7
            for k in kept
        ):
            kept.append(i)
    return sorted(kept)


PLACE_CELL_PX = 40


def _place_cell(box: Box) -> str:
    """Coarse cell of a box's centre: stable under detector jitter, distinct for objects apart."""
    return f"{int((box[0] + box[2]) / 2 // PLACE_CELL_PX)}.{int((box[1] + box[3]) / 2 // PLACE_CELL_PX)}"


def _candidate(
    camera_id: str,
    zone: ZoneConfig,
    category: Category,
    rule: str,
    observed_at: int,
    raised_at: int,
    summary: str,
    confidence: float,
    details: dict[str, Any],
    model_version: str | None,
    place: Box | None = None,
) -> IncidentCandidate:
    # the zone is part of the id's rule key (two zones can start episodes in the same frame), and
    # for per-object rules so is the object's place: two cars first seen in the same frame (every
    # parked car when a worker starts) are two incidents, not one id
    key = f"{rule}:{zone.id}" if place is None else f"{rule}:{zone.id}@{_place_cell(place)}"
    return IncidentCandidate(
        candidate_id=IncidentCandidate.make_id(SourceKind.CAMERA, camera_id, key, observed_at),
        category=category,
        severity=zone.severity,
        source_kind=SourceKind.CAMERA,
        source_id=camera_id,
        grid_id=zone.grid_id,
        location=zone.ground_location(),
        observed_at=observed_at,
        raised_at=raised_at,
        rule=rule,
        summary=summary,
        confidence=round(float(min(max(confidence, 0.0), 1.0)), 3),
        model_version=model_version,
        details={"zone_id": zone.id, "zone_kind": zone.kind, **details},
    )


class HeldCondition:
    """A sampled yes/no condition that must hold `hold_s` (dips tolerated) to start an episode.

    Before an episode: the clock starts at the first true sample; a run of false samples longer
    than `max_dip_s` (or a gap in the samples that long) restarts it. The episode starts on a true
    sample at least `hold_s` after the clock started, if at least `hold_fraction` of the samples of
    the last `hold_s` were true. It ends once the condition has been false for `clear_s`; then the
    condition re-arms. The episode start is the first true sample of the run (deterministic).
    """

    def __init__(self, hold_s: float, hold_fraction: float, max_dip_s: float, clear_s: float) -> None:
        self.hold_ms = int(hold_s * 1000)
        self.hold_fraction = hold_fraction
        self.max_dip_ms = int(max_dip_s * 1000)
        self.clear_ms = int(clear_s * 1000)
        self.active = False
        self.run_start: int | None = None
        self.episode_start: int | None = None
        self.last_true: int | None = None
        self.last_ts: int | None = None
        self.fraction = 0.0  # true share of the last hold_s when the episode started
        self._samples: deque[tuple[int, bool]] = deque()

    def update(self, ts: int, value: bool) -> str | None:
        """Feed one sample; returns "start", "end" or None."""
        if self.last_ts is not None and ts <= self.last_ts:
            return None  # a repeated frame: replays change nothing
        gap = 0 if self.last_ts is None else ts - self.last_ts
        self.last_ts = ts
        if self.active:
            if value:
                self.last_true = ts
            elif self.last_true is not None and ts - self.last_true >= self.clear_ms:
                self.active = False
                self.run_start = self.episode_start = None
                self._samples.clear()
                return "end"
            return None
        if self.run_start is not None and (
            gap > self.max_dip_ms
            or (not value and self.last_true is not None and ts - self.last_true > self.max_dip_ms)
        ):
            self.run_start = None
            self._samples.clear()
        if value:
            self.last_true = ts
            if self.run_start is None:
                self.run_start = ts
        if self.run_start is None:
            return None
        self._samples.append((ts, value))
        while self._samples and self._samples[0][0] < ts - self.hold_ms:
            self._samples.popleft()
        if value and ts - self.run_start >= self.hold_ms:
            frac = sum(v for _, v in self._samples) / len(self._samples)
            if frac >= self.hold_fraction:
                self.active = True
                self.episode_start = self.run_start
                self.fraction = frac
                return "start"
        return None


# --- rules ----------------------------------------------------------------------------------
class _ZoneRule:
    def __init__(self, camera_id: str, geometry: ZoneGeometry, model_version: str | None = None) -> None:
        self.camera_id = camera_id
        self.geo = geometry
        self.model_version = model_version

    def step(
        self, ts_ms: int, detections: sv.Detections, static: StaticForeground | None = None
    ) -> list[IncidentCandidate]:
        raise NotImplementedError

    def occupied(self) -> bool:
        """Whether an episode this rule raised is still going on (closure verification asks)."""
        raise NotImplementedError


class GatheringRule(_ZoneRule):
    """More than `max_people` people (or density over `max_density_per_m2`) held for `dwell_s`."""

    RULE = "gathering"

    def __init__(self, camera_id: str, geometry: ZoneGeometry, model_version: str | None = None) -> None:
        super().__init__(camera_id, geometry, model_version)
        z = geometry.zone
        assert isinstance(z, GatheringZone)
        self.zone = z
        self.cond = HeldCondition(z.dwell_s, z.hold_fraction, z.max_dip_s, z.clear_s)
        self._max_count = 0

    def occupied(self) -> bool:
        return self.cond.active

    def _over(self, count: int) -> bool:
        z = self.zone
        if z.max_people is not None and count > z.max_people:
            return True
        return (
            z.max_density_per_m2 is not None
            and z.area_m2 is not None
            and count / z.area_m2 > z.max_density_per_m2
        )

    def step(
        self, ts_ms: int, detections: sv.Detections, static: StaticForeground | None = None
    ) -> list[IncidentCandidate]:
        z = self.zone
        sel = np.isin(class_names(detections), z.classes) & self.geo.contains_anchor(detections)
        count = int(sel.sum())
        over = self._over(count)
        event = self.cond.update(ts_ms, over)
        # largest count of the current run or episode, for the details
        running = self.cond.run_start is not None or self.cond.active
        self._max_count = max(self._max_count, count) if running else 0
        if event != "start":
            return []
        start = self.cond.episode_start
        assert start is not None
        conf = detections.confidence[sel] if detections.confidence is not None and count else None
        mean_conf = float(conf.mean()) if conf is not None and len(conf) else 1.0
        density = count / z.area_m2 if z.area_m2 else None
        limit = f"limit {z.max_people}" if z.max_people is not None else f"limit {z.max_density_per_m2:g}/m²"
        return [
            _candidate(
                self.camera_id,
                z,
                Category.GATHERING,
                self.RULE,
                start,
                ts_ms,
                f"{count} people in {z.name()} for {(ts_ms - start) / 1000:.0f} s ({limit})",
                self.cond.fraction * mean_conf,
                {
                    "count": count,
                    "max_count": self._max_count,
                    "max_people": z.max_people,
                    "density_per_m2": None if density is None else round(density, 3),
                    "max_density_per_m2": z.max_density_per_m2,
                    "held_fraction": round(self.cond.fraction, 3),
                    "track_ids": _track_ids(detections, sel),
                },
                self.model_version,
            )
        ]


class RoadBlockageRule(_ZoneRule):
    """A vehicle still in the lane for `dwell_s` (per object), or lane occupancy held for `dwell_s`."""

    RULE_STILL = "road_blockage_still"
    RULE_OCCUPANCY = "road_blockage_occupancy"

    def __init__(self, camera_id: str, geometry: ZoneGeometry, model_version: str | None = None) -> None:
        super().__init__(camera_id, geometry, model_version)
        z = geometry.zone
        assert isinstance(z, RoadwayZone)
        self.zone = z
        self.dwell_ms = int(z.dwell_s * 1000)
        self.registry = StillObjectRegistry(
            match_iou=z.match_iou,
            move_frac=z.still_move_frac,
            move_confirm=z.move_confirm,
            forget_s=z.forget_s,
        )
        self.occupancy = (
            HeldCondition(z.dwell_s, z.hold_fraction, z.max_dip_s, z.clear_s) if z.occupancy_above else None
        )

    def occupied(self) -> bool:
        still = any(o.episode_id is not None for o in self.registry.objects.values())
        return still or bool(self.occupancy is not None and self.occupancy.active)

    def step(
        self, ts_ms: int, detections: sv.Detections, static: StaticForeground | None = None
    ) -> list[IncidentCandidate]:
        z = self.zone
        out: list[IncidentCandidate] = []
        names = class_names(detections)
        sel = np.isin(names, z.classes) & self.geo.contains_anchor(detections)
        tids = detections.tracker_id
        confs = detections.confidence
        for i in _one_per_object(np.flatnonzero(sel), names, detections):
            tid = int(tids[i]) if tids is not None and tids[i] >= 0 else None
            conf = float(confs[i]) if confs is not None else 1.0
            obj = self.registry.observe(ts_ms, z.id, str(names[i]), detections.xyxy[i], tid, conf)
            if obj.episode_id is None and obj.still_for_ms(ts_ms) >= self.dwell_ms:
                cand = _candidate(
                    self.camera_id,
                    z,
                    Category.ROAD_BLOCKAGE,
                    self.RULE_STILL,
                    obj.still_since,
                    ts_ms,
                    f"{obj.class_name} still in {z.name()} for {obj.still_for_ms(ts_ms) / 1000:.0f} s",
                    obj.confidence,
                    {
                        "object_id": obj.object_id,
                        "class_name": obj.class_name,
                        "box": _round_box(obj.last_box),
                        "track_ids": list(obj.track_ids),
                        "still_s": obj.still_for_ms(ts_ms) / 1000,
                    },
                    self.model_version,
                    place=obj.ref_box,  # where it stopped: the same in a replay, whatever the jitter
                )
                obj.episode_id, obj.episode_start = cand.candidate_id, obj.still_since
                out.append(cand)
        # an object unseen for forget_s is gone: its episode ends and a new stop re-arms the rule
        self.registry.expire(ts_ms)

        if self.occupancy is not None:
            assert z.occupancy_above is not None
            cov = self.geo.coverage(detections.xyxy[sel])
            level = z.occupancy_clear_level() if self.occupancy.active else z.occupancy_above
            if self.occupancy.update(ts_ms, cov >= level) == "start":
                start = self.occupancy.episode_start
                assert start is not None
                out.append(
                    _candidate(
                        self.camera_id,
                        z,
                        Category.ROAD_BLOCKAGE,
                        self.RULE_OCCUPANCY,
                        start,
                        ts_ms,
                        f"lane occupancy {cov:.0%} in {z.name()} for {(ts_ms - start) / 1000:.0f} s",
                        self.occupancy.fraction,
                        {
                            "occupancy": round(cov, 3),
                            "occupancy_above": z.occupancy_above,
                            "held_fraction": round(self.occupancy.fraction, 3),
                            "track_ids": _track_ids(detections, sel),
                        },
                        self.model_version,
                    )
                )
        return out


@dataclass
class _LeftEpisode:
    box: Box
    candidate_id: str
    observed_at: int
    last_seen: int


@dataclass
class _LeftObservation:
    box: Box
    since: int
    source: str  # "background" or "detector"
    area_px: float
    confirmed: bool = False  # a detector class of left objects overlaps it
    attended: bool = False  # a person/vehicle box covers it: it may be them, or they are with it
    class_name: str | None = None
    track_ids: list[int] = field(default_factory=list)


class DumpingRule(_ZoneRule):
    """A new still object in a no-dumping zone for `dwell_s`: background blobs, confirmed by the detector."""

    RULE = "illegal_dumping"

    def __init__(self, camera_id: str, geometry: ZoneGeometry, model_version: str | None = None) -> None:
        super().__init__(camera_id, geometry, model_version)
        z = geometry.zone
        assert isinstance(z, NoDumpingZone)
        self.zone = z
        self.dwell_ms = int(z.dwell_s * 1000)
        self.clear_ms = int(z.clear_s * 1000)
        self.visit_ms = int(z.visit_window_s * 1000)
        self.registry = StillObjectRegistry(forget_s=z.clear_s)
        self.episodes: list[_LeftEpisode] = []
        self.visits: deque[int] = deque()
        #: when this rule started watching, and where the detector saw left-object classes in its
        #: first `scenery_s`: those places are scenery for the detector path
        self.watch_start: int | None = None
        self.scenery: list[Box] = []
        self.owned: list[Box] = []  # first seen with someone: not scenery

    def occupied(self) -> bool:
        return bool(self.episodes)

    def relearn_scenery(self) -> None:
        """Start a new scenery window at the next frame (a new detector: it may see objects the
        last one did not); the scenery and episodes so far stay."""
        self.watch_start = None

    def step(
        self, ts_ms: int, detections: sv.Detections, static: StaticForeground | None = None
    ) -> list[IncidentCandidate]:
        z = self.zone
        names = class_names(detections)
        xyxy = detections.xyxy
        visitor = np.isin(names, z.visitor_classes)
        visitor_boxes = [_box(xyxy[i]) for i in np.flatnonzero(visitor)]
        if any(self.geo.intersects_box(b) for b in visitor_boxes):
            self.visits.append(ts_ms)
        keep_ms = self.visit_ms + self.dwell_ms + self.clear_ms
        while self.visits and self.visits[0] < ts_ms - keep_ms:
            self.visits.popleft()

        # detector path: left-object classes in the zone, still (registry: survives id switches)
        bag_sel = np.isin(names, z.object_classes) & self.geo.contains_anchor(detections)
        bag_boxes: list[Box] = []
        obs: list[_LeftObservation] = []
        tids = detections.tracker_id
        if self.watch_start is None:
            self.watch_start = ts_ms
        learning_scenery = ts_ms - self.watch_start < int(z.scenery_s * 1000)
        for i in _one_per_object(np.flatnonzero(bag_sel), names, detections):
            b = _box(xyxy[i])
            bag_boxes.append(b)
            known = any(_same_place(b, s) for s in (*self.scenery, *self.owned))
            if learning_scenery and not known:
                # first sight while the rule learns the scene: part of it, unless someone is carrying
                # it or standing right at it (then it is theirs, and left when they go)
                (self.owned if self._attended(b, visitor_boxes) else self.scenery).append(b)
            if any(_same_place(b, s) for s in self.scenery):
                continue  # still confirms a background blob (bag_boxes), never a left object itself
            tid = int(tids[i]) if tids is not None and tids[i] >= 0 else None
            conf = float(detections.confidence[i]) if detections.confidence is not None else 1.0
            o = self.registry.observe(ts_ms, z.id, str(names[i]), b, tid, conf)
            obs.append(
                _LeftObservation(
                    box=o.last_box,
                    since=o.still_since,
                    source="detector",
                    area_px=(b[2] - b[0]) * (b[3] - b[1]),
                    confirmed=True,
                    attended=self._attended(b, visitor_boxes),
                    class_name=o.class_name,
                    track_ids=list(o.track_ids),
                )
            )
        self.registry.expire(ts_ms)

        # background path: static blobs inside the zone, of a plausible size
        if static is not None and not static.global_change:
            for blob in static.blobs:
                if not (z.min_area_px <= blob.area_px <= z.max_area_px):
                    continue
                if blob.area_px > z.max_zone_fraction * self.geo.area_px:
                    continue
                if self.geo.box_fraction_inside(blob.box) < 0.5:
                    continue
                obs.append(
                    _LeftObservation(
                        box=blob.box,
                        since=blob.since_ms,
                        source="background",
                        area_px=blob.area_px,
                        confirmed=any(_same_place(blob.box, b) for b in bag_boxes),
                        # a standing person or a parked car is static foreground too; it is
                        # not dumping while it is there
                        attended=any(_overlap_fraction(blob.box, v) >= 0.5 for v in visitor_boxes),
                    )
                )

        out: list[IncidentCandidate] = []
        for o in obs:
            ep = next((e for e in self.episodes if _same_place(o.box, e.box)), None)
            if ep is not None:
                ep.last_seen = ts_ms  # the episode's object is still there: no new candidate
                continue
            if o.attended or ts_ms - o.since < self.dwell_ms:
                continue
            visited = any(o.since - self.visit_ms <= v <= o.since for v in self.visits)
            if z.require_visit and not visited:
                continue
            cand = self._raise(ts_ms, o, visited)
            self.episodes.append(_LeftEpisode(o.box, cand.candidate_id, o.since, ts_ms))
            out.append(cand)
        self.episodes = [e for e in self.episodes if ts_ms - e.last_seen <= self.clear_ms]
        return out

    @staticmethod
    def _attended(box: Box, visitor_boxes: list[Box]) -> bool:
        # a bag whose centre lies within a person's box grown by half its width is still with them
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        for v in visitor_boxes:
            m = (v[2] - v[0]) / 2
            if v[0] - m <= cx <= v[2] + m and v[1] <= cy <= v[3] + m:
                return True
        return False

    def _raise(self, ts_ms: int, o: _LeftObservation, visited: bool) -> IncidentCandidate:
        z = self.zone
        if o.source == "background":
            conf = 0.5 + (0.2 if o.confirmed else 0.0) + (0.25 if visited else 0.0)
        else:
            conf = 0.6 + (0.25 if visited else 0.0)
        what = o.class_name or "object"
        extra = ", after a visit" if visited else ""
        return _candidate(
            self.camera_id,
            z,
            Category.ILLEGAL_DUMPING,
            self.RULE,
            o.since,
            ts_ms,
            f"{what} left in {z.name()} for {(ts_ms - o.since) / 1000:.0f} s{extra}",
            min(conf, 0.95),
            {
                "source": o.source,
                "box": _round_box(o.box),
                "area_px": round(o.area_px),
                "confirmed_by_detector": o.confirmed,
                "visited": visited,
                "class_name": o.class_name,
                "track_ids": o.track_ids,
            },
            self.model_version,
            place=o.box,
        )


RULES: dict[str, type[_ZoneRule]] = {
    "gathering": GatheringRule,
    "roadway": RoadBlockageRule,
    "no_dumping": DumpingRule,
}


# --- one camera -----------------------------------------------------------------------------
class CameraRulesConfig(BaseModel):
    """Everything the camera rules of one camera need."""

    model_config = ConfigDict(extra="forbid")

    camera: CameraZonesConfig = Field(title="Camera", description="Camera id, frame size and zones.")
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, title="Tracker", description="ByteTrack.")
    background: BackgroundConfig = Field(
        default_factory=BackgroundConfig,
        title="Background model",
        description="Dual background model of the dumping rule (runs only with a no-dumping zone).",
    )

    @model_validator(mode="after")
    def _dwell_under_absorption(self) -> CameraRulesConfig:
        for z in self.camera.zones:
            if isinstance(z, NoDumpingZone) and z.dwell_s > self.background.long_tau_s / 2:
                raise ValueError(
                    f"zone {z.id!r}: dwell_s {z.dwell_s:g} is over half the background long_tau_s "
                    f"{self.background.long_tau_s:g}; the long model would absorb a left object before the rule "
                    "fires. Raise background.long_tau_s or lower dwell_s."
                )
        return self


@dataclass
class CameraStep:
    ts_ms: int
    detections: sv.Detections  # tracked (tracker_id set)
    static: StaticForeground | None
    candidates: list[IncidentCandidate]
    background_ms: float = 0.0  # time spent in the background model


class CameraRules:
    """Tracker + background model + one rule per zone, for one camera. Feed frames in time order."""

    def __init__(self, cfg: CameraRulesConfig, model_version: str | None = None) -> None:
        self.cfg = cfg
        cam = cfg.camera
        self.geometries = [ZoneGeometry(z, cam.frame_size) for z in cam.zones]
        self.rules: list[_ZoneRule] = [
            RULES[g.zone.kind](cam.camera_id, g, model_version) for g in self.geometries
        ]
        self.tracker = Tracker(cfg.tracker)
        needs_bg = any(isinstance(z, NoDumpingZone) for z in cam.zones)
        self.background = DualBackground(cfg.background) if needs_bg else None

    def set_model_version(self, model_version: str | None) -> None:
        """A new detector took over (hot swap): later candidates name it; episodes carry on. What
        it sees in its first moments is learned as scenery again (a fine-tune that adds `bag` sees
        the litter that was always there: not dumping)."""
        for rule in self.rules:
            rule.model_version = model_version
            if isinstance(rule, DumpingRule):
                rule.relearn_scenery()

    def occupied_zones(self) -> list[str]:
        """The zones whose rule holds an episode now (what a fresh rule state would raise again
        after its dwell: the shadow's start record, detectors/shadow.py)."""
        return [g.zone.id for g, rule in zip(self.geometries, self.rules, strict=True) if rule.occupied()]

    def zone_occupied(self, zone_id: str) -> bool:
        """Whether the rule of `zone_id` still sees the episode it raised (KeyError: no such zone)."""
        for g, rule in zip(self.geometries, self.rules, strict=True):
            if g.zone.id == zone_id:
                return rule.occupied()
        raise KeyError(f"camera {self.cfg.camera.camera_id} has no zone {zone_id!r}")

    def step(
        self, ts_ms: int, frame: np.ndarray | None = None, detections: sv.Detections | None = None
    ) -> CameraStep:
        w, h = self.cfg.camera.frame_size
        if frame is not None and frame.shape[:2] != (h, w):
            raise ValueError(
                f"camera {self.cfg.camera.camera_id}: frame is {frame.shape[1]}x{frame.shape[0]} but the zones "
                f"were drawn on {w}x{h} (camera.frame_size); resize the frame or redraw the zones"
            )
        tracked = self.tracker.update(detections if detections is not None else sv.Detections.empty())
        static = None
        bg_ms = 0.0
        if self.background is not None and frame is not None:
            t0 = time.perf_counter()
            static = self.background.apply(ts_ms, frame)
            bg_ms = (time.perf_counter() - t0) * 1000
        cands: list[IncidentCandidate] = []
        for rule in self.rules:
            cands.extend(rule.step(ts_ms, tracked, static))
        return CameraStep(ts_ms, tracked, static, cands, bg_ms)
