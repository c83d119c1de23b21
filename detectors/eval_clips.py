"""The shipped evaluation clips: labelled events composited into real footage, and hard negatives.

`gridwatch eval detectors DIR` scores the camera pipeline on clips with sidecars
(detectors/evaluate.py). This module makes the project's own set from the OpenCV sample
`vtest.avi` (768x576, 10 fps, 79.5 s: people walking across a campus plaza, a van and a car
parked at a kerb; Debian `opencv-doc`, Apache-2.0), reproducibly: no randomness without a fixed
seed, no detector involved, so the same footage gives the same pixels.

What is composited, and from where:

* **people**: real walkers cut out of other frames of the footage (difference from the footage's
  median background, which is empty because everyone keeps walking), scaled to the depth they
  are pasted at (`person_height`, fitted on NanoDet boxes of the walkers). They glide (one pose)
  and sway by a pixel when standing.
* **a vehicle**: the footage's own parked van, cut out with a hand-drawn outline, scaled for depth.
* **dumped objects**: textured, shaded soft ellipses (bags, sacks; `scenarios.make_bag`) and a
  cardboard box; people carry them in and drop them, or they appear.
* **light**: a global exposure step, a cloud shadow ramping over a region.

Ground truth is *derived* from the composited actors, never typed by hand: an object that appears
after the first frame and stays still in a no-dumping zone for at least the zone's dwell is a
dumping event from the moment it appears; a vehicle still in a roadway zone for the dwell is a
blockage from the moment it stopped; a gathering runs while at least `min_people` composited
people stand with their feet in the zone, for at least the dwell. Shorter stays, objects present
from the first frame and crowds walking through are hard negatives by the same rule. Each recipe
states how many events of each category it means to have, and generation fails if the derived
truth disagrees. The footage's own walkers are not labelled: they never stop, and the gathering
threshold is above how many of them the detector counts in the zone at once.

Layouts: `native` (768x576 at 10 fps), `mirror` (flipped left-right, polygons mirrored), `small`
(640x480 at 25 fps, frames repeated as a 25 fps camera would send them).

The committed sidecars (`eval/clips/*.json`) are what the recipes give (`--write-sidecars`
rewrites them); `build_clips` writes the videos to `var/eval-clips/` with a copy of each sidecar
and a `MANIFEST.json` (hashes of this file, the footage and the sidecars) so a cached set is
rebuilt only when something it depends on changed. Entry point: `scripts/make_eval_clips.py`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from shapely.geometry import Point, Polygon

from gridwatch.detectors.scenarios import make_bag

REPO = Path(__file__).resolve().parent.parent
FOOTAGE = REPO / "var" / "footage" / "vtest.avi"
SIDECAR_DIR = REPO / "eval" / "clips"
OUT_DIR = REPO / "var" / "eval-clips"
MANIFEST = "MANIFEST.json"

#: sha256 of the vtest.avi in Debian 12's opencv-doc 4.6.0+dfsg-12 (the file the set was built from)
VTEST_SHA256 = "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf"
SRC_W, SRC_H, SRC_FPS, SRC_FRAMES = 768, 576, 10.0, 795
SOURCE = {
    "package": "opencv-doc (Debian 12)",
    "version": "4.6.0+dfsg-12",
    "path": "usr/share/doc/opencv-doc/examples/data/vtest.avi",
    "licence": "Apache-2.0",
}

Kind = Literal["person", "vehicle", "object"]
LayoutName = Literal["native", "mirror", "small"]


def person_height(foot_y: float) -> float:
    """Height in pixels of a walker whose feet are at `foot_y` in vtest.avi.

    Fitted on NanoDet person boxes of the footage (feet at y 154 -> 58 px, 412 -> 114 px, 576 ->
    147 px); also used as the depth scale of vehicles and their crops.
    """
    return 24.6 + 0.217 * foot_y


# --- zones (native 768x576 pixels) ----------------------------------------------------------------
@dataclass(frozen=True)
class ZoneSpec:
    id: str
    kind: Literal["roadway", "no_dumping", "gathering"]
    polygon: tuple[tuple[float, float], ...]
    dwell_s: float = 10.0
    min_people: int | None = None


ZONES: tuple[ZoneSpec, ...] = (
    # the service road from the car park (top right) down to the plaza; the parked van and car at
    # the kerb above it stay outside (their wheels are at y <= 100)
    ZoneSpec("road", "roadway", ((500, 135), (690, 108), (768, 108), (768, 200), (720, 270), (520, 250))),
    # the paved area in front of the camera, east
    ZoneSpec("paved", "no_dumping", ((540, 330), (745, 330), (745, 455), (540, 455))),
    # the lawn, west: the footage's own litter (a yellow sheet, since the first frame) lies in it
    ZoneSpec("lawn", "no_dumping", ((30, 300), (320, 330), (320, 560), (30, 560))),
    # the plaza where the paths meet: in the unedited footage NanoDet (2 fps) counts 6 walkers in it
    # in 4 of 159 samples, never more, never for more than 1.5 s; 6 standing is a crowd
    ZoneSpec(
        "square",
        "gathering",
        ((280, 215), (560, 215), (660, 300), (660, 410), (280, 360)),
        min_people=6,
    ),
)
ZONE_BY_ID = {z.id: z for z in ZONES}
_ZONE_SHAPES = {z.id: Polygon(z.polygon) for z in ZONES}
CATEGORY_OF_KIND = {"no_dumping": "illegal_dumping", "roadway": "road_blockage", "gathering": "gathering"}


# --- sprites --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Sprite:
    """A cut-out: BGR float32 image, alpha (h, w, 1); `foot_y` is where its bottom stood in the
    footage (depth-scaled with `person_height`), None for objects drawn at their own size."""

    image: np.ndarray
    alpha: np.ndarray
    foot_y: float | None = None

    @functools.lru_cache(maxsize=64)  # noqa: B019 - sprites live as long as the build
    def scaled(self, scale_key: int) -> tuple[np.ndarray, np.ndarray]:
        s = scale_key / 1000
        h, w = self.image.shape[:2]
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        if (nw, nh) == (w, h):
            return self.image, self.alpha
        img = cv2.resize(self.image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        a = cv2.resize(self.alpha, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, 1)
        return img, a

    def scale_at(self, y: float) -> float:
        return 1.0 if self.foot_y is None else person_height(y) / person_height(self.foot_y)


def paste(frame: np.ndarray, img: np.ndarray, alpha: np.ndarray, x0: int, y0: int) -> None:
    """Alpha-blend `img` into `frame` with its top-left corner at (x0, y0), clipped to the frame."""
    h, w = img.shape[:2]
    fh, fw = frame.shape[:2]
    ax, ay, bx, by = max(x0, 0), max(y0, 0), min(x0 + w, fw), min(y0 + h, fh)
    if ax >= bx or ay >= by:
        return
    sx, sy = ax - x0, ay - y0
    a = alpha[sy : sy + by - ay, sx : sx + bx - ax]
    roi = frame[ay:by, ax:bx].astype(np.float32)
    frame[ay:by, ax:bx] = (roi * (1 - a) + img[sy : sy + by - ay, sx : sx + bx - ax] * a + 0.5).astype(
        np.uint8
    )


def make_box(seed: int, size: tuple[int, int] = (46, 36), base: tuple[int, int, int] = (62, 112, 160)):
    """A cardboard box seen from above the front: lit top face, shaded front, a tape stripe."""
    w, h = size
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    top = int(h * 0.35)
    img[:top] *= 1.25  # the lit top face
    img[top:] *= 0.85
    img[:, w // 2 - 3 : w // 2 + 3] = (150, 175, 190)  # packing tape
    img += rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    alpha = np.zeros((h, w), np.float32)
    alpha[1:-1, 1:-1] = 1
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0)[..., None]
    return Sprite(np.clip(img, 0, 255), alpha)


def bag_sprite(seed: int, size: tuple[int, int], base: tuple[int, int, int]) -> Sprite:
    img, alpha = make_bag(seed, size=size, base=base)
    return Sprite(img, alpha)


# the footage's parked van in its first frame, and its outline in that crop (drawn by hand)
VAN_CROP = (646, 36, 730, 104)  # x0, y0, x1, y1 in the frame
VAN_OUTLINE = ((7, 14), (12, 8), (66, 8), (70, 18), (76, 36), (78, 54), (74, 61), (56, 64), (20, 64), (7, 59))


# --- the footage, its background and its people ---------------------------------------------------
class Footage:
    """vtest.avi: frames by index, the median background, person and van cut-outs (computed once)."""

    def __init__(self, path: Path = FOOTAGE) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"footage {path} missing: run scripts/fetch_footage.sh")
        self.path = path
        self._bg: np.ndarray | None = None
        self._people: list[Sprite] | None = None
        self._van: Sprite | None = None

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def frames(self, start: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise FileNotFoundError(f"cannot open footage {self.path}")
        try:
            i = 0
            while count is None or i < start + count:
                if i < start:
                    if not cap.grab():
                        return
                else:
                    ok, frame = cap.read()
                    if not ok:
                        return
                    yield frame
                i += 1
        finally:
            cap.release()

    def _analyse(self) -> None:
        # every 8th frame: enough for a median without anyone in it (nobody stands for 4 s),
        # and for walkers at 100 different moments
        sampled = [f for i, f in enumerate(self.frames()) if i % 8 == 0]
        self._bg = np.median(np.stack(sampled), axis=0).astype(np.uint8)
        first = next(self.frames(0, 1))
        self._van = self._cut_van(first)
        self._people = self._cut_people(sampled[::3])

    @staticmethod
    def _cut_van(first: np.ndarray) -> Sprite:
        x0, y0, x1, y1 = VAN_CROP
        crop = first[y0:y1, x0:x1].astype(np.float32)
        mask = np.zeros(crop.shape[:2], np.float32)
        cv2.fillPoly(mask, [np.asarray(VAN_OUTLINE, np.int32)], 1.0)
        alpha = cv2.GaussianBlur(mask, (3, 3), 0)[..., None]
        return Sprite(crop, alpha, foot_y=float(y1))

    def _cut_people(self, frames: Sequence[np.ndarray]) -> list[Sprite]:
        assert self._bg is not None
        close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
        out: list[Sprite] = []
        for f in frames:
            diff = cv2.absdiff(f, self._bg).max(axis=2)
            m = (diff > 35).astype(np.uint8)
            m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
            m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, close, iterations=2)
            n, lab, st, _ = cv2.connectedComponentsWithStats(m)
            for j in range(1, n):
                x, y, w, h, area = (int(v) for v in st[j])
                foot = y + h
                expect = person_height(foot)
                # one whole person: as tall as a walker there, upright, solid, not cut by the frame
                # edge or the lamp post (x 422-437), on the paths (not the far car park)
                if not (0.8 * expect <= h <= 1.25 * expect and 0.25 * h <= w <= 0.5 * h):
                    continue
                if area < 0.4 * w * h or x <= 2 or y <= 2 or x + w >= SRC_W - 2 or not 200 < foot < 420:
                    continue
                if x < 437 and x + w > 422:
                    continue
                # one pixel in from the outline: the blob's rim is half background (a halo on grass)
                alpha = cv2.erode(
                    (lab[y : y + h, x : x + w] == j).astype(np.uint8), np.ones((3, 3), np.uint8)
                )
                alpha = cv2.GaussianBlur(alpha.astype(np.float32), (3, 3), 0)[..., None]
                out.append(Sprite(f[y : y + h, x : x + w].astype(np.float32), alpha, foot_y=float(foot)))
        return out

    @property
    def background(self) -> np.ndarray:
        if self._bg is None:
            self._analyse()
        assert self._bg is not None
        return self._bg

    @property
    def people(self) -> list[Sprite]:
        if self._people is None:
            self._analyse()
        assert self._people is not None
        return self._people

    @property
    def van(self) -> Sprite:
        if self._van is None:
            self._analyse()
        assert self._van is not None
        return self._van


# --- actors and edits -----------------------------------------------------------------------------
Key = tuple[float, float, float]  # (clip time s, x, y): the sprite's bottom centre in native pixels
NEVER = 1e9


@dataclass
class Actor:
    """A sprite moving along key positions; visible from the first key's time to the last's."""

    name: str
    kind: Kind
    sprite: Callable[[Footage], Sprite]
    keys: list[Key]
    sway_px: float = 0.0  # standing people shift their weight; so does their box
    phase: float = 0.0

    def visible(self, t: float) -> bool:
        return self.keys[0][0] <= t < self.keys[-1][0]

    def pos(self, t: float) -> tuple[float, float]:
        ks = self.keys
        for (t0, x0, y0), (t1, x1, y1) in zip(ks, ks[1:], strict=False):
            if t0 <= t < t1:
                f = (t - t0) / (t1 - t0)
                return x0 + f * (x1 - x0), y0 + f * (y1 - y0)
        return ks[-1][1], ks[-1][2]

    def still_spans(self) -> list[tuple[float, float, float, float]]:
        """(start, end, x, y) of each span between keys at the same place."""
        return [
            (t0, t1, x0, y0)
            for (t0, x0, y0), (t1, x1, y1) in zip(self.keys, self.keys[1:], strict=False)
            if (x0, y0) == (x1, y1) and t1 > t0
        ]

    def draw(self, frame: np.ndarray, t: float, footage: Footage) -> None:
        x, y = self.pos(t)
        sp = self.sprite(footage)
        if self.sway_px and self.still_at(t):
            x += round(self.sway_px * math.sin(2 * math.pi * t / 3.1 + self.phase))
        img, alpha = sp.scaled(round(sp.scale_at(y) * 1000))
        h, w = img.shape[:2]
        paste(frame, img, alpha, round(x - w / 2), round(y - h))

    def still_at(self, t: float) -> bool:
        return any(a <= t < b for a, b, _, _ in self.still_spans())


@dataclass(frozen=True)
class Light:
    """Multiply the frame (or a box of it) by `gain` from `start_s`, ramping over `ramp_s`."""

    start_s: float
    gain: float
    box: tuple[int, int, int, int] | None = None
    ramp_s: float = 0.0

    def apply(self, frame: np.ndarray, t: float) -> None:
        if t < self.start_s:
            return
        f = 1.0 if self.ramp_s <= 0 else min(1.0, (t - self.start_s) / self.ramp_s)
        g = 1 + f * (self.gain - 1)
        x0, y0, x1, y1 = self.box or (0, 0, frame.shape[1], frame.shape[0])
        # like a camera: linear in the signal, clipped at white
        frame[y0:y1, x0:x1] = cv2.convertScaleAbs(frame[y0:y1, x0:x1], alpha=g, beta=0)


# sprite factories (resolved against the footage at draw time, so recipes stay plain data)
def _person(i: int) -> Callable[[Footage], Sprite]:
    def get(f: Footage) -> Sprite:
        return f.people[(i * 7) % len(f.people)]  # spread over the bank: different people, poses

    return get


def _van(f: Footage) -> Sprite:
    return f.van


def _const(sprite: Sprite) -> Callable[[Footage], Sprite]:
    return lambda f: sprite


DARK_BAG = bag_sprite(1, (44, 34), (35, 35, 40))
GREY_SACK = bag_sprite(2, (48, 36), (120, 125, 125))
# a small dark bag: on the lawn it is only ~12 grey levels from the grass (a known hard case)
SMALL_BAG = bag_sprite(4, (32, 24), (60, 50, 45))
WHITE_BAG = bag_sprite(5, (40, 30), (200, 205, 210))
BOX = make_box(3)


def walker(name: str, person: int, keys: list[Key]) -> Actor:
    return Actor(name, "person", _person(person), keys)


def carry(
    name: str, person: int, keys: list[Key], obj: Sprite, what: str, drop_s: float | None = None
) -> list[Actor]:
    """A person carrying `obj` (`what`) at their right hand along `keys`; dropped at `drop_s` if given.

    The object hangs a quarter of the person's height above the ground, a quarter to the side;
    dropped, it lies on the ground beside their feet (a dumping event if it stays long enough).
    """
    person = walker(name, person, keys)

    def hand(x: float, y: float) -> tuple[float, float]:
        hgt = person_height(y)
        return x + 0.28 * hgt, y - 0.22 * hgt

    end = drop_s if drop_s is not None else keys[-1][0]
    held = [(t, *hand(x, y)) for t, x, y in keys if t < end]
    x, y = person.pos(end)
    held.append((end, *hand(x, y)))
    actors = [person, Actor(f"{what} carried by the {name}", "object", _const(obj), held)]
    if drop_s is not None:
        gx = x + 0.28 * person_height(y)
        actors.append(
            Actor(f"{what} dropped by the {name}", "object", _const(obj), [(drop_s, gx, y), (NEVER, gx, y)])
        )
    return actors


def placed(name: str, obj: Sprite, x: float, y: float, from_s: float, until_s: float = NEVER) -> Actor:
    return Actor(name, "object", _const(obj), [(from_s, x, y), (until_s, x, y)])


def van_stop(
    name: str, enter_s: float, stop: tuple[float, float], stop_s: float, leave_s: float | None
) -> Actor:
    """The van comes down the service road from the car park (off-frame right), stops, maybe leaves
    west along the path."""
    sx, sy = stop
    keys: list[Key] = [(enter_s, 830, 128), (enter_s + 0.55 * (stop_s - enter_s), 705, 175), (stop_s, sx, sy)]
    if leave_s is None:
        keys.append((NEVER, sx, sy))
    else:
        keys += [(leave_s, sx, sy), (leave_s + 4, sx - 260, sy - 15), (leave_s + 8, -120, 215)]
    return Actor(name, "vehicle", _van, keys)


CROWD_SPOTS = [  # feet, in the square's west part, clear of the paved no-dumping zone and the lamp post
    (330, 268), (372, 262), (470, 268), (512, 262),
    (310, 305), (352, 300), (394, 306), (480, 304), (522, 300),
    (340, 340), (384, 336), (500, 338),
]  # fmt: skip
CROWD_ENTRIES = [(-40, 225), (-40, 262), (820, 235), (820, 300)]  # the paths, just off-frame
WALK_PX_S = 75.0  # about 1.3 m/s on the plaza


def crowd(name: str, n: int, first_s: float, every_s: float, leave_s: float | None, seed: int) -> list[Actor]:
    """`n` people walk in from the paths' ends and arrive one by one (`every_s` apart), stand, and
    leave together (each within 1.5 s of `leave_s`)."""
    rng = np.random.default_rng(seed)
    spots = [CROWD_SPOTS[i] for i in sorted(rng.choice(len(CROWD_SPOTS), n, replace=False))]
    out = []
    for k, (x, y) in enumerate(spots):
        ex, ey = CROWD_ENTRIES[int(rng.integers(len(CROWD_ENTRIES)))]
        t_in = first_s + k * every_s
        keys: list[Key] = [(t_in - math.hypot(x - ex, y - ey) / WALK_PX_S, ex, ey), (t_in, x, y)]
        if leave_s is None:
            keys.append((NEVER, x, y))
        else:
            t_out = leave_s + float(rng.uniform(0, 1.5))
            bx, by = CROWD_ENTRIES[int(rng.integers(len(CROWD_ENTRIES)))]
            keys += [(t_out, x, y), (t_out + math.hypot(x - bx, y - by) / WALK_PX_S, bx, by)]
        out.append(
            Actor(f"{name} {k + 1}", "person", _person(seed + 3 * k), keys, sway_px=1.0, phase=float(k))
        )
    return out


def group_walk(
    name: str, n: int, start_s: float, west_to_east: bool, seed: int, cross_s: float = 11.0
) -> list[Actor]:
    """`n` people walking together across the square along the path (about 1.3 m/s), not stopping."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        dx, dy = (k % 4) * 34 - 50 + float(rng.uniform(-6, 6)), (k // 4) * 34 + float(rng.uniform(-5, 5))
        a, b = (-60 + dx, 250 + dy), (820 + dx, 300 + dy)
        if not west_to_east:
            a, b = b, a
        t0 = start_s + float(rng.uniform(0, 0.6))
        out.append(Actor(f"{name} {k + 1}", "person", _person(seed + 5 * k), [(t0, *a), (t0 + cross_s, *b)]))
    return out


# --- recipes --------------------------------------------------------------------------------------
@dataclass
class Recipe:
    name: str
    layout: LayoutName
    offset_s: float  # where in the footage the clip starts
    duration_s: float
    description: str
    expect: dict[str, int]  # events per category the recipe means to have (checked)
    actors: list[Actor] = field(default_factory=list)
    lights: list[Light] = field(default_factory=list)

    def __post_init__(self) -> None:
        frames = round((self.offset_s + self.duration_s) * SRC_FPS)
        if frames > SRC_FRAMES:
            raise ValueError(f"{self.name}: offset + duration run past the footage's {SRC_FRAMES} frames")


def recipes() -> list[Recipe]:
    """The shipped set. Times are clip seconds; positions native 768x576 pixels (feet / bottom centre)."""
    return [
        # --- events ---
        Recipe(
            "dump_bag_paved", "native", 0.0, 35.0,
            "A dark bag appears on the paved area at 14 s (people walk past it) and stays.",
            {"illegal_dumping": 1},
            [placed("dark bag", DARK_BAG, 640, 425, 14.0)],
        ),
        Recipe(
            "dump_drop_lawn", "mirror", 20.0, 40.0,
            "Mirrored view. A person carries a grey sack onto the lawn, drops it at 15 s and walks back "
            "out; the sack stays.",
            {"illegal_dumping": 1},
            carry("sack carrier", 2, [(8.0, -40, 470), (14.0, 190, 470), (15.0, 190, 470), (21.0, -40, 430)],
                  GREY_SACK, "grey sack", drop_s=15.0),
        ),
        Recipe(
            "dump_box_two_640", "small", 40.0, 36.0,
            "640x480 at 25 fps. A cardboard box appears on the paved area at 12 s, a small dark bag on the "
            "lawn at 16 s; both stay.",
            {"illegal_dumping": 2},
            [placed("box", BOX, 690, 385, 12.0), placed("small dark bag", SMALL_BAG, 240, 470, 16.0)],
        ),
        Recipe(
            "van_stops_road", "native", 5.0, 35.0,
            "The van drives down the service road from 8 s, stops in the lane at 12 s and stays.",
            {"road_blockage": 1},
            [van_stop("van", 8.0, (615, 240), 12.0, None)],
        ),
        Recipe(
            "van_stops_leaves_mirror", "mirror", 40.0, 38.0,
            "Mirrored view. The van stops in the lane 10-30 s, then drives off along the path.",
            {"road_blockage": 1},
            [van_stop("van", 6.0, (640, 225), 10.0, 30.0)],
        ),
        Recipe(
            "crowd_square", "native", 10.0, 40.0,
            "Nine people arrive in the square one by one from 8 s, stand, and leave from 30 s.",
            {"gathering": 1},
            crowd("crowd", 9, 8.0, 0.8, 30.0, seed=11),
        ),
        Recipe(
            "crowd_square_640", "small", 30.0, 40.0,
            "640x480 at 25 fps. Eight people gather in the square from 6 s (one a second) and stay.",
            {"gathering": 1},
            crowd("crowd", 8, 6.0, 1.0, None, seed=23),
        ),
        Recipe(
            "mixed_all", "native", 15.0, 60.0,
            "A white bag is dropped on the lawn at 12 s, the van stops in the lane at 22 s, ten people "
            "arrive in the square from 30 s; all stay to the end.",
            {"illegal_dumping": 1, "road_blockage": 1, "gathering": 1},
            [
                *carry("bag carrier", 5,
                       [(6.0, 360, 600), (11.0, 260, 440), (12.0, 260, 440), (17.0, 380, 600)],
                       WHITE_BAG, "white bag", drop_s=12.0),
                van_stop("van", 18.0, (610, 238), 22.0, None),
                *crowd("crowd", 10, 30.0, 0.6, None, seed=37),
            ],
        ),
        # --- hard negatives ---
        Recipe(
            "neg_clean", "native", 20.0, 55.0,
            "The footage as recorded: walkers cross every zone, barrier tape flaps, a van and a car stay "
            "parked at the kerb above the lane, litter lies on the lawn since the first frame.",
            {},
        ),
        Recipe(
            "neg_present_removed", "native", 20.0, 35.0,
            "A bag on the paved area and a sack on the lawn from the first frame; the sack is taken away at "
            "18 s (its ghost must not look like a new object).",
            {},
            [
                placed("bag since start", DARK_BAG, 650, 410, 0.0),
                placed("sack since start", GREY_SACK, 200, 480, 0.0, 18.0),
            ],
        ),
        Recipe(
            "neg_light", "mirror", 0.0, 40.0,
            "Mirrored view. Exposure steps x1.3 at 12 s; a cloud shadow darkens the lawn and the paved area "
            "to x0.75 over 3 s from 24 s.",
            {},
            lights=[Light(12.0, 1.3), Light(24.0, 0.75, (0, 280, 768, 576), ramp_s=3.0)],
        ),
        Recipe(
            "neg_carry_through", "small", 10.0, 40.0,
            "640x480 at 25 fps. People carry a box, a bag and a sack through the paved area and the lawn; "
            "one stops with the bag for 5 s and goes on; someone waits on the paved area for 22 s.",
            {},
            [
                walker("waiting", 8, [(3.0, 820, 360), (6.0, 660, 390), (28.0, 660, 390), (32.0, 820, 420)]),
                *carry("box carrier", 1, [(3.0, 820, 400), (13.0, 380, 470)], BOX, "box"),
                *carry("bag carrier", 4,
                       [(10.0, -40, 440), (15.0, 150, 430), (20.0, 150, 430), (27.0, -40, 380)],
                       DARK_BAG, "dark bag"),
                *carry("sack carrier", 6, [(22.0, 520, 600), (30.0, 700, 350), (34.0, 820, 330)],
                       GREY_SACK, "grey sack"),
            ],
        ),
        Recipe(
            "neg_brief_stops", "native", 35.0, 40.0,
            "The van stops in the lane for 6 s (8-14 s) and drives off; a bag lies on the paved area for 7 s "
            "(20-27 s) and is taken away.",
            {},
            [van_stop("van", 4.0, (615, 240), 8.0, 14.0), placed("bag", DARK_BAG, 640, 425, 20.0, 27.0)],
        ),
        Recipe(
            "neg_crowd_walkthrough", "mirror", 30.0, 40.0,
            "Mirrored view. A group of eight walks through the square west to east at 6 s, and back at 24 s.",
            {},
            [*group_walk("group", 8, 6.0, True, seed=5), *group_walk("group back", 8, 24.0, False, seed=9)],
        ),
    ]  # fmt: skip


# --- ground truth derived from the actors ---------------------------------------------------------
def _in_zone(zone_id: str, x: float, y: float) -> bool:
    return _ZONE_SHAPES[zone_id].contains(Point(x, y))


def derive_events(r: Recipe) -> list[dict[str, Any]]:
    """The labelled events of a recipe, by the rules in the module docstring."""
    dur = r.duration_s
    events: list[dict[str, Any]] = []
    for a in r.actors:
        if a.kind == "person" or a.keys[0][0] <= 0.0:  # present from the first frame: part of the scene
            continue
        want = "no_dumping" if a.kind == "object" else "roadway"
        for t0, t1, x, y in a.still_spans():
            end = min(t1, dur)
            for z in ZONES:
                if z.kind == want and _in_zone(z.id, x, y) and end - t0 >= z.dwell_s:
                    what = "placed" if a.kind == "object" else "stopped"
                    events.append(_event(CATEGORY_OF_KIND[z.kind], z.id, t0, end, f"{a.name}, {what}"))
    people = [a for a in r.actors if a.kind == "person"]
    for z in ZONES:
        if z.kind != "gathering" or not people:
            continue
        assert z.min_people is not None
        # the composite changes once per source frame: count there
        ts = [i / SRC_FPS for i in range(round(dur * SRC_FPS))]
        over = [
            sum(1 for p in people if p.visible(t) and _in_zone(z.id, *p.pos(t))) >= z.min_people for t in ts
        ]
        i = 0
        while i < len(ts):
            if not over[i]:
                i += 1
                continue
            j = i
            while j < len(ts) and over[j]:
                j += 1
            start, end = ts[i], (ts[j] if j < len(ts) else dur)
            if end - start >= z.dwell_s:
                events.append(
                    _event("gathering", z.id, start, end, f"{z.min_people} or more people in the zone")
                )
            i = j
    events.sort(key=lambda e: (e["start_s"], e["category"], e["zone"]))
    got: dict[str, int] = {}
    for e in events:
        got[e["category"]] = got.get(e["category"], 0) + 1
    if got != r.expect:
        raise ValueError(
            f"recipe {r.name}: derived events {got} differ from the intended {r.expect}: {events}"
        )
    return events


def _event(category: str, zone: str, start: float, end: float, note: str) -> dict[str, Any]:
    return {
        "category": category,
        "zone": zone,
        "start_s": round(start, 2),
        "end_s": round(end, 2),
        "note": note,
    }


# --- layouts --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    width: int
    height: int
    fps: float
    mirror: bool

    def point(self, x: float, y: float) -> list[float]:
        if self.mirror:
            x = SRC_W - x
        return [round(x * self.width / SRC_W, 1), round(y * self.height / SRC_H, 1)]

    def frame(self, img: np.ndarray) -> np.ndarray:
        if self.mirror:
            img = cv2.flip(img, 1)
        if (self.width, self.height) != (SRC_W, SRC_H):
            img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return img


LAYOUTS: dict[str, Layout] = {
    "native": Layout(SRC_W, SRC_H, SRC_FPS, False),
    "mirror": Layout(SRC_W, SRC_H, SRC_FPS, True),
    "small": Layout(640, 480, 25.0, False),
}


def sidecar(r: Recipe) -> dict[str, Any]:
    """The sidecar of a recipe (the format of docs/EVALUATION.md)."""
    lay = LAYOUTS[r.layout]
    zones = []
    for z in ZONES:
        zd: dict[str, Any] = {
            "id": z.id,
            "kind": z.kind,
            "polygon": [lay.point(x, y) for x, y in z.polygon],
            "dwell_s": z.dwell_s,
        }
        if z.min_people is not None:
            zd["min_people"] = z.min_people
        zones.append(zd)
    return {
        "version": 1,
        "video": f"{r.name}.mp4",
        "fps": lay.fps,
        "width": lay.width,
        "height": lay.height,
        "duration_s": r.duration_s,
        "zones": zones,
        "events": derive_events(r),
        "source": dict(SOURCE),
        "notes": f"{r.description} Footage {r.offset_s:g}-{r.offset_s + r.duration_s:g} s of vtest.avi; "
        f"composited by gridwatch detectors/eval_clips.py (recipe {r.name!r}).",
    }


def sidecar_text(data: dict[str, Any]) -> str:
    """Stable, diff-friendly JSON: one line per zone and per event."""
    lines = ["{"]
    for k, v in data.items():
        if k in ("zones", "events"):
            if not v:
                lines.append(f'  "{k}": [],')
                continue
            lines.append(f'  "{k}": [')
            lines += [f"    {json.dumps(item, ensure_ascii=False)}," for item in v]
            lines[-1] = lines[-1].rstrip(",")
            lines.append("  ],")
        else:
            lines.append(f'  "{k}": {json.dumps(v, ensure_ascii=False)},')
    lines[-1] = lines[-1].rstrip(",")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- rendering ------------------------------------------------------------------------------------
def render_frames(r: Recipe, footage: Footage) -> Iterator[np.ndarray]:
    """The clip's frames in its layout (native pixels composited, then mirrored / resized)."""
    lay = LAYOUTS[r.layout]
    n_src = round(r.duration_s * SRC_FPS)
    start = round(r.offset_s * SRC_FPS)
    n_out = round(r.duration_s * lay.fps)
    # output frame k shows the source frame on screen at its time (a 25 fps camera on a 10 fps scene)
    per_src = [0] * n_src
    for k in range(n_out):
        per_src[min(n_src - 1, int(k * SRC_FPS / lay.fps + 1e-9))] += 1
    for j, frame in enumerate(footage.frames(start, n_src)):
        t = j / SRC_FPS
        live = [a for a in r.actors if a.visible(t)]
        for a in sorted(live, key=lambda a: a.pos(t)[1]):  # far (high in the picture) first
            a.draw(frame, t, footage)
        for light in r.lights:
            light.apply(frame, t)
        out = lay.frame(frame)
        for _ in range(per_src[j]):
            yield out


class _Writer:
    """H.264 through ffmpeg (what cameras send); OpenCV's mp4v if ffmpeg is not installed."""

    def __init__(self, path: Path, width: int, height: int, fps: float) -> None:
        self.path = path
        self.tmp = path.with_suffix(".tmp.mp4")
        self.proc: subprocess.Popen[bytes] | None = None
        self.cv: cv2.VideoWriter | None = None
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg:
            # no B-frames and a 2 s GOP, as the RTSP test clips; crf 20 keeps compression noise
            # below the background model's thresholds, as a decent camera does
            cmd = [ffmpeg, "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24",
                   "-s", f"{width}x{height}", "-r", f"{fps:g}", "-i", "-", "-an", "-c:v", "libx264",
                   "-preset", "veryfast", "-crf", "20", "-g", str(round(2 * fps)), "-bf", "0",
                   "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(self.tmp)]  # fmt: skip
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        else:
            self.cv = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            if not self.cv.isOpened():
                raise RuntimeError(f"cannot write {self.tmp} (no ffmpeg, and OpenCV's mp4v writer failed)")

    def write(self, frame: np.ndarray) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        else:
            assert self.cv is not None
            self.cv.write(frame)

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            if self.proc.wait() != 0:
                raise RuntimeError(f"ffmpeg failed writing {self.tmp} (exit {self.proc.returncode})")
        elif self.cv is not None:
            self.cv.release()
        self.tmp.replace(self.path)


def render_clip(r: Recipe, footage: Footage, out_dir: Path) -> Path:
    lay = LAYOUTS[r.layout]
    path = out_dir / f"{r.name}.mp4"
    w = _Writer(path, lay.width, lay.height, lay.fps)
    try:
        for frame in render_frames(r, footage):
            w.write(frame)
    finally:
        w.close()
    return path


# --- the set: sidecars, manifest, build -----------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recipe_by_name(names: Sequence[str] | None = None) -> list[Recipe]:
    all_ = recipes()
    if names is None:
        return all_
    known = {r.name: r for r in all_}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown clip(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names]


def write_sidecars(sidecar_dir: Path = SIDECAR_DIR) -> list[Path]:
    """Write every recipe's sidecar into `sidecar_dir` (the committed set)."""
    sidecar_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for r in recipes():
        p = sidecar_dir / f"{r.name}.json"
        p.write_text(sidecar_text(sidecar(r)))
        out.append(p)
    return out


def check_sidecars(sidecar_dir: Path = SIDECAR_DIR, names: Sequence[str] | None = None) -> list[str]:
    """Problems between the committed sidecars and the recipes (empty: they agree)."""
    problems = []
    for r in recipe_by_name(names):
        p = sidecar_dir / f"{r.name}.json"
        want = sidecar_text(sidecar(r))
        if not p.is_file():
            problems.append(f"{p}: missing")
        elif p.read_text() != want:
            problems.append(f"{p}: differs from what recipe {r.name!r} gives")
    if names is None:
        extra = sorted({p.stem for p in sidecar_dir.glob("*.json")} - {r.name for r in recipes()})
        problems += [f"{sidecar_dir / n}.json: no recipe makes it" for n in extra]
    return problems


def manifest(names: Sequence[str], footage_sha: str) -> dict[str, Any]:
    return {
        "generator_sha256": _sha(Path(__file__).read_bytes()),
        "footage_sha256": footage_sha,
        "clips": {r.name: _sha(sidecar_text(sidecar(r)).encode()) for r in recipe_by_name(names)},
    }


def up_to_date(out_dir: Path, names: Sequence[str] | None = None, footage: Path = FOOTAGE) -> bool:
    """True if `out_dir` holds the clips `names` (default all) made by this generator from this footage."""
    mf = out_dir / MANIFEST
    if not mf.is_file() or not footage.is_file():
        return False
    try:
        have = json.loads(mf.read_text())
    except ValueError:
        return False
    rs = recipe_by_name(names)
    if have.get("generator_sha256") != _sha(Path(__file__).read_bytes()):
        return False
    if have.get("footage_sha256") != _sha(footage.read_bytes()):
        return False
    clips = have.get("clips", {})
    for r in rs:
        text = sidecar_text(sidecar(r))
        if clips.get(r.name) != _sha(text.encode()):
            return False
        sc, video = out_dir / f"{r.name}.json", out_dir / f"{r.name}.mp4"
        if not video.is_file() or not sc.is_file() or sc.read_text() != text:
            return False
    return True


def build_clips(
    out_dir: Path = OUT_DIR,
    *,
    names: Sequence[str] | None = None,
    footage_path: Path = FOOTAGE,
    sidecar_dir: Path | None = SIDECAR_DIR,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[Path]:
    """Render the clips (default all) into `out_dir` with their sidecars and a manifest.

    With `sidecar_dir`, the committed sidecars must agree with the recipes (ValueError otherwise:
    the labels shipped would not be those of the videos made). Returns the sidecar paths.
    """
    rs = recipe_by_name(names)
    if sidecar_dir is not None:
        problems = check_sidecars(sidecar_dir, [r.name for r in rs])
        if problems:
            raise ValueError(
                "committed sidecars disagree with the recipes:\n  "
                + "\n  ".join(problems)
                + "\nrun scripts/make_eval_clips.py --write-sidecars and review the diff"
            )
    footage = Footage(footage_path)
    sha = footage.sha256()
    out_dir.mkdir(parents=True, exist_ok=True)
    mf_path = out_dir / MANIFEST
    old_manifest = mf_path.read_text() if mf_path.is_file() else None
    mf_path.unlink(missing_ok=True)  # stale until the end
    paths = []
    for i, r in enumerate(rs):
        if progress is not None:
            progress(r.name, i, len(rs))
        render_clip(r, footage, out_dir)
        p = out_dir / f"{r.name}.json"
        p.write_text(sidecar_text(sidecar(r)))
        paths.append(p)
    if progress is not None:
        progress("", len(rs), len(rs))
    mf = manifest([r.name for r in rs], sha)
    with contextlib.suppress(OSError, ValueError):  # keep the other clips of a same-generator set
        old = json.loads(old_manifest) if old_manifest else {}
        if all(old.get(k) == mf[k] for k in ("generator_sha256", "footage_sha256")):
            mf["clips"] = {**old.get("clips", {}), **mf["clips"]}
    (out_dir / MANIFEST).write_text(json.dumps(mf, indent=2, sort_keys=True) + "\n")
    return paths


def ensure_clips(
    out_dir: Path = OUT_DIR, names: Sequence[str] | None = None, footage: Path = FOOTAGE
) -> Path:
    """`out_dir` with the clips `names` (default all), built only if missing or stale."""
    if not up_to_date(out_dir, names, footage):
        build_clips(out_dir, names=names, footage_path=footage)
    return out_dir
