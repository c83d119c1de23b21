"""The retraining loop's datasets (issue 8 part 3) on real footage: raw frames and detections in the
evidence, hard examples, the active-learning sampler, COCO / YOLO export and COCO import.

Frames of vtest.h264.mp4 go through the real NanoDet detector; their candidates are stored by the
real EvidenceStore and labelled through HardExampleStore.record, as the dispatch core does."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import supervision as sv
import yaml

from gridwatch.dataset.cli import dataset_export, dataset_import, dataset_list, dataset_sample
from gridwatch.dataset.coco_import import import_coco
from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.export import export_version
from gridwatch.dataset.hard_examples import HardExampleStore, SourceRecord, evidence_role
from gridwatch.dataset.labels import COCO80_NAMES, LabelMap
from gridwatch.dataset.sampler import SamplerParams, sample
from gridwatch.dataset.store import DatasetVersion, sha256_file, versions
from gridwatch.detectors.base import build_detector
from gridwatch.detectors.evidence import EvidenceConfig, EvidenceStore
from gridwatch.schemas import Category, IncidentCandidate, Severity, SourceKind

REPO = Path(__file__).resolve().parents[1]
FOOTAGE = Path(os.environ.get("GRIDWATCH_FOOTAGE_DIR", REPO / "var" / "footage"))
if not FOOTAGE.is_absolute():
    FOOTAGE = REPO / FOOTAGE
VIDEO = FOOTAGE / "vtest.h264.mp4"
T0 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
DAY = 86_400_000

pytestmark = pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} missing: run scripts/fetch_footage.sh")

# frame index, camera, day, rule, verdict (box: "vehicle" = the detector's car/truck box; "blob" = a
# background-model box no detection matches)
PLAN: list[tuple[int, str, int, str, str]] = [
    (0, "cam-a", 0, "road_blockage_still", "false_alarm"),
    (60, "cam-a", 0, "gathering", "false_alarm"),
    (120, "cam-a", 0, "gathering", "confirmed"),
    (180, "cam-a", 1, "illegal_dumping", "confirmed"),
    (240, "cam-a", 1, "gathering", "verified"),
    (300, "cam-b", 0, "illegal_dumping", "false_alarm"),
    (360, "cam-b", 0, "gathering", "confirmed"),
    (420, "cam-b", 1, "road_blockage_still", "verified"),
    (480, "cam-b", 1, "gathering", "confirmed"),
    (540, "cam-c", 1, "gathering", "false_alarm"),
]
BLOB = [12.0, 480.0, 70.0, 560.0]
_CATEGORY = {
    "gathering": Category.GATHERING,
    "road_blockage_still": Category.ROAD_BLOCKAGE,
    "illegal_dumping": Category.ILLEGAL_DUMPING,
}


@dataclass
class World:
    root: Path
    evidence: Path
    hx: Path
    frames: dict[int, np.ndarray]
    raw: dict[int, sv.Detections]
    cands: dict[int, IncidentCandidate]


def _tracked(raw: sv.Detections) -> sv.Detections:
    """What a tracker would keep: all but the least confident detection, with track ids."""
    keep = np.argsort(-raw.confidence)[: max(len(raw) - 1, 1)]
    t = raw[np.sort(keep)]
    t.tracker_id = np.sort(keep).astype(int) + 100
    return t


def _candidate(idx: int, camera: str, day: int, rule: str, raw: sv.Detections) -> IncidentCandidate:
    t = T0 + day * DAY + idx * 100
    tracked = _tracked(raw)
    names = tracked.data["class_name"]
    details: dict[str, Any] = {"zone_id": "z1", "zone_kind": "gathering"}
    if rule == "gathering":
        details["track_ids"] = [int(x) for x in tracked.tracker_id[names == "person"]]
    elif rule == "road_blockage_still":
        i = next(i for i, n in enumerate(names) if n in ("car", "truck", "bus"))
        details |= {
            "box": [round(float(v)) for v in tracked.xyxy[i]],
            "track_ids": [int(tracked.tracker_id[i])],
        }
    elif rule == "illegal_dumping" and idx == 300:  # the detector's own object, by its box only
        i = int(np.argmin(tracked.confidence))
        details |= {"box": [round(float(v)) for v in tracked.xyxy[i]], "track_ids": []}
    else:  # a blob of the background model, no detector box
        details |= {"box": BLOB, "track_ids": [], "source": "background"}
    return IncidentCandidate(
        candidate_id=IncidentCandidate.make_id("camera", camera, rule, t),
        category=_CATEGORY[rule],
        severity=Severity.MEDIUM,
        source_kind=SourceKind.CAMERA,
        source_id=camera,
        grid_id="G-1",
        location=None,
        observed_at=t - 20_000,
        raised_at=t,
        rule=rule,
        summary=f"{rule} on {camera}",
        confidence=0.8,
        model_version="nanodet-g-416@test",
        details=details,
    )


def _record(hx: HardExampleStore, c: IncidentCandidate, verdict: str, reason: str = "") -> list[Path]:
    src = SourceRecord(
        c.candidate_id,
        "camera",
        c.source_id,
        c.category,
        c.confidence,
        c.observed_at,
        c.rule,
        c.model_version,
        [e.model_dump() for e in c.evidence],
        dict(c.details),
    )
    return hx.record(
        incident_id=f"inc-{c.candidate_id[-6:]}",
        sources=[src],
        verdict=verdict,
        by="李娜",
        at_ms=c.raised_at + 60_000,
        reason=reason,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("dataset")
    det = build_detector({"type": "nanodet"})
    cap = cv2.VideoCapture(str(VIDEO))
    frames: dict[int, np.ndarray] = {}
    wanted = {p[0] for p in PLAN}
    i = 0
    while len(frames) < len(wanted):
        ok, f = cap.read()
        assert ok, f"{VIDEO}: cannot read frame {i}"
        if i in wanted:
            frames[i] = f
        i += 1
    cap.release()
    store = EvidenceStore(EvidenceConfig(directory=root / "evidence"))
    hx = HardExampleStore(root / "hx")
    raw, cands = {}, {}
    for idx, camera, day, rule, verdict in PLAN:
        raw[idx] = det.detect(frames[idx])
        assert len(raw[idx]) >= 3, f"frame {idx}: the detector found too little to test with"
        c = _candidate(idx, camera, day, rule, raw[idx])
        c = store.snapshot(frames[idx], c, detections=_tracked(raw[idx]), raw_detections=raw[idx])
        cands[idx] = c
        assert _record(hx, c, verdict, reason="误报 look-alike" if verdict == "false_alarm" else "")
    # an old-style example: annotated snapshot only (keep_raw_frame off), so no training image
    old = EvidenceStore(EvidenceConfig(directory=root / "evidence", keep_raw_frame=False))
    c = _candidate(600, "cam-a", 0, "gathering", raw[0])
    _record(hx, old.snapshot(frames[0], c, detections=_tracked(raw[0])), "confirmed")
    det.close()
    return World(root, root / "evidence", root / "hx", frames, raw, cands)


def _uri_path(ref: str) -> Path:
    return Path(ref.removeprefix("file://"))


# --- evidence: raw frame and detections -------------------------------------------------------------
def test_snapshot_keeps_the_raw_frame_and_its_detections(world: World) -> None:
    c = world.cands[120]
    snap, frame, dets = c.evidence
    assert [evidence_role(e) for e in c.evidence] == ["snapshot", "frame", "detections"]
    assert snap.kind == "snapshot" and snap.ref.endswith(f"{c.candidate_id}.jpg")  # still evidence[0]
    assert frame.ref.endswith(f"{c.candidate_id}.frame.jpg") and dets.ref.endswith(".detections.json")
    img = cv2.imread(str(_uri_path(frame.ref)))
    assert img.shape == world.frames[120].shape  # the frame itself, no header strip, no drawings
    assert float(np.abs(img.astype(int) - world.frames[120].astype(int)).mean()) < 3  # JPEG only
    annotated = cv2.imread(str(_uri_path(snap.ref)))
    assert annotated.shape[0] > img.shape[0]
    side = json.loads(_uri_path(dets.ref).read_text())
    raw = world.raw[120]
    assert side["format"] == "gridwatch-detections" and side["source"] == "detector"
    assert side["image"] == {"file": f"{c.candidate_id}.frame.jpg", "width": 768, "height": 576}
    assert len(side["detections"]) == len(raw)
    for d, box, cid, name, conf in zip(
        side["detections"], raw.xyxy, raw.class_id, raw.data["class_name"], raw.confidence, strict=True
    ):
        assert np.allclose(d["xyxy"], box, atol=0.01) and d["class_id"] == cid and d["class_name"] == name
        assert abs(d["confidence"] - conf) < 1e-4
    # tracker ids matched from the tracked detections; the one the tracker dropped has none
    tids = [d["tracker_id"] for d in side["detections"]]
    weakest = int(np.argmin(raw.confidence))
    assert tids[weakest] is None and all(t == i + 100 for i, t in enumerate(tids) if i != weakest)


def test_keep_raw_frame_off_keeps_only_the_annotated_snapshot(world: World, tmp_path: Path) -> None:
    c = _candidate(0, "cam-z", 0, "gathering", world.raw[0])
    off = EvidenceStore(EvidenceConfig(directory=tmp_path, keep_raw_frame=False))
    (ref,) = off.snapshot(world.frames[0], c, detections=world.raw[0]).evidence
    assert ref.kind == "snapshot" and len(list(tmp_path.rglob("*.*"))) == 1
    # without the detector's full output the tracked detections are written
    on = EvidenceStore(EvidenceConfig(directory=tmp_path / "on"))
    refs = on.snapshot(world.frames[0], c, detections=_tracked(world.raw[0])).evidence
    side = json.loads(_uri_path(refs[2].ref).read_text())
    assert side["source"] == "tracked" and len(side["detections"]) == len(world.raw[0]) - 1
    assert EvidenceConfig.model_fields["keep_raw_frame"].description


def test_hard_examples_copy_the_frame_and_the_detections(world: World) -> None:
    store = HardExampleStore(world.hx)
    ex = store.get(world.cands[300].candidate_id)
    assert ex is not None and ex.verdict == "false_alarm"
    assert (ex.data["frame"], ex.data["detections"]) == ("frame.jpg", "detections.json")
    ev = ex.data["evidence"]
    assert [(e["role"], e["file"]) for e in ev] == [
        ("snapshot", "evidence-0.jpg"),
        ("frame", "frame.jpg"),
        ("detections", "detections.json"),
    ]
    for e in ev:
        assert (ex.path.parent / e["file"]).read_bytes() == _uri_path(e["ref"]).read_bytes()
    assert ex.frame_path == ex.path.parent / "frame.jpg" and ex.detections()["source"] == "detector"  # type: ignore[index]
    old = [e for e in store if e.data["frame"] is None]
    assert len(old) == 1 and old[0].frame_path is None and old[0].detections() is None


# --- sampling -------------------------------------------------------------------------------------
def _all(**kw: Any) -> SamplerParams:
    """Every example picked (no caps) unless said otherwise."""
    return SamplerParams(**{"positive_share": 1.0, "per_camera_cap": None, "per_day_cap": None} | kw)


def _by_candidate(coco: dict[str, Any]) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
    out = {}
    for im in coco["images"]:
        out[im["extra"]["candidate_id"]] = (im, [a for a in coco["annotations"] if a["image_id"] == im["id"]])
    return out


def test_sample_writes_a_version_with_labels_and_manifest(world: World, tmp_path: Path) -> None:
    v, summary = sample(world.hx, tmp_path, "demo", _all())
    assert v.path == tmp_path / "demo" / "v1" and summary["version"] == "v1" and summary["parent"] is None
    assert summary["skipped"] == {"no_raw_frame": 1} and summary["new_images"] == len(PLAN)
    coco = v.coco()
    labels = json.loads((v.path / "labels.json").read_text())
    assert [lab["name"] for lab in labels["labels"]] == list(COCO80_NAMES)
    assert {c["name"]: c["id"] for c in coco["categories"]}["truck"] == 8  # official COCO ids
    assert sorted(p.name for p in v.images_dir.iterdir()) == sorted(im["file_name"] for im in coco["images"])
    m = v.manifest
    assert (m["name"], m["version"], m["parent"], m["created_by"]) == ("demo", 1, None, "sample")
    assert m["sampler"]["seed"] == 0 and m["sampler"]["per_camera_cap"] is None
    assert m["counts"]["per_verdict"] == {"confirmed": 4, "false_alarm": 4, "verified": 2}
    assert m["counts"]["per_camera"] == {"cam-a": 5, "cam-b": 4, "cam-c": 1}
    assert m["counts"]["per_class"]["person"] > 20
    assert v.verify() == [] and all(
        r["sha256"] == sha256_file(v.images_dir / r["file_name"]) for r in m["images"]
    )
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])

    per = _by_candidate(coco)
    cat = {c["id"]: c["name"] for c in coco["categories"]}
    for idx, _cam, _day, rule, verdict in PLAN:
        im, anns = per[world.cands[idx].candidate_id]
        raw = world.raw[idx]
        assert (im["width"], im["height"]) == (768, 576) and im["extra"]["verdict"] == verdict
        assert all(a["extra"]["pseudo"] is True for a in anns)
        for a in anns:
            x, y, w, h = a["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 768.01 and y + h <= 576.01 and w > 0 and h > 0
        if verdict == "false_alarm" and rule in ("road_blockage_still", "illegal_dumping"):
            # the rule's object is a negative: no annotation, listed with the reason (two boxes of
            # two classes on the same thing are both the rule's object)
            negs = im["extra"]["negatives"]
            assert negs and len(anns) == len(raw) - len(negs)
            assert all("look-alike" in n["why"] for n in negs)
            assert negs[0]["category"] in ("car", "truck", "bus") or idx == 300
            assert not any(np.allclose(a["bbox"], n["bbox"]) for a in anns for n in negs)
        else:
            # a gathering false alarm is about a count: the people stay people
            assert len(anns) == len(raw) and im["extra"]["negatives"] == []
            assert sorted(cat[a["category_id"]] for a in anns) == sorted(raw.data["class_name"].tolist())
        if verdict != "false_alarm" and rule == "illegal_dumping":
            (u,) = im["extra"]["unlabelled"]  # the blob has no detector box: an annotator's job
            assert u["bbox"] == [12.0, 480.0, 58.0, 80.0]


def test_sample_is_seeded_and_deterministic(world: World, tmp_path: Path) -> None:
    p = SamplerParams(seed=7, positive_share=0.3, random_share=0.3, near_margin=0.0)
    a, sa = sample(world.hx, tmp_path / "a", "d", p)
    b, sb = sample(world.hx, tmp_path / "b", "d", p)
    ca, cb = a.coco(), b.coco()
    ca.pop("info"), cb.pop("info")
    assert ca == cb and sa["new_per_reason"] == sb["new_per_reason"]
    assert [r["sha256"] for r in a.manifest["images"]] == [r["sha256"] for r in b.manifest["images"]]
    # every false alarm is in; positives only by their share or the random draw
    assert sa["new_per_reason"]["false_alarm"] == 4
    assert sa["new_images"] + sa["not_picked"] == len(PLAN)
    other = [
        sample(world.hx, tmp_path / f"s{s}", "d", p.model_copy(update={"seed": s}))[0] for s in range(1, 6)
    ]
    picks = {tuple(sorted(r["candidate_id"] for r in v.manifest["images"])) for v in [a, *other]}
    assert len(picks) > 1  # another seed, another draw


def test_caps_are_respected_false_alarms_first(world: World, tmp_path: Path) -> None:
    v, s = sample(world.hx, tmp_path, "capped", _all(per_camera_cap=2))
    per_cam = v.manifest["counts"]["per_camera"]
    assert per_cam == {"cam-a": 2, "cam-b": 2, "cam-c": 1} and s["capped"] == {"per_camera": 5}
    assert v.manifest["counts"]["per_verdict"]["false_alarm"] == 4  # the cap takes false alarms first
    v2, s2 = sample(world.hx, tmp_path, "daily", _all(per_day_cap=3))
    assert v2.manifest["counts"]["per_day"] == {"2023-11-14": 3, "2023-11-15": 3}
    assert s2["capped"] == {"per_day": 4}
    # near the threshold (NanoDet's 0.35-0.45 persons) beats a plain positive when capped
    v3, _ = sample(world.hx, tmp_path, "near", _all(per_day_cap=3, near_margin=0.1))
    assert set(v3.manifest["counts"]["per_reason"]) <= {"false_alarm", "near_threshold"}


def test_a_new_version_never_overwrites_and_inherits(world: World, tmp_path: Path) -> None:
    v1, _ = sample(world.hx, tmp_path, "grow", _all(per_camera_cap=2))
    before = {p: p.read_bytes() for p in v1.path.rglob("*") if p.is_file()}
    v2, s2 = sample(world.hx, tmp_path, "grow", _all(per_camera_cap=4))
    assert (v2.tag, s2["parent"], v2.manifest["parent"]) == ("v2", "v1", "v1")
    assert s2["inherited_images"] == 5 and s2["new_images"] == 4 and s2["already_held"] == 5
    assert {p: p.read_bytes() for p in v1.path.rglob("*") if p.is_file()} == before  # untouched
    old = _by_candidate(v1.coco())
    new = _by_candidate(v2.coco())
    for cid, (im, anns) in old.items():
        assert new[cid][0] == im and [a | {"id": 0} for a in new[cid][1]] == [a | {"id": 0} for a in anns]
    with pytest.raises(DatasetError, match="nothing new .* beyond v2"):
        sample(world.hx, tmp_path, "grow", _all(per_camera_cap=4))
    assert [v.tag for v in versions(tmp_path / "grow")] == ["v1", "v2"]
    with pytest.raises(DatasetError, match="label map differs"):
        sample(world.hx, tmp_path, "grow", _all(), labels=LabelMap.from_names(["person", "car"]))


def test_a_verdict_changed_since_the_parent_is_relabelled(world: World, tmp_path: Path) -> None:
    hx = tmp_path / "hx"
    import shutil

    shutil.copytree(world.hx, hx)
    v1, _ = sample(hx, tmp_path / "ds", "x", _all())
    c = world.cands[420]  # a verified still vehicle ... that a team later calls a false alarm
    assert _record(HardExampleStore(hx), c, "false_alarm", reason="legally parked")
    v2, s = sample(hx, tmp_path / "ds", "x", _all())
    assert s["relabelled_images"] == 1 and s["new_images"] == 0
    im, anns = _by_candidate(v2.coco())[c.candidate_id]
    assert im["extra"]["verdict"] == "false_alarm" and im["extra"]["relabelled_from"] == "verified"
    assert (
        len(im["extra"]["negatives"]) == 1
        and len(anns) == len(_by_candidate(v1.coco())[c.candidate_id][1]) - 1
    )


# --- export and import ------------------------------------------------------------------------------
@pytest.fixture()
def v1(world: World, tmp_path: Path) -> DatasetVersion:
    return sample(world.hx, tmp_path / "datasets", "demo", _all())[0]


def test_export_yolo_matches_the_coco_boxes(v1: DatasetVersion, tmp_path: Path) -> None:
    out = tmp_path / "yolo"
    s = export_version(v1.path, "yolo", out)
    coco = v1.coco()
    assert s["images"] == len(coco["images"]) and (out / "labels.json").is_file()
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["nc"] == 80 and data["names"][0] == "person" and data["names"][7] == "truck"
    by_id = {c["id"]: c["name"] for c in coco["categories"]}
    for im in coco["images"]:
        stem = Path(im["file_name"]).stem
        assert (out / "images" / im["file_name"]).read_bytes() == (
            v1.images_dir / im["file_name"]
        ).read_bytes()
        lines = (out / "labels" / f"{stem}.txt").read_text().splitlines()
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        assert len(lines) == len(anns)
        for line, a in zip(lines, anns, strict=True):
            k, cx, cy, w, h = line.split()
            assert data["names"][int(k)] == by_id[a["category_id"]]
            x, y, bw, bh = a["bbox"]
            got = [
                float(cx) * 768 - float(w) * 384,
                float(cy) * 576 - float(h) * 288,
                float(w) * 768,
                float(h) * 576,
            ]
            assert np.allclose(got, [x, y, bw, bh], atol=0.01)
    with pytest.raises(DatasetError, match="not an empty directory"):
        export_version(v1.path, "yolo", out)
    with pytest.raises(DatasetError, match="--format: 'voc'"):
        export_version(v1.path, "voc", tmp_path / "voc")


def test_coco_round_trip_and_a_corrected_box(v1: DatasetVersion, tmp_path: Path) -> None:
    out = tmp_path / "coco"
    export_version(v1.path, "coco", out)
    exported = out / "annotations.coco.json"
    v2, s = import_coco(v1.path, exported)
    assert (v2.tag, v2.manifest["parent"], v2.manifest["created_by"]) == ("v2", "v1", "import")
    assert (
        s["images_replaced"] == len(v1.coco()["images"]) and s["annotations_after"] == s["annotations_before"]
    )
    assert v2.coco()["annotations"] == v1.coco()["annotations"]  # unchanged in, identical out
    assert v2.coco()["images"][0]["extra"]["labels_from"].startswith("import annotations.coco.json")
    # a standard COCO reader takes the file as it is (supervision renumbers ids: names must agree)
    ds = sv.DetectionDataset.from_coco(
        images_directory_path=str(out / "images"), annotations_path=str(exported)
    )
    assert len(ds) == len(v1.coco()["images"]) and sum(len(d) for _, _, d in ds) == s["annotations_after"]
    assert list(ds.classes) == list(COCO80_NAMES)

    # an annotator (CVAT: own category ids, folder in file_name, no extra fields) fixes one box and
    # returns only the images they touched
    doc = json.loads(exported.read_text())
    im = next(i for i in doc["images"] if i["extra"]["verdict"] == "confirmed")
    anns = [a for a in doc["annotations"] if a["image_id"] == im["id"]]
    fixed = copy.deepcopy(anns[0])
    fixed["bbox"] = [100.0, 120.0, 40.0, 90.0]
    person = next(c for c in doc["categories"] if c["name"] == "person")
    cvat = {
        "images": [{"id": 1, "file_name": f"images/{im['file_name']}", "width": 768, "height": 576}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": fixed["bbox"], "area": 3600, "iscrowd": 0}
        ]
        + [
            {
                "id": k + 2,
                "image_id": 1,
                "category_id": 1 if a["category_id"] == person["id"] else 2,
                "bbox": a["bbox"],
            }
            for k, a in enumerate(anns[1:])
            if a["category_id"] in (person["id"], 3)
        ],
    }
    f = tmp_path / "task_1_annotations.json"
    f.write_text(json.dumps(cvat))
    v3, s3 = import_coco(v2.path, f)
    assert (v3.tag, v3.manifest["parent"], s3["images_replaced"], s3["images_kept"]) == (
        "v3",
        "v2",
        1,
        len(doc["images"]) - 1,
    )
    new = _by_candidate(v3.coco())
    got_im, got = new[im["extra"]["candidate_id"]]
    assert got[0]["bbox"] == [100.0, 120.0, 40.0, 90.0] and got[0]["extra"] == {
        "pseudo": False,
        "source": "import",
    }
    assert got[0]["category_id"] == person["id"] and len(got) == len(cvat["annotations"])
    for cid, (_im2, anns2) in _by_candidate(v2.coco()).items():  # the other images are untouched
        if cid != im["extra"]["candidate_id"]:
            assert [a | {"id": 0} for a in new[cid][1]] == [a | {"id": 0} for a in anns2]
    assert v3.verify() == []


def test_a_redrawn_negative_is_dropped(v1: DatasetVersion, tmp_path: Path) -> None:
    coco = v1.coco()
    im = next(i for i in coco["images"] if i["extra"]["negatives"] and i["extra"]["negatives"][0]["category"])
    neg = im["extra"]["negatives"][0]
    cat_id = next(c["id"] for c in coco["categories"] if c["name"] == neg["category"])
    keep = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
    doc = {
        "images": [im],
        "categories": coco["categories"],
        "annotations": [*keep, {"id": 999, "image_id": im["id"], "category_id": cat_id, "bbox": neg["bbox"]}],
    }
    f = tmp_path / "redrawn.json"
    f.write_text(json.dumps(doc))
    v2, s = import_coco(v1.path, f)
    assert s["negatives_dropped"] == 1
    assert _by_candidate(v2.coco())[im["extra"]["candidate_id"]][0]["extra"]["negatives"] == []


def test_import_errors_name_the_file_and_the_field(v1: DatasetVersion, tmp_path: Path) -> None:
    coco = v1.coco()
    im = coco["images"][0]
    bad = {
        "images": [
            {"id": 1, "file_name": im["file_name"], "width": 768, "height": 576},
            {"id": 2, "file_name": "not-ours.jpg"},
            {"id": 3, "file_name": coco["images"][1]["file_name"], "width": 640},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 5, "name": "traffic cone"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 9, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20]},
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [10, 10, -5, 20]},
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [700, 10, 200, 20]},
            {"id": 6, "image_id": 1, "category_id": 1, "bbox": "10,10,20,20"},
        ],
    }
    f = tmp_path / "fixed.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(DatasetError) as e:
        import_coco(v1.path, f)
    msg = str(e.value)
    for expected in (
        f"{f}: categories[1].name: 'traffic cone' is not in the label map",
        f"{f}: images[1].file_name: 'not-ours.jpg' is not an image of {v1.path}",
        f"{f}: images[2].width: 640, but",
        f"{f}: annotations[1].image_id: 9 is not an image of the file",
        f"{f}: annotations[2].category_id: 7 is not a category of the file",
        f"{f}: annotations[3].bbox: width and height must be positive",
        f"{f}: annotations[4].bbox: [700, 10, 200, 20] goes outside",
        f"{f}: annotations[5].bbox: [x, y, width, height] of finite numbers is needed",
    ):
        assert expected in msg, f"{expected!r} not in\n{msg}"
    assert [v.tag for v in versions(v1.path.parent)] == ["v1"]  # nothing written
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(DatasetError, match=r"broken.json: not JSON"):
        import_coco(v1.path, tmp_path / "broken.json")
    with pytest.raises(DatasetError, match=r"nowhere: not a dataset version \(manifest.json missing\)"):
        import_coco(tmp_path / "nowhere", f)


# --- the command functions --------------------------------------------------------------------------
def _last_json(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_functions_print_a_json_summary_last(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "datasets"
    s = dataset_sample(world.hx, root, "cli", seed=3, per_camera_cap=3, per_day_cap=None, random_share=0.0)
    out = _last_json(capsys)
    assert out == s and out["version"] == "v1" and out["images"] <= 7
    vdir = root / "cli" / "v1"
    dataset_export(vdir, "coco", tmp_path / "ex")
    assert _last_json(capsys)["format"] == "coco"
    dataset_import(vdir, tmp_path / "ex" / "annotations.coco.json")
    assert _last_json(capsys)["version"] == "v2"
    dataset_list(root)
    listed = _last_json(capsys)
    assert [(r["dataset"], r["version"], r["parent"]) for r in listed["versions"]] == [
        ("cli", "v1", None),
        ("cli", "v2", "v1"),
    ]
    with pytest.raises(DatasetError, match="--random-share: Input should be less than or equal to 1"):
        dataset_sample(world.hx, root, "cli", random_share=2.0)
    with pytest.raises(DatasetError, match="dataset name '../x'"):
        dataset_sample(world.hx, root, "../x")


def test_the_gridwatch_cli_runs_the_dataset_commands(world: World, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gridwatch.cli import app

    runner = CliRunner()
    root = tmp_path / "datasets"
    r = runner.invoke(
        app, ["dataset", "sample", "--from", str(world.hx), "--to", str(root), "--name", "c", "--seed", "1"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["version"] == "v1"
    r = runner.invoke(
        app, ["dataset", "export", str(root / "c" / "v1"), "--format", "yolo", "--out", str(tmp_path / "y")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "y" / "data.yaml").is_file()
    r = runner.invoke(app, ["dataset", "import", str(root / "c" / "v1"), str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "missing.json" in r.output
