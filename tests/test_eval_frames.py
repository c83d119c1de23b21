"""Frame-level evaluation on real footage: the composite generator (gridwatch/dataset/composite.py)
and `gridwatch eval frames` (detectors/frame_eval.py) with the production NanoDet-g 416.

Needs var/footage/vtest.avi (scripts/fetch_footage.sh; skips otherwise). Small sets (a dozen
images) keep the whole module around 30 s on 2 cores; docs/EVALUATION.md has the figures on
200 + 200 images.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from gridwatch.cli import app
from gridwatch.config import demo_config_path, load_config
from gridwatch.dataset.composite import BACKGROUND_OBJECTS, MAX_OVERLAP, composite_dataset, composite_labels
from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.store import DatasetVersion, write_version
from gridwatch.detectors.frame_eval import (
    FrameEvalError,
    build_eval_detector,
    check_coco,
    false_alarms,
    frames_metrics,
    resolve_model,
    run_frame_eval,
)
from gridwatch.detectors.nanodet import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parent.parent
_FOOTAGE_DIR = Path(os.environ.get("GRIDWATCH_FOOTAGE_DIR", REPO / "var" / "footage"))
FOOTAGE = (_FOOTAGE_DIR if _FOOTAGE_DIR.is_absolute() else REPO / _FOOTAGE_DIR) / "vtest.avi"
needs_footage = pytest.mark.skipif(
    not FOOTAGE.is_file(), reason=f"footage {FOOTAGE} missing: run scripts/fetch_footage.sh"
)

# measured on 12 native images of seed 3 (person AP50 0.98, AP 0.72 on 20-200 images), less a margin
PERSON_AP50_FLOOR = 0.85
PERSON_AP_FLOOR = 0.55


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


def _coco_without_info(v: DatasetVersion) -> dict:
    return {k: x for k, x in v.coco().items() if k != "info"}


@pytest.fixture(scope="module")
def footage():
    if not FOOTAGE.is_file():
        pytest.skip(f"footage {FOOTAGE} missing: run scripts/fetch_footage.sh")
    from gridwatch.detectors.eval_clips import Footage

    f = Footage(FOOTAGE)
    f.background  # noqa: B018 - decode once for the module
    return f


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, footage) -> DatasetVersion:
    return composite_dataset(tmp_path_factory.mktemp("ds"), "small", images=12, seed=3, footage=footage)


@pytest.fixture(scope="module")
def cfg():
    return load_config(demo_config_path())


@pytest.fixture(scope="module")
def detector(cfg):
    det = build_eval_detector(DEFAULT_MODEL_DIR, cfg.cameras.detector)
    yield det
    det.close()


# --- the composite set ------------------------------------------------------------------------------
@needs_footage
def test_same_seed_same_set_and_images_do_not_depend_on_the_count(tmp_path, footage, small_set):
    again = composite_dataset(tmp_path / "a", "small", images=12, seed=3, footage=footage)
    assert _coco_without_info(again) == _coco_without_info(small_set)
    assert [i["sha256"] for i in again.manifest["images"]] == [
        i["sha256"] for i in small_set.manifest["images"]
    ]
    assert again.verify() == []
    fewer = composite_dataset(tmp_path / "b", "small", images=4, seed=3, footage=footage)
    assert [i["sha256"] for i in fewer.manifest["images"]] == [
        i["sha256"] for i in small_set.manifest["images"]
    ][:4]
    other = composite_dataset(tmp_path / "c", "small", images=4, seed=4, footage=footage)
    assert [i["sha256"] for i in other.manifest["images"]] != [i["sha256"] for i in fewer.manifest["images"]]


@needs_footage
@pytest.mark.parametrize("layout", ["native", "mirror"])
def test_boxes_hold_what_was_pasted(tmp_path, footage, small_set, layout):
    v = (
        small_set
        if layout == "native"
        else composite_dataset(tmp_path, "m", images=6, seed=3, layout=layout, footage=footage)
    )
    coco = v.coco()
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert set(names.values()) == {"person", "truck", "car", "bag"}
    assert v.manifest["counts"]["per_class"]["person"] >= 2 * len(coco["images"])
    bg = footage.background if layout == "native" else np.ascontiguousarray(footage.background[:, ::-1])
    fg_share: dict[str, list[float]] = {"person": [], "bag": [], "truck": []}
    for im in coco["images"]:
        img = cv2.imread(str(v.images_dir / im["file_name"]))
        assert img.shape == (576, 768, 3) == (im["height"], im["width"], 3)
        diff = cv2.absdiff(img, bg).max(axis=2) > 25
        anns = [a for a in coco["annotations"] if a["image_id"] == im["id"]]
        boxes = []
        for a in anns:
            x, y, w, h = (int(round(t)) for t in a["bbox"])
            assert min(x, y) >= 0 and x + w <= 768 and y + h <= 576 and w > 2 and h > 2
            boxes.append((x, y, x + w, y + h))
            if a["extra"]["what"].startswith("parked"):
                continue
            fg_share[names[a["category_id"]]].append(float(diff[y : y + h, x : x + w].mean()))
        # the parked vehicles are labelled in every image, at their (mirrored) constant boxes
        for cat, (x0, y0, x1, y1), _ in BACKGROUND_OBJECTS:
            want = (x0, y0, x1, y1) if layout == "native" else (768 - x1, y0, 768 - x0, y1)
            assert any(
                names[a["category_id"]] == cat and tuple(b) == want for a, b in zip(anns, boxes, strict=True)
            )
        for i, a in enumerate(boxes):  # what is labelled is visible: little overlap
            for b in boxes[i + 1 :]:
                iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
                if iw > 0 and ih > 0:
                    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
                    assert iw * ih <= MAX_OVERLAP * small + 1
    # a pasted walker fills a good part of its box (limbs and background between them are not); a
    # bag most of its ellipse's box; every pasted box holds changed pixels, none is empty
    assert min(fg_share["person"]) > 0.2 and np.median(fg_share["person"]) > 0.4
    if fg_share["bag"]:
        assert np.median(fg_share["bag"]) > 0.5
    # the background itself is empty: outside every box the composite is the background
    img = cv2.imread(str(v.images_dir / coco["images"][0]["file_name"]))
    mask = np.ones(img.shape[:2], bool)
    for a in coco["annotations"]:
        if a["image_id"] == coco["images"][0]["id"]:
            x, y, w, h = (int(round(t)) for t in a["bbox"])
            mask[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] = False
    assert (cv2.absdiff(img, bg).max(axis=2) > 25)[mask].mean() < 0.002


def test_label_map_keeps_coco_ids_and_adds_bag():
    lm = composite_labels()
    assert lm.coco_id("person") == 1 and lm.coco_id("car") == 3 and lm.coco_id("truck") == 8
    assert lm.coco_id("bag") == 91
    with pytest.raises(DatasetError, match="bag"):
        composite_labels(("person", "truck", "car"))


# --- eval frames ------------------------------------------------------------------------------------
def test_false_alarm_matching_is_greedy_by_score():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float)
    det = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    # the best-scoring box takes the first ground truth; its near-duplicate finds nothing left
    assert false_alarms(gt, det, np.array([0.9, 0.8, 0.7])) == (1, 2, 1)
    assert false_alarms(gt, np.zeros((0, 4)), np.zeros(0)) == (0, 0, 2)
    assert false_alarms(np.zeros((0, 4)), det, np.array([0.9, 0.8, 0.7])) == (0, 3, 0)


@needs_footage
def test_production_model_on_a_small_composite_set(small_set, cfg, detector):
    r = run_frame_eval(small_set.path, DEFAULT_MODEL_DIR, cfg, console=_quiet(), detector=detector)
    person, bag = r["classes"]["person"], r["classes"]["bag"]
    assert person["ap50"] >= PERSON_AP50_FLOOR and person["ap"] >= PERSON_AP_FLOOR, person
    assert person["tp"] + person["misses"] == person["gt"] and person["tp"] <= person["detections"]
    assert (
        bag["ap"] == bag["ap50"] == 0.0
        and "no class 'bag'" in bag["note"]
        and r["unknown_classes"] == ["bag"]
    )
    assert bag["gt"] > 0 and bag["detections"] == 0 and bag["misses"] == bag["gt"]
    assert r["classes"]["truck"]["ap50"] >= 0.8  # the parked and the pasted van
    assert r["images"] == 12 and 0 < r["map"] < r["map_model_classes"] and r["ap50"] >= r["ap75"]
    assert r["operating_threshold"] == cfg.cameras.detector.score_threshold and r["map_threshold"] == 0.05
    m = frames_metrics(r)
    assert m["frames.map"] == r["map"] and m["frames.person.ap50"] == person["ap50"]
    assert m["frames.bag.ap"] == 0.0 and "frames.bag.false_alarms_per_image" in m
    from gridwatch.model_registry import _higher_is_better

    assert _higher_is_better("frames.person.ap50") and _higher_is_better("frames.map")
    assert not _higher_is_better("frames.person.false_alarms_per_image")


@needs_footage
def test_a_shifted_box_lowers_ap(tmp_path, small_set, cfg, detector):
    base = run_frame_eval(small_set.path, DEFAULT_MODEL_DIR, cfg, console=_quiet(), detector=detector)
    coco = small_set.coco()
    person_id = next(c["id"] for c in coco["categories"] if c["name"] == "person")
    big = max((a for a in coco["annotations"] if a["category_id"] == person_id), key=lambda a: a["area"])
    x, y, w, h = big["bbox"]
    big["bbox"] = [x + w if x + 2 * w <= 768 else x - w, y, w, h]  # beside the person: IoU 0
    files = {im["file_name"]: small_set.images_dir / im["file_name"] for im in coco["images"]}
    coco.pop("info")
    shifted = write_version(
        tmp_path / "shifted", coco=coco, labels=small_set.labels(), images=files, parent=None,
        created_by="test", details={},
    )  # fmt: skip
    r = run_frame_eval(shifted.path, DEFAULT_MODEL_DIR, cfg, console=_quiet(), detector=detector)
    assert r["classes"]["person"]["ap50"] < base["classes"]["person"]["ap50"]
    assert r["classes"]["person"]["ap"] < base["classes"]["person"]["ap"] and r["map"] < base["map"]
    assert r["classes"]["person"]["false_alarms"] == base["classes"]["person"]["false_alarms"] + 1
    assert r["classes"]["person"]["misses"] == base["classes"]["person"]["misses"] + 1
    assert r["classes"]["truck"] == base["classes"]["truck"]


def test_model_refs_are_resolved_or_refused_by_name(tmp_path):
    assert resolve_model(DEFAULT_MODEL_DIR) == (DEFAULT_MODEL_DIR, str(DEFAULT_MODEL_DIR))
    with pytest.raises(FrameEvalError, match="verifier"):
        resolve_model("verifier@production", tmp_path)
    with pytest.raises(FrameEvalError, match=r"detector@latest"):
        resolve_model("detector:latest", tmp_path)
    pytest.importorskip("mlflow")
    with pytest.raises(FrameEvalError, match=r"no detector version 'production' in the registry"):
        resolve_model("detector@production", tmp_path / "registry")


def _cli(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.output + (res.stderr if hasattr(res, "stderr") else "")


def test_bad_input_exit_2_naming_the_path(tmp_path):
    code, out = _cli("eval", "frames", str(tmp_path / "nope" / "v1"), "--model", str(DEFAULT_MODEL_DIR))
    assert code == 2 and "nope/v1" in out and "manifest.json missing" in out and "Traceback" not in out
    empty = tmp_path / "model"
    empty.mkdir()
    ds = tmp_path / "ds" / "v1"
    ds.mkdir(parents=True)
    (ds / "manifest.json").write_text(json.dumps({"format": "gridwatch-dataset", "name": "ds", "version": 1}))
    (ds / "annotations.coco.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    code, out = _cli("eval", "frames", str(ds), "--model", str(empty))
    assert code == 2 and f"{empty}/model.yaml missing" in out.replace("\n", "") and "Traceback" not in out
    code, out = _cli("eval", "frames", str(ds), "--model", "detector:latest")
    assert code == 2 and "detector:latest" in out
    code, out = _cli("dataset", "composite", "x", "--to", str(tmp_path), "--images", "1", "--layout", "small")
    assert code == 2 and "--layout" in out and "Traceback" not in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["images"][0].pop("file_name"), "images[0].file_name: missing"),
        (lambda c: c["annotations"][0].update(image_id=999), "annotations[0].image_id: 999 is no image"),
        (lambda c: c["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0].bbox: [1, 2, 3] is not"),
        (
            lambda c: c["categories"].append(dict(c["categories"][0])),
            "categories[1]: 'person' (id 1) is there twice",
        ),
    ],
)
def test_a_broken_coco_file_is_refused_naming_the_field(change, message):
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}],
        "categories": [{"id": 1, "name": "person"}],
    }
    check_coco(coco, Path("x/annotations.coco.json"))  # the unchanged file is fine
    change(coco)
    with pytest.raises(FrameEvalError, match=re.escape(f"x/annotations.coco.json: {message}")):
        check_coco(coco, Path("x/annotations.coco.json"))
