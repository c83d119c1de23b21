"""Tracking for the camera rules: supervision's ByteTrack, wrapped thinly, and a still-object registry.

Cameras are analysed at 2-5 frames per second, not the 25-30 ByteTrack's defaults assume:

* `lost_track_buffer` counts frames *at 30 fps* (ByteTrack keeps a lost track for
  `int(frame_rate / 30 * lost_track_buffer)` analysed frames), so the wrapper takes seconds
  (`lost_s`) and converts; 3 s keeps a person through a short occlusion, while longer would let
  the Kalman prediction of a walker drift onto someone else in a crowd.
* At 3 fps a walking person moves a third to a half of their box width between frames, so
  frame-to-frame IoU is often 0.3-0.5 and ByteTrack's default match gate (cost 1 - IoU x score
  < 0.8) loses them; `matching_threshold` 0.9 accepts IoU x score >= 0.1. Parked vehicles, the
  case the rules care most about, match at IoU ~0.9 anyway.
* `minimum_consecutive_frames` stays 1: at 3 fps two frames are 0.7 s, and ByteTrack drops the
  detections of unconfirmed tracks from its output, which would undercount a crowd.

Track ids are not identities: a parked car whose detection drops out for longer than `lost_s`
(a bus passes in front, the light changes, the detector's score dips) comes back with a new id.
`StillObjectRegistry` keeps still objects per zone and class group; a box that re-appears at
IoU >= `match_iou` with a recently seen still object takes over its identity and dwell start, so
dwell time, and the one incident per parked car, survive id switches.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field

from gridwatch.detectors.zones import BAG_CLASSES, VEHICLE_CLASSES

# detectors flip between car/truck/bus on the same parked van, and between bag classes: the
# registry keys by group so a flip is not a new object
CLASS_GROUPS: dict[str, str] = {
    **{c: "vehicle" for c in VEHICLE_CLASSES},
    **{c: "bag" for c in BAG_CLASSES},
}


def class_group(class_name: str) -> str:
    return CLASS_GROUPS.get(class_name, class_name)


class TrackerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fps: float = Field(
        3.0, gt=0, le=60, title="Analysed fps", description="Frames per second fed to the tracker."
    )
    lost_s: float = Field(
        3.0,
        gt=0,
        le=60,
        title="Lost-track buffer",
        description="Seconds a lost track is kept for re-association (converted to ByteTrack's 30-fps frames).",
    )
    activation_threshold: float = Field(
        0.3,
        gt=0,
        lt=1,
        title="Activation threshold",
        description="Detection score for the first association; a new track needs this + 0.1.",
    )
    matching_threshold: float = Field(
        0.9,
        gt=0,
        le=1,
        title="Matching threshold",
        description="Largest association cost 1 - IoU x score. 0.9 (IoU x score >= 0.1) suits 2-5 fps.",
    )
    min_consecutive_frames: int = Field(
        1, ge=1, le=10, title="Confirmation frames", description="Frames before a track is reported."
    )


class Tracker:
    """ByteTrack configured for low analysed frame rates. Feed every analysed frame, even empty."""

    def __init__(self, cfg: TrackerConfig | None = None) -> None:
        self.cfg = cfg or TrackerConfig()
        with warnings.catch_warnings():
            # supervision 0.28+ flags sv.ByteTrack for removal in 0.31 in favour of the separate
            # `trackers` package; the constructor's warning is that notice, known and tracked
            warnings.simplefilter("ignore")
            self._bt = sv.ByteTrack(
                track_activation_threshold=self.cfg.activation_threshold,
                lost_track_buffer=max(1, round(self.cfg.lost_s * 30)),
                minimum_matching_threshold=self.cfg.matching_threshold,
                frame_rate=self.cfg.fps,
                minimum_consecutive_frames=self.cfg.min_consecutive_frames,
            )

    def update(self, detections: sv.Detections) -> sv.Detections:
        """Detections with `tracker_id` set; detections not (yet) on a track are dropped (ByteTrack)."""
        if detections.confidence is None:
            detections = sv.Detections(
                xyxy=detections.xyxy,
                class_id=detections.class_id,
                confidence=np.ones(len(detections), dtype=np.float32),
                data=detections.data,
            )
        return self._bt.update_with_detections(detections)

    def reset(self) -> None:
        self._bt.reset()


def box_iou(a: np.ndarray | tuple[float, ...], b: np.ndarray | tuple[float, ...]) -> float:
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = min(ax1, bx1) - max(ax0, bx0)
    ih = min(ay1, by1) - max(ay0, by0)
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class StillObject:
    object_id: int
    zone_id: str
    group: str
    ref_box: tuple[float, float, float, float]  # where it stopped; stillness is measured from here
    last_box: tuple[float, float, float, float]
    still_since: int  # ms; survives track-id switches
    first_seen: int
    last_seen: int
    class_name: str
    confidence: float
    track_ids: list[int] = field(default_factory=list)
    moved_count: int = 0  # consecutive displaced observations
    episode_id: str | None = None  # candidate id while its episode is open
    episode_start: int | None = None

    def still_for_ms(self, ts: int) -> int:
        return ts - self.still_since


class StillObjectRegistry:
    """Identity and dwell of (possibly) still objects, keyed by zone + class group + box IoU.

    Pure bookkeeping: the caller decides which boxes to observe (e.g. vehicles in a roadway zone).
    """

    def __init__(
        self,
        *,
        match_iou: float = 0.6,
        move_frac: float = 0.06,
        move_confirm: int = 2,
        forget_s: float = 60.0,
    ) -> None:
        self.match_iou = match_iou
        self.move_frac = move_frac
        self.move_confirm = move_confirm
        self.forget_ms = int(forget_s * 1000)
        self.objects: dict[int, StillObject] = {}
        self._next_id = 1
        self._by_track: dict[tuple[str, str, int], int] = {}

    def observe(
        self,
        ts: int,
        zone_id: str,
        class_name: str,
        box: np.ndarray | tuple[float, float, float, float],
        track_id: int | None = None,
        confidence: float = 1.0,
    ) -> StillObject:
        """Record one box seen at `ts`; returns its object (existing or new). One call per box per frame."""
        group = class_group(class_name)
        b = tuple(float(v) for v in box)
        obj = None
        if track_id is not None:
            oid = self._by_track.get((zone_id, group, track_id))
            cand = self.objects.get(oid) if oid is not None else None
            if cand is not None and cand.last_seen < ts:
                obj = cand
        if obj is None:
            # a track id the registry has not seen with this object: maybe the tracker lost it and
            # started a new id. Take over the best-overlapping object not yet claimed in this frame.
            best, best_iou = None, self.match_iou
            for o in self.objects.values():
                if o.zone_id != zone_id or o.group != group or o.last_seen >= ts:
                    continue
                iou = box_iou(b, o.last_box)
                if iou >= best_iou:
                    best, best_iou = o, iou
            obj = best
        if obj is None:
            obj = StillObject(
                object_id=self._next_id,
                zone_id=zone_id,
                group=group,
                ref_box=b,  # type: ignore[arg-type]
                last_box=b,  # type: ignore[arg-type]
                still_since=ts,
                first_seen=ts,
                last_seen=ts,
                class_name=class_name,
                confidence=confidence,
            )
            self._next_id += 1
            self.objects[obj.object_id] = obj
        else:
            if self._displaced(b, obj.ref_box):
                obj.moved_count += 1
                if obj.moved_count >= self.move_confirm:
                    # it moves: its stillness (and any open episode) starts over from here
                    obj.ref_box = b  # type: ignore[assignment]
                    obj.still_since = ts
                    obj.moved_count = 0
                    obj.episode_id = obj.episode_start = None
            else:
                obj.moved_count = 0
            obj.last_box = b  # type: ignore[assignment]
            obj.last_seen = ts
            obj.class_name = class_name
            obj.confidence = max(obj.confidence * 0.9, confidence)
        if track_id is not None:
            self._by_track[(zone_id, group, track_id)] = obj.object_id
            if track_id not in obj.track_ids:
                obj.track_ids.append(track_id)
        return obj

    def _displaced(self, box: tuple[float, ...], ref: tuple[float, ...]) -> bool:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        rx, ry = (ref[0] + ref[2]) / 2, (ref[1] + ref[3]) / 2
        size = max((ref[2] - ref[0]) * (ref[3] - ref[1]), 1.0) ** 0.5
        return ((cx - rx) ** 2 + (cy - ry) ** 2) ** 0.5 > self.move_frac * size

    def expire(self, ts: int) -> list[StillObject]:
        """Forget objects unseen for `forget_s`; returns them (their episodes end)."""
        gone = [o for o in self.objects.values() if ts - o.last_seen > self.forget_ms]
        for o in gone:
            del self.objects[o.object_id]
        if gone:
            ids = {o.object_id for o in gone}
            self._by_track = {k: v for k, v in self._by_track.items() if v not in ids}
        return gone
