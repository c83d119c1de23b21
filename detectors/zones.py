"""Camera zones: pixel polygons with a kind, the grid they map to and the rule parameters.

A zone is drawn on the camera's image (pixels of the analysed frame, `CameraZonesConfig.frame_size`)
and says which rule watches it: `gathering` (people count / density), `roadway` (still vehicles,
lane occupancy) or `no_dumping` (left objects). Each kind has its own pydantic model; the `kind`
key selects it (a discriminated union), so a YAML zone is refused if it carries another kind's
parameters.

Membership of a detection is decided by ONE anchor point, the bottom centre of its box (via
`sv.PolygonZone`): that is where a person's feet or a vehicle's wheels touch the ground, so a
tall person standing outside a zone whose head overlaps it in the image is not counted, and
perspective (far objects high in the image) does not shift membership. Area questions (lane
occupancy, how much of a left-object blob lies in the zone) use a raster of the polygon.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import cv2
import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from shapely.geometry import Polygon

from gridwatch.schemas import SENSOR_ID_PATTERN, Location, Severity

VEHICLE_CLASSES = ("car", "truck", "bus", "motorcycle", "bicycle")
# COCO's bag-like classes, and `bag`: what a fine-tuned detector names a dumped sack or box
# (docs/TRAINING.md: a new class in a reused slot, named by the model's label map)
BAG_CLASSES = ("backpack", "suitcase", "handbag", "bag")


class ZoneKind(StrEnum):
    ROADWAY = "roadway"
    NO_DUMPING = "no_dumping"
    GATHERING = "gathering"


class _ZoneBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(
        pattern=SENSOR_ID_PATTERN,
        title="Zone id",
        description="Unique within the camera; appears in candidate details and candidate ids.",
    )
    label: str | None = Field(
        None, title="Label", description="Human name for summaries and snapshots, e.g. 'Market St bus lane'."
    )
    polygon: list[tuple[float, float]] = Field(
        min_length=3,
        title="Polygon",
        description="Vertices [x, y] in pixels of the analysed frame (origin top left), in order.",
    )
    grid_id: str | None = Field(
        None, title="Grid", description="City grid the zone lies in (city model id); copied to candidates."
    )
    location: tuple[float, float] | None = Field(
        None, title="Location", description="[lon, lat] (WGS84) of the zone on the ground, if surveyed."
    )
    dwell_s: float = Field(
        gt=0, le=86_400, title="Dwell", description="How long the condition must hold before a candidate."
    )
    clear_s: float = Field(
        10.0,
        gt=0,
        le=3_600,
        title="Clear time",
        description="How long the condition must be gone before the episode ends and the rule re-arms.",
    )
    severity: Severity = Field(
        Severity.MEDIUM, title="Severity", description="Severity of raised candidates."
    )

    @field_validator("polygon")
    @classmethod
    def _simple_polygon(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if any(x < 0 or y < 0 for x, y in v):
            raise ValueError("polygon vertices are pixel coordinates and cannot be negative")
        poly = Polygon(v)
        if not poly.is_valid or poly.area < 4:
            raise ValueError(
                "polygon must be simple (edges must not cross: list the vertices in order around the zone) "
                "and enclose some area"
            )
        return v

    @field_validator("location")
    @classmethod
    def _lon_lat(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (-180 <= v[0] <= 180 and -90 <= v[1] <= 90):
            raise ValueError("location is [lon, lat] in degrees; was it written as [lat, lon]?")
        return v

    def name(self) -> str:
        return self.label or self.id

    def ground_location(self) -> Location | None:
        return None if self.location is None else Location(lon=self.location[0], lat=self.location[1])


class GatheringZone(_ZoneBase):
    """More than `max_people` people (or more than `max_density_per_m2`) for `dwell_s`."""

    kind: Literal["gathering"] = Field(title="Kind", description="Gathering zone.")
    dwell_s: float = Field(120.0, gt=0, le=86_400, title="Dwell", description="How long the crowd must stay.")
    max_people: int | None = Field(
        None,
        ge=0,
        title="Max people",
        description="A candidate needs MORE than this many people in the zone.",
    )
    area_m2: float | None = Field(
        None, gt=0, title="Area", description="Ground area of the zone in square metres (for density)."
    )
    max_density_per_m2: float | None = Field(
        None,
        gt=0,
        title="Max density",
        description="A candidate needs more than this many people per square metre (needs `area_m2`).",
    )
    classes: list[str] = Field(
        default_factory=lambda: ["person"],
        min_length=1,
        title="Classes",
        description="Detector classes counted.",
    )
    hold_fraction: float = Field(
        0.7,
        gt=0,
        le=1,
        title="Hold fraction",
        description="Fraction of the samples of the last `dwell_s` that must be over the limit: detectors miss "
        "people in a crowd now and then, and a single short count must not reset the clock.",
    )
    max_dip_s: float = Field(
        5.0,
        ge=0,
        title="Longest dip",
        description="Before a candidate, a run of under-limit samples longer than this restarts the clock.",
    )

    @model_validator(mode="after")
    def _a_limit(self) -> GatheringZone:
        if self.max_people is None and self.max_density_per_m2 is None:
            raise ValueError("a gathering zone needs max_people or max_density_per_m2 (with area_m2)")
        if self.max_density_per_m2 is not None and self.area_m2 is None:
            raise ValueError("max_density_per_m2 needs area_m2: the zone's ground area in square metres")
        return self


class RoadwayZone(_ZoneBase):
    """A vehicle still for `dwell_s`, or lane occupancy over a limit for `dwell_s`."""

    kind: Literal["roadway"] = Field(title="Kind", description="Roadway (lane) zone.")
    dwell_s: float = Field(
        180.0, gt=0, le=86_400, title="Dwell", description="How long a vehicle must stay still."
    )
    severity: Severity = Field(Severity.HIGH, title="Severity", description="Severity of raised candidates.")
    classes: list[str] = Field(
        default_factory=lambda: list(VEHICLE_CLASSES),
        min_length=1,
        title="Classes",
        description="Detector classes that can block the road (vehicles; add e.g. 'suitcase' for objects).",
    )
    still_move_frac: float = Field(
        0.06,
        gt=0,
        le=1,
        title="Still tolerance",
        description="An object is still while its box centre stays within this fraction of its box size "
        "(sqrt(w*h)) of where it stopped. Detector jitter on a parked car is 1-3 %.",
    )
    move_confirm: int = Field(
        2,
        ge=1,
        le=20,
        title="Move confirmation",
        description="Consecutive displaced observations needed to call the object moving (one odd box, e.g. "
        "while someone walks past it, must not restart its dwell).",
    )
    match_iou: float = Field(
        0.6,
        gt=0,
        le=1,
        title="Re-identification IoU",
        description="A box overlapping a recently lost still object at least this much takes over its "
        "identity and dwell start (survives tracker id switches).",
    )
    forget_s: float = Field(
        60.0,
        gt=0,
        title="Forget after",
        description="A still object unseen this long is forgotten and its episode ends.",
    )
    occupancy_above: float | None = Field(
        None,
        gt=0,
        le=1,
        title="Occupancy limit",
        description="Lane occupancy (fraction of the zone covered by boxes of `classes`) above which, held "
        "for `dwell_s`, a candidate is raised. Off when unset.",
    )
    occupancy_clear: float | None = Field(
        None,
        ge=0,
        le=1,
        title="Occupancy clear",
        description="Occupancy below which the episode may end (hysteresis). Default: 0.7 x the limit.",
    )
    hold_fraction: float = Field(
        0.7, gt=0, le=1, title="Hold fraction", description="As for gathering, for the occupancy condition."
    )
    max_dip_s: float = Field(
        5.0, ge=0, title="Longest dip", description="As for gathering, for the occupancy condition."
    )

    @model_validator(mode="after")
    def _clear_below_limit(self) -> RoadwayZone:
        if (
            self.occupancy_above is not None
            and self.occupancy_clear is not None
            and self.occupancy_clear > self.occupancy_above
        ):
            raise ValueError(
                "occupancy_clear must not exceed occupancy_above (it is the hysteresis low mark)"
            )
        return self

    def occupancy_clear_level(self) -> float:
        assert self.occupancy_above is not None
        return self.occupancy_clear if self.occupancy_clear is not None else 0.7 * self.occupancy_above


class NoDumpingZone(_ZoneBase):
    """A new still object (background model and/or detector) staying `dwell_s`."""

    kind: Literal["no_dumping"] = Field(title="Kind", description="No-dumping zone.")
    dwell_s: float = Field(
        60.0,
        gt=0,
        le=3_600,
        title="Dwell",
        description="How long a left object must stay. Keep well under the background model's long_tau_s, "
        "which slowly absorbs what stays.",
    )
    clear_s: float = Field(
        30.0, gt=0, le=3_600, title="Clear time", description="Object gone this long: episode ends, re-arm."
    )
    min_area_px: float = Field(
        250.0, gt=0, title="Min area", description="Smallest left object, in square pixels of the frame."
    )
    max_area_px: float = Field(
        40_000.0,
        gt=0,
        title="Max area",
        description="Largest left object in square pixels; bigger static regions are parked vehicles or "
        "lighting, not dumping.",
    )
    max_zone_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        title="Max zone fraction",
        description="A static region covering more of the zone than this is a shadow or a light change.",
    )
    object_classes: list[str] = Field(
        default_factory=lambda: list(BAG_CLASSES),
        title="Object classes",
        description="Detector classes of left objects: they confirm a background blob, and a still one "
        "is a left object by itself (COCO has no 'rubbish bag'; a fine-tuned model's `bag` is one).",
    )
    scenery_s: float = Field(
        10.0,
        ge=0,
        le=3_600,
        title="Scenery window",
        description="Objects the detector sees in the zone within this many seconds of the camera starting to "
        "watch are part of the scene (litter, a bin, a parked bag), never raised: the detector's "
        "counterpart of the background model's first frames. 0: none.",
    )
    visitor_classes: list[str] = Field(
        default_factory=lambda: ["person", *VEHICLE_CLASSES],
        title="Visitor classes",
        description="Detector classes whose visit to the zone before an object appears raises confidence.",
    )
    visit_window_s: float = Field(
        120.0,
        gt=0,
        title="Visit window",
        description="A visit counts if it happened this long before the object became still, or after.",
    )
    require_visit: bool = Field(
        False,
        title="Require visit",
        description="Raise only when a visitor was seen (needs a detector; off for background-only cameras).",
    )

    @model_validator(mode="after")
    def _areas(self) -> NoDumpingZone:
        if self.min_area_px >= self.max_area_px:
            raise ValueError("min_area_px must be smaller than max_area_px")
        return self


ZoneConfig = Annotated[GatheringZone | RoadwayZone | NoDumpingZone, Field(discriminator="kind")]


class CameraZonesConfig(BaseModel):
    """The zones of one camera."""

    model_config = ConfigDict(extra="forbid")

    camera_id: str = Field(
        pattern=SENSOR_ID_PATTERN,
        title="Camera id",
        description="Configured camera id (candidates' source_id).",
    )
    frame_size: tuple[int, int] = Field(
        title="Frame size",
        description="[width, height] of the analysed frame the polygons are drawn on.",
    )
    zones: list[ZoneConfig] = Field(default_factory=list, title="Zones", description="Zones of this camera.")

    @field_validator("frame_size")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 16 or v[1] < 16:
            raise ValueError("frame_size is [width, height] in pixels, each at least 16")
        return v

    @model_validator(mode="after")
    def _zones_fit(self) -> CameraZonesConfig:
        seen: set[str] = set()
        w, h = self.frame_size
        for z in self.zones:
            if z.id in seen:
                raise ValueError(f"zone id {z.id!r} appears twice; zone ids must be unique per camera")
            seen.add(z.id)
            if any(x > w or y > h for x, y in z.polygon):
                raise ValueError(
                    f"zone {z.id!r} has vertices outside the {w}x{h} frame; were they drawn on another resolution?"
                )
        return self


class ZoneGeometry:
    """A zone's geometry, prepared once: anchor membership, rasters for area questions."""

    # occupancy is computed on a raster this many pixels on the long side: fine enough for a
    # fraction, and independent of the camera's resolution
    _RASTER = 256

    def __init__(self, zone: ZoneConfig, frame_size: tuple[int, int]) -> None:
        self.zone = zone
        self.frame_size = frame_size
        pts = np.asarray(zone.polygon, dtype=np.float64)
        self.polygon_px = np.round(pts).astype(np.int64)
        self.shape = Polygon(zone.polygon)
        self.area_px = float(self.shape.area)
        self._sv_zone = sv.PolygonZone(self.polygon_px, triggering_anchors=(sv.Position.BOTTOM_CENTER,))
        x0, y0, x1, y1 = self.shape.bounds
        self._origin = (x0, y0)
        self._scale = self._RASTER / max(x1 - x0, y1 - y0, 1.0)
        rw, rh = int(np.ceil((x1 - x0) * self._scale)) + 1, int(np.ceil((y1 - y0) * self._scale)) + 1
        self._raster = np.zeros((rh, rw), np.uint8)
        cv2.fillPoly(self._raster, [np.round((pts - (x0, y0)) * self._scale).astype(np.int32)], 1)
        self._raster_area = max(int(self._raster.sum()), 1)

    def contains_anchor(self, detections: sv.Detections) -> np.ndarray:
        """Boolean per detection: its bottom-centre anchor lies in the zone."""
        if len(detections) == 0:
            return np.zeros(0, dtype=bool)
        return self._sv_zone.trigger(detections)

    def coverage(self, boxes: np.ndarray) -> float:
        """Fraction of the zone's area covered by the union of `boxes` (xyxy pixels)."""
        if len(boxes) == 0:
            return 0.0
        canvas = np.zeros_like(self._raster)
        x0, y0 = self._origin
        for bx0, by0, bx1, by1 in boxes:
            c0 = int(np.floor((bx0 - x0) * self._scale))
            r0 = int(np.floor((by0 - y0) * self._scale))
            c1 = int(np.ceil((bx1 - x0) * self._scale))
            r1 = int(np.ceil((by1 - y0) * self._scale))
            canvas[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = 1
        return float(np.count_nonzero(canvas & self._raster)) / self._raster_area

    def box_fraction_inside(self, box: tuple[float, float, float, float] | np.ndarray) -> float:
        """Fraction of a box's area that lies inside the zone."""
        x0, y0, x1, y1 = (float(v) for v in box)
        area = max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
        if area <= 0:
            return 0.0
        return float(self.shape.intersection(Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])).area) / area

    def intersects_box(self, box: tuple[float, float, float, float] | np.ndarray) -> bool:
        return self.box_fraction_inside(box) > 0
