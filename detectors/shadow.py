"""The shadow run: the registry's `shadow` detector beside production, recorded, never dispatched.

    camera thread: frame --> production CameraPipeline --> candidates --> Kafka (as before)
                                   | the same (resized) frame, on a share of frames, within budget
                                   v
                         shadow CameraPipeline (own motion gate, tracker, zone rules)
                                   | candidates + production's, cost per frame
                                   v
                  <record_dir>/<camera>/<YYYY-MM-DD>.jsonl  --> `gridwatch models compare`

Why a second pipeline and not only a second detector: a candidate is what the rules raise from
tracked detections over time, so "what the shadow would have raised" needs its own tracker and
rule state. Nothing here touches Kafka: shadow candidates exist only as record lines.

Budget: the shadow runs in the camera's thread after production's candidates are emitted, so a
production candidate is never delayed and the next production frame at most by one shadow call.
A shadow frame is skipped (counted `shadow_skipped`) when production's time on this frame plus
the shadow's expected time would pass the camera's frame period, or when every inference slot
is busy (it never waits for one: that would hold up other cameras' production inferences).

Records (one JSON object a line, UTC day of the frame's time):

* `{"kind": "candidate", "role": "production"|"shadow", "camera", "ts" (frame ms), "model_version",
  "registry_version", "category", "zone", "grid_id", "candidate_id", "confidence", "observed_at",
  "boxes": {"n", "classes", "xyxy"}}`
* `{"kind": "start", "camera", "ts", "shadow_version", "shadow_model", "open": [{"zone", "category"}]}`:
  on the first frame of a new shadow model, the zones production's rules held an episode in then;
* `{"kind": "cost", "camera", "from_ts", "to_ts", "production_model", "shadow_model",
  "shadow_version", "frames", "shadow_frames", "shadow_skipped", "production_ms", "production_inferences",
  "paired_production_ms", "shadow_ms", "shadow_inferences"}`: detector milliseconds summed over the
  window (`paired_production_ms`: production's on the shadowed frames only), written every minute
  of frame time, at a model change and at stop.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import supervision as sv

from gridwatch.detectors.base import Detector
from gridwatch.detectors.motion import MotionConfig
from gridwatch.detectors.pipeline import CameraPipeline, PipelineStep
from gridwatch.detectors.scene_rules import CameraRulesConfig, class_names
from gridwatch.schemas import IncidentCandidate

log = logging.getLogger(__name__)

__all__ = [
    "COST_INTERVAL_MS",
    "ShadowBudget",
    "ShadowRecorder",
    "ShadowRun",
    "candidate_record",
    "frame_selected",
    "shadow_rules",
]

#: the incident category each zone kind's rule raises (detectors/scene_rules.py)
ZONE_CATEGORY = {"gathering": "gathering", "roadway": "road_blockage", "no_dumping": "illegal_dumping"}
COST_INTERVAL_MS = 60_000  # a cost line per minute of frame time: small files, figures per hour
MAX_BOXES = 20  # boxes kept per candidate record (a crowd of 200 would make a huge line)


def frame_selected(index: int, share: float) -> bool:
    """Whether analysed frame `index` (0-based, per camera) is shadowed: deterministic, evenly
    spread, frame 0 included (0.5: 0, 2, 4, ...; 0.25: 0, 4, 8, ...; 1: all; 0: none)."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    # rounded so that float products such as 0.7 * 10 do not spill into the next integer
    return math.ceil(round((index + 1) * share, 9)) > math.ceil(round(index * share, 9))


def shadow_rules(rules: CameraRulesConfig, share: float) -> CameraRulesConfig:
    """The camera's rules for a pipeline that sees `share` of its frames: the tracker runs at the
    matching frame rate (its lost-track buffer is converted from seconds at that rate)."""
    if share >= 1:
        return rules
    fps = max(rules.tracker.fps * share, 0.01)
    return rules.model_copy(update={"tracker": rules.tracker.model_copy(update={"fps": fps})})


class ShadowBudget:
    """Skips a shadow frame that would push the camera behind its analysed rate.

    The expected time is a moving average of the shadow's own calls. Because it only moves when the
    shadow runs, one slow call (an ONNX session's first run, a busy moment) would otherwise skip
    every later frame for good: after `retry_every` skips in a row one frame is tried anyway, and a
    new model starts from no estimate (`reset`)."""

    def __init__(self, period_ms: float, alpha: float = 0.2, retry_every: int = 10) -> None:
        self.period_ms = period_ms
        self.alpha = alpha
        self.retry_every = retry_every
        self.expected_ms: float | None = None  # none yet: the first call measures it
        self.skipped_in_a_row = 0

    def allows(self, production_ms: float) -> bool:
        if self.expected_ms is None or production_ms + self.expected_ms <= self.period_ms:
            return True
        if self.skipped_in_a_row + 1 >= self.retry_every:
            return True  # a trial call, to measure again
        self.skipped_in_a_row += 1
        return False

    def observe(self, shadow_ms: float) -> None:
        e = self.expected_ms
        self.expected_ms = shadow_ms if e is None else (1 - self.alpha) * e + self.alpha * shadow_ms
        self.skipped_in_a_row = 0

    def reset(self) -> None:
        self.expected_ms = None
        self.skipped_in_a_row = 0


def _boxes(detections: sv.Detections) -> dict[str, Any]:
    names = class_names(detections)
    classes: dict[str, int] = {}
    for n in names:
        classes[str(n)] = classes.get(str(n), 0) + 1
    xyxy = [[round(float(v), 1) for v in b] for b in detections.xyxy[:MAX_BOXES]]
    return {"n": len(detections), "classes": classes, "xyxy": xyxy}


def candidate_record(
    role: str,
    c: IncidentCandidate,
    frame_ts: int,
    detections: sv.Detections,
    registry_version: int | None = None,
) -> dict[str, Any]:
    """One candidate as a record line (what `gridwatch models compare` pairs)."""
    return {
        "kind": "candidate",
        "role": role,
        "camera": c.source_id,
        "ts": frame_ts,
        "model_version": c.model_version,
        "registry_version": registry_version,
        "category": str(c.category),
        "zone": c.details.get("zone_id"),
        "grid_id": c.grid_id,
        "candidate_id": c.candidate_id,
        "confidence": c.confidence,
        "observed_at": c.observed_at,
        "boxes": _boxes(detections),
    }


class ShadowRecorder:
    """Appends record lines to `<root>/<camera>/<YYYY-MM-DD>.jsonl` (the UTC day of the frame)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self.errors = 0

    def path(self, camera_id: str, ts_ms: int) -> Path:
        day = datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d")
        return self.root / camera_id / f"{day}.jsonl"

    def write(self, camera_id: str, ts_ms: int, record: dict[str, Any]) -> None:
        p = self.path(camera_id, ts_ms)
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            with self._lock:
                p.parent.mkdir(parents=True, exist_ok=True)
                with p.open("a", encoding="utf-8") as f:  # rare lines: open per write survives rotation
                    f.write(text)
        except OSError as e:  # a full disk must not stop production: log and count
            self.errors += 1
            log.warning("shadow: cannot write %s: %s", p, e)


@dataclass
class _Cost:
    from_ts: int | None = None
    to_ts: int | None = None
    production_model: str = ""
    frames: int = 0
    shadow_frames: int = 0
    shadow_skipped: int = 0
    production_ms: float = 0.0
    production_inferences: int = 0
    paired_production_ms: float = 0.0
    shadow_ms: float = 0.0
    shadow_inferences: int = 0


@dataclass
class _ShadowCamera:
    camera_id: str
    rules: CameraRulesConfig
    budget: ShadowBudget
    pipeline: CameraPipeline | None = None
    index: int = 0  # analysed frames seen while the shadow runs
    version: int | None = None  # the registry version of this camera's shadow pipeline
    start_pending: bool = False  # a start record is due on the next frame (a new shadow model)
    cost: _Cost = field(default_factory=_Cost)
    lock: threading.Lock = field(default_factory=threading.Lock)


class ShadowRun:
    """The shadow detector for a worker's cameras. `observe` is called by each camera's thread
    after production; `set_detector` (from the registry poller) starts, swaps or stops it."""

    def __init__(
        self,
        cameras: dict[str, tuple[CameraRulesConfig, float]],
        motion: MotionConfig,
        recorder: ShadowRecorder,
        *,
        frame_share: float,
        inference: threading.Semaphore | None = None,
    ) -> None:
        """`cameras`: camera id -> (its rules, its analysed fps), for the cameras that run the shadow."""
        self.motion = motion
        self.recorder = recorder
        self.frame_share = frame_share
        self.inference = inference
        self.detector: Detector | None = None
        self.version: int | None = None
        self.cams = {
            cid: _ShadowCamera(cid, shadow_rules(rules, frame_share), ShadowBudget(1000.0 / fps))
            for cid, (rules, fps) in cameras.items()
        }
        self.counters = {
            "shadow_frames": 0,
            "shadow_candidates": 0,
            "shadow_skipped": 0,
            "shadow_swaps": 0,
            "shadow_errors": 0,
        }
        self._shadow_ms = 0.0  # detector time over shadowed frames, for shadow_ms_per_frame
        self._production_ms = 0.0  # production's detector time on those same frames
        self._counter_lock = threading.Lock()  # camera threads update the worker-wide figures

    @property
    def model_version(self) -> str:
        return self.detector.model_version if self.detector is not None else ""

    def set_detector(self, detector: Detector | None, version: int | None) -> Detector | None:
        """Start (no shadow yet), swap (tracker and rule state kept, as production's hot swap) or
        stop (None) the shadow; returns the detector it replaced, for the caller to close (no call
        is running on it any more: each camera's lock is taken)."""
        old = self.detector
        for sc in self.cams.values():
            with sc.lock:
                self._flush(sc)  # cost figures belong to one pair of models
                if detector is None:
                    sc.pipeline = None
                elif sc.pipeline is None:
                    sc.pipeline = CameraPipeline(sc.rules, detector, self.motion, None)
                    sc.index = 0
                else:
                    sc.pipeline.set_detector(detector)
                sc.version = version  # under the camera's lock: its next record names the new model
                sc.start_pending = detector is not None
                sc.budget.reset()
        self.detector, self.version = detector, version
        if old is not None or detector is not None:
            self.counters["shadow_swaps"] += 1
        log.info("cameras: shadow detector now %s (registry version %s)",
                 detector.model_version if detector else "none", version)  # fmt: skip
        return old

    def observe(
        self,
        camera_id: str,
        step: PipelineStep,
        production_ms: float,
        open_zones: Callable[[], list[str]] | None = None,
    ) -> list[IncidentCandidate]:
        """After production analysed a frame: record its candidates and, on a selected frame within
        budget, run the shadow on the same picture; returns the shadow's candidates (recorded only).
        `open_zones`: the zones production's rules hold an episode in (written in the start record
        of a new shadow model, so compare can tell a condition both saw from a shadow-only one)."""
        sc = self.cams.get(camera_id)
        if sc is None or self.detector is None:
            return []
        with sc.lock:
            pipe = sc.pipeline
            if pipe is None or step.image is None:
                return []
            cost = sc.cost
            if cost.from_ts is None:
                cost.from_ts = step.ts_ms
            cost.to_ts = step.ts_ms
            if sc.start_pending:
                sc.start_pending = False
                kinds = {z.id: z.kind for z in sc.rules.camera.zones}
                held = open_zones() if open_zones is not None else []
                self.recorder.write(camera_id, step.ts_ms, {
                    "kind": "start", "camera": camera_id, "ts": step.ts_ms, "shadow_version": sc.version,
                    "shadow_model": self.model_version,
                    "open": [{"zone": z, "category": ZONE_CATEGORY.get(kinds.get(z, ""), "")} for z in held],
                })  # fmt: skip
            cost.frames += 1
            cost.production_ms += step.infer_ms
            cost.production_inferences += int(step.detected)
            for c in step.candidates:
                self.recorder.write(
                    camera_id, step.ts_ms, candidate_record("production", c, step.ts_ms, step.detections)
                )
            selected = frame_selected(sc.index, self.frame_share)
            sc.index += 1
            shadow_cands: list[IncidentCandidate] = []
            if selected:
                shadow_cands = self._run(sc, pipe, step, production_ms)
            if step.ts_ms - (cost.from_ts or step.ts_ms) >= COST_INTERVAL_MS:
                self._flush(sc)
            return shadow_cands

    def _run(
        self, sc: _ShadowCamera, pipe: CameraPipeline, step: PipelineStep, production_ms: float
    ) -> list[IncidentCandidate]:
        cost = sc.cost
        # never wait for an inference slot: another camera's production inference would queue
        # behind the shadow; holding one delays others by at most this one call
        slot = self.inference is None or self.inference.acquire(blocking=False)
        if not slot or not sc.budget.allows(production_ms):
            if slot and self.inference is not None:
                self.inference.release()
            cost.shadow_skipped += 1
            with self._counter_lock:
                self.counters["shadow_skipped"] += 1
            return []
        t0 = time.perf_counter()
        try:
            s = pipe.process(step.image, step.ts_ms)  # type: ignore[arg-type]
        except Exception:  # the shadow's bug or model: counted, logged, never production's problem
            with self._counter_lock:
                self.counters["shadow_errors"] += 1
                n = self.counters["shadow_errors"]
            if n == 1 or n % 100 == 0:  # the first and then every 100th: no log flood at 25 fps
                log.exception("camera %s: shadow error %d; production continues", sc.camera_id, n)
            return []
        finally:
            if self.inference is not None:
                self.inference.release()
        sc.budget.observe((time.perf_counter() - t0) * 1000)
        cost.shadow_frames += 1
        cost.shadow_ms += s.infer_ms
        cost.shadow_inferences += int(s.detected)
        cost.paired_production_ms += step.infer_ms
        with self._counter_lock:
            self.counters["shadow_frames"] += 1
            self.counters["shadow_candidates"] += len(s.candidates)
            self._shadow_ms += s.infer_ms
            self._production_ms += step.infer_ms
        for c in s.candidates:
            self.recorder.write(
                sc.camera_id,
                step.ts_ms,
                candidate_record("shadow", c, step.ts_ms, s.detections, sc.version),
            )
            log.info("camera %s: shadow candidate %s %s in zone %s (recorded, not dispatched)",
                     sc.camera_id, c.category.value, c.candidate_id, c.details.get("zone_id"))  # fmt: skip
        return s.candidates

    def _flush(self, sc: _ShadowCamera) -> None:
        """Write the camera's cost window (caller holds its lock) and start a new one."""
        c = sc.cost
        if c.frames and c.from_ts is not None and self.detector is not None:
            self.recorder.write(
                sc.camera_id,
                c.from_ts,
                {
                    "kind": "cost",
                    "camera": sc.camera_id,
                    "from_ts": c.from_ts,
                    "to_ts": c.to_ts,
                    "production_model": c.production_model,
                    "shadow_model": self.detector.model_version,
                    "shadow_version": self.version,
                    "frames": c.frames,
                    "shadow_frames": c.shadow_frames,
                    "shadow_skipped": c.shadow_skipped,
                    "production_ms": round(c.production_ms, 2),
                    "production_inferences": c.production_inferences,
                    "paired_production_ms": round(c.paired_production_ms, 2),
                    "shadow_ms": round(c.shadow_ms, 2),
                    "shadow_inferences": c.shadow_inferences,
                },
            )
        sc.cost = _Cost(production_model=c.production_model)

    def set_production_model(self, model_version: str) -> None:
        """Production's model now (at start and after its hot swap): cost lines name it."""
        for sc in self.cams.values():
            with sc.lock:
                if sc.cost.production_model and sc.cost.production_model != model_version:
                    self._flush(sc)
                sc.cost.production_model = model_version

    def reset(self, camera_id: str) -> None:
        """After a camera reconnect, as production's pipeline: the picture may have changed."""
        sc = self.cams.get(camera_id)
        if sc is None:
            return
        with sc.lock:
            if sc.pipeline is not None:
                sc.pipeline.reset()

    def flush(self) -> None:
        for sc in self.cams.values():
            with sc.lock:
                self._flush(sc)

    def stats(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(self.counters)
        n = self.counters["shadow_frames"]
        # always floats and strings: InfluxDB fixes a field's type per measurement
        s["shadow_ms_per_frame"] = round(self._shadow_ms / n, 2) if n else 0.0
        s["shadow_paired_production_ms_per_frame"] = round(self._production_ms / n, 2) if n else 0.0
        s["shadow_model_version"] = self.model_version
        s["shadow_record_errors"] = self.recorder.errors
        return s
