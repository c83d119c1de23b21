"""A fully labelled frame set composited onto real footage: `gridwatch dataset composite NAME`.

The shipped event clips (detectors/eval_clips.py) paste actors over the running footage, whose
own walkers are not labelled, so their frames cannot score a detector box by box. This module
starts instead from the footage's **empty** median background (nobody stands still in vtest.avi
for 4 s, so the median over 100 frames holds no one) and pastes every object it labels:

* **people** (`person`): real walkers cut out of other frames (`eval_clips.Footage.people`), at a
  random depth and place on the ground, scaled with `eval_clips.person_height`; the box is the
  pasted cut-out's alpha extent (alpha > 0.5: what is visible, not the soft rim);
* **the van** (`truck`, see below), sometimes: the footage's own parked van cut out along
  eval_clips' hand-drawn outline (`Footage.van`), driven onto the service road or the plaza at a
  random depth; box = alpha extent;
* **dumped objects** (`bag`, a category the production COCO model does not have): bags and
  sacks (`scenarios.make_bag`, random seed, size and colour) and cardboard boxes
  (`eval_clips.make_box`), at depth-scaled sizes on the ground; box = alpha extent.

The background itself holds two parked vehicles, labelled by constants checked by hand on the
median image (tests check them too): the white van, whose box is eval_clips' hand-drawn outline
(`VAN_OUTLINE` in `VAN_CROP`: x 653-724, y 44-100), and the light-blue car cut by the right edge
(x 734-768, y 49-94). NanoDet-g 416 (the production model) calls the van `car` 0.51 **and**
`truck` 0.48 (same box, both classes kept by class-aware NMS); a Ford-Transit-style panel van is a
truck in COCO's sense, so it is labelled `truck` and the model's `car` box on it is a false alarm
of `car` (the demo's "van seen as car and truck"). The footage's own litter (two yellow sheets on
the lawn, present since the first frame) is scenery, not a dumped object: it is not labelled.

Objects are placed so that no two boxes overlap by more than `MAX_OVERLAP` of the smaller one
(labels stay what is visible) and pasted far to near. Every draw comes from
`numpy.random.default_rng([seed, layout, index])`: the same seed, layout and footage give the same
COCO file and, with the same OpenCV build (its video decoder and libjpeg), the same JPEG bytes;
image k does not depend on how many images are made.
Layouts: `native` (768x576 as recorded) and `mirror` (flipped left-right, boxes mirrored; with its
own draws: a held-out view of the same scene, not another camera).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.labels import COCO80_IDS, COCO80_NAMES, LabelMap
from gridwatch.dataset.store import DatasetVersion, Progress, check_name, write_version

__all__ = [
    "BACKGROUND_OBJECTS",
    "DEFAULT_CLASSES",
    "LAYOUTS",
    "Placed",
    "composite_dataset",
    "composite_image",
    "composite_labels",
]

Layout = Literal["native", "mirror"]
LAYOUTS: tuple[str, ...] = ("native", "mirror")
DEFAULT_CLASSES: tuple[str, ...] = ("person", "truck", "car", "bag")
VAN_CLASS = "truck"
MAX_OVERLAP = 0.2  # intersection / smaller box: a little occlusion, never a hidden object
JPEG_QUALITY = 95
# the vehicles parked in the median background: (class, xyxy in native pixels, how it was found)
BACKGROUND_OBJECTS: tuple[tuple[str, tuple[int, int, int, int], str], ...] = (
    (VAN_CLASS, (653, 44, 724, 100), "parked van: eval_clips.VAN_OUTLINE extent in VAN_CROP"),
    ("car", (734, 49, 768, 94), "parked car at the right edge: checked by hand on the median image"),
)
# new categories get COCO ids above the 80 COCO 2017 classes' (1..90), so a COCO class keeps its
# official id and the file scores beside real COCO data
_NEW_COCO_ID_BASE = 91
_LAYOUT_CODE = {"native": 0, "mirror": 1}


@dataclass(frozen=True)
class Placed:
    """One labelled object of a composite image (native pixels, before mirroring)."""

    category: str
    xyxy: tuple[int, int, int, int]
    what: str


def composite_labels(classes: Sequence[str] = DEFAULT_CLASSES) -> LabelMap:
    """The dataset's label map: COCO names keep their official ids, new names (bag) get 91, 92, ..."""
    classes = tuple(classes)
    missing = [c for c in DEFAULT_CLASSES if c not in classes]
    if missing:
        raise DatasetError(
            f"classes: {missing} are labelled in every composite image and must be among the classes"
        )
    ids, new = [], _NEW_COCO_ID_BASE
    for c in classes:
        if c in COCO80_NAMES:
            ids.append(COCO80_IDS[COCO80_NAMES.index(c)])
        else:
            ids.append(new)
            new += 1
    return LabelMap(classes, tuple(ids), source="gridwatch/dataset/composite.py")


def _alpha_box(alpha: np.ndarray, x0: int, y0: int) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(alpha[..., 0] > 0.5)
    if len(xs) == 0:
        return None
    return x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1


def _overlaps(box: tuple[int, int, int, int], others: Sequence[tuple[int, int, int, int]]) -> bool:
    for o in others:
        iw = min(box[2], o[2]) - max(box[0], o[0])
        ih = min(box[3], o[3]) - max(box[1], o[1])
        if iw <= 0 or ih <= 0:
            continue
        small = min((box[2] - box[0]) * (box[3] - box[1]), (o[2] - o[0]) * (o[3] - o[1]))
        if iw * ih > MAX_OVERLAP * small:
            return True
    return False


@dataclass
class _Paste:
    img: np.ndarray
    alpha: np.ndarray
    x0: int
    y0: int
    foot_y: float
    placed: Placed


def _scaled(img: np.ndarray, alpha: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = img.shape[:2]
    nw, nh = max(2, round(w * s)), max(2, round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    a = cv2.resize(alpha, (nw, nh), interpolation=interp).reshape(nh, nw, 1)
    return cv2.resize(img, (nw, nh), interpolation=interp), a


def composite_image(
    footage: Any, seed: int, index: int, layout: str = "native"
) -> tuple[np.ndarray, list[Placed]]:
    """Image `index` of the set `seed`/`layout`: BGR uint8 frame and its labelled objects.

    `footage` is an `eval_clips.Footage` (its background and cut-outs are computed once and
    shared by every image). Boxes are in the returned frame's pixels (mirrored for `mirror`).
    """
    from gridwatch.detectors.eval_clips import SRC_H, SRC_W, bag_sprite, make_box, paste, person_height

    if layout not in _LAYOUT_CODE:
        raise DatasetError(f"layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    rng = np.random.default_rng([seed, _LAYOUT_CODE[layout], index])
    frame = footage.background.copy()
    taken = [box for _, box, _ in BACKGROUND_OBJECTS]
    pastes: list[_Paste] = []

    def place(img: np.ndarray, alpha: np.ndarray, cx: float, foot: float, cat: str, what: str) -> bool:
        h, w = img.shape[:2]
        x0, y0 = round(cx - w / 2), round(foot - h)
        if x0 < 0 or y0 < 0 or x0 + w > SRC_W or y0 + h > SRC_H:
            return False
        box = _alpha_box(alpha, x0, y0)
        if box is None or _overlaps(box, taken):
            return False
        taken.append(box)
        pastes.append(_Paste(img, alpha, x0, y0, foot, Placed(cat, box, what)))
        return True

    # the van first (largest): on the service road down from the car park, or the plaza road
    if rng.random() < 0.4:
        van = footage.van
        for _ in range(20):
            if rng.random() < 0.5:  # the service road, from the kerb (y 110) down to the plaza
                foot = float(rng.uniform(125, 260))
                cx = float(rng.uniform(560, 700) - (foot - 125) * 0.6)
            else:  # the plaza road across the picture
                foot, cx = float(rng.uniform(215, 300)), float(rng.uniform(120, 640))
            assert van.foot_y is not None
            img, a = _scaled(van.image, van.alpha, person_height(foot) / person_height(van.foot_y))
            if place(img, a, cx, foot, VAN_CLASS, "the footage's van, pasted"):
                break
    # dumped objects: 0-3 bags, sacks or boxes on the ground
    for _ in range(int(rng.integers(0, 4))):
        for _ in range(20):
            foot = float(rng.uniform(200, 565))
            cx = float(rng.uniform(30, SRC_W - 30))
            s = person_height(foot) / person_height(430.0)  # eval_clips' sizes are for the paved area
            kind = int(rng.integers(0, 3))
            sub = int(rng.integers(0, 1_000_000))
            if kind == 2:
                size = (round(46 * s * rng.uniform(0.8, 1.2)), round(36 * s * rng.uniform(0.8, 1.2)))
                base = tuple(int(v) for v in rng.integers(40, 190, 3))
                sp = make_box(sub, size=(max(size[0], 8), max(size[1], 6)), base=base)  # type: ignore[arg-type]
                what = "cardboard box"
            else:
                size = (round(44 * s * rng.uniform(0.7, 1.3)), round(34 * s * rng.uniform(0.7, 1.3)))
                base = tuple(int(v) for v in rng.integers(20, 220, 3))
                sp = bag_sprite(sub, (max(size[0], 8), max(size[1], 6)), base)  # type: ignore[arg-type]
                what = "bag" if kind == 0 else "sack"
            if place(sp.image, sp.alpha, cx, foot, "bag", what):
                break
    # people: 2-10 walkers anywhere on the ground, feet from the far path (y 150) to the bottom
    people = footage.people
    for _ in range(int(rng.integers(2, 11))):
        for _ in range(20):
            k = int(rng.integers(len(people)))
            sp = people[k]
            foot = float(rng.uniform(150, 572))
            cx = float(rng.uniform(15, SRC_W - 15))
            assert sp.foot_y is not None
            img, a = _scaled(sp.image, sp.alpha, person_height(foot) / person_height(sp.foot_y))
            if place(img, a, cx, foot, "person", f"walker cut-out {k}"):
                break
    for p in sorted(pastes, key=lambda p: p.foot_y):  # far first: near objects cover far ones
        paste(frame, p.img, p.alpha, p.x0, p.y0)
    placed = [Placed(c, box, what) for c, box, what in BACKGROUND_OBJECTS] + [p.placed for p in pastes]
    if layout == "mirror":
        frame = np.ascontiguousarray(frame[:, ::-1])
        placed = [
            Placed(p.category, (SRC_W - p.xyxy[2], p.xyxy[1], SRC_W - p.xyxy[0], p.xyxy[3]), p.what)
            for p in placed
        ]
    return frame, placed


def composite_dataset(
    datasets_root: Path,
    name: str,
    *,
    images: int,
    seed: int,
    layout: str = "native",
    classes: Sequence[str] = DEFAULT_CLASSES,
    split: str = "test",
    footage_path: Path | None = None,
    footage: Any = None,
    on_progress: Progress | None = None,
) -> DatasetVersion:
    """Write a new version of `datasets_root/name` holding `images` composite images, every object
    labelled (module docstring). Same footage, seed and layout: same COCO file (but its `info`
    date) and the same image bytes. `footage`: an `eval_clips.Footage` already analysed (its
    background and cut-outs are reused; else `footage_path`, default var/footage/vtest.avi, is
    read). Raises DatasetError naming the problem."""
    from gridwatch.detectors.eval_clips import FOOTAGE, Footage

    check_name(name)
    if images < 1:
        raise DatasetError(f"--images: {images} (at least 1)")
    if layout not in _LAYOUT_CODE:
        raise DatasetError(f"--layout: {layout!r} is not one of {', '.join(LAYOUTS)}")
    labels = composite_labels(classes)
    path = Path(footage.path if footage is not None else footage_path or FOOTAGE)
    try:
        footage = footage if footage is not None else Footage(path)
        footage.background  # noqa: B018 - decode the footage once, up front, with its own progress
    except FileNotFoundError as e:
        raise DatasetError(str(e)) from None
    if on_progress is not None:
        on_progress("footage", 1, 1)
    cat_id = {n: labels.coco_id(n) for n in labels.names}
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": labels.coco_categories()}
    files: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="gridwatch-composite-") as tmp:
        for i in range(images):
            frame, placed = composite_image(footage, seed, i, layout)
            fname = f"{name}-{layout}-s{seed}-{i:05d}.jpg"
            out = Path(tmp) / fname
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if not ok:
                raise DatasetError(f"{out}: JPEG encoding failed")
            out.write_bytes(buf.tobytes())
            files[fname] = out
            image_id = i + 1
            h, w = frame.shape[:2]
            coco["images"].append(
                {
                    "id": image_id,
                    "file_name": fname,
                    "width": w,
                    "height": h,
                    "extra": {"composite": {"seed": seed, "layout": layout, "index": i}, "split": split,
                              "labels_from": "composite"},
                }
            )  # fmt: skip
            for p in placed:
                x0, y0, x1, y1 = p.xyxy
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": cat_id[p.category],
                        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                        "area": float((x1 - x0) * (y1 - y0)),
                        "iscrowd": 0,
                        "extra": {"source": "composite", "what": p.what},
                    }
                )
            if on_progress is not None:
                on_progress("composite", i + 1, images)
        details = {
            "composite": {
                "seed": seed,
                "layout": layout,
                "images": images,
                "split": split,
                "classes": list(labels.names),
                "van_class": VAN_CLASS,
                "background_objects": [
                    {"category": c, "xyxy": list(b), "how": how} for c, b, how in BACKGROUND_OBJECTS
                ],
                "footage": str(path),
                "footage_sha256": footage.sha256(),
                "generator": "gridwatch/dataset/composite.py",
            }
        }
        return write_version(
            Path(datasets_root) / name,
            coco=coco,
            labels=labels,
            images=files,
            parent=None,
            created_by="composite",
            details=details,
            on_progress=on_progress,
        )
