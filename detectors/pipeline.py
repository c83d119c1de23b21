"""One camera's analysis: frame -> motion gate -> detector -> tracker, zones, rules -> evidence.

The same code runs live RTSP cameras (gridwatch/detectors/worker.py) and labelled clips
(`gridwatch eval detectors`, through `FileSource`), so what is evaluated is what runs.

* Frames are resized to the size the zones were drawn on (`rules.camera.frame_size`).
* The detector runs when the motion gate sees movement, and at least every
  `motion.max_interval_s` so still objects are seen; between runs the last detections stand (no
  movement means the scene has not changed). `inference` (a semaphore shared by the worker's
  cameras) bounds how many frames are in the detector at once.
* Each candidate gets an annotated snapshot (EvidenceStore) and the camera's location.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
import supervision as sv

from gridwatch.detectors.base import Detector
from gridwatch.detectors.evidence import EvidenceStore
from gridwatch.detectors.motion import MotionConfig, MotionGate
from gridwatch.detectors.scene_rules import CameraRules, CameraRulesConfig
from gridwatch.schemas import IncidentCandidate, Location

__all__ = ["CameraPipeline", "PipelineStats", "PipelineStep"]


@dataclass
class PipelineStats:
    frames: int = 0
    inferences: int = 0
    candidates: int = 0
    infer_ms: float = 0.0  # in the detector (after an inference slot was free)
    wait_ms: float = 0.0  # waiting for an inference slot (other cameras were inferring)
    rules_ms: float = 0.0
    gate_ms: float = 0.0


@dataclass
class PipelineStep:
    ts_ms: int
    detected: bool
    detections: sv.Detections
    candidates: list[IncidentCandidate] = field(default_factory=list)
    #: the frame as analysed (resized to the zones' frame size), for a shadow detector to see the same
    #: picture (detectors/shadow.py), and the time this frame spent in the detector (0: not run)
    image: np.ndarray | None = None
    infer_ms: float = 0.0


class CameraPipeline:
    def __init__(
        self,
        rules: CameraRulesConfig,
        detector: Detector | None,
        motion: MotionConfig,
        evidence: EvidenceStore | None,
        *,
        location: Location | None = None,
        inference: threading.Semaphore | None = None,
    ) -> None:
        self.camera_id = rules.camera.camera_id
        self.size = tuple(rules.camera.frame_size)
        self.detector = detector
        self.rules = CameraRules(rules, detector.model_version if detector else None)
        self.zones = rules.camera.zones
        self.gate = MotionGate(motion)
        self.evidence = evidence
        self.location = location
        self.inference = inference
        self.last_detections = sv.Detections.empty()
        self.stats = PipelineStats()

    def set_detector(self, detector: Detector) -> None:
        """Swap the detector between two frames (a promoted model): tracker, zones and rule state
        stay, so an object already tracked keeps its episode and raises no second incident."""
        self.detector = detector
        self.rules.set_model_version(detector.model_version)

    def reset(self) -> None:
        """After a camera reconnect: the picture may have changed while it was away."""
        self.gate.reset()
        self.last_detections = sv.Detections.empty()

    def process(self, image: np.ndarray, ts_ms: int) -> PipelineStep:
        self.stats.frames += 1
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        t0 = time.perf_counter()
        run = self.detector is not None and self.gate.should_detect(image, ts_ms / 1000)
        t1 = time.perf_counter()
        self.stats.gate_ms += (t1 - t0) * 1000
        infer_ms = 0.0
        if run:
            assert self.detector is not None
            if self.inference is not None:
                with self.inference:
                    # timed once the slot is ours: waiting for another camera is not this model's cost
                    t_slot = time.perf_counter()
                    self.last_detections = self.detector.detect(image)
                    infer_ms = (time.perf_counter() - t_slot) * 1000
                self.stats.wait_ms += (t_slot - t1) * 1000
            else:
                self.last_detections = self.detector.detect(image)
                infer_ms = (time.perf_counter() - t1) * 1000
            self.stats.inferences += 1
        t2 = time.perf_counter()
        self.stats.infer_ms += infer_ms
        step = self.rules.step(ts_ms, image, self.last_detections)
        cands = []
        for c in step.candidates:
            if self.location is not None and c.location is None:
                c = c.model_copy(update={"location": self.location})
            if self.evidence is not None:
                c = self.evidence.snapshot(
                    image,
                    c,
                    detections=step.detections,
                    zones=self.zones,
                    raw_detections=self.last_detections,
                )
            cands.append(c)
        self.stats.rules_ms += (time.perf_counter() - t2) * 1000
        self.stats.candidates += len(cands)
        return PipelineStep(ts_ms, run, step.detections, cands, image, infer_ms)
