"""Import corrected boxes (COCO JSON from CVAT, Label Studio, ...) as a NEW dataset version.

`import_coco(VERSION_DIR, FILE)` makes `v<N+1>` of the same dataset with `VERSION_DIR` as its
parent: the same images, and for every image the file names, its annotations replaced by the
file's (an image the file leaves out keeps its annotations: an annotator may return part of a
task). Matching:

* images by `file_name`, exactly or by its base name (tools often prefix a folder); width and
  height, when given, must be the image's;
* categories by `name` through the dataset's label map (annotation tools renumber ids);
* an annotation keeps its `extra` when the file carries one (a file exported from gridwatch and
  imported unchanged gives identical annotations); otherwise it is a person's box:
  `extra = {"pseudo": false, "source": "import"}`.

A false alarm's negative that the annotator drew a box on again (IoU >= 0.5, same class) is
dropped from `extra.negatives`: a person's word beats the inference from the verdict.

Everything is checked before anything is written; every problem names the file and the field,
e.g. `fixed.json: images[3].file_name: 'x.jpg' is not an image of datasets/demo/v1`.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from pathlib import Path
from typing import Any

from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.store import DatasetVersion, Progress, renumber, write_version
from gridwatch.detectors.tracking import box_iou

__all__ = ["import_coco"]

_MAX_ERRORS = 20
_EDGE_TOLERANCE_PX = 1.0


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(src: Path, doc: Any, v: DatasetVersion) -> tuple[dict[int, str], dict[int, int], list[str]]:
    """(file image id -> our file_name, file category id -> our category id, errors)."""
    errs: list[str] = []
    if not isinstance(doc, dict):
        return {}, {}, [f"{src}: not a COCO object (a JSON object with images, annotations, categories)"]
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            errs.append(f"{src}: {key}: a list is needed")
    if errs:
        return {}, {}, errs
    labels = v.labels()
    ours = {im["file_name"]: im for im in v.coco()["images"]}
    by_base: dict[str, list[str]] = {}
    for fn in ours:
        by_base.setdefault(Path(fn).name, []).append(fn)

    cats: dict[int, int] = {}
    for i, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
            errs.append(f"{src}: categories[{i}]: needs an integer id and a string name")
            continue
        if c["id"] in cats:
            errs.append(f"{src}: categories[{i}].id: {c['id']} appears twice")
            continue
        coco_id = labels.coco_id(c["name"])
        if coco_id is None:
            errs.append(
                f"{src}: categories[{i}].name: {c['name']!r} is not in the label map ({v.path / 'labels.json'})"
            )
            continue
        cats[c["id"]] = coco_id

    imgs: dict[int, str] = {}
    seen: dict[str, int] = {}
    for i, im in enumerate(doc["images"]):
        if (
            not isinstance(im, dict)
            or not isinstance(im.get("id"), int)
            or not isinstance(im.get("file_name"), str)
        ):
            errs.append(f"{src}: images[{i}]: needs an integer id and a string file_name")
            continue
        fn = im["file_name"]
        match = fn if fn in ours else None
        if match is None:
            cands = by_base.get(Path(fn.replace("\\", "/")).name, [])
            match = cands[0] if len(cands) == 1 else None
        if match is None:
            errs.append(f"{src}: images[{i}].file_name: {fn!r} is not an image of {v.path}")
            continue
        if im["id"] in imgs:
            errs.append(f"{src}: images[{i}].id: {im['id']} appears twice")
            continue
        if match in seen:
            errs.append(f"{src}: images[{i}].file_name: {fn!r} is also images[{seen[match]}]")
            continue
        for dim in ("width", "height"):
            if dim in im and im[dim] != ours[match][dim]:
                errs.append(f"{src}: images[{i}].{dim}: {im[dim]!r}, but {match} is {ours[match][dim]} px")
        seen[match] = i
        imgs[im["id"]] = match

    for i, a in enumerate(doc["annotations"]):
        if not isinstance(a, dict):
            errs.append(f"{src}: annotations[{i}]: an object is needed")
            continue
        iid, cid, bbox = a.get("image_id"), a.get("category_id"), a.get("bbox")
        if iid not in imgs:
            if not any(isinstance(im, dict) and im.get("id") == iid for im in doc["images"]):
                errs.append(f"{src}: annotations[{i}].image_id: {iid!r} is not an image of the file")
            continue  # an image already reported
        if cid not in cats:
            if not any(isinstance(c, dict) and c.get("id") == cid for c in doc["categories"]):
                errs.append(f"{src}: annotations[{i}].category_id: {cid!r} is not a category of the file")
            continue
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_num(b) for b in bbox)):
            errs.append(f"{src}: annotations[{i}].bbox: [x, y, width, height] of finite numbers is needed")
            continue
        x, y, w, h = bbox
        im = ours[imgs[iid]]
        if w <= 0 or h <= 0:
            errs.append(f"{src}: annotations[{i}].bbox: width and height must be positive, not {w} x {h}")
        elif (
            x < -_EDGE_TOLERANCE_PX
            or y < -_EDGE_TOLERANCE_PX
            or x + w > im["width"] + _EDGE_TOLERANCE_PX
            or y + h > im["height"] + _EDGE_TOLERANCE_PX
        ):
            errs.append(
                f"{src}: annotations[{i}].bbox: {bbox} goes outside {imgs[iid]} ({im['width']}x{im['height']})"
            )
    return imgs, cats, errs


def _clip(bbox: list[float], w: int, h: int) -> list[float]:
    x0, y0 = max(0.0, float(bbox[0])), max(0.0, float(bbox[1]))
    x1, y1 = min(float(w), float(bbox[0]) + float(bbox[2])), min(float(h), float(bbox[1]) + float(bbox[3]))
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def import_coco(
    version_dir: Path | str,
    coco_json: Path | str,
    *,
    created_at: datetime | None = None,
    on_progress: Progress | None = None,
) -> tuple[DatasetVersion, dict[str, Any]]:
    """A new version of `version_dir`'s dataset with the annotations of `coco_json` (see the module doc)."""
    v = DatasetVersion.open(version_dir)
    src = Path(coco_json)
    try:
        raw = src.read_bytes()
        doc = json.loads(raw)
    except OSError as e:
        raise DatasetError(f"{src}: cannot read: {e}") from None
    except ValueError as e:
        raise DatasetError(f"{src}: not JSON: {e}") from None
    imgs, cats, errs = _check(src, doc, v)
    if errs:
        more = f"\n... and {len(errs) - _MAX_ERRORS} more" if len(errs) > _MAX_ERRORS else ""
        raise DatasetError("\n".join(errs[:_MAX_ERRORS]) + more)

    ours = v.coco()
    labels = v.labels()
    our_id = {im["file_name"]: im["id"] for im in ours["images"]}
    by_id = {im["id"]: im for im in ours["images"]}
    replaced = {our_id[fn] for fn in imgs.values()}
    new_anns: list[dict[str, Any]] = [a for a in ours["annotations"] if a["image_id"] not in replaced]
    for a in doc["annotations"]:
        if a["image_id"] not in imgs:
            continue
        iid = our_id[imgs[a["image_id"]]]
        im = by_id[iid]
        bbox = _clip(a["bbox"], im["width"], im["height"])
        extra = a.get("extra") if isinstance(a.get("extra"), dict) else {"pseudo": False, "source": "import"}
        new_anns.append(
            {
                "image_id": iid,
                "category_id": cats[a["category_id"]],
                "bbox": bbox,
                "area": round(bbox[2] * bbox[3], 2),
                "iscrowd": int(a.get("iscrowd") or 0),
                "extra": extra,
            }
        )
    # annotations in image order, then in the file's order within an image
    order = {im["id"]: k for k, im in enumerate(ours["images"])}
    new_anns.sort(key=lambda a: order[a["image_id"]])
    sha = hashlib.sha256(raw).hexdigest()
    images = []
    dropped_negatives = 0
    for im in ours["images"]:
        if im["id"] in replaced:
            ex = dict(im.get("extra") or {})
            boxes = [
                (labels.name_of_coco_id(a["category_id"]), a["bbox"])
                for a in new_anns
                if a["image_id"] == im["id"]
            ]
            keep = []
            for n in ex.get("negatives") or []:
                nb = n["bbox"]
                redrawn = any(
                    name == n.get("category")
                    and box_iou(
                        [nb[0], nb[1], nb[0] + nb[2], nb[1] + nb[3]], [b[0], b[1], b[0] + b[2], b[1] + b[3]]
                    )
                    >= 0.5
                    for name, b in boxes
                )
                dropped_negatives += redrawn
                if not redrawn:
                    keep.append(n)
            ex["negatives"] = keep
            ex["labels_from"] = f"import {src.name} sha256:{sha[:12]}"
            im = {**im, "extra": ex}
        images.append(im)
    coco = renumber({"images": images, "annotations": new_anns, "categories": ours["categories"]})
    before = len(ours["annotations"])
    details = {
        "import": {
            "file": str(src.resolve()),
            "sha256": sha,
            "images_in_file": len(imgs),
            "images_replaced": len(replaced),
            "images_kept": len(ours["images"]) - len(replaced),
            "annotations_before": before,
            "annotations_after": len(new_anns),
            "negatives_dropped": dropped_negatives,
        }
    }
    dataset_dir = v.path.parent
    nv = write_version(
        dataset_dir,
        coco=coco,
        labels=labels,
        images={im["file_name"]: v.images_dir / im["file_name"] for im in images},
        parent=v,
        created_by="import",
        details=details,
        created_at=created_at,
        on_progress=on_progress,
    )
    return nv, {
        "dataset": nv.name,
        "version": nv.tag,
        "path": str(nv.path),
        "parent": v.tag,
        **details["import"],
    }
