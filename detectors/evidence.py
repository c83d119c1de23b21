"""Evidence snapshots for camera candidates: an annotated JPEG in a local store.

The picture says what the rule saw: zone outlines (the candidate's zone thicker, labelled with
its kind), detector boxes with class, track id and score, the rule's own box (a left object's
blob, a still vehicle) in red, and a header with the camera id and the frame time in UTC, so a
snapshot forwarded out of context still says where and when. Drawing is plain cv2: no fonts to
ship, same output everywhere.

Files go to `<directory>/<camera_id>/<YYYY-MM-DD>/<name>.jpg`, written to a temporary name and
renamed, so a reader never sees half a JPEG; the reference is the file's URI (or
`uri_prefix + relative path` when the store is served, e.g. by the wall screens' web server).
The image is the frame under a header strip, so no pixel of the scene is hidden by the text.

For the retraining loop (issue 8, docs/DATASETS.md) a candidate's snapshot also keeps, unless
`keep_raw_frame` is off, beside the annotated picture:

    <name>.frame.jpg         the raw frame the rules saw (no drawings: a training image)
    <name>.detections.json   that frame's detections (DETECTIONS_FORMAT, below)

attached as two more `EvidenceRef`s after the annotated snapshot (which stays `evidence[0]`: the
console and the team pushes show the first). Their kinds are "frame" and "detections";
`gridwatch.dataset.hard_examples.evidence_role()` tells the three apart (also by the file names).

For misses (an operator's `missed` command: camera X showed it at T, no detector raised it) the
camera worker keeps a `FrameRing` per camera: the last `recent_frames_s` of analysed frames,
JPEG-encoded in memory with the detections the pipeline had on each, bounded in bytes too
(`recent_frames_max_mb`); `resolve_frame_request` (pure) says whether a request for time T is
filled from it, can never be (older than the ring, a gap), or must wait for frames to come.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field

from gridwatch.dataset.hard_examples import DETECTIONS_SUFFIX, FRAME_SUFFIX, evidence_role
from gridwatch.detectors.zones import ZoneConfig
from gridwatch.schemas import EvidenceRef, IncidentCandidate

__all__ = [
    "DETECTIONS_FORMAT",
    "DETECTIONS_KIND",
    "DETECTIONS_SUFFIX",
    "FRAME_KIND",
    "FRAME_SUFFIX",
    "EvidenceConfig",
    "EvidenceStore",
    "FrameRing",
    "RingFrame",
    "resolve_frame_request",
    "attach_evidence",
    "detections_to_json",
    "evidence_role",
    "render_snapshot",
]

_KIND_COLOURS = {  # BGR
    "gathering": (255, 160, 0),
    "roadway": (0, 200, 255),
    "no_dumping": (200, 0, 200),
}
_BOX = (60, 220, 60)
_HIT = (0, 0, 255)

FRAME_KIND = "frame"
"""`EvidenceRef.kind` of the raw frame."""
DETECTIONS_KIND = "detections"
"""`EvidenceRef.kind` of the detections sidecar."""
DETECTIONS_FORMAT = "gridwatch-detections"
"""The sidecar: {"format": DETECTIONS_FORMAT, "version": 1, "candidate_id", "camera_id", "ts_ms",
"model_version", "image": {"file", "width", "height"}, "source": "detector" | "tracked",
"detections": [{"xyxy": [x0, y0, x1, y1], "class_id", "class_name", "confidence", "tracker_id"}]}
in the raw frame's pixels; `source` says whether the list is the detector's full output (tracker ids
matched from the tracked detections) or only what the tracker kept."""


class EvidenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    directory: Path = Field(
        title="Directory", description="Where snapshots are written (created if missing)."
    )
    uri_prefix: str | None = Field(
        None,
        title="URI prefix",
        description="If set, references are this prefix + the path under `directory` (e.g. "
        "'https://evidence.city.example/'); otherwise file:// URIs.",
    )
    jpeg_quality: int = Field(
        85, ge=30, le=100, title="JPEG quality", description="cv2 IMWRITE_JPEG_QUALITY."
    )
    keep_raw_frame: bool = Field(
        True,
        title="Keep the raw frame",
        description="Also store each candidate's raw frame (`<name>.frame.jpg`, no drawings) and its "
        "detections (`<name>.detections.json`) beside the annotated snapshot, for the retraining "
        "loop's datasets (docs/DATASETS.md). Off: only the annotated snapshot.",
    )
    recent_frames_s: float = Field(
        120,
        ge=0,
        le=3600,
        title="Recent frames kept (s)",
        description="Each camera keeps its analysed frames of the last this many seconds in memory "
        "(JPEG, with their detections), so an operator's `missed` report (docs/DISPATCH.md) gets the "
        "frame it names. 0: none kept (a miss is then marked frame_unavailable).",
    )
    recent_frames_max_mb: float = Field(
        32,
        gt=0,
        title="Recent frames memory (MB per camera)",
        description="Bound on one camera's recent frames; past it the oldest go first (counted as "
        "`recent_frames_evicted_memory`), so the ring covers less than `recent_frames_s`.",
    )


def _utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _label(
    img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int], scale: float
) -> None:
    """Text on a filled box of `colour` (readable on sky and asphalt alike); org is the box's bottom left."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = min(max(org[0], 0), max(img.shape[1] - tw - 4, 0))  # keep it inside the picture
    y = max(org[1], th + base + 2)
    cv2.rectangle(img, (x, y - th - base - 2), (x + tw + 4, y), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 300 else (255, 255, 255)
    cv2.putText(img, text, (x + 2, y - base - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 1, cv2.LINE_AA)


def render_snapshot(
    frame: np.ndarray,
    *,
    camera_id: str,
    ts_ms: int,
    detections: sv.Detections | None = None,
    zones: Sequence[ZoneConfig] = (),
    highlight_zone: str | None = None,
    highlight_boxes: Sequence[Sequence[float]] = (),
    caption: str | None = None,
) -> np.ndarray:
    """The annotated picture (BGR): the frame with drawings, under a header strip (no pixel of the scene hidden)."""
    img = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    h, w = img.shape[:2]
    scale = max(0.4, min(w, h) / 1200)
    for z in zones:
        colour = _KIND_COLOURS.get(z.kind, (255, 255, 255))
        pts = np.round(np.asarray(z.polygon)).astype(np.int32)
        thick = 3 if z.id == highlight_zone else 1
        cv2.polylines(img, [pts], True, colour, thick, cv2.LINE_AA)
        top = pts[np.argmin(pts[:, 1])]
        _label(img, f"{z.id} ({z.kind})", (int(top[0]), int(top[1])), colour, scale)
    if detections is not None and len(detections):
        names = detections.data.get("class_name") if detections.data else None
        for i, box in enumerate(detections.xyxy):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            cv2.rectangle(img, (x0, y0), (x1, y1), _BOX, 1)
            label = str(names[i]) if names is not None else "object"
            if detections.tracker_id is not None and i < len(detections.tracker_id):
                label += f" #{int(detections.tracker_id[i])}"
            if detections.confidence is not None:
                label += f" {float(detections.confidence[i]):.2f}"
            _label(img, label, (x0, y0), _BOX, scale * 0.85)
    for box in highlight_boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in box[:4])
        pad = 4
        cv2.rectangle(img, (x0 - pad, y0 - pad), (x1 + pad, y1 + pad), _HIT, 2)
    lines = [f"{camera_id}   {_utc(ts_ms)}"] + ([caption[:140]] if caption else [])
    (_, th), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale * 1.2, 1)
    line_h = th + base + 8
    strip = np.zeros((line_h * len(lines) + 4, w, 3), np.uint8)
    for k, text in enumerate(lines):
        colour = (255, 255, 255) if k == 0 else (170, 220, 255)
        y = line_h * (k + 1) - base
        cv2.putText(strip, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale * 1.2, colour, 1, cv2.LINE_AA)
    return np.vstack([strip, img])


class EvidenceStore:
    """Writes snapshots to a local directory and returns `EvidenceRef(kind="snapshot")` (plus the raw
    frame and its detections for candidates, `keep_raw_frame`)."""

    def __init__(self, cfg: EvidenceConfig) -> None:
        self.cfg = cfg

    def _target(self, camera_id: str, ts_ms: int, name: str, suffix: str) -> tuple[Path, Path]:
        day = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
        rel = Path(camera_id) / day / f"{safe}{suffix}"
        path = self.cfg.directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return rel, path

    def _write(self, rel: Path, path: Path, data: bytes) -> str:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return self.cfg.uri_prefix + rel.as_posix() if self.cfg.uri_prefix else path.resolve().as_uri()

    def _jpeg(self, image: np.ndarray, rel: Path) -> bytes:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise OSError(f"could not encode the snapshot {rel} as JPEG")
        return bytes(buf.tobytes())

    def save(self, image: np.ndarray, *, camera_id: str, ts_ms: int, name: str) -> EvidenceRef:
        rel, path = self._target(camera_id, ts_ms, name, ".jpg")
        ref = self._write(rel, path, self._jpeg(image, rel))
        return EvidenceRef(kind="snapshot", ref=ref, note=f"{camera_id} at {_utc(ts_ms)}")

    def save_raw(
        self,
        frame: np.ndarray,
        *,
        camera_id: str,
        ts_ms: int,
        name: str,
        detections: sv.Detections | None = None,
        raw_detections: sv.Detections | None = None,
        model_version: str | None = None,
    ) -> list[EvidenceRef]:
        """The raw frame (`<name>.frame.jpg`) and its detections (`<name>.detections.json`).

        `raw_detections` (the detector's full output for the frame) are preferred: near-threshold
        and short-lived detections the tracker drops are what a dataset wants; their tracker ids
        come from `detections` (the tracked ones). Without them the tracked detections are written."""
        img = frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        rel, path = self._target(camera_id, ts_ms, name, FRAME_SUFFIX)
        frame_ref = self._write(rel, path, self._jpeg(img, rel))
        h, w = img.shape[:2]
        doc = {
            "format": DETECTIONS_FORMAT,
            "version": 1,
            "candidate_id": name,
            "camera_id": camera_id,
            "ts_ms": ts_ms,
            "model_version": model_version,
            "image": {"file": path.name, "width": int(w), "height": int(h)},
            "source": "detector" if raw_detections is not None else "tracked",
            "detections": detections_to_json(
                raw_detections if raw_detections is not None else detections,
                tracked=detections if raw_detections is not None else None,
            ),
        }
        rel_d, path_d = self._target(camera_id, ts_ms, name, DETECTIONS_SUFFIX)
        det_ref = self._write(rel_d, path_d, json.dumps(doc, ensure_ascii=False, indent=1).encode("utf-8"))
        n = len(doc["detections"])
        return [
            EvidenceRef(kind=FRAME_KIND, ref=frame_ref, note=f"raw frame {w}x{h}, no drawings"),
            EvidenceRef(kind=DETECTIONS_KIND, ref=det_ref, note=f"detections of the frame ({n}, JSON)"),
        ]

    def snapshot(
        self,
        frame: np.ndarray,
        candidate: IncidentCandidate,
        *,
        detections: sv.Detections | None = None,
        zones: Sequence[ZoneConfig] = (),
        raw_detections: sv.Detections | None = None,
    ) -> IncidentCandidate:
        """Render and store the snapshot of one candidate; returns the candidate with it attached
        (then, with `keep_raw_frame`, the raw frame and the detections sidecar)."""
        box = candidate.details.get("box")
        img = render_snapshot(
            frame,
            camera_id=candidate.source_id,
            ts_ms=candidate.raised_at,
            detections=detections,
            zones=zones,
            highlight_zone=candidate.details.get("zone_id"),
            highlight_boxes=[box] if box else (),
            caption=candidate.summary,
        )
        # named by the candidate id: a replay overwrites the same file instead of adding one
        ref = self.save(
            img, camera_id=candidate.source_id, ts_ms=candidate.raised_at, name=candidate.candidate_id
        )
        refs = [ref]
        if self.cfg.keep_raw_frame:
            refs += self.save_raw(
                frame,
                camera_id=candidate.source_id,
                ts_ms=candidate.raised_at,
                name=candidate.candidate_id,
                detections=detections,
                raw_detections=raw_detections,
                model_version=candidate.model_version,
            )
        return attach_evidence(candidate, refs)


def detections_to_json(
    detections: sv.Detections | None, *, tracked: sv.Detections | None = None
) -> list[dict[str, Any]]:
    """Detections as JSON-ready dicts (pixel xyxy rounded to 0.01). With `tracked`, a detection takes
    the tracker id of the tracked detection of the same class whose box it overlaps by IoU >= 0.9
    (ByteTrack returns the detector's own boxes, so the match is exact in practice)."""
    if detections is None or not len(detections):
        return []
    names = detections.data.get("class_name") if detections.data else None
    tids: list[int | None] = [None] * len(detections)
    if detections.tracker_id is not None:
        tids = [int(t) if t is not None and int(t) >= 0 else None for t in detections.tracker_id]
    elif tracked is not None and len(tracked) and tracked.tracker_id is not None:
        iou = sv.box_iou_batch(detections.xyxy, tracked.xyxy)
        for i in range(len(detections)):
            j = int(np.argmax(iou[i]))
            same = (
                detections.class_id is None
                or tracked.class_id is None
                or int(detections.class_id[i]) == int(tracked.class_id[j])
            )
            if iou[i, j] >= 0.9 and same and int(tracked.tracker_id[j]) >= 0:
                tids[i] = int(tracked.tracker_id[j])
    out = []
    for i, box in enumerate(detections.xyxy):
        out.append(
            {
                "xyxy": [round(float(v), 2) for v in box[:4]],
                "class_id": None if detections.class_id is None else int(detections.class_id[i]),
                "class_name": None if names is None else str(names[i]),
                "confidence": None
                if detections.confidence is None
                else round(float(detections.confidence[i]), 4),
                "tracker_id": tids[i],
            }
        )
    return out


def attach_evidence(candidate: IncidentCandidate, refs: Sequence[EvidenceRef]) -> IncidentCandidate:
    """A copy of the (frozen) candidate with `refs` appended to its evidence."""
    return candidate.model_copy(update={"evidence": [*candidate.evidence, *refs]})


@dataclass(frozen=True)
class RingFrame:
    """One analysed frame kept in memory: raw JPEG (the analysed size) and its detections."""

    ts_ms: int
    jpeg: bytes
    width: int
    height: int
    detections: sv.Detections
    """The detector's full output for the frame (the last inference: between inferences the last
    detections stand, as in the pipeline)."""
    tracked: sv.Detections
    model_version: str | None

    def sidecar(self, name: str, camera_id: str, file: str = "frame.jpg") -> dict[str, Any]:
        """The frame's detections in DETECTIONS_FORMAT (like a candidate's sidecar)."""
        return {
            "format": DETECTIONS_FORMAT,
            "version": 1,
            "candidate_id": name,
            "camera_id": camera_id,
            "ts_ms": self.ts_ms,
            "model_version": self.model_version,
            "image": {"file": file, "width": self.width, "height": self.height},
            "source": "detector",
            "detections": detections_to_json(self.detections, tracked=self.tracked),
        }


class FrameRing:
    """A camera's recent analysed frames, oldest first, bounded by age and by bytes. Thread-safe:
    the camera thread adds, the worker's request loop reads."""

    def __init__(self, keep_s: float, max_bytes: int) -> None:
        self.keep_ms = int(keep_s * 1000)
        self.max_bytes = max_bytes
        self._frames: deque[RingFrame] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        self.added = 0
        self.evicted_age = 0
        self.evicted_memory = 0

    def add(self, frame: RingFrame) -> None:
        with self._lock:
            self._frames.append(frame)
            self._bytes += len(frame.jpeg)
            self.added += 1
            while self._frames and self._frames[0].ts_ms < frame.ts_ms - self.keep_ms:
                self._bytes -= len(self._frames.popleft().jpeg)
                self.evicted_age += 1
            while len(self._frames) > 1 and self._bytes > self.max_bytes:
                self._bytes -= len(self._frames.popleft().jpeg)
                self.evicted_memory += 1

    def snapshot(self) -> list[RingFrame]:
        with self._lock:
            return list(self._frames)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)


def resolve_frame_request(
    frames: Sequence[RingFrame], at_ms: int, period_ms: int, now_ms: int, keep_ms: int
) -> tuple[str, RingFrame | None, str]:
    """What to do with a request for the frame at `at_ms` (pure): ("fill", frame, ""), the frame
    nearest `at_ms` within one analysed period; ("unavailable", None, reason) when the ring cannot
    ever hold it; ("wait", None, "") when frames around `at_ms` may still arrive."""
    if keep_ms <= 0:
        return "unavailable", None, "this camera keeps no recent frames (cameras.evidence.recent_frames_s: 0)"
    near = [f for f in frames if abs(f.ts_ms - at_ms) <= period_ms]
    if near:
        return "fill", min(near, key=lambda f: (abs(f.ts_ms - at_ms), f.ts_ms)), ""
    if frames and at_ms < frames[0].ts_ms:
        return (
            "unavailable",
            None,
            (
                f"older than the camera's recent frames (oldest kept: {_utc(frames[0].ts_ms)}, "
                f"asked: {_utc(at_ms)})"
            ),
        )
    if frames and frames[-1].ts_ms > at_ms + period_ms:
        return (
            "unavailable",
            None,
            f"no analysed frame within {period_ms} ms of {_utc(at_ms)} (the camera was down?)",
        )
    if now_ms - at_ms > keep_ms:
        # nothing came since: the camera is down, or the worker started after that moment
        return (
            "unavailable",
            None,
            f"no frame of the camera around {_utc(at_ms)} (down, or not yet analysed then)",
        )
    return "wait", None, ""
