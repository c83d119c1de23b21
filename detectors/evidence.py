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
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import supervision as sv
from pydantic import BaseModel, ConfigDict, Field

from gridwatch.detectors.zones import ZoneConfig
from gridwatch.schemas import EvidenceRef, IncidentCandidate

_KIND_COLOURS = {  # BGR
    "gathering": (255, 160, 0),
    "roadway": (0, 200, 255),
    "no_dumping": (200, 0, 200),
}
_BOX = (60, 220, 60)
_HIT = (0, 0, 255)


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
    """Writes snapshots to a local directory and returns `EvidenceRef(kind="snapshot")`."""

    def __init__(self, cfg: EvidenceConfig) -> None:
        self.cfg = cfg

    def save(self, image: np.ndarray, *, camera_id: str, ts_ms: int, name: str) -> EvidenceRef:
        day = datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
        safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
        rel = Path(camera_id) / day / f"{safe}.jpg"
        path = self.cfg.directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise OSError(f"could not encode the snapshot {rel} as JPEG")
        tmp = path.with_suffix(f".jpg.tmp{os.getpid()}")
        tmp.write_bytes(buf.tobytes())
        os.replace(tmp, path)
        ref = self.cfg.uri_prefix + rel.as_posix() if self.cfg.uri_prefix else path.resolve().as_uri()
        return EvidenceRef(kind="snapshot", ref=ref, note=f"{camera_id} at {_utc(ts_ms)}")

    def snapshot(
        self,
        frame: np.ndarray,
        candidate: IncidentCandidate,
        *,
        detections: sv.Detections | None = None,
        zones: Sequence[ZoneConfig] = (),
    ) -> IncidentCandidate:
        """Render and store the snapshot of one candidate; returns the candidate with it attached."""
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
        return attach_evidence(candidate, [ref])


def attach_evidence(candidate: IncidentCandidate, refs: Sequence[EvidenceRef]) -> IncidentCandidate:
    """A copy of the (frozen) candidate with `refs` appended to its evidence."""
    return candidate.model_copy(update={"evidence": [*candidate.evidence, *refs]})
