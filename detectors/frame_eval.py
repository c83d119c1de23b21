"""Frame-level evaluation of a detector model on a labelled dataset version: `gridwatch eval frames`.

    DATASET/v<N> (images + COCO, every object labelled: e.g. `gridwatch dataset composite`)
        --> the detector (the config's `cameras.detector` settings, the model under test, a LOW
            score threshold `MAP_THRESHOLD` so the precision-recall curve is complete)
        --> class names mapped BY NAME onto the dataset's categories (the model's manifest
            `labels:` list is its label map: a fine-tune that renames a reused COCO slot is scored
            under its new name)
        --> COCO mAP@[.5:.95], AP50, AP75, per-class AP / AP50 (faster-coco-eval, bbox)
        --> false alarms at the OPERATING threshold (`cameras.detector.score_threshold`): boxes
            matching no ground-truth box of their class at IoU >= 0.5 (greedy, best score first)

`--model` is a model directory (model.yaml + ONNX, as models/nanodet-g-416) or a registry
reference `detector:VERSION` / `detector@ALIAS` (`models.registry_dir` of the config). Dataset
classes the model does not output get AP 0 (COCO counts their ground truth as missed) and a note;
model classes the dataset does not have are not scored. The false-alarm verifier is not applied:
this scores the detector model itself.

`frames_metrics(result)` turns the result into the registry's flat metrics (`frames.map`,
`frames.ap50`, `frames.person.ap50`, ...) for `ModelRegistry.register(..., metrics=...)`.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = [
    "FA_IOU",
    "MAP_THRESHOLD",
    "FrameEvalError",
    "build_eval_detector",
    "coco_figures",
    "false_alarms",
    "frames_metrics",
    "resolve_model",
    "run_frame_eval",
]

#: score threshold for the mAP run: COCO AP integrates precision over recall, so the detector must
#: report its low-confidence boxes too (0.05, as detectron2 / mmdet evaluate)
MAP_THRESHOLD = 0.05
#: a detection at the operating threshold is a false alarm when it overlaps no ground-truth box of
#: its class by at least this IoU (COCO's loosest AP threshold)
FA_IOU = 0.5
_REF = re.compile(r"^(?P<kind>[A-Za-z]+)(?P<sep>[:@])(?P<ref>.+)$")


class FrameEvalError(ValueError):
    """A dataset, model or reference that cannot be evaluated; the message names the path or field."""


# --- the model under test -------------------------------------------------------------------------
def resolve_model(ref: str | Path, registry_dir: Path | None = None) -> tuple[Path, str]:
    """A `--model` value -> (model directory, how it was named).

    `detector:3` / `detector@production` are looked up in the model registry at `registry_dir`;
    anything else is a model directory, which must hold a model.yaml."""
    text = str(ref)
    m = _REF.match(text)
    if m and not Path(text).exists():
        kind, sep, version = m.group("kind"), m.group("sep"), m.group("ref")
        if kind != "detector":
            raise FrameEvalError(
                f"--model {text!r}: only `detector:VERSION` or `detector@ALIAS` (not {kind!r})"
            )
        if sep == ":" and not version.isdigit():
            raise FrameEvalError(
                f"--model {text!r}: `detector:` takes a version number; use detector@{version}"
            )
        if registry_dir is None:
            raise FrameEvalError(f"--model {text!r}: no registry (models.registry_dir) to look it up in")
        try:
            from gridwatch.model_registry import ModelRegistry, RegistryError
        except ImportError:
            raise FrameEvalError(f"--model {text!r}: the model registry needs the `train` extra") from None
        try:
            v = ModelRegistry(registry_dir).get("detector", int(version) if version.isdigit() else version)
        except RegistryError as e:
            raise FrameEvalError(f"--model {text!r}: {e}") from None
        path = Path(v.path)
        if not (path / "model.yaml").is_file():
            raise FrameEvalError(
                f"--model {text!r}: registry version {v.version} at {path} has no model.yaml"
            )
        return path, f"{text} (registry v{v.version}, {path})"
    path = Path(text)
    if not path.is_dir():
        raise FrameEvalError(
            f"--model {path}: no such model directory (or registry reference detector:N / detector@ALIAS)"
        )
    if not (path / "model.yaml").is_file():
        raise FrameEvalError(
            f"--model {path}: {path / 'model.yaml'} missing (a model directory holds model.yaml + its ONNX)"
        )
    return path, str(path)


def build_eval_detector(model_dir: Path, detector_config: Any, score_threshold: float = MAP_THRESHOLD) -> Any:
    """The detector as the cameras build it (`build_detector` on `cameras.detector`), with the model
    under test, every class of the model (the cameras' `classes` filter would hide boxes) and a low
    score threshold."""
    from gridwatch.detectors.base import DetectorConfigError, build_detector
    from gridwatch.detectors.nanodet import ModelIntegrityError

    raw = detector_config.model_dump() if hasattr(detector_config, "model_dump") else dict(detector_config)
    if raw.get("type") != "nanodet":
        raise FrameEvalError(f"cameras.detector.type: {raw.get('type')!r} has no model directory to evaluate")
    raw.update({"model_dir": Path(model_dir), "score_threshold": score_threshold, "classes": None})
    try:
        return build_detector(raw, where="cameras.detector")
    except (DetectorConfigError, ModelIntegrityError) as e:
        raise FrameEvalError(str(e)) from None


# --- scoring --------------------------------------------------------------------------------------
def check_coco(coco: dict[str, Any], path: Path) -> None:
    """What the evaluation reads of a COCO file, checked up front: every problem names the file and
    the field (`images[3].file_name: missing`), never a KeyError half-way through the images."""

    def bad(where: str, problem: str) -> FrameEvalError:
        return FrameEvalError(f"{path}: {where}: {problem}")

    for k in ("images", "annotations", "categories"):
        if not isinstance(coco.get(k), list):
            raise bad(k, "a list is needed")
    names: dict[str, int] = {}
    ids: set[int] = set()
    for i, c in enumerate(coco["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            raise bad(f"categories[{i}]", "needs an integer id and a name")
        if c["name"] in names or c["id"] in ids:
            raise bad(f"categories[{i}]", f"{c['name']!r} (id {c['id']}) is there twice")
        names[c["name"]] = c["id"]
        ids.add(c["id"])
    image_ids: set[int] = set()
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            raise bad(f"images[{i}].id", "missing or not an integer")
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            raise bad(f"images[{i}].file_name", "missing")
        image_ids.add(im["id"])
    for i, a in enumerate(coco["annotations"]):
        if not isinstance(a, dict):
            raise bad(f"annotations[{i}]", "not an object")
        if a.get("image_id") not in image_ids:
            raise bad(f"annotations[{i}].image_id", f"{a.get('image_id')!r} is no image of the file")
        if a.get("category_id") not in ids:
            raise bad(f"annotations[{i}].category_id", f"{a.get('category_id')!r} is no category of the file")
        b = a.get("bbox")
        if (
            not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, int | float) for v in b))
            or min(b[2:]) < 0
        ):
            raise bad(f"annotations[{i}].bbox", f"{b!r} is not [x, y, width, height]")


def false_alarms(
    gt: np.ndarray, det: np.ndarray, scores: np.ndarray, iou: float = FA_IOU
) -> tuple[int, int, int]:
    """(true positives, false alarms, misses) of one image and class: detections taken best score
    first, each matched to the unmatched ground-truth box it overlaps most if IoU >= `iou`."""
    order = np.argsort(-scores, kind="stable")
    ious = sv.box_iou_batch(det[order], gt)
    used = np.zeros(len(gt), bool)
    tp = 0
    for i in range(len(order)):
        if len(gt) == 0:
            break
        cand = np.where(used, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou:
            used[j] = True
            tp += 1
    return tp, len(det) - tp, len(gt) - tp


def coco_figures(gt: dict[str, Any], dets: list[dict[str, Any]]) -> dict[str, Any]:
    """COCO bbox figures: `map`, `ap50`, `ap75` and `per_class` {category id: {ap, ap50, ap75}}.

    A category without ground truth has None (COCO leaves it out of the mean); with ground truth
    but no detections, 0."""
    from faster_coco_eval import COCO, COCOeval_faster

    cat_ids = [c["id"] for c in gt["categories"]]
    has_gt = {a["category_id"] for a in gt["annotations"]}
    if not dets or not has_gt:
        per = {c: ({"ap": 0.0, "ap50": 0.0, "ap75": 0.0} if c in has_gt else None) for c in cat_ids}
        zero = 0.0 if has_gt else None
        return {"map": zero, "ap50": zero, "ap75": zero, "per_class": per}
    with contextlib.redirect_stdout(io.StringIO()):  # the library prints its summary table
        cgt = COCO(gt)
        cdt = cgt.loadRes(dets)
        ev = COCOeval_faster(cgt, cdt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = ev.stats
    prec = np.asarray(ev.eval["precision"])  # [iou thresholds, recall points, classes, areas, max dets]
    ious = np.asarray(ev.params.iouThrs)
    per: dict[int, dict[str, float] | None] = {}
    for k, c in enumerate(ev.params.catIds):
        if c not in has_gt:
            per[c] = None
            continue
        p = prec[:, :, k, 0, -1]  # area "all", the largest max-dets (100)

        def mean(x: np.ndarray) -> float:
            x = x[x > -1]
            return float(x.mean()) if x.size else 0.0

        per[c] = {
            "ap": mean(p),
            "ap50": mean(p[np.isclose(ious, 0.5)]),
            "ap75": mean(p[np.isclose(ious, 0.75)]),
        }
    return {"map": float(stats[0]), "ap50": float(stats[1]), "ap75": float(stats[2]), "per_class": per}


# --- the run --------------------------------------------------------------------------------------
def run_frame_eval(
    dataset_dir: Path,
    model: str | Path,
    cfg: Any,
    *,
    console: Console | None = None,
    detector: Any = None,
    map_threshold: float = MAP_THRESHOLD,
) -> dict[str, Any]:
    """Evaluate `model` on the dataset version `dataset_dir` (module docstring); print the tables
    to `console`, return the figures. `cfg` is a GridwatchConfig (detector settings, operating
    threshold, registry). `detector`: an already built detector of that model with a score
    threshold <= `map_threshold` (not closed here; the bench uses it)."""
    from gridwatch.dataset.errors import DatasetError
    from gridwatch.dataset.store import DatasetVersion

    console = console or Console(stderr=True)
    try:
        ds = DatasetVersion.open(dataset_dir)
        coco = ds.coco()
    except DatasetError as e:
        raise FrameEvalError(str(e)) from None
    except (OSError, ValueError) as e:
        raise FrameEvalError(f"{dataset_dir}: cannot read annotations.coco.json: {e}") from None
    check_coco(coco, dataset_dir / "annotations.coco.json")
    missing = [im["file_name"] for im in coco["images"] if not (ds.images_dir / im["file_name"]).is_file()]
    if missing:
        raise FrameEvalError(f"{ds.images_dir}: {len(missing)} image(s) missing, e.g. {missing[0]}")
    det_cfg = cfg.cameras.detector
    operating = float(det_cfg.score_threshold)
    registry_dir = getattr(getattr(cfg, "models", None), "registry_dir", None)
    own = detector is None
    if detector is None:
        model_dir, model_ref = resolve_model(model, registry_dir)
        detector = build_eval_detector(model_dir, det_cfg, map_threshold)
    else:
        model_dir, model_ref = Path(str(model)), str(model)
        given = getattr(getattr(detector, "config", None), "score_threshold", None)
        if given is not None and float(given) > map_threshold:
            raise FrameEvalError(
                f"detector: score_threshold {given} is above the evaluation's {map_threshold}: "
                "mAP needs the low-scoring detections too"
            )
    model_names = list(detector.class_names)
    cat_by_name = {c["name"]: c["id"] for c in coco["categories"]}
    name_by_cat = {v: k for k, v in cat_by_name.items()}
    unknown = [n for n in cat_by_name if n not in model_names]
    gt_boxes: dict[tuple[int, int], list[list[float]]] = {}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        gt_boxes.setdefault((a["image_id"], a["category_id"]), []).append([x, y, x + w, y + h])
    dets: list[dict[str, Any]] = []
    fa_counts = {c: {"detections": 0, "tp": 0, "false_alarms": 0, "misses": 0} for c in cat_by_name.values()}
    ignored = 0
    infer_s = 0.0
    t0 = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("eval frames", total=len(coco["images"]))
            for im in coco["images"]:
                frame = cv2.imread(str(ds.images_dir / im["file_name"]), cv2.IMREAD_COLOR)
                if frame is None:
                    raise FrameEvalError(f"{ds.images_dir / im['file_name']}: not a readable image")
                t1 = time.perf_counter()
                d = detector.detect(frame)
                infer_s += time.perf_counter() - t1
                names = d.data.get("class_name", np.array([], dtype=str))
                per_cat: dict[int, list[int]] = {}
                for i, n in enumerate(names):
                    cid = cat_by_name.get(str(n))
                    if cid is None:
                        ignored += 1
                        continue
                    x0, y0, x1, y1 = (float(v) for v in d.xyxy[i])
                    dets.append({"image_id": im["id"], "category_id": cid, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                 "score": float(d.confidence[i])})  # fmt: skip
                    if d.confidence[i] >= operating:
                        per_cat.setdefault(cid, []).append(i)
                for cid in cat_by_name.values():
                    idx = per_cat.get(cid, [])
                    gt = np.asarray(gt_boxes.get((im["id"], cid), []), float).reshape(-1, 4)
                    tp, fa, miss = false_alarms(
                        gt, d.xyxy[idx].astype(float).reshape(-1, 4), d.confidence[idx]
                    )
                    f = fa_counts[cid]
                    f["detections"] += len(idx)
                    f["tp"] += tp
                    f["false_alarms"] += fa
                    f["misses"] += miss
                progress.advance(task)
    finally:
        if own:
            detector.close()
    gt = {k: coco[k] for k in ("images", "annotations", "categories")}
    fig = coco_figures(gt, dets)
    wall = time.perf_counter() - t0  # images read, detected, matched, and the COCO evaluation
    n_images = len(coco["images"])
    gt_count: dict[int, int] = {}
    for a in coco["annotations"]:
        gt_count[a["category_id"]] = gt_count.get(a["category_id"], 0) + 1
    classes: dict[str, Any] = {}
    notes = []
    for cid, name in name_by_cat.items():
        f = fa_counts[cid]
        pc = fig["per_class"].get(cid)
        note = None
        if name in unknown:
            note = f"the model has no class {name!r}: AP 0"
            notes.append(f"{name}: not among the model's labels ({len(model_names)} classes): AP 0")
        elif not gt_count.get(cid):
            note = "no ground truth: no AP (its detections are false alarms)"
        classes[name] = {
            "gt": gt_count.get(cid, 0),
            "ap": None if pc is None else round(pc["ap"], 4),
            "ap50": None if pc is None else round(pc["ap50"], 4),
            "ap75": None if pc is None else round(pc["ap75"], 4),
            "detections": f["detections"],
            "tp": f["tp"],
            "false_alarms": f["false_alarms"],
            "false_alarms_per_image": round(f["false_alarms"] / n_images, 4) if n_images else None,
            "misses": f["misses"],
            "precision": round(f["tp"] / f["detections"], 4) if f["detections"] else None,
            "recall": round(f["tp"] / gt_count[cid], 4) if gt_count.get(cid) else None,
            "note": note,
        }
    known = [c["ap"] for n, c in classes.items() if c["ap"] is not None and n not in unknown]
    fa_total = sum(c["false_alarms"] for c in classes.values())
    result: dict[str, Any] = {
        "dataset": str(dataset_dir),
        "dataset_name": ds.name,
        "dataset_version": ds.tag,
        "images": n_images,
        "annotations": len(coco["annotations"]),
        "model": model_ref,
        "model_dir": str(model_dir),
        "detector": getattr(detector, "model_version", None),
        "map_threshold": map_threshold,
        "operating_threshold": operating,
        "fa_iou": FA_IOU,
        "map": None if fig["map"] is None else round(fig["map"], 4),
        "ap50": None if fig["ap50"] is None else round(fig["ap50"], 4),
        "ap75": None if fig["ap75"] is None else round(fig["ap75"], 4),
        "map_model_classes": round(float(np.mean(known)), 4) if known else None,
        "classes": classes,
        "false_alarms": fa_total,
        "false_alarms_per_image": round(fa_total / n_images, 4) if n_images else None,
        "unknown_classes": unknown,
        "ignored_detections": ignored,
        "notes": notes,
        "wall_seconds": round(wall, 3),
        "frames_per_s": round(n_images / wall, 3) if wall > 0 else None,
        "infer_ms_mean": round(1000 * infer_s / n_images, 2) if n_images else None,
    }
    _print_tables(console, result)
    return result


def _f(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _print_tables(console: Console, r: dict[str, Any]) -> None:
    if not console.is_terminal:  # a log file or a pipe: don't squeeze the table into 80 columns
        console = Console(file=console.file, width=max(console.width, 140), highlight=False)
    t = Table(
        title=f"eval frames: {r['dataset_name']} {r['dataset_version']} ({r['images']} images), {r['detector']}; "
        f"mAP {_f(r['map'])}, AP50 {_f(r['ap50'])}, AP75 {_f(r['ap75'])}",
        title_justify="left",
    )
    cols = ("class", "gt", "AP", "AP50", "AP75", f"dets@{r['operating_threshold']:g}", "TP", "false alarms",
            "FA/image", "misses", "P", "R", "note")  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c in ("class", "note") else "right", no_wrap=c != "note")
    for name, c in r["classes"].items():
        t.add_row(
            name, str(c["gt"]), _f(c["ap"]), _f(c["ap50"]), _f(c["ap75"]), str(c["detections"]), str(c["tp"]),
            str(c["false_alarms"]), _f(c["false_alarms_per_image"], ".2f"), str(c["misses"]),
            _f(c["precision"], ".2f"), _f(c["recall"], ".2f"), c["note"] or "",
        )  # fmt: skip
    console.print(t)
    console.print(
        f"AP: score >= {r['map_threshold']:g}, COCO matching (IoU .50:.95); false alarms: score >= "
        f"{r['operating_threshold']:g} (the cameras' threshold), no ground truth of the class at IoU >= "
        f"{r['fa_iou']:g}. {r['frames_per_s']} frames/s.",
        highlight=False,
    )


def frames_metrics(result: dict[str, Any], prefix: str = "frames") -> dict[str, float]:
    """The figures of `gridwatch eval frames` (its last JSON line) as registry metrics.

    `frames.map`, `frames.ap50`, `frames.ap75` and per class `frames.<class>.ap`,
    `frames.<class>.ap50`, `frames.<class>.false_alarms_per_image`. The metric's last dot-part is
    what the registry's promotion gate reads (`ap`, `ap50`, `map`: higher is better, compared;
    `false_alarms_per_image`: recorded, not gated), hence the class in the middle. None figures
    (a class without ground truth) are left out."""
    out: dict[str, float] = {}
    for k in ("map", "ap50", "ap75"):
        if result.get(k) is not None:
            out[f"{prefix}.{k}"] = float(result[k])
    for name, c in (result.get("classes") or {}).items():
        key = re.sub(r"[^A-Za-z0-9_\-]", "_", name)
        for k in ("ap", "ap50", "false_alarms_per_image"):
            if c.get(k) is not None:
                out[f"{prefix}.{key}.{k}"] = float(c[k])
    return out
