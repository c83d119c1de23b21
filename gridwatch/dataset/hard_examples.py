"""The hard-example store: camera candidates labelled by the operators' verdicts.

Every verdict an operator or supervisor gives on a machine-raised incident is a label for the
retraining loop (issue 8): a false alarm dismissed in review or by a team, a confirmation in
review, a closure verified on site. For each *camera* source of the incident the store keeps one
example directory

    <root>/examples/<candidate_id>/example.json     what was seen and what the verdict was
    <root>/examples/<candidate_id>/evidence-<n>.jpg  copies of the candidate's local evidence
                                                     (evidence-0.jpg: the annotated snapshot)
    <root>/examples/<candidate_id>/frame.jpg         the raw frame (no drawings: a training image)
    <root>/examples/<candidate_id>/detections.json   the frame's detections (detectors/evidence.py)

`example.json` (version 1): candidate id, incident id, camera, zone, category, confidence, rule,
model version, observed time, the rule's `box` and `track_ids`, the candidate's details, the
evidence references (with the copied file's name when the evidence was a local file, and its
`role`: snapshot, frame or detections), `frame` and `detections` (the copied files' names, or
null when the camera kept no raw frame), and the verdict with its author, time and reason;
earlier verdicts on the same candidate are kept in `history` (a confirmed incident that a team
later calls a false alarm ends as a false alarm).

Writes are idempotent (same candidate, same verdict: nothing new) and atomic (temporary file +
rename), so a retried command or a replay never leaves half an example. Sensor and citizen
sources are not stored: they carry no picture to learn from.

A **miss** (verdict `missed`: an operator says camera X showed, at time T, what the incident is
about and no detector raised it) has no candidate and no frame yet. `record_missed` writes its
example (`candidate_id` = the example id `missed-<incident>-<camera>-<T>`, `frame_status`
"requested") and a frame request

    <root>/frame-requests/<example_id>.json          {"format": FRAME_REQUEST_FORMAT, "example_id",
                                                      "incident_id", "camera_id", "at_ms", ...}

that the camera worker running camera X answers from its ring of recent frames
(detectors/evidence.py `FrameRing`): `fill_frame` (frame.jpg + detections.json, `frame_status`
"filled") or `mark_frame_unavailable` (`frame_status` "unavailable" with the reason); both remove
the request, so every request ends filled or marked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

__all__ = [
    "DETECTIONS_SUFFIX",
    "FRAME_REQUEST_FORMAT",
    "FRAME_SUFFIX",
    "VERDICTS",
    "FrameRequest",
    "HardExample",
    "HardExampleStore",
    "SourceRecord",
    "evidence_role",
]

VERDICTS = ("false_alarm", "confirmed", "verified", "missed")
"""false_alarm: dismissed (in review or by the team); confirmed: dispatched after review;
verified: closed after a verified resolution (the incident was real); missed: visible on a camera
at a time, and no detector raised it (an operator's `missed` command)."""

FRAME_REQUEST_FORMAT = "gridwatch-frame-request"

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")

FRAME_SUFFIX = ".frame.jpg"
"""A camera candidate's raw frame: `<candidate_id>.frame.jpg` beside the annotated snapshot."""
DETECTIONS_SUFFIX = ".detections.json"
"""A camera candidate's detections sidecar: `<candidate_id>.detections.json`."""
_ROLE_FILES = {"frame": "frame.jpg", "detections": "detections.json"}


def evidence_role(ev: Any) -> str | None:
    """What a camera candidate's evidence reference (an `EvidenceRef` or its dict) is: "snapshot"
    (annotated), "frame" (raw) or "detections" (sidecar); None for anything else. Told by the kind
    ("frame", "detections") or by the file name's ending (evidence written before those kinds existed)."""
    if isinstance(ev, dict):
        kind, ref = str(ev.get("kind") or ""), str(ev.get("ref") or "")
    else:
        kind, ref = str(getattr(ev, "kind", "") or ""), str(getattr(ev, "ref", "") or "")
    path = ref.split("?", 1)[0].lower()
    if kind == "frame" or path.endswith(FRAME_SUFFIX):
        return "frame"
    if kind == "detections" or path.endswith(DETECTIONS_SUFFIX):
        return "detections"
    if kind == "snapshot":
        return "snapshot"
    return None


@dataclass(frozen=True)
class SourceRecord:
    """What the store needs of one incident source (the ledger's `incident_sources` row)."""

    candidate_id: str
    source_kind: str
    source_id: str
    category: str
    confidence: float
    observed_at: int
    rule: str
    model_version: str | None
    evidence: list[dict[str, Any]]
    details: dict[str, Any]


@dataclass(frozen=True)
class HardExample:
    path: Path
    data: dict[str, Any]

    @property
    def verdict(self) -> str:
        return str(self.data["verdict"]["label"])

    @property
    def candidate_id(self) -> str:
        return str(self.data["candidate_id"])

    @property
    def frame_path(self) -> Path | None:
        """The copied raw frame, if the camera kept one (older examples: None)."""
        name = self.data.get("frame")
        return self.path.parent / name if name and (self.path.parent / name).is_file() else None

    def detections(self) -> dict[str, Any] | None:
        """The frame's detections sidecar (detectors/evidence.py DETECTIONS_FORMAT), if kept."""
        name = self.data.get("detections")
        p = self.path.parent / name if name else None
        return json.loads(p.read_text(encoding="utf-8")) if p is not None and p.is_file() else None


@dataclass(frozen=True)
class FrameRequest:
    """A missed example waiting for its camera's frame at `at_ms`."""

    path: Path
    example_id: str
    incident_id: str
    camera_id: str
    at_ms: int
    requested_at_ms: int


def missed_example_id(incident_id: str, camera_id: str, at_ms: int) -> str:
    """One example per incident, camera and moment: the same report twice is one example."""
    return _SAFE.sub("_", f"missed-{incident_id}-{camera_id}-{at_ms}")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


class HardExampleStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.examples_dir = self.root / "examples"
        self.requests_dir = self.root / "frame-requests"
        self.written = 0
        self.errors = 0

    # --- misses: an example without a frame yet, and its frame request ----------------------------
    def record_missed(
        self,
        *,
        incident_id: str,
        camera_id: str,
        at_ms: int,
        category: str,
        grid_id: str | None,
        by: str,
        verdict_at_ms: int,
        note: str = "",
    ) -> Path | None:
        """The example of a miss and its frame request; None when it exists already (a repeated
        report of the same camera and moment: the first stands)."""
        eid = missed_example_id(incident_id, camera_id, at_ms)
        d = self.examples_dir / eid
        path = d / "example.json"
        if path.is_file():
            return None
        d.mkdir(parents=True, exist_ok=True)
        data = {
            "version": 1,
            "candidate_id": eid,
            "incident_id": incident_id,
            "camera_id": camera_id,
            "zone_id": None,
            "zone_kind": None,
            "category": category,
            "confidence": None,
            "rule": None,
            "model_version": None,
            "observed_at": at_ms,
            "box": None,
            "track_ids": None,
            "details": {"grid_id": grid_id, "note": note},
            "evidence": [],
            "frame": None,
            "detections": None,
            "verdict": {"label": "missed", "by": by, "at_ms": verdict_at_ms, "reason": note},
            "history": [],
            "grid_id": grid_id,
            "note": note,
            "frame_status": "requested",
            "frame_reason": None,
            "frame_ts_ms": None,
        }
        # the example first: a worker that sees the request always finds the example to update (a
        # crash in between leaves an example "requested" without a request: visible, counted by the
        # sampler as missed_frame_requested, never a request the worker would throw away)
        _write_json(path, data)
        self.requests_dir.mkdir(parents=True, exist_ok=True)
        _write_json(
            self.requests_dir / f"{eid}.json",
            {"format": FRAME_REQUEST_FORMAT, "version": 1, "example_id": eid, "incident_id": incident_id,
             "camera_id": camera_id, "at_ms": at_ms, "requested_at_ms": verdict_at_ms},
        )  # fmt: skip
        self.written += 1
        log.info("hard example %s: missed by %s at %d (frame requested)", eid, camera_id, at_ms)
        return path

    def frame_requests(self, camera_ids: Iterable[str] | None = None) -> list[FrameRequest]:
        """Pending frame requests (of these cameras only, if given), oldest moment first. An
        unreadable request file is logged and left for a person (never silently removed)."""
        if not self.requests_dir.is_dir():
            return []
        wanted = set(camera_ids) if camera_ids is not None else None
        out = []
        for p in sorted(self.requests_dir.glob("*.json")):
            try:
                r = json.loads(p.read_text(encoding="utf-8"))
                req = FrameRequest(
                    p, str(r["example_id"]), str(r["incident_id"]), str(r["camera_id"]), int(r["at_ms"]),
                    int(r.get("requested_at_ms") or 0),
                )  # fmt: skip
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("hard-example store: unreadable frame request %s: %s", p, e)
                continue
            if wanted is None or req.camera_id in wanted:
                out.append(req)
        return sorted(out, key=lambda q: (q.at_ms, q.example_id))

    def _update_missed(self, req: FrameRequest, upd: dict[str, Any]) -> Path | None:
        path = self.examples_dir / req.example_id / "example.json"
        if not path.is_file():
            log.warning("hard-example store: frame request %s has no example; removed", req.path.name)
            req.path.unlink(missing_ok=True)
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        data.update(upd)
        _write_json(path, data)
        req.path.unlink(missing_ok=True)  # after the example says how it ended
        return path

    def fill_frame(
        self, req: FrameRequest, jpeg: bytes, detections: dict[str, Any], frame_ts_ms: int
    ) -> Path | None:
        """Answer a request with the camera's raw frame (JPEG bytes) and its detections sidecar
        (detectors/evidence.py DETECTIONS_FORMAT); removes the request. None: no such example."""
        d = self.examples_dir / req.example_id
        if d.is_dir():
            tmp = d / f"frame.jpg.tmp{os.getpid()}"
            tmp.write_bytes(jpeg)
            os.replace(tmp, d / "frame.jpg")
            _write_json(d / "detections.json", detections)
        return self._update_missed(
            req,
            {"frame": "frame.jpg", "detections": "detections.json", "frame_status": "filled",
             "frame_reason": None, "frame_ts_ms": frame_ts_ms,
             "model_version": detections.get("model_version")},
        )  # fmt: skip

    def mark_frame_unavailable(self, req: FrameRequest, reason: str) -> Path | None:
        """The camera has no frame for the request (older than its ring, a gap): recorded on the
        example, the request removed."""
        return self._update_missed(req, {"frame_status": "unavailable", "frame_reason": reason})

    def record(
        self,
        *,
        incident_id: str,
        sources: Iterable[SourceRecord],
        verdict: str,
        by: str,
        at_ms: int,
        reason: str = "",
    ) -> list[Path]:
        """Label every camera source of one incident with `verdict`; returns the example files written."""
        if verdict not in VERDICTS:
            raise ValueError(f"hard example verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
        out = []
        for src in sources:
            if src.source_kind != "camera":
                continue
            path = self._write(
                incident_id, src, {"label": verdict, "by": by, "at_ms": at_ms, "reason": reason}
            )
            if path is not None:
                out.append(path)
        return out

    def _write(self, incident_id: str, src: SourceRecord, verdict: dict[str, Any]) -> Path | None:
        d = self.examples_dir / _SAFE.sub("_", src.candidate_id)
        d.mkdir(parents=True, exist_ok=True)
        path = d / "example.json"
        history: list[dict[str, Any]] = []
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            if (
                old.get("verdict", {}).get("label") == verdict["label"]
                and old.get("incident_id") == incident_id
            ):
                return None  # the same verdict again (a retried command): nothing new
            history = [*old.get("history", []), old["verdict"]]
        evidence = []
        kept: dict[str, str | None] = dict.fromkeys(_ROLE_FILES)
        for n, ev in enumerate(src.evidence):
            item = dict(ev)
            role = evidence_role(ev)
            if role is not None:
                item["role"] = role
            local = _local_file(str(ev.get("ref") or ""))
            if local is not None and local.is_file():
                name = f"evidence-{n}{local.suffix.lower()}"
                if role in _ROLE_FILES and kept[role] is None:
                    name = kept[role] = _ROLE_FILES[role]
                if not (d / name).exists():
                    tmp = d / f"{name}.tmp{os.getpid()}"
                    shutil.copyfile(local, tmp)
                    os.replace(tmp, d / name)
                item["file"] = name
            evidence.append(item)
        data = {
            "version": 1,
            "candidate_id": src.candidate_id,
            "incident_id": incident_id,
            "camera_id": src.source_id,
            "zone_id": src.details.get("zone_id"),
            "zone_kind": src.details.get("zone_kind"),
            "category": src.category,
            "confidence": src.confidence,
            "rule": src.rule,
            "model_version": src.model_version,
            "observed_at": src.observed_at,
            "box": src.details.get("box"),
            "track_ids": src.details.get("track_ids"),
            "details": src.details,
            "evidence": evidence,
            "frame": kept["frame"],
            "detections": kept["detections"],
            "verdict": verdict,
            "history": history,
        }
        tmp = path.with_suffix(f".json.tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)
        self.written += 1
        log.info("hard example %s: %s (%s)", src.candidate_id, verdict["label"], src.source_id)
        return path

    def __iter__(self) -> Iterator[HardExample]:
        if not self.examples_dir.is_dir():
            return
        for p in sorted(self.examples_dir.glob("*/example.json")):
            yield HardExample(p, json.loads(p.read_text(encoding="utf-8")))

    def get(self, candidate_id: str) -> HardExample | None:
        p = self.examples_dir / _SAFE.sub("_", candidate_id) / "example.json"
        return HardExample(p, json.loads(p.read_text(encoding="utf-8"))) if p.is_file() else None

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERDICTS, 0)
        for ex in self:
            out[ex.verdict] = out.get(ex.verdict, 0) + 1
        return out


def _local_file(ref: str) -> Path | None:
    u = urlparse(ref)
    if u.scheme.lower() != "file" or u.netloc not in ("", "localhost"):
        return None
    p = Path(unquote(u.path))
    return p if p.is_absolute() else None
