"""The active-learning sampler: hard examples -> a new dataset version (docs/DATASETS.md).

In the spirit of Roboflow's active learning: independent sampling strategies, each with a share,
then caps. An example is picked when any strategy picks it; its `reason` is the first that did,
in this priority order (which is also the order the caps are filled in):

    false_alarm     verdict false_alarm                                    share: false_alarm_share (1)
    missed          verdict missed, with the frame its camera filled in    share: missed_share (1)
    near_threshold  confirmed/verified with a detection whose confidence
                    lies in [threshold, threshold + near_margin)           share: near_threshold_share (1)
    positive        confirmed/verified                                     share: positive_share (0.5)
    random          any example                                            share: random_share (0.05)

Every draw is a hash of (seed, strategy, candidate id): the same store and seed give the same
version on any machine, in any file order, and an example keeps its draws when others are added.
Within a strategy the caps take examples in a seeded random order (not the oldest first).
`per_camera_cap` bounds the images of one camera in the version, `per_day_cap` the images of one
UTC day (of the frame's time); both count what the version inherits from its parent.

A new version of an existing dataset starts from its latest version: its images and annotations
(corrections imported from an annotator included) are kept, and only examples not yet in it are
sampled. An inherited image whose example has since changed verdict is labelled again.

Labels (pseudo labels: the detector's boxes, `extra.pseudo = true`):

* confirmed / verified: every detection of the frame's detections sidecar becomes an annotation.
  The rule's object (illegal dumping, a still vehicle) with no detector box to match it is listed
  in the image's `extra.unlabelled` for an annotator (a blob the background model found).
* false_alarm of an object rule (illegal_dumping, road_blockage_still): the detections that are the
  rule's object (tracker id among the rule's `track_ids`, or IoU >= 0.5 with the rule's `box`) get
  no annotation, so the image teaches that they are background, and are listed with their box,
  class, score and the verdict's reason in the image's `extra.negatives` (the verifier's negatives).
  The other detections of the frame stay (people walking past are still people).
* false_alarm of an aggregate rule (gathering, road_blockage_occupancy): the verdict is about a
  count, not about what the boxes are; every detection stays and nothing is negative.
* missed (an operator: camera X showed it at T, no detector raised it): every detection of the
  frame stays, and the missed object is listed in `extra.unlabelled` without a box (category,
  camera, time, the operator's note): an annotator must box it. A miss whose camera could not give
  the frame (or has not yet) is skipped and counted (`missed_frame_unavailable`,
  `missed_frame_requested`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.hard_examples import HardExample, HardExampleStore
from gridwatch.dataset.labels import LabelMap
from gridwatch.dataset.store import DatasetVersion, Progress, check_name, renumber, versions, write_version
from gridwatch.detectors.tracking import box_iou

__all__ = ["OBJECT_RULES", "STRATEGIES", "SamplerParams", "label_example", "sample"]

STRATEGIES = ("false_alarm", "missed", "near_threshold", "positive", "random")
OBJECT_RULES = frozenset({"illegal_dumping", "road_blockage_still"})
"""Rules whose candidate is about one object: a false alarm says that object was not what it seemed."""
NEGATIVE_IOU = 0.5


class SamplerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, title="Seed", description="Seed of every random draw (same seed, same version).")
    per_camera_cap: int | None = Field(
        200,
        ge=1,
        title="Per-camera cap",
        description="Most images of one camera in the version (null: no cap).",
    )
    per_day_cap: int | None = Field(
        500,
        ge=1,
        title="Per-day cap",
        description="Most images of one UTC day in the version (null: no cap).",
    )
    false_alarm_share: float = Field(
        1.0, ge=0, le=1, title="False-alarm share", description="Share of false alarms picked."
    )
    missed_share: float = Field(
        1.0,
        ge=0,
        le=1,
        title="Missed share",
        description="Share of misses (with their frame) picked: what the detector did not see.",
    )
    near_threshold_share: float = Field(
        1.0,
        ge=0,
        le=1,
        title="Near-threshold share",
        description="Share of confirmed/verified examples with a detection near the threshold picked.",
    )
    positive_share: float = Field(
        0.5,
        ge=0,
        le=1,
        title="Positive share",
        description="Share of the other confirmed/verified examples picked.",
    )
    random_share: float = Field(
        0.05,
        ge=0,
        le=1,
        title="Random share",
        description="Share of all examples picked at random (unbiased).",
    )
    threshold: float = Field(
        0.35,
        ge=0,
        le=1,
        title="Score threshold",
        description="The detector's score threshold (NanoDet: 0.35).",
    )
    near_margin: float = Field(
        0.1,
        ge=0,
        le=1,
        title="Near margin",
        description="A detection with confidence in [threshold, threshold + near_margin) is uncertain.",
    )


def _draw(seed: int, tag: str, key: str) -> float:
    """A uniform number in [0, 1) from (seed, tag, key): deterministic, order-independent."""
    d = hashlib.sha256(f"{seed}|{tag}|{key}".encode()).digest()
    return int.from_bytes(d[:8], "big") / 2**64


def _xywh(xyxy: list[float], w: int, h: int) -> list[float]:
    x0, y0 = min(max(float(xyxy[0]), 0.0), w), min(max(float(xyxy[1]), 0.0), h)
    x1, y1 = min(max(float(xyxy[2]), 0.0), w), min(max(float(xyxy[3]), 0.0), h)
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def _day(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC).strftime("%Y-%m-%d")


def _where(ex: HardExample) -> str:
    return str(ex.path.parent)


def label_example(
    ex: HardExample, labels: LabelMap, side: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The COCO image record (without id/file_name) and annotations (without ids) of one example
    (`side`: its detections sidecar, if already read)."""
    side = side if side is not None else ex.detections()
    if side is None:
        raise DatasetError(f"{_where(ex)}: no detections sidecar")
    img = side.get("image") or {}
    w, h = img.get("width"), img.get("height")
    if not isinstance(w, int) or not isinstance(h, int) or w <= 0 or h <= 0:
        raise DatasetError(
            f"{_where(ex)}/{ex.data.get('detections')}: image.width/height: positive integers needed"
        )
    data = ex.data
    verdict = ex.verdict
    rule = str(data.get("rule") or "")
    rule_box = data.get("box")
    track_ids = set(data.get("track_ids") or [])
    object_rule = rule in OBJECT_RULES and isinstance(rule_box, list) and len(rule_box) >= 4
    anns: list[dict[str, Any]] = []
    negatives: list[dict[str, Any]] = []
    matched_rule_object = False
    for k, det in enumerate(side.get("detections") or []):
        name = det.get("class_name")
        coco_id = labels.coco_id(name) if isinstance(name, str) else None
        if coco_id is None:
            raise DatasetError(
                f"{_where(ex)}/{data.get('detections')}: detections[{k}].class_name: {name!r} is not in the "
                f"label map ({labels.source or 'labels.json'}); pass the label map of the model that made it"
            )
        xyxy = [float(v) for v in det["xyxy"][:4]]
        is_rule_object = object_rule and (
            (det.get("tracker_id") is not None and det.get("tracker_id") in track_ids)
            or box_iou(xyxy, [float(v) for v in rule_box[:4]]) >= NEGATIVE_IOU
        )
        matched_rule_object |= is_rule_object
        bbox = _xywh(xyxy, w, h)
        if bbox[2] <= 0 or bbox[3] <= 0:
            continue
        if verdict == "false_alarm" and is_rule_object:
            negatives.append(
                {
                    "bbox": bbox,
                    "category": name,
                    "score": det.get("confidence"),
                    "tracker_id": det.get("tracker_id"),
                    "why": f"false_alarm of {rule}: {data['verdict'].get('reason') or ''}".strip(),
                }
            )
            continue
        anns.append(
            {
                "category_id": coco_id,
                "bbox": bbox,
                "area": round(bbox[2] * bbox[3], 2),
                "iscrowd": 0,
                "extra": {
                    "pseudo": True,
                    "source": "detector",
                    "score": det.get("confidence"),
                    "tracker_id": det.get("tracker_id"),
                },
            }
        )
    unlabelled: list[dict[str, Any]] = []
    if object_rule and not matched_rule_object:
        box = _xywh([float(v) for v in rule_box[:4]], w, h)
        if verdict == "false_alarm":
            # a blob of the background model: nothing to leave out, but it is what was wrong
            negatives.append(
                {
                    "bbox": box,
                    "category": None,
                    "score": None,
                    "tracker_id": None,
                    "why": f"false_alarm of {rule} (no detector box): {data['verdict'].get('reason') or ''}".strip(),
                }
            )
        else:
            unlabelled.append({"bbox": box, "why": f"{rule}'s object has no detector box: label it"})
    if verdict == "missed":
        # no box: the operator named a camera and a moment, not a place in the picture
        unlabelled.append(
            {
                "bbox": None,
                "category": data.get("category"),
                "camera_id": data.get("camera_id"),
                "at_ms": data.get("observed_at"),
                "note": data.get("note") or data["verdict"].get("reason") or "",
                "why": "missed: no detector raised it; an annotator must box it",
            }
        )
    observed = int(data.get("observed_at") or side.get("ts_ms") or 0)
    image = {
        "width": w,
        "height": h,
        "extra": {
            "candidate_id": ex.candidate_id,
            "incident_id": data.get("incident_id"),
            "camera_id": data.get("camera_id"),
            "zone_id": data.get("zone_id"),
            "category": data.get("category"),
            "rule": rule,
            "model_version": data.get("model_version") or side.get("model_version"),
            "frame_ts_ms": side.get("ts_ms"),
            "day": _day(int(side.get("ts_ms") or observed)),
            "verdict": verdict,
            "verdict_reason": data["verdict"].get("reason") or "",
            "rule_box": rule_box,
            "detections_source": side.get("source"),
            "negatives": negatives,
            "unlabelled": unlabelled,
            "labels_from": "pseudo",
        },
    }
    return image, anns


def _uncertain(side: dict[str, Any], p: SamplerParams) -> bool:
    for d in side.get("detections") or []:
        c = d.get("confidence")
        if isinstance(c, (int, float)) and p.threshold <= c < p.threshold + p.near_margin:
            return True
    return False


def _reason(ex: HardExample, side: dict[str, Any], p: SamplerParams) -> str | None:
    cid = ex.candidate_id
    if ex.verdict == "false_alarm":
        if _draw(p.seed, "false_alarm", cid) < p.false_alarm_share:
            return "false_alarm"
    elif ex.verdict == "missed":
        if _draw(p.seed, "missed", cid) < p.missed_share:
            return "missed"
    else:
        if _uncertain(side, p) and _draw(p.seed, "near_threshold", cid) < p.near_threshold_share:
            return "near_threshold"
        if _draw(p.seed, "positive", cid) < p.positive_share:
            return "positive"
    if _draw(p.seed, "random", cid) < p.random_share:
        return "random"
    return None


def _file_name(ex: HardExample) -> str:
    return f"{ex.path.parent.name}.jpg"


def sample(
    hard_examples_dir: Path | str,
    datasets_root: Path | str,
    name: str,
    params: SamplerParams | None = None,
    *,
    labels: LabelMap | None = None,
    created_at: datetime | None = None,
    on_progress: Progress | None = None,
) -> tuple[DatasetVersion, dict[str, Any]]:
    """Fill a new version `<datasets_root>/<name>/v<N>` from the hard-example store; returns it and a summary."""
    p = params or SamplerParams()
    check_name(name)
    hx_dir = Path(hard_examples_dir)
    if not (hx_dir / "examples").is_dir():
        raise DatasetError(f"{hx_dir}: not a hard-example store (no examples/ directory)")
    dataset_dir = Path(datasets_root) / name
    existing = versions(dataset_dir)
    parent = existing[-1] if existing else None
    if parent is not None:
        plabels = parent.labels()
        if labels is not None and not labels.same_labels(plabels):
            raise DatasetError(
                f"{parent.path}/labels.json: the label map differs from the one given; a dataset keeps "
                "one label map: start a new dataset name for a new one"
            )
        labels = plabels
    labels = labels or LabelMap.default()

    examples = list(HardExampleStore(hx_dir))
    skipped: Counter[str] = Counter()
    by_cid: dict[str, HardExample] = {}
    sides: dict[str, dict[str, Any]] = {}
    for k, ex in enumerate(examples):
        side = ex.detections() if ex.frame_path is not None else None
        if ex.frame_path is None and ex.verdict == "missed":
            # its camera could not give the frame (older than its ring), or has not yet
            skipped[f"missed_frame_{ex.data.get('frame_status') or 'requested'}"] += 1
        elif ex.frame_path is None:
            skipped["no_raw_frame"] += 1
        elif side is None:
            skipped["no_detections"] += 1
        else:
            by_cid[ex.candidate_id] = ex
            sides[ex.candidate_id] = side
        if on_progress is not None:
            on_progress("examples", k + 1, len(examples))

    # what the parent holds: kept, relabelled when the verdict changed since
    coco_images: list[dict[str, Any]] = []
    coco_anns: list[dict[str, Any]] = []
    files: dict[str, Path] = {}
    per_camera: Counter[str] = Counter()
    per_day: Counter[str] = Counter()
    inherited = relabelled = 0
    if parent is not None:
        pc = parent.coco()
        anns_of: dict[int, list[dict[str, Any]]] = {}
        for a in pc["annotations"]:
            anns_of.setdefault(a["image_id"], []).append(a)
        for im in pc["images"]:
            ex_ = im.get("extra") or {}
            cid = ex_.get("candidate_id")
            ex = by_cid.get(cid) if isinstance(cid, str) else None
            if ex is not None and ex.verdict != ex_.get("verdict"):
                image, anns = label_example(ex, labels, sides[ex.candidate_id])
                image["extra"]["reason"] = ex_.get("reason")
                image["extra"]["relabelled_from"] = ex_.get("verdict")
                im = {"id": im["id"], "file_name": im["file_name"], **image}
                files[im["file_name"]] = ex.frame_path  # type: ignore[assignment]
                coco_anns += [{**a, "image_id": im["id"]} for a in anns]
                relabelled += 1
            else:
                files[im["file_name"]] = parent.images_dir / im["file_name"]
                coco_anns += anns_of.get(im["id"], [])
                inherited += 1
            coco_images.append(im)
            per_camera[str(im["extra"].get("camera_id"))] += 1
            per_day[str(im["extra"].get("day"))] += 1
    held = {str((im.get("extra") or {}).get("candidate_id")) for im in coco_images}

    # candidates for this version, by strategy, in a seeded order
    picked: dict[str, list[HardExample]] = {s: [] for s in STRATEGIES}
    not_picked = 0
    for cid, ex in sorted(by_cid.items()):
        if cid in held:
            continue
        r = _reason(ex, sides[cid], p)
        if r is None:
            not_picked += 1
        else:
            picked[r].append(ex)
    chosen: list[tuple[str, HardExample]] = []
    capped: Counter[str] = Counter()
    for s in STRATEGIES:
        for ex in sorted(picked[s], key=lambda e: _draw(p.seed, "order", e.candidate_id)):
            cam = str(ex.data.get("camera_id"))
            day = _day(int(sides[ex.candidate_id].get("ts_ms") or ex.data.get("observed_at") or 0))
            if p.per_camera_cap is not None and per_camera[cam] >= p.per_camera_cap:
                capped["per_camera"] += 1
                continue
            if p.per_day_cap is not None and per_day[day] >= p.per_day_cap:
                capped["per_day"] += 1
                continue
            per_camera[cam] += 1
            per_day[day] += 1
            chosen.append((s, ex))
    if not chosen and relabelled == 0:
        what = f"nothing new for {dataset_dir}" + (f" beyond {parent.tag}" if parent else "")
        raise DatasetError(
            f"{what}: {len(examples)} hard examples in {hx_dir}, {len(held)} already held, "
            f"{not_picked} not picked, capped {dict(capped)}, skipped {dict(skipped)}"
        )
    next_id = max((im["id"] for im in coco_images), default=0) + 1
    chosen.sort(key=lambda se: (int(se[1].data.get("observed_at") or 0), se[1].candidate_id))
    for k, (s, ex) in enumerate(chosen):
        image, anns = label_example(ex, labels, sides[ex.candidate_id])
        image["extra"]["reason"] = s
        fname = _file_name(ex)
        coco_images.append({"id": next_id, "file_name": fname, **image})
        coco_anns += [{**a, "image_id": next_id} for a in anns]
        files[fname] = ex.frame_path  # type: ignore[assignment]
        next_id += 1
        if on_progress is not None:
            on_progress("labelling", k + 1, len(chosen))
    coco = renumber({"images": coco_images, "annotations": coco_anns, "categories": labels.coco_categories()})
    details = {
        "sampler": {**p.model_dump(), "strategies": list(STRATEGIES)},
        "source": {
            "hard_examples": str(hx_dir.resolve()),
            "examples": len(examples),
            "usable": len(by_cid),
            "skipped": dict(sorted(skipped.items())),
            "already_held": len(held),
            "not_picked": not_picked,
            "capped": dict(sorted(capped.items())),
            "new_images": len(chosen),
            "inherited_images": inherited,
            "relabelled_images": relabelled,
            "new_per_reason": dict(sorted(Counter(s for s, _ in chosen).items())),
        },
    }
    v = write_version(
        dataset_dir,
        coco=coco,
        labels=labels,
        images=files,
        parent=parent,
        created_by="sample",
        details=details,
        created_at=created_at,
        on_progress=on_progress,
    )
    summary = {
        "dataset": name,
        "version": v.tag,
        "path": str(v.path),
        "parent": parent.tag if parent else None,
        **details["source"],
        "images": v.manifest["counts"]["images"],
        "annotations": v.manifest["counts"]["annotations"],
        "per_verdict": v.manifest["counts"]["per_verdict"],
    }
    return v, summary
