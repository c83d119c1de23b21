"""Fine-tune the detector's head on this machine's CPU (issue 8 part 4b): teach a new class, keep the rest.

docs/TRAINING.md ("Detector fine-tuning") is the user's page. In short:

* **What is trained**: only the head (3 levels x [3x3 conv 128->128, 1x1 conv 128->124], 0.5M of
  the 3.79M weights). The backbone and neck are frozen, so their outputs (the neck features, the
  input of each level's head) are computed once per image with onnxruntime and cached on disk
  (float16, ``<out>/cache``); a training step is then the head alone (0.26 s for 8 images, bench train).
* **New class -> a reused COCO slot**: the model keeps its 80 outputs, so detectors/nanodet.py's
  pre- and post-processing stay unchanged; the slot of a class city cameras never see
  (``toaster`` first, then ``hair drier``, ``giraffe``, ``zebra``...: :data:`SLOT_PREFERENCE`) is
  renamed in the new model.yaml's ``labels`` (e.g. ``bag``).
* **Loss** (gridwatch/train/detector_torch.py ``gfl_loss``): NanoDet's own (ATSS top-9, QFL, DFL,
  GIoU) on the new class's boxes; the known classes are trained towards the *parent's* scores and
  boxes on the same images (distillation), so the model does not forget them. Annotations of
  known classes are not used: the parent's outputs are their targets.
* **Seeded and resumable**: the batch of step k is drawn from ``default_rng([seed, k])``; a
  checkpoint (head, optimiser, step, losses) is written every ``checkpoint_every`` steps; a rerun
  with ``resume=True`` continues from it (and from a half-built cache).
* **Out**: ``<out>/model/``, a model directory like models/nanodet-g-416 (the parent graph with the
  new head weights, model.yaml with its sha256 and the renamed labels, MODEL_CARD.md, train.json)
  and figures: AP50 of the new class on held-out images (the tail of the dataset, and any
  ``eval_datasets``) before (the parent) and after, and agreement with the parent per known class.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv
import torch
import yaml

from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.store import DatasetVersion
from gridwatch.detectors.nanodet import (
    DEFAULT_MODEL_DIR,
    MANIFEST_NAME,
    ModelIntegrityError,
    decode_gfl,
    nms_per_class,
)
from gridwatch.train.detector_torch import (
    GFLHead,
    LossWeights,
    NeckExtractor,
    cell_centers,
    export_onnx,
    gfl_loss,
)

__all__ = [
    "AGREEMENT_CLASSES",
    "SLOT_PREFERENCE",
    "FeatureCache",
    "ap50",
    "build_cache",
    "choose_slots",
    "head_detections",
    "train_detector",
]

Progress = Callable[[str, int, int], None]
#: COCO classes no city camera sees, in the order their slots are reused for new classes: indoor
#: objects first (never outdoors), then animals not found in a city street (dog, horse, bird... can be)
SLOT_PREFERENCE = (
    "toaster", "hair drier", "giraffe", "zebra", "elephant", "bear", "microwave", "oven",
    "refrigerator", "toothbrush", "sink", "toilet", "bed", "teddy bear",
)  # fmt: skip
#: the known classes whose agreement with the parent is reported
AGREEMENT_CLASSES = ("person", "car", "truck")
CAMERA_SCORE_THRESHOLD = 0.35
EVAL_SCORE_THRESHOLD = 0.05  # low, for the whole precision-recall curve
MATCH_IOU = 0.5
#: parent classes a bag can look like: their merged AP50 is the "before" a bag slot can be compared to
BAG_PROXIES = ("backpack", "handbag", "suitcase")
CHECKPOINT = "checkpoint.pt"


# --- data ------------------------------------------------------------------------------------------
def choose_slots(
    parent_labels: Sequence[str], wanted: Sequence[str], new_classes: Mapping[str, str] | None = None
) -> dict[str, int]:
    """New class name -> the parent class id whose slot it takes. ``new_classes`` maps a name to a
    parent label (``{"bag": "giraffe"}``); names it does not cover take the first free
    :data:`SLOT_PREFERENCE` slot."""
    labels = list(parent_labels)
    out: dict[str, int] = {}
    for name, slot in (new_classes or {}).items():
        if name in labels:
            raise DatasetError(f"new class {name!r}: already a class of the parent (no slot needed)")
        if slot not in labels:
            raise DatasetError(f"new class {name!r}: slot {slot!r} is not a label of the parent")
        out[name] = labels.index(slot)
    free = [labels.index(s) for s in SLOT_PREFERENCE if s in labels and labels.index(s) not in out.values()]
    for name in wanted:
        if name in out or name in labels:
            continue
        if not free:
            raise DatasetError(f"new class {name!r}: no free slot left in {SLOT_PREFERENCE}")
        out[name] = free.pop(0)
    return out


@dataclass
class ImageRecord:
    file: Path
    boxes: np.ndarray  # [G, 4] xyxy frame pixels, new classes only
    labels: np.ndarray  # [G] parent class id (the slot)


def _records(version: DatasetVersion, slots: Mapping[str, int]) -> tuple[list[ImageRecord], dict[str, int]]:
    coco = version.coco()
    cat_name = {c["id"]: c["name"] for c in coco.get("categories", [])}
    per: dict[int, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}
    for a in coco["annotations"]:
        name = cat_name.get(a["category_id"])
        if name is None:
            raise DatasetError(
                f"{version.path / 'annotations.coco.json'}: annotation {a.get('id')}: category_id "
                f"{a['category_id']} is not in categories"
            )
        counts[name] = counts.get(name, 0) + 1
        if name in slots:
            per.setdefault(a["image_id"], []).append(a)
    out = []
    for im in coco["images"]:
        anns = per.get(im["id"], [])
        boxes = np.array(
            [
                [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                for a in anns
            ],
            np.float32,
        ).reshape(-1, 4)
        lbl = np.array([slots[cat_name[a["category_id"]]] for a in anns], np.int64)
        out.append(ImageRecord(version.images_dir / im["file_name"], boxes, lbl))
    return out, counts


def new_categories(version: DatasetVersion, parent_labels: Sequence[str]) -> list[str]:
    """Categories with at least one annotation that the parent does not know, in category order."""
    coco = version.coco()
    used = {a["category_id"] for a in coco["annotations"]}
    return [
        c["name"] for c in coco.get("categories", []) if c["id"] in used and c["name"] not in parent_labels
    ]


# --- the feature cache -------------------------------------------------------------------------------
class FeatureCache:
    """Neck features of a list of images: ``level<k>.npy`` (float16 ``[N, C, H, W]``, memory-mapped)
    and ``meta.json`` (parent sha256, input size, files, letterbox per image, how many are done).
    float16 halves the disk (0.9 MB per 416x416 image instead of 1.8 MB); the head's outputs on it
    differ from those on float32 features by at most 6.4e-5 in score and 0.015 px in box edges (8 vtest
    frames, docs/TRAINING.md)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.meta: dict[str, Any] = json.loads((self.root / "meta.json").read_text(encoding="utf-8"))
        self.levels = [
            np.load(self.root / f"level{k}.npy", mmap_mode="r") for k in range(len(self.meta["shapes"]))
        ]

    def __len__(self) -> int:
        return int(self.meta["done"])

    def letterbox(self, i: int) -> tuple[float, float, float, float]:
        sx, sy, px, py = self.meta["letterbox"][i]
        return sx, sy, px, py

    def batch(self, idx: Sequence[int]) -> list[torch.Tensor]:
        idx = np.asarray(idx)
        order = np.argsort(idx)  # memmaps read faster in order
        inv = np.argsort(order)
        return [torch.from_numpy(np.asarray(lv[idx[order]], np.float32)[inv]) for lv in self.levels]


def build_cache(
    root: Path, files: Sequence[Path], extractor: NeckExtractor, *, on_progress: Progress | None = None,
    what: str = "cache", flush_every: int = 16,
) -> FeatureCache:  # fmt: skip
    """The cache of ``files`` under ``root``; a cache for the same parent, size and files is reused
    and a half-built one continued (``done`` is saved every ``flush_every`` images)."""
    root = Path(root)
    names = [str(f) for f in files]
    meta_path = root / "meta.json"
    meta: dict[str, Any] | None = None
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        same = (
            meta.get("parent_sha256") == extractor.manifest.sha256
            and meta.get("input") == [extractor.width, extractor.height]
            and meta.get("files") == names
        )
        if not same:
            raise DatasetError(
                f"{root}: a feature cache of other images or another parent model is there "
                "(use another --out, or delete the directory)"
            )
    root.mkdir(parents=True, exist_ok=True)
    if meta is None:
        inits = {i.name: i for i in extractor.model.graph.initializer}
        shapes = []
        for s in extractor.specs:
            gw, gh = -(-extractor.width // s.stride), -(-extractor.height // s.stride)
            # channels: the input channels of the level's 3x3 conv
            shapes.append([len(files), int(inits[s.conv_w].dims[1]), gh, gw])
        for k, shape in enumerate(shapes):
            np.lib.format.open_memmap(
                root / f"level{k}.npy", mode="w+", dtype=np.float16, shape=tuple(shape)
            ).flush()
        meta = {"format": "gridwatch-neck-cache", "parent_sha256": extractor.manifest.sha256,
                "input": [extractor.width, extractor.height], "necks": extractor.necks, "shapes": shapes,
                "files": names, "letterbox": [], "done": 0}  # fmt: skip
        _write_json(meta_path, meta)
    done = int(meta["done"])
    t0 = time.perf_counter()
    spent = float(meta.get("build_s", 0.0))  # seconds of earlier, interrupted builds
    if done < len(files):
        mms = [np.load(root / f"level{k}.npy", mmap_mode="r+") for k in range(len(meta["shapes"]))]
        for i in range(done, len(files)):
            frame = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
            if frame is None:
                raise DatasetError(f"{files[i]}: cannot read the image")
            necks, _, _, box = extractor.run(frame)
            for mm, f in zip(mms, necks, strict=True):
                mm[i] = f.astype(np.float16)
            meta["letterbox"].append([box.scale_x, box.scale_y, box.pad_x, box.pad_y])
            if (i + 1) % flush_every == 0 or i + 1 == len(files):
                for mm in mms:
                    mm.flush()
                meta["done"] = i + 1
                meta["build_s"] = round(spent + time.perf_counter() - t0, 3)
                _write_json(meta_path, meta)
            if on_progress is not None:
                on_progress(what, i + 1, len(files))
        del mms
    return FeatureCache(root)


def _shown(path: Path) -> str:
    """A path as written into a model directory: relative to the working directory when under it (a
    model committed to the repository should not name one machine's absolute paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _to_input(boxes: np.ndarray, lb: tuple[float, float, float, float]) -> np.ndarray:
    sx, sy, px, py = lb
    out = boxes.astype(np.float32).copy()
    out[:, [0, 2]] = out[:, [0, 2]] * sx + px
    out[:, [1, 3]] = out[:, [1, 3]] * sy + py
    return out


# --- evaluation ---------------------------------------------------------------------------------------
def head_detections(
    cls_logits: Sequence[torch.Tensor], dis_logits: Sequence[torch.Tensor], strides: Sequence[int],
    width: int, height: int, *, reg_max: int, score_threshold: float, class_ids: np.ndarray | None = None,
    nms_iou: float = 0.5, max_detections: int = 100,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:  # fmt: skip
    """Per image of a batch, (xyxy input pixels, score, class id) after detectors/nanodet.py's own
    ``decode_gfl`` and ``nms_per_class`` (imported): what NanoDetDetector would report."""
    out = []
    for i in range(cls_logits[0].shape[0]):
        cls = [torch.sigmoid(c[i]).numpy() for c in cls_logits]
        dis = [d[i].numpy() for d in dis_logits]
        xyxy, sc, ci = decode_gfl(cls, dis, list(strides), width, height, reg_max=reg_max,
                                  score_threshold=score_threshold, class_ids=class_ids)  # fmt: skip
        keep = nms_per_class(xyxy, sc, ci, nms_iou, max_detections)
        out.append((xyxy[keep], sc[keep], ci[keep]))
    return out


def ap50(dets: Sequence[tuple[np.ndarray, np.ndarray]], gts: Sequence[np.ndarray]) -> dict[str, Any]:
    """COCO-style AP at IoU 0.5 of one class (101-point interpolated precision; greedy matching,
    best score first, each ground-truth box once), and recall / precision at the cameras' 0.35.
    ``dets[i]`` = (xyxy, score) of image i, ``gts[i]`` its boxes."""
    n_gt = sum(len(g) for g in gts)
    rows = []  # (score, is true positive)
    for (boxes, scores), gt in zip(dets, gts, strict=True):
        order = np.argsort(-scores, kind="stable")
        used = np.zeros(len(gt), bool)
        iou = sv.box_iou_batch(boxes[order], gt)
        for k, j in enumerate(order):
            m = -1
            if len(gt):
                cand = np.where(~used, iou[k], -1.0)
                if cand.max() >= MATCH_IOU:
                    m = int(cand.argmax())
                    used[m] = True
            rows.append((float(scores[j]), m >= 0))
    if not n_gt:
        return {"ap50": None, "gt": 0, "detections": len(rows)}
    rows.sort(key=lambda r: -r[0])
    tp = np.array([r[1] for r in rows], float)
    sc = np.array([r[0] for r in rows], float)
    ctp = np.cumsum(tp)
    recall = ctp / n_gt
    precision = ctp / np.arange(1, len(tp) + 1) if len(tp) else np.zeros(0)
    ap = 0.0
    if len(tp):
        # precision envelope, then the mean at recall 0, 0.01, ..., 1
        env = np.maximum.accumulate(precision[::-1])[::-1]
        for r in np.linspace(0, 1, 101):
            k = np.searchsorted(recall, r, side="left")
            ap += env[k] if k < len(env) else 0.0
        ap /= 101
    cam = sc >= CAMERA_SCORE_THRESHOLD
    return {
        "ap50": round(float(ap), 4),
        "gt": n_gt,
        "recall_at_035": round(float(tp[cam].sum() / n_gt), 4),
        "precision_at_035": round(float(tp[cam].mean()), 4) if cam.any() else None,
        "false_positives_at_035": int((~tp.astype(bool) & cam).sum()),
    }


def _agreement(parent: list[tuple[np.ndarray, np.ndarray, np.ndarray]], child: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
               class_ids: Mapping[str, int]) -> dict[str, Any]:  # fmt: skip
    """Per class: of the parent's detections >= 0.35, the share the child also makes (same class,
    IoU >= 0.5, >= 0.35); and how many the child makes that the parent does not."""
    out: dict[str, Any] = {}
    for name, c in class_ids.items():
        n_parent = matched = child_only = 0
        for (pb, ps, pc), (cb, cs, cc) in zip(parent, child, strict=True):
            p = pb[(pc == c) & (ps >= CAMERA_SCORE_THRESHOLD)]
            q = cb[(cc == c) & (cs >= CAMERA_SCORE_THRESHOLD)]
            iou = sv.box_iou_batch(p, q)
            n_parent += len(p)
            matched += int((iou >= MATCH_IOU).any(1).sum()) if len(q) else 0
            child_only += int((~(iou >= MATCH_IOU).any(0)).sum()) if len(p) else len(q)
        out[name] = {"parent": n_parent, "matched": matched, "agreement": round(matched / n_parent, 4) if n_parent else None,
                     "child_only": child_only}  # fmt: skip
    return out


def evaluate_heads(
    child: GFLHead, parent: GFLHead, cache: FeatureCache, idx: Sequence[int], records: Sequence[ImageRecord],
    *, slots: Mapping[str, int], parent_labels: Sequence[str], strides: Sequence[int], batch: int = 8,
    on_progress: Progress | None = None, what: str = "eval",
) -> dict[str, Any]:  # fmt: skip
    """AP50 of each new class on the images ``idx`` (the child, and the parent's slot class before
    training, and for a ``bag`` the parent's bag-like classes merged) and agreement with the parent
    on :data:`AGREEMENT_CLASSES`."""
    w, h = cache.meta["input"]
    labels = list(parent_labels)
    pd, cd = [], []
    child.eval()
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            feats = cache.batch(idx[s : s + batch])
            for head, acc in ((parent, pd), (child, cd)):
                c, d = head(feats)
                acc.extend(
                    head_detections(
                        c, d, strides, w, h, reg_max=head.reg_max, score_threshold=EVAL_SCORE_THRESHOLD
                    )
                )
            if on_progress is not None:
                on_progress(what, min(s + batch, len(idx)), len(idx))
    gts = {name: [] for name in slots}
    for i in idx:
        r = records[i]
        gi = _to_input(r.boxes, cache.letterbox(i))
        for name, slot in slots.items():
            gts[name].append(gi[r.labels == slot])
    out: dict[str, Any] = {"images": len(idx), "new_classes": {}}
    for name, slot in slots.items():

        def pick(
            d: list[tuple[np.ndarray, np.ndarray, np.ndarray]], ids: Sequence[int]
        ) -> list[tuple[np.ndarray, np.ndarray]]:
            return [(b[np.isin(c, ids)], s[np.isin(c, ids)]) for b, s, c in d]

        fig = {"after": ap50(pick(cd, [slot]), gts[name]), "before_slot": ap50(pick(pd, [slot]), gts[name])}
        if name == "bag":
            proxies = [labels.index(p) for p in BAG_PROXIES if p in labels]
            fig["before_" + "+".join(BAG_PROXIES)] = ap50(pick(pd, proxies), gts[name])
        out["new_classes"][name] = fig
    known = {n: labels.index(n) for n in AGREEMENT_CLASSES if n in labels}
    out["agreement"] = _agreement(pd, cd, known)
    return out


# --- the run ------------------------------------------------------------------------------------------
def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 5 % (at most 20 steps), then cosine to 10 %: a function of the
    step alone, so a resumed run follows the same schedule."""
    warm = max(1, min(20, steps // 20))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _batch_indices(
    seed: int, step: int, pos: np.ndarray, neg: np.ndarray, batch: int, replay: float
) -> np.ndarray:
    """The images of step ``step``: ``replay`` of the batch from images without the new classes
    (distillation only), the rest from images with them; drawn from ``default_rng([seed, step])``."""
    rng = np.random.default_rng([seed, step])
    n_neg = int(round(batch * replay)) if len(neg) else 0
    if not len(pos):
        n_neg = batch
    n_pos = batch - n_neg
    a = rng.choice(pos, n_pos, replace=n_pos > len(pos)) if n_pos else np.zeros(0, np.int64)
    b = rng.choice(neg, n_neg, replace=n_neg > len(neg)) if n_neg else np.zeros(0, np.int64)
    return np.concatenate([a, b]).astype(np.int64)


def _split(n: int, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    """Train / held-out image indices: the held-out images are the *last* ``holdout`` of the dataset
    (in file order: for footage, a later time range), so neighbouring frames do not leak."""
    k = int(round(n * holdout))
    if holdout > 0 and k == 0 and n > 1:
        k = 1
    return np.arange(n - k), np.arange(n - k, n)


def train_detector(
    dataset: DatasetVersion | Path | str,
    out_dir: Path | str,
    *,
    parent: Path | str | None = None,
    steps: int = 300,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    new_classes: Mapping[str, str] | None = None,
    replay: float = 0.25,
    holdout: float = 0.2,
    eval_datasets: Sequence[DatasetVersion | Path | str] = (),
    checkpoint_every: int = 25,
    resume: bool = False,
    stop_after: int | None = None,
    model_name: str | None = None,
    threads: int | None = None,
    weights: LossWeights = LossWeights(),
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Fine-tune the head of ``parent`` (a model directory, default the bundled NanoDet-g 416) to
    detect the dataset's new categories (or ``new_classes``: name -> parent label whose slot it
    takes) and write ``<out_dir>/model``. ``steps`` of ``batch`` images (``replay`` of each batch
    from images without a new-class box), AdamW at ``lr`` (warm-up, cosine), seeded by ``seed``.
    ``holdout``: the last share of the dataset's images is held out for the figures, as is every
    ``eval_datasets`` version. ``stop_after``: stop after that many steps of this call, leaving the
    checkpoint (``resume=True`` continues; the result has ``finished: False``)."""
    t_start = time.perf_counter()
    version = dataset if isinstance(dataset, DatasetVersion) else DatasetVersion.open(dataset)
    out_dir = Path(out_dir)
    parent_dir = Path(parent or DEFAULT_MODEL_DIR)
    if steps < 1 or batch < 1:
        raise DatasetError(f"steps and batch must be positive (got steps={steps}, batch={batch})")
    if not 0 <= holdout < 1 or not 0 <= replay < 1:
        raise DatasetError(f"holdout and replay must be in [0, 1) (got {holdout}, {replay})")
    model_dir = out_dir / "model"
    if model_dir.exists() and any(model_dir.iterdir()):
        raise DatasetError(f"{model_dir}: exists and is not empty (a model directory is never overwritten)")
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise DatasetError(
            f"{ckpt_path}: a run is already there (resume it with --resume, or use another --out)"
        )
    if threads:
        torch.set_num_threads(threads)
    try:
        extractor = NeckExtractor(parent_dir)
    except ModelIntegrityError as e:
        raise DatasetError(f"--from {parent_dir}: {e}") from None
    manifest = extractor.manifest
    labels = list(manifest.labels)
    wanted = list(new_classes or {}) or new_categories(version, labels)
    if not wanted:
        raise DatasetError(
            f"{version.path}: no annotated category outside the parent's labels ({manifest.name}); "
            "name the new class with new_classes / --new-class"
        )
    slots = choose_slots(labels, wanted, new_classes)
    records, ann_counts = _records(version, slots)
    if not any(len(r.boxes) for r in records):
        raise DatasetError(f"{version.path}: no annotation of {', '.join(slots)}")
    train_idx, held_idx = _split(len(records), holdout)
    if not any(len(records[i].boxes) for i in train_idx):
        raise DatasetError(
            f"{version.path}: no {', '.join(slots)} box outside the held-out tail ({holdout:.0%})"
        )
    config = {"dataset": f"{version.name}/{version.tag}", "parent_sha256": manifest.sha256, "steps": steps,
              "batch": batch, "lr": lr, "seed": seed, "slots": slots, "replay": replay, "holdout": holdout,
              "weights": weights.__dict__}  # fmt: skip

    # 1. the neck features, once per image (resumes a half-built cache)
    cache = build_cache(out_dir / "cache", [r.file for r in records], extractor, on_progress=on_progress)
    cache_s = float(cache.meta.get("build_s", 0.0))  # the whole build, over resumed calls too
    strides = extractor.strides
    w, h = extractor.width, extractor.height
    centers, cell_strides = cell_centers(w, h, strides, manifest.head.center_offset)
    level_sizes = [(-(-w // s)) * (-(-h // s)) for s in strides]

    # 2. the head: the parent's weights; a frozen copy gives the distillation targets
    torch.manual_seed(seed)
    parent_head = extractor.head().eval()
    for p in parent_head.parameters():
        p.requires_grad_(False)
    head = copy.deepcopy(parent_head)
    for p in head.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    history: list[dict[str, float]] = []
    step = 0
    train_s_before = 0.0  # training time of earlier calls of a resumed run
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        if ck["config"] != json.loads(json.dumps(config)):
            diff = sorted(k for k in config if json.loads(json.dumps(config))[k] != ck["config"].get(k))
            raise DatasetError(
                f"{ckpt_path}: made with other settings ({', '.join(diff)}); use another --out"
            )
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["opt"])
        step, history = int(ck["step"]), list(ck["history"])
        train_s_before = float(ck.get("train_s", 0.0))

    t1 = time.perf_counter()

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"config": json.loads(json.dumps(config)), "step": step, "head": head.state_dict(),
                    "opt": opt.state_dict(), "history": history,
                    "train_s": train_s_before + time.perf_counter() - t1}, tmp)  # fmt: skip
        os.replace(tmp, ckpt_path)

    # 3. training
    has_new = np.array([len(records[i].boxes) > 0 for i in train_idx])
    pos, neg = train_idx[has_new], train_idx[~has_new]
    train_slots = sorted(set(slots.values()))
    t1 = time.perf_counter()  # the clock of this call's steps
    first_step = step
    head.train()
    while step < steps and (stop_after is None or step - first_step < stop_after):
        idx = _batch_indices(seed, step, pos, neg, batch, replay)
        feats = cache.batch(idx)
        gts = [torch.from_numpy(_to_input(records[i].boxes, cache.letterbox(i))) for i in idx]
        gls = [torch.from_numpy(records[i].labels) for i in idx]
        with torch.no_grad():
            pc, pdis = parent_head(feats)
        c, d = head(feats)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        loss, stats = gfl_loss(
            torch.cat(c, 1), torch.cat(d, 1), gts, gls, centers=centers, strides=cell_strides,
            level_sizes=level_sizes, reg_max=head.reg_max, train_classes=train_slots,
            parent_cls=torch.sigmoid(torch.cat(pc, 1)), parent_dis=torch.cat(pdis, 1), weights=weights,
        )  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        history.append({"step": step, **{k: round(v, 6) for k, v in stats.items()}})
        if step % checkpoint_every == 0 or step == steps:
            save()
        if on_progress is not None:
            on_progress("train", step, steps)
    train_s = train_s_before + time.perf_counter() - t1
    steps_run = step  # train_s covers every step of the run, resumed or not
    if step < steps:
        save()
        return {"finished": False, "step": step, "steps": steps, "checkpoint": str(ckpt_path),
                "history": history, "cache_s": round(cache_s, 2),
                "s_per_step": round(train_s / max(steps_run, 1), 4)}  # fmt: skip

    # 4. figures on held-out images
    metrics: dict[str, Any] = {}
    if len(held_idx):
        metrics["held_out"] = evaluate_heads(head, parent_head, cache, held_idx, records, slots=slots,
                                             parent_labels=labels, strides=strides, on_progress=on_progress)  # fmt: skip
    for ev in eval_datasets:
        ev_v = ev if isinstance(ev, DatasetVersion) else DatasetVersion.open(ev)
        ev_records, _ = _records(ev_v, slots)
        ev_cache = build_cache(out_dir / f"cache-eval-{ev_v.name}-{ev_v.tag}", [r.file for r in ev_records],
                               extractor, on_progress=on_progress, what=f"cache {ev_v.name}")  # fmt: skip
        metrics[f"{ev_v.name}/{ev_v.tag}"] = evaluate_heads(
            head, parent_head, ev_cache, np.arange(len(ev_records)), ev_records, slots=slots, parent_labels=labels,
            strides=strides, on_progress=on_progress, what=f"eval {ev_v.name}",
        )  # fmt: skip

    # 5. the model directory
    new_labels = list(labels)
    for name, slot in slots.items():
        new_labels[slot] = name
    name = model_name or f"{manifest.name}-{'-'.join(sorted(slots))}"
    onnx_bytes = export_onnx(extractor.model, head.named_initializers())
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    data = {"dataset": f"{version.name}/{version.tag}", "dataset_path": _shown(version.path),
            "dataset_made_by": version.manifest.get("created_by"), "images": len(records),
            "train_images": int(len(train_idx)), "train_images_with_new_class": int(len(pos)),
            "held_out_images": int(len(held_idx)), "annotations_per_category": ann_counts,
            "new_class_boxes_train": int(sum(len(records[i].boxes) for i in train_idx))}  # fmt: skip
    train_info = {**config, "parent": f"{manifest.name}@{manifest.sha256[:12]}", "parent_sha256": manifest.sha256,
                  "parent_dir": _shown(parent_dir), "slots": {n: {"class_id": s, "was": labels[s]} for n, s in slots.items()},
                  "cache_s": round(cache_s, 2), "train_s": round(train_s, 2),
                  "s_per_step": round(train_s / max(steps_run, 1), 4), "threads": torch.get_num_threads(),
                  "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None}  # fmt: skip
    _write_model_dir(model_dir, name=name, onnx_bytes=onnx_bytes, digest=digest, parent_dir=parent_dir,
                     labels=new_labels, train=train_info, data=data, metrics=metrics)  # fmt: skip
    return {
        "finished": True,
        "out": str(out_dir),
        "model_dir": str(model_dir),
        "model_version": f"{name}@{digest[:12]}",
        "sha256": digest,
        "parent": train_info["parent"],
        "dataset": data["dataset"],
        "slots": train_info["slots"],
        "steps": steps,
        "batch": batch,
        "cache_s": round(cache_s, 2),
        "train_s": round(train_s, 2),
        "s_per_step": train_info["s_per_step"],
        "total_s": round(time.perf_counter() - t_start, 2),
        "loss_first": history[0]["loss"] if history else None,
        "loss_last": float(np.mean([r["loss"] for r in history[-10:]])) if history else None,
        "history": history,
        "data": data,
        "metrics": metrics,
        "registry_metrics": registry_metrics(metrics),
    }


def registry_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Flat figures for ``ModelRegistry.register``: ``detector.<set>.<class>.ap50``, ``...agreement``."""
    out: dict[str, float] = {}
    for set_name, m in metrics.items():
        key = set_name.replace("/", ".")
        for cls, fig in m.get("new_classes", {}).items():
            if fig["after"].get("ap50") is not None:
                out[f"detector.{key}.{cls}.ap50"] = float(fig["after"]["ap50"])
                out[f"detector.{key}.{cls}.recall_at_035"] = float(fig["after"]["recall_at_035"])
        for cls, fig in m.get("agreement", {}).items():
            if fig.get("agreement") is not None:
                out[f"detector.{key}.{cls}.parent_agreement"] = float(fig["agreement"])
    return out


def _write_model_dir(
    model_dir: Path, *, name: str, onnx_bytes: bytes, digest: str, parent_dir: Path, labels: list[str],
    train: dict[str, Any], data: dict[str, Any], metrics: dict[str, Any],
) -> None:  # fmt: skip
    """``<name>.onnx``, model.yaml (the parent's with name, file, sha256, labels, source replaced),
    train.json (lineage, settings, losses) and MODEL_CARD.md, written into a fresh directory."""
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / f"{name}.onnx").write_bytes(onnx_bytes)
    raw = yaml.safe_load((parent_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    raw.update(
        name=name, file=f"{name}.onnx", sha256=digest, labels=labels,
        source=f"fine-tuned head of {train['parent']} on dataset {data['dataset']} (gridwatch train detector)",
    )  # fmt: skip
    renamed = ", ".join(f"{n} in slot {s['class_id']} (was {s['was']})" for n, s in train["slots"].items())
    header = (
        f"# {name}: {train['parent']} with its head fine-tuned by gridwatch/train/detector.py.\n"
        f"# parent: {train['parent']} ({train['parent_dir']})\n# dataset: {data['dataset']}\n"
        f"# new classes: {renamed}\n# MODEL_CARD.md and train.json say how it was trained and measured.\n"
    )
    (model_dir / MANIFEST_NAME).write_text(
        header + yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    _write_json(model_dir / "train.json", {"train": train, "data": data, "metrics": metrics})
    (model_dir / "MODEL_CARD.md").write_text(
        _card(name, digest, len(onnx_bytes), train, data, metrics), encoding="utf-8"
    )


def _f(v: Any) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def _card(
    name: str, digest: str, size: int, train: dict[str, Any], data: dict[str, Any], metrics: dict[str, Any]
) -> str:
    renamed = ", ".join(
        f"`{n}` (class id {s['class_id']}, was `{s['was']}`)" for n, s in train["slots"].items()
    )
    lines = [
        f"# {name}: NanoDet with a fine-tuned head",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{name}.onnx`, {size:,} bytes, sha256 `{digest}` (also in `model.yaml`) |",
        f"| model_version | `{name}@{digest[:12]}` |",
        f"| parent | `{train['parent']}` (sha256 `{train['parent_sha256']}`): the same graph and weights but the head's |",
        f"| new classes | {renamed}: the slot's name in `model.yaml` `labels` |",
        f"| dataset | `{data['dataset']}` ({data['dataset_path']}), made by {data['dataset_made_by']} |",
        f"| training | head only (3x3 + 1x1 conv per level, 3 levels), {train['steps']} steps x {train['batch']} images, "
        f"AdamW lr {train['lr']}, seed {train['seed']}, replay {train['replay']}; {train['s_per_step']} s/step, "
        f"cache {train['cache_s']} s ({train['threads']} threads) |",
        f"| loss | first step {_f((train['loss_first'] or {}).get('loss'))}, last {_f((train['loss_last'] or {}).get('loss'))} |",
        "",
        'What is trained and how: docs/TRAINING.md, "Detector fine-tuning". Known classes were trained',
        "towards the parent's own scores and boxes (distillation), not towards annotations.",
        "",
        "## Data",
        "",
        "```json",
        json.dumps(data, indent=1, ensure_ascii=False),
        "```",
        "",
        "## Metrics",
        "",
        "New classes: AP50 (COCO 101-point), recall and precision at score 0.35, after training and for",
        "the parent (its slot class before renaming; for `bag` also its backpack + handbag + suitcase merged).",
        "",
        "| set | class | images | boxes | AP50 after | recall@0.35 | precision@0.35 | AP50 parent (slot) | AP50 parent (bag-like) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for set_name, m in metrics.items():
        for cls, fig in m["new_classes"].items():
            a = fig["after"]
            proxy = next((v for k, v in fig.items() if k.startswith("before_") and k != "before_slot"), {})
            lines.append(
                f"| {set_name} | {cls} | {m['images']} | {a['gt']} | {_f(a.get('ap50'))} | {_f(a.get('recall_at_035'))} | "
                f"{_f(a.get('precision_at_035'))} | {_f(fig['before_slot'].get('ap50'))} | {_f(proxy.get('ap50'))} |"
            )
    lines += [
        "",
        "Agreement with the parent (detections >= 0.35): of the parent's, the share the fine-tuned model",
        "also makes (same class, IoU >= 0.5); *child only*: its detections the parent does not make.",
        "",
        "| set | class | parent detections | matched | agreement | child only |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for set_name, m in metrics.items():
        for cls, a in m["agreement"].items():
            lines.append(
                f"| {set_name} | {cls} | {a['parent']} | {a['matched']} | {_f(a['agreement'])} | {a['child_only']} |"
            )
    lines += [
        "",
        "## Limits",
        "",
        "* Head only: the backbone and neck are the parent's, so a new class is only as separable as the",
        "  parent's neck features make it. Full-model training is not done on this CPU machine.",
        "* It was not trained to suppress the parent's false alarms (known classes copy the parent).",
        "* Figures are from the data above only; measure on the centre's own cameras before promotion.",
        "",
    ]
    return "\n".join(lines)
