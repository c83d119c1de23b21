"""Scenarios with ground truth on real footage, for the camera rules.

The OpenCV sample `vtest.avi` (768x576, 10 fps, 79.5 s: people walking across a campus plaza,
a parked van, barrier tape flapping in the wind) is analysed at 10/3 = 3.3 fps, edited in known
ways, and the candidates are scored against what was put in (detectors/scoring.py):

* a "dumped bag" (a dark, textured, soft-edged ellipse) composited into a no-dumping zone from a
  known time on: the background path must raise exactly one dumping candidate, not before dwell;
* the same footage unedited, with a sudden 30 % brightness step, or with a "cloud shadow" over a
  quarter of the frame: nothing; a bag taken away before the dwell: nothing;
* people: a crude motion detector (MOG2 blobs taller than wide, labelled "person") stands in for
  the ONNX detector, so walking-by counts are real; a gathering is simulated by adding ten
  standing person boxes (each missing from 15 % of frames) for a known interval;
* a stopped vehicle: the footage's own parked van is cut out and pasted onto the road, with
  jittered "car" boxes that drop out now and then and vanish twice for 5 s (longer than
  ByteTrack's lost buffer, so the track id changes): one road-blockage candidate, not two.

Run `python -m gridwatch.detectors.scenarios` for the table (precision/recall per category and the
background path's ms per frame); tests/test_camera_rules.py runs the same scenarios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import supervision as sv

from gridwatch.detectors.evidence import EvidenceStore
from gridwatch.detectors.scene_rules import CameraRules, CameraRulesConfig
from gridwatch.detectors.scoring import GroundTruthEvent, Score, score_by_category
from gridwatch.detectors.zones import CameraZonesConfig, GatheringZone, NoDumpingZone, RoadwayZone
from gridwatch.schemas import Category, IncidentCandidate

FOOTAGE = Path(__file__).resolve().parent.parent / "var" / "footage" / "vtest.avi"
T0 = 1_700_000_000_000  # epoch ms of the footage's first frame
STRIDE = 3  # 10 fps footage -> 3.3 fps analysed
DUMP_DWELL_S = 20.0
CAMERA_ID = "cam-vtest"


def footage_frames(
    path: Path = FOOTAGE, stride: int = STRIDE, t0: int = T0
) -> Iterator[tuple[int, np.ndarray]]:
    """(ts_ms, BGR frame) of every `stride`-th frame; times from the file's frame rate."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open footage {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    i = 0
    try:
        while cap.grab():
            if i % stride == 0:
                ok, frame = cap.retrieve()
                if not ok:
                    break
                yield t0 + round(i * 1000 / fps), frame
            i += 1
    finally:
        cap.release()


# --- edits ------------------------------------------------------------------------------------
def make_bag(seed: int = 1, size: tuple[int, int] = (44, 34), base: tuple[int, int, int] = (35, 35, 40)):
    """A soft-edged, textured, shaded ellipse (BGR float32) and its alpha (h, w, 1)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    alpha = ((((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) <= 1).astype(np.float32)
    alpha = cv2.GaussianBlur(alpha, (5, 5), 0)[..., None]
    tex = rng.normal(0, 12, (h, w, 1)).astype(np.float32)
    shade = (1 - yy / h * 0.5)[..., None].astype(np.float32) * 30
    img = np.clip(np.asarray(base, np.float32) + tex + shade, 0, 255)
    return img, alpha


def paste(frame: np.ndarray, img: np.ndarray, alpha: np.ndarray, x: int, y: int) -> None:
    h, w = img.shape[:2]
    roi = frame[y : y + h, x : x + w].astype(np.float32)
    frame[y : y + h, x : x + w] = (roi * (1 - alpha) + img * alpha).astype(np.uint8)


# the parked white van of the footage, as it looks in its first frame
VAN_BOX = (652, 42, 726, 100)


def van_crop() -> np.ndarray:
    _, first = next(footage_frames())
    x0, y0, x1, y1 = VAN_BOX
    return first[y0:y1, x0:x1].copy()


# --- a stand-in person detector ---------------------------------------------------------------
class MotionPeople:
    """MOG2 blobs taller than wide, as "person" detections: real walking-by counts, no model needed."""

    def __init__(self) -> None:
        self._mog = cv2.createBackgroundSubtractorMOG2(history=100, varThreshold=25, detectShadows=True)
        self._k3 = np.ones((3, 3), np.uint8)
        self._close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 5))

    def __call__(self, frame: np.ndarray) -> list[tuple[float, float, float, float]]:
        # half resolution: a quarter of the cost, and people are still 20+ pixels tall
        small = cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)
        fg = self._mog.apply(small)
        m = (fg > 200).astype(np.uint8)  # 127 = shadow
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, self._k3)
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, self._close)
        n, _, st, _ = cv2.connectedComponentsWithStats(m)
        return [
            (2.0 * x, 2.0 * y, 2.0 * (x + w), 2.0 * (y + h))
            for x, y, w, h, a in st[1:]
            if a >= 60 and h >= 12 and h >= 1.2 * w
        ]


def detections_of(boxes: list[tuple[tuple[float, float, float, float], str, float]]) -> sv.Detections:
    """sv.Detections as the ONNX detector gives them: xyxy, confidence, class_id, data["class_name"]."""
    if not boxes:
        return sv.Detections.empty()
    coco = {"person": 0, "car": 2, "truck": 7, "backpack": 24, "handbag": 26, "suitcase": 28}
    return sv.Detections(
        xyxy=np.array([b for b, _, _ in boxes], dtype=np.float32),
        confidence=np.array([c for _, _, c in boxes], dtype=np.float32),
        class_id=np.array([coco.get(n, 0) for _, n, _ in boxes], dtype=int),
        data={"class_name": np.array([n for _, n, _ in boxes])},
    )


# --- the camera and its zones -------------------------------------------------------------------
def camera_config(*, max_people: int = 8, dump_dwell_s: float = DUMP_DWELL_S, road_dwell_s: float = 20.0):
    zones = [
        NoDumpingZone(
            kind="no_dumping",
            id="paved-e",
            label="paved area east",
            polygon=[(540, 330), (745, 330), (745, 455), (540, 455)],
            grid_id="G-0412",
            dwell_s=dump_dwell_s,
        ),
        NoDumpingZone(
            kind="no_dumping",
            id="grass-w",
            label="lawn west",
            polygon=[(30, 300), (320, 330), (320, 560), (30, 560)],
            grid_id="G-0411",
            dwell_s=dump_dwell_s,
        ),
        GatheringZone(
            kind="gathering",
            id="plaza",
            label="plaza",
            polygon=[(0, 185), (600, 185), (768, 250), (768, 490), (340, 325), (0, 245)],
            grid_id="G-0412",
            dwell_s=20.0,
            clear_s=10.0,
            max_people=max_people,
        ),
        RoadwayZone(
            kind="roadway",
            id="road-ne",
            label="service road",
            # the road east of the cones, below the kerb where the van and a car are parked
            polygon=[(520, 130), (690, 110), (768, 110), (768, 175), (700, 245), (560, 215)],
            grid_id="G-0413",
            dwell_s=road_dwell_s,
            clear_s=10.0,
            forget_s=30.0,
        ),
        RoadwayZone(
            kind="roadway",
            id="kerb-n",
            label="kerb north (no parking)",
            # the footage's own parked van and car: only a real detector sees them
            polygon=[(600, 60), (768, 60), (768, 108), (600, 108)],
            grid_id="G-0413",
            dwell_s=30.0,
            clear_s=10.0,
            forget_s=30.0,
        ),
    ]
    return CameraRulesConfig(
        camera=CameraZonesConfig(camera_id=CAMERA_ID, frame_size=(768, 576), zones=zones)
    )


# --- scenarios ---------------------------------------------------------------------------------
FrameEdit = Callable[[int, np.ndarray], None]  # (seconds since start, frame) -> edits in place
ExtraDetections = Callable[[int, int], list[tuple[tuple[float, float, float, float], str, float]]]


@dataclass
class Scenario:
    name: str
    description: str
    truth: list[GroundTruthEvent]
    edits: list[FrameEdit] = field(default_factory=list)
    extra: ExtraDetections | None = None  # (frame index, ms since start) -> boxes
    people: bool = True  # feed the motion "person" detections (when no real detector is given)


@dataclass
class ScenarioResult:
    scenario: Scenario
    candidates: list[IncidentCandidate]
    frames: int
    background_ms: list[float]
    last_frame: np.ndarray | None = None


def _gt(cat: Category, zone: str, start_s: float, end_s: float = 80.0, note: str = "") -> GroundTruthEvent:
    return GroundTruthEvent(cat, zone, T0 + int(start_s * 1000), T0 + int(end_s * 1000), CAMERA_ID, note)


def _bag_at(
    x: int,
    y: int,
    from_s: float,
    seed: int = 1,
    base: tuple[int, int, int] = (35, 35, 40),
    size: tuple[int, int] = (44, 34),
    until_s: float = 1e9,
) -> FrameEdit:
    img, alpha = make_bag(seed, size=size, base=base)

    def edit(t_ms: int, frame: np.ndarray) -> None:
        if from_s * 1000 <= t_ms < until_s * 1000:
            paste(frame, img, alpha, x, y)

    return edit


def _brightness(from_s: float, gain: float) -> FrameEdit:
    def edit(t_ms: int, frame: np.ndarray) -> None:
        if t_ms >= from_s * 1000:
            frame[:] = cv2.convertScaleAbs(frame, alpha=gain, beta=0)

    return edit


def _shade(from_s: float, gain: float, box: tuple[int, int, int, int]) -> FrameEdit:
    x0, y0, x1, y1 = box

    def edit(t_ms: int, frame: np.ndarray) -> None:
        if t_ms >= from_s * 1000:
            frame[y0:y1, x0:x1] = cv2.convertScaleAbs(frame[y0:y1, x0:x1], alpha=gain, beta=0)

    return edit


def _van(x: int, y: int, from_s: float) -> tuple[FrameEdit, ExtraDetections]:
    # 5 s unseen (a bus in front, say), longer than ByteTrack's lost buffer: the track id changes;
    # once before the dwell is reached (dwell must survive it), once after (no second candidate)
    GAPS_MS = ((25_000, 30_000), (50_000, 55_000))
    crop: list[np.ndarray] = []
    h, w = VAN_BOX[3] - VAN_BOX[1], VAN_BOX[2] - VAN_BOX[0]

    def edit(t_ms: int, frame: np.ndarray) -> None:
        if t_ms >= from_s * 1000:
            if not crop:
                crop.append(van_crop())
            frame[y : y + h, x : x + w] = crop[0]

    def dets(i: int, t_ms: int):
        if t_ms < from_s * 1000 or any(a <= t_ms < b for a, b in GAPS_MS):
            return []
        rng = np.random.default_rng(i)
        if rng.random() < 0.15:  # ordinary misses
            return []
        j = rng.normal(0, 1.0, 4)
        return [
            ((x + j[0], y + j[1], x + w + j[2], y + h + j[3]), "car" if rng.random() < 0.8 else "truck", 0.7)
        ]

    return edit, dets


def _crowd(from_s: float, to_s: float, n: int = 10) -> ExtraDetections:
    spots = [(60 + 48 * k, 200 + 9 * (k % 3)) for k in range(n)]  # feet in the plaza, west part

    def dets(i: int, t_ms: int):
        if not (from_s * 1000 <= t_ms < to_s * 1000):
            return []
        rng = np.random.default_rng(1000 + i)
        out = []
        for x, y in spots:
            if rng.random() < 0.15:
                continue
            out.append(((x - 12.0, y - 60.0, x + 12.0, float(y)), "person", 0.55))
        return out

    return dets


def scenarios() -> list[Scenario]:
    van_edit, van_dets = _van(590, 150, from_s=15.0)
    return [
        Scenario(
            "bag_paved",
            "dark bag on the paved area from 20 s, people walking past it",
            [_gt(Category.ILLEGAL_DUMPING, "paved-e", 20.0, note="bag")],
            edits=[_bag_at(600, 400, 20.0)],
        ),
        Scenario(
            "bag_grass",
            "grey sack on the lawn from 12 s",
            [_gt(Category.ILLEGAL_DUMPING, "grass-w", 12.0, note="sack")],
            edits=[_bag_at(150, 430, 12.0, seed=2, base=(120, 125, 125))],
        ),
        Scenario(
            "bag_small_grey",
            "small grey bag (30x22 px, ~40 grey levels above the paving) on the paved area from 20 s",
            [_gt(Category.ILLEGAL_DUMPING, "paved-e", 20.0, note="small grey bag")],
            edits=[_bag_at(660, 380, 20.0, seed=4, base=(120, 125, 125), size=(30, 22))],
        ),
        Scenario(
            "bag_taken_back",
            "bag on the paved area 20-35 s, taken away before the dwell (20 s) is reached",
            [],
            edits=[_bag_at(600, 400, 20.0, until_s=35.0)],
        ),
        Scenario("clean", "the footage as recorded: people walk through, tape flaps", []),
        Scenario(
            "light_step", "brightness x1.3 from 30 s (auto-exposure jump)", [], edits=[_brightness(30.0, 1.3)]
        ),
        Scenario(
            "cloud_shadow",
            "the east part (incl. the paved no-dumping zone) darkened x0.75 from 30 s",
            [],
            edits=[_shade(30.0, 0.75, (520, 300, 768, 576))],
        ),
        Scenario(
            "bag_then_light",
            "bag on the paved area from 15 s, brightness x1.3 from 45 s",
            [_gt(Category.ILLEGAL_DUMPING, "paved-e", 15.0, note="bag")],
            edits=[_bag_at(600, 400, 15.0, seed=3), _brightness(45.0, 1.3)],
        ),
        Scenario(
            "crowd",
            "ten people standing in the plaza 25-60 s (synthetic boxes, 15 % missed) among walkers",
            [_gt(Category.GATHERING, "plaza", 25.0, 60.0, note="crowd")],
            extra=_crowd(25.0, 60.0),
        ),
        Scenario(
            "van_stopped",
            "van pasted on the road from 15 s (jittered boxes, misses, unseen 25-30 s and 50-55 s)",
            [_gt(Category.ROAD_BLOCKAGE, "road-ne", 15.0, note="van")],
            edits=[van_edit],
            extra=van_dets,
        ),
    ]


def nanodet_scenario() -> Scenario:
    """The bag scenario seen by the real detector at 2 fps: it also sees the two parked vehicles."""
    return Scenario(
        "nanodet_bag_paved",
        "NanoDet at 2 fps: bag on the paved area from 20 s; van and car parked at the kerb all along",
        [
            _gt(Category.ILLEGAL_DUMPING, "paved-e", 20.0, note="bag"),
            _gt(Category.ROAD_BLOCKAGE, "kerb-n", 0.0, note="parked van"),
            _gt(Category.ROAD_BLOCKAGE, "kerb-n", 0.0, note="parked car"),
        ],
        edits=[_bag_at(600, 400, 20.0)],
    )


def load_nanodet() -> Callable[[np.ndarray], sv.Detections] | None:
    """NanoDet's detect function, or None if the detector or its model is not available."""
    try:
        from gridwatch.detectors.nanodet import NanoDetConfig, NanoDetDetector

        return NanoDetDetector(NanoDetConfig()).detect
    except Exception:  # optional: any failure (no module, no model, bad model) means "not here"
        return None


def run_scenario(
    scn: Scenario,
    cfg: CameraRulesConfig | None = None,
    *,
    keep_last_frame: bool = False,
    evidence: EvidenceStore | None = None,
    detector: Callable[[np.ndarray], sv.Detections] | None = None,
    stride: int = STRIDE,
    until_s: float | None = None,
) -> ScenarioResult:
    """Run one scenario.

    With `detector` (e.g. NanoDet's `detect`), its detections replace the motion stand-in; with
    `evidence`, each candidate gets a snapshot of the frame that raised it.
    """
    cfg = cfg or camera_config()
    if stride != STRIDE:
        cfg = cfg.model_copy(update={"tracker": cfg.tracker.model_copy(update={"fps": 10 / stride})})
    rules = CameraRules(cfg)
    people = MotionPeople() if scn.people and detector is None else None
    cands: list[IncidentCandidate] = []
    bg_ms: list[float] = []
    n = 0
    frame = None
    for i, (ts, frame) in enumerate(footage_frames(stride=stride)):
        t = ts - T0
        if until_s is not None and t > until_s * 1000:
            break
        for edit in scn.edits:
            edit(t, frame)
        boxes = [(b, "person", 0.6) for b in people(frame)] if people else []
        if scn.extra:
            boxes += scn.extra(i, t)
        dets = detections_of(boxes)
        if detector is not None:
            dets = sv.Detections.merge([detector(frame), dets]) if boxes else detector(frame)
        step = rules.step(ts, frame, dets)
        for c in step.candidates:
            if evidence is not None:
                c = evidence.snapshot(frame, c, detections=step.detections, zones=cfg.camera.zones)
            cands.append(c)
        bg_ms.append(step.background_ms)
        n += 1
    return ScenarioResult(scn, cands, n, bg_ms, frame if keep_last_frame else None)


def run_all(with_nanodet: bool = False) -> tuple[list[ScenarioResult], dict[str, Score]]:
    results = [run_scenario(s) for s in scenarios()]
    if with_nanodet:
        detect = load_nanodet()
        if detect is None:
            print("NanoDet not available: its scenario is skipped", file=sys.stderr)
        else:
            results.append(run_scenario(nanodet_scenario(), detector=detect, stride=5))
    return results, score_by_category((r.candidates, r.scenario.truth) for r in results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--nanodet", action="store_true", help="also run the scenario with the real NanoDet detector"
    )
    args = ap.parse_args(argv)
    if not FOOTAGE.exists():
        print(f"footage missing: {FOOTAGE}", file=sys.stderr)
        return 2
    results, scores = run_all(args.nanodet)
    for r in results:
        got = ", ".join(
            f"{c.category}@{c.details['zone_id']} +{(c.raised_at - T0) / 1000:.1f}s" for c in r.candidates
        )
        print(f"{r.scenario.name:15} truth={len(r.scenario.truth)} candidates: {got or '-'}")
    print()
    print(f"{'category':18} {'TP':>3} {'FP':>3} {'FN':>3} {'precision':>9} {'recall':>6}")
    for cat, s in sorted(scores.items()):
        print(f"{cat:18} {s.tp:3} {s.fp:3} {s.fn:3} {s.precision:9.2f} {s.recall:6.2f}")
    ms = [m for r in results for m in r.background_ms if m > 0]
    print(
        f"\nbackground path: {statistics.mean(ms):.2f} ms/frame mean, "
        f"{float(np.percentile(ms, 95)):.2f} ms p95 ({len(ms)} frames of 768x576, analysed at 320x240)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
