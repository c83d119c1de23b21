"""Export a dataset version for annotators and trainers: COCO JSON or YOLO txt.

    coco:  OUT/images/*.jpg  OUT/annotations.coco.json  OUT/labels.json
           (zip OUT/ to upload into CVAT as "COCO 1.0", or import the JSON into Label Studio)
    yolo:  OUT/images/*.jpg  OUT/labels/<stem>.txt  OUT/data.yaml  OUT/labels.json
           one line per box: `class cx cy w h`, normalised to the image, class = the detector's
           class id (labels.json); an image without boxes has an empty .txt (a background image)

Pure JSON and text, no converter library: supervision's `DetectionDataset.as_yolo` would do the YOLO
side too, but it renumbers category ids and drops gridwatch's `extra` fields (pseudo flags,
negatives), so the label map would have to be re-applied afterwards; the formats are small enough
to write exactly. OUT must be empty or absent: an export never overwrites anything.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.store import ANNOTATIONS, LABELS, DatasetVersion, Progress

__all__ = ["FORMATS", "export_version", "yolo_line"]

FORMATS = ("coco", "yolo")


def _empty_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty directory (an export never overwrites)")
    (out / "images").mkdir(parents=True, exist_ok=True)


def _copy_images(v: DatasetVersion, coco: dict[str, Any], out: Path, on_progress: Progress | None) -> None:
    n = len(coco["images"])
    for k, im in enumerate(coco["images"]):
        src, dst = v.images_dir / im["file_name"], out / "images" / im["file_name"]
        if not src.is_file():
            raise DatasetError(f"{src}: missing (images[{k}] of {v.path / ANNOTATIONS})")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        if on_progress is not None:
            on_progress("images", k + 1, n)


def yolo_line(class_id: int, bbox: list[float], width: int, height: int) -> str:
    x, y, w, h = (float(b) for b in bbox)
    cx, cy = (x + w / 2) / width, (y + h / 2) / height
    return f"{class_id} {cx:.6f} {cy:.6f} {w / width:.6f} {h / height:.6f}"


def export_version(
    version_dir: Path | str, fmt: str, out: Path | str, *, on_progress: Progress | None = None
) -> dict[str, Any]:
    """Write version `version_dir` as `fmt` ("coco" or "yolo") into the empty directory `out`."""
    if fmt not in FORMATS:
        raise DatasetError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    v = DatasetVersion.open(version_dir)
    out = Path(out)
    coco = v.coco()
    labels = v.labels()
    _empty_out(out)
    _copy_images(v, coco, out, on_progress)
    shutil.copyfile(v.path / LABELS, out / LABELS)
    summary: dict[str, Any] = {
        "format": fmt,
        "dataset": v.name,
        "version": v.tag,
        "out": str(out),
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
    }
    if fmt == "coco":
        (out / ANNOTATIONS).write_text(json.dumps(coco, ensure_ascii=False, indent=1), encoding="utf-8")
        summary["annotations_file"] = str(out / ANNOTATIONS)
        return summary
    lines: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    size = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
    for k, a in enumerate(coco["annotations"]):
        name = labels.name_of_coco_id(a["category_id"])
        cid = labels.class_id(name) if name is not None else None
        if cid is None:
            raise DatasetError(
                f"{v.path / ANNOTATIONS}: annotations[{k}].category_id: {a['category_id']} is not in labels.json"
            )
        w, h = size[a["image_id"]]
        lines[a["image_id"]].append(yolo_line(cid, a["bbox"], w, h))
    (out / "labels").mkdir(exist_ok=True)
    for im in coco["images"]:
        stem = Path(im["file_name"]).stem
        body = "\n".join(lines[im["id"]])
        (out / "labels" / f"{stem}.txt").write_text(body + ("\n" if body else ""), encoding="utf-8")
    data = {
        "path": str(out.resolve()),
        "train": "images",
        "val": "images",
        "nc": len(labels.names),
        "names": dict(enumerate(labels.names)),
    }
    head = (
        f"# gridwatch dataset {v.name} {v.tag}: YOLO export. Class ids are the detector's (labels.json).\n"
        "# No train/val split is made here: `val` repeats `train`; split by camera or day for a fair score.\n"
    )
    (out / "data.yaml").write_text(
        head + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    summary["data_yaml"] = str(out / "data.yaml")
    return summary
