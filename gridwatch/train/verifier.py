"""Train the false-alarm verifier (issue 8 part 4a): logistic regression on the detector's own features.

docs/TRAINING.md is the user's page. In short:

* **Features** come from :class:`gridwatch.detectors.verifier.FeatureTapDetector`: for each detection,
  the head feature at its cell on its level (128), their mean over the box (128), the cell's 80 class
  scores, level, score and box size (343 values, ``FEATURE_LAYOUT``).
* **Labels** from a dataset version (docs/DATASETS.md): a detection matching an annotation of its
  class (IoU >= 0.5) is real (1); one matching an image's ``extra.negatives`` (the objects of false
  alarms operators dismissed) is a false alarm (0); the rest are not used. :func:`footage_dataset`
  writes such a version from real footage with labels from a background model (see its docstring).
* **Model**: L2-regularised logistic regression, class-balanced, on standardised features, fitted by
  Newton's method in numpy (a fraction of a second); the standardisation is folded into the weights,
  so the ONNX model is ``Sigmoid(x @ W + b)``. The threshold keeps ``keep_true`` (99 %) of the real
  detections at or above the cameras' score threshold, in 5-fold out-of-fold scores of the training set.
* **Out**: a model directory (``model.onnx``, ``weights.json``, ``verifier.yaml``, ``labels.json``,
  ``MODEL_CARD.md``) for ``ModelRegistry.register(dir, kind="verifier")``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import supervision as sv

from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.labels import LabelMap
from gridwatch.dataset.store import DatasetVersion, write_version
from gridwatch.detectors.nanodet import DEFAULT_MODEL_DIR, NanoDetConfig
from gridwatch.detectors.verifier import (
    FEATURE_LAYOUT,
    MANIFEST_NAME,
    FeatureTapDetector,
    Verifier,
    logistic_onnx,
)

__all__ = [
    "FeatureSet",
    "LogisticModel",
    "choose_threshold",
    "dataset_features",
    "evaluate",
    "fit_logistic",
    "footage_dataset",
    "label_footage",
    "roc_auc",
    "train_verifier",
    "write_model_dir",
]

Progress = Callable[[str, int, int], None]
MATCH_IOU = 0.5
#: detections are collected down to this score for training (more look-alikes to learn from than
#: at the cameras' 0.35); figures are also given at the cameras' threshold
TRAIN_SCORE_THRESHOLD = 0.2
CAMERA_SCORE_THRESHOLD = 0.35
VEHICLES = ("car", "truck", "bus")
#: L2 strength on standardised features (1, 10, 100 tried: 100 keeps the most real detections on the
#: held-out footage at the same rejections; docs/TRAINING.md)
DEFAULT_L2 = 100.0


# --- feature sets --------------------------------------------------------------------------------
@dataclass
class FeatureSet:
    X: np.ndarray  # [N, D] float32
    y: np.ndarray  # [N] 1 = real object, 0 = false alarm
    score: np.ndarray  # [N] detector score
    class_name: np.ndarray  # [N] str
    group: np.ndarray  # [N] str: the image (or clip/frame) the detection came from
    counts: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, mask: np.ndarray) -> FeatureSet:
        return FeatureSet(
            self.X[mask], self.y[mask], self.score[mask], self.class_name[mask], self.group[mask]
        )

    @classmethod
    def concat(cls, sets: Iterable[FeatureSet]) -> FeatureSet:
        sets = list(sets)
        return cls(
            np.concatenate([s.X for s in sets]).astype(np.float32),
            np.concatenate([s.y for s in sets]).astype(np.int64),
            np.concatenate([s.score for s in sets]).astype(np.float32),
            np.concatenate([s.class_name for s in sets]).astype(str),
            np.concatenate([s.group for s in sets]).astype(str),
        )


def _xyxy(bbox: list[float]) -> list[float]:
    return [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]


def dataset_features(
    version: DatasetVersion, tap: FeatureTapDetector, *, on_progress: Progress | None = None
) -> FeatureSet:
    """Labelled feature rows of a dataset version: every image through the feature tap; a detection
    matching an annotation of its class (IoU >= 0.5) is real, one matching an ``extra.negatives``
    box (IoU >= 0.5, its class, or any class for a background blob with ``category: null``) is a
    false alarm, unless it also matches a real one (then it is left out, as are the unmatched)."""
    coco = version.coco()
    labels = version.labels()
    anns: dict[int, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    rows: list[FeatureSet] = []
    counts = {"images": 0, "detections": 0, "real": 0, "false_alarm": 0, "conflict": 0, "unmatched": 0}
    for k, im in enumerate(coco["images"]):
        path = version.images_dir / im["file_name"]
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise DatasetError(f"{path}: cannot read the image")
        counts["images"] += 1
        td = tap.detect(frame)
        d = td.detections
        counts["detections"] += len(d)
        if len(d):
            names = d.data["class_name"]
            pos = np.zeros(len(d), bool)
            neg = np.zeros(len(d), bool)
            img_anns = anns.get(im["id"], [])
            if img_anns:
                boxes = np.array([_xyxy(a["bbox"]) for a in img_anns], np.float64)
                cls = np.array([labels.name_of_coco_id(a["category_id"]) for a in img_anns], object)
                iou = sv.box_iou_batch(d.xyxy.astype(np.float64), boxes)
                pos = ((iou >= MATCH_IOU) & (names[:, None] == cls[None, :])).any(axis=1)
            negs = (im.get("extra") or {}).get("negatives") or []
            if negs:
                boxes = np.array([_xyxy(n["bbox"]) for n in negs], np.float64)
                iou = sv.box_iou_batch(d.xyxy.astype(np.float64), boxes)
                same = np.array(
                    [[n.get("category") in (None, name) for n in negs] for name in names], bool
                ).reshape(len(d), len(negs))
                neg = ((iou >= MATCH_IOU) & same).any(axis=1)
            counts["conflict"] += int((pos & neg).sum())
            counts["unmatched"] += int((~pos & ~neg).sum())
            use = pos ^ neg
            counts["real"] += int((use & pos).sum())
            counts["false_alarm"] += int((use & neg).sum())
            if use.any():
                rows.append(
                    FeatureSet(
                        td.features[use],
                        pos[use].astype(np.int64),
                        d.confidence[use],
                        names[use].astype(str),
                        np.full(int(use.sum()), im["file_name"]),
                    )
                )
        if on_progress is not None:
            on_progress("features", k + 1, len(coco["images"]))
    fs = FeatureSet.concat(rows) if rows else _empty(tap)
    fs.counts = counts
    return fs


def _empty(tap: FeatureTapDetector) -> FeatureSet:
    d = 2 * 128 + tap.num_classes + 7
    return FeatureSet(np.zeros((0, d), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                      np.zeros(0, str), np.zeros(0, str))  # fmt: skip


# --- labelled footage: a dataset version from a static camera's video -------------------------------
def _scan(
    video: Path, start_s: float, end_s: float, every_s: float, window_s: float
) -> tuple[list[tuple[int, np.ndarray]], float, Callable[[int], np.ndarray]]:
    """One pass over the video: the frames to label (every ``every_s`` in [start_s, end_s)) and
    ``bg(frame index)``, the empty scene: the per-pixel median of the frames sampled once a second
    within +-window_s/2 of the middle of the chunk (window_s / 3 long) the frame is in. Walkers do
    not stay that long, so the median does not see them."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise DatasetError(f"{video}: cannot open the video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    step = max(1, round(every_s * fps))
    bg_step = max(1, round(fps))
    chunk = window_s / 3
    lo, hi = start_s - window_s, end_s + window_s  # samples any chunk of [start_s, end_s) can use
    frames: list[tuple[int, np.ndarray]] = []
    sampled: list[tuple[float, np.ndarray]] = []
    i = 0
    while True:
        t = i / fps
        want = start_s <= t < end_s and i % step == 0
        sample = lo <= t <= hi and i % bg_step == 0
        if t > hi:
            break
        if want or sample:
            ok, f = cap.read()
        else:
            ok, f = cap.grab(), None
        if not ok:
            break
        if want:
            frames.append((i, f))
        if sample:
            sampled.append((t, cv2.GaussianBlur(f, (5, 5), 0)))
        i += 1
    cap.release()
    cache: dict[int, np.ndarray] = {}

    def bg(index: int) -> np.ndarray:
        c = int((index / fps) // chunk)
        if c not in cache:
            mid = (c + 0.5) * chunk
            near = [f for t, f in sampled if abs(t - mid) <= window_s / 2]
            cache[c] = np.median(np.stack(near), axis=0).astype(np.uint8)
        return cache[c]

    return frames, fps, bg


def label_footage(
    frame: np.ndarray, background: np.ndarray, xyxy: np.ndarray, class_names: np.ndarray,
    *, diff: int = 30, static_max: float = 0.05, moving_min: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(real, false_alarm) masks for detections on a static camera's frame, from the share of each
    box's pixels that differ from the empty scene (``background``) by more than ``diff`` grey levels:

    * real: a ``person`` box at least ``moving_min`` of which is foreground (a walker: the scene
      has no one standing for the background window), and a car / truck / bus box that is static
      (share < ``static_max``: the parked vehicles of vtest, the only vehicles in it);
    * false alarm: any other class on a static box (share < ``static_max``): a person, animal,
      ball, kite... on the empty scene is a look-alike (cones, sign posts, bollards, stones, litter);
    * neither (left out): partly moving boxes, and moving boxes of other classes (a bag carried,
      "skis" on a walker's legs), which this rule cannot judge."""
    fg = cv2.absdiff(cv2.GaussianBlur(frame, (5, 5), 0), background).max(axis=2) > diff
    h, w = fg.shape
    share = np.zeros(len(xyxy))
    for i, b in enumerate(xyxy):
        x0, y0 = int(max(0, b[0])), int(max(0, b[1]))
        x1, y1 = int(min(w, math.ceil(b[2]))), int(min(h, math.ceil(b[3])))
        share[i] = fg[y0:y1, x0:x1].mean() if x1 > x0 and y1 > y0 else 0.0
    vehicle = np.isin(class_names, VEHICLES)
    person = class_names == "person"
    static = share < static_max
    real = (person & (share >= moving_min)) | (vehicle & static)
    false_alarm = static & ~vehicle
    return real, false_alarm


def footage_dataset(
    video: Path,
    datasets_root: Path,
    name: str,
    *,
    start_s: float = 0.0,
    end_s: float = float("inf"),
    every_s: float = 1.0,
    window_s: float = 30.0,
    tap: FeatureTapDetector | None = None,
    on_progress: Progress | None = None,
) -> DatasetVersion:
    """A dataset version (docs/DATASETS.md format) of frames of a static camera's ``video`` between
    ``start_s`` and ``end_s``, every ``every_s``, labelled by :func:`label_footage`: real detections
    become annotations (``source: footage``), false alarms the image's ``extra.negatives``; the
    detector's boxes are found at score 0.2. For evaluating and testing the verifier on real footage."""
    own = tap is None
    tap = tap or FeatureTapDetector(score_threshold=TRAIN_SCORE_THRESHOLD)
    try:
        frames, fps, bg = _scan(video, start_s, end_s, every_s, window_s)
        if not frames:
            raise DatasetError(f"{video}: no frames between {start_s} s and {end_s} s")
        labels = LabelMap.from_names(tap.class_names, source=str(tap.base.model_path.parent / "model.yaml"))
        images, anns, files = [], [], {}
        tmp = datasets_root / f".{name}.frames"
        tmp.mkdir(parents=True, exist_ok=True)
        for k, (index, frame) in enumerate(frames):
            d = tap.detect(frame).detections
            names = d.data["class_name"].astype(str) if len(d) else np.zeros(0, str)
            real, fa = label_footage(frame, bg(index), d.xyxy, names)
            fname = f"{video.stem}-{index:06d}.jpg"
            cv2.imwrite(str(tmp / fname), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            files[fname] = tmp / fname
            h, w = frame.shape[:2]
            img_id = k + 1
            negatives = []
            for i in range(len(d)):
                x0, y0, x1, y1 = (round(float(v), 2) for v in d.xyxy[i])
                bbox = [x0, y0, round(x1 - x0, 2), round(y1 - y0, 2)]
                if real[i]:
                    anns.append({"image_id": img_id, "category_id": labels.coco_id(names[i]), "bbox": bbox,
                                 "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0,
                                 "extra": {"pseudo": True, "source": "footage", "score": float(d.confidence[i])}})  # fmt: skip
                elif fa[i]:
                    negatives.append({"bbox": bbox, "category": str(names[i]), "score": float(d.confidence[i]),
                                      "tracker_id": None, "why": "static look-alike on the empty scene (footage rule)"})  # fmt: skip
            ts = int(index / fps * 1000)
            images.append({
                "id": img_id, "file_name": fname, "width": w, "height": h,
                "extra": {"candidate_id": None, "camera_id": video.stem, "frame_ts_ms": ts,
                          "day": datetime.fromtimestamp(ts / 1000, tz=UTC).strftime("%Y-%m-%d"),
                          "verdict": "false_alarm" if negatives else "confirmed", "reason": "footage",
                          "negatives": negatives, "unlabelled": [], "labels_from": "footage rule"},
            })  # fmt: skip
            if on_progress is not None:
                on_progress("frames", k + 1, len(frames))
        anns = [{**a, "id": i + 1} for i, a in enumerate(anns)]
        coco = {"images": images, "annotations": anns, "categories": labels.coco_categories()}
        details = {"footage": {"video": str(video), "start_s": start_s, "end_s": min(end_s, 1e9),
                               "every_s": every_s, "window_s": window_s, "rule": "gridwatch.train.verifier.label_footage",
                               "detector": tap.model_version, "score_threshold": tap.config.score_threshold}}  # fmt: skip
        return write_version(datasets_root / name, coco=coco, labels=labels, images=files, parent=None,
                             created_by="footage", details=details)  # fmt: skip
    finally:
        if own:
            tap.close()
        for p in (datasets_root / f".{name}.frames").glob("*.jpg"):
            p.unlink()
        if (datasets_root / f".{name}.frames").is_dir():
            (datasets_root / f".{name}.frames").rmdir()


# --- the model -------------------------------------------------------------------------------------
@dataclass
class LogisticModel:
    w: np.ndarray  # [D] on raw features (standardisation folded in)
    b: float
    iterations: int
    l2: float

    def logit(self, X: np.ndarray) -> np.ndarray:
        return X.astype(np.float64) @ self.w + self.b

    def predict(self, X: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(X)))


def fit_logistic(
    X: np.ndarray, y: np.ndarray, *, l2: float = DEFAULT_L2, max_iter: int = 50
) -> LogisticModel:
    """L2-regularised logistic regression, classes weighted to equal total weight, on standardised
    features, by Newton's method (deterministic: no seed needed; converges in ~10 steps)."""
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    if len(np.unique(y)) < 2:
        raise DatasetError(
            f"need both real detections and false alarms to train (got {int(y.sum())} real of {len(y)})"
        )
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd < 1e-6] = 1.0
    Z = np.hstack([(X - mu) / sd, np.ones((len(X), 1))])
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    sw = np.where(y > 0, len(y) / (2 * n_pos), len(y) / (2 * n_neg))
    reg = np.full(Z.shape[1], l2)
    reg[-1] = 0.0  # the bias is not shrunk
    beta = np.zeros(Z.shape[1])
    iterations = 0
    while iterations < max_iter:
        iterations += 1
        p = 1.0 / (1.0 + np.exp(-np.clip(Z @ beta, -30, 30)))
        g = Z.T @ (sw * (p - y)) + reg * beta
        H = (Z * (sw * p * (1 - p))[:, None]).T @ Z + np.diag(reg)
        step = np.linalg.solve(H, g)
        beta -= step
        if np.abs(step).max() < 1e-6:
            break
    w = beta[:-1] / sd
    b = float(beta[-1] - (mu * w).sum())
    return LogisticModel(w, b, iterations, l2)


def roc_auc(y: np.ndarray, s: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half); None without both classes."""
    y = np.asarray(y).astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return None
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    s_sorted = np.asarray(s)[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s_sorted[j + 1] == s_sorted[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def choose_threshold(y: np.ndarray, s: np.ndarray, keep_true: float = 0.99) -> float:
    """The highest threshold that keeps at least ``keep_true`` of the real detections."""
    real = np.sort(np.asarray(s)[np.asarray(y) > 0])
    if not len(real):
        return 0.5
    k = int(math.floor((1 - keep_true) * len(real)))
    return float(real[k])


def _folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold per row; whole groups (images) stay in one fold, assigned in a seeded random order."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(uniq[rng.permutation(len(uniq))], np.arange(len(uniq)) % k, strict=True))
    return np.array([fold_of[g] for g in groups])


def evaluate(
    y: np.ndarray,
    s: np.ndarray,
    det_score: np.ndarray,
    threshold: float,
    class_name: np.ndarray | None = None,
) -> dict[str, Any]:
    """AUC, and at ``threshold``: false alarms rejected, real detections kept; for all detections
    (``all``, down to 0.2), those at or above the cameras' score threshold (``cam``: what reaches the
    tracker) and the ``person`` ones among those (``cam_person``). ``score_auc`` is the AUC of the
    detector's own score, and ``score_rejects`` the false alarms a higher *score* threshold keeping
    as many real detections would reject: what the verifier adds over raising the threshold."""
    out: dict[str, Any] = {}
    cam = det_score >= CAMERA_SCORE_THRESHOLD
    subsets = [("all", np.ones(len(y), bool)), ("cam", cam)]
    if class_name is not None:
        subsets.append(("cam_person", cam & (class_name == "person")))
    for tag, m in subsets:
        yy, ss, ds = y[m], s[m], det_score[m]
        real, fa = yy > 0, yy == 0
        kept = int((ss[real] >= threshold).sum())
        # the score threshold keeping the same number of real detections
        score_rejects = None
        if real.any() and fa.any():
            cut = np.sort(ds[real])[::-1][max(kept - 1, 0)] if kept else np.inf
            score_rejects = int((ds[fa] < cut).sum())
        out[tag] = {
            "real": int(real.sum()),
            "false_alarms": int(fa.sum()),
            "auc": roc_auc(yy, ss),
            "false_alarms_rejected": int((ss[fa] < threshold).sum()),
            "real_kept": kept,
            "real_kept_share": float(kept / real.sum()) if real.any() else None,
            "score_auc": roc_auc(yy, ds),
            "score_rejects": score_rejects,
        }
    return out


# --- the model directory ---------------------------------------------------------------------------
def write_model_dir(
    out_dir: Path,
    model: LogisticModel,
    *,
    tap: FeatureTapDetector,
    threshold: float,
    metrics: dict[str, Any],
    data: dict[str, Any],
    seed: int,
    keep_true: float = 0.99,
) -> Path:
    """model.onnx + weights.json + verifier.yaml + labels.json + MODEL_CARD.md in ``out_dir`` (new or empty)."""
    import yaml

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{out_dir}: exists and is not empty (a model directory is never overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "gridwatch.kind": "verifier",
        "gridwatch.feature_layout": FEATURE_LAYOUT,
        "gridwatch.detector_sha256": tap.detector_sha256,
        "gridwatch.threshold": f"{threshold:.6f}",
    }
    onnx_bytes = logistic_onnx(model.w.astype(np.float32), float(model.b), meta)
    (out_dir / "model.onnx").write_bytes(onnx_bytes)
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    (out_dir / "weights.json").write_text(
        json.dumps({"w": [float(v) for v in model.w.astype(np.float32)], "b": float(np.float32(model.b))}),
        encoding="utf-8",
    )
    dim = len(model.w)
    manifest = {
        "name": "verifier",
        "file": "model.onnx",
        "sha256": digest,
        "kind": "logistic-regression",
        "detector": tap.model_version,
        "detector_sha256": tap.detector_sha256,
        "feature_layout": FEATURE_LAYOUT,
        "feature_dim": dim,
        "feature_taps": list(tap.taps),
        "threshold": round(float(threshold), 6),
        "keep_true": keep_true,
        "output": "score: probability that the detection is a real object (1) rather than a false alarm (0)",
        "seed": seed,
        "l2": model.l2,
    }
    (out_dir / MANIFEST_NAME).write_text(
        yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )
    (out_dir / "labels.json").write_text(
        json.dumps(
            {"format": "gridwatch-labels", "version": 1, "kind": "verifier",
             "labels": [{"class_id": 0, "name": "false_alarm"}, {"class_id": 1, "name": "real"}],
             "applies_to": LabelMap.from_names(tap.class_names).to_json()["labels"]},
            ensure_ascii=False, indent=1,
        ),
        encoding="utf-8",
    )  # fmt: skip
    (out_dir / "MODEL_CARD.md").write_text(_card(manifest, metrics, data), encoding="utf-8")
    return out_dir


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _card(manifest: dict[str, Any], metrics: dict[str, Any], data: dict[str, Any]) -> str:
    lines = [
        "# False-alarm verifier",
        "",
        "Scores each detection of the parent detector as a real object (1) or a false alarm (0) from the",
        "detector's own head features (docs/TRAINING.md). Logistic regression exported to ONNX",
        "(MatMul + Add + Sigmoid, opset 13): input `features` [N, "
        f"{manifest['feature_dim']}] float32, output `score` [N, 1].",
        "",
        "| | |",
        "|---|---|",
        f"| model.onnx sha256 | `{manifest['sha256']}` |",
        f"| parent detector | `{manifest['detector']}` (sha256 `{manifest['detector_sha256']}`) |",
        f"| feature layout | `{manifest['feature_layout']}`, taps {', '.join(manifest['feature_taps'])} |",
        f"| threshold | {manifest['threshold']} (keeps {manifest['keep_true']:.0%} of the real detections scoring >= 0.35, 5-fold out-of-fold on the training set) |",
        f"| seed, L2 | {manifest['seed']}, {manifest['l2']} |",
        "",
        "## Data",
        "",
        "```json",
        json.dumps(data, indent=1, ensure_ascii=False, default=str),
        "```",
        "",
        "## Metrics",
        "",
        "`cam`: detections at or above the cameras' score threshold (0.35), `cam_person`: the person ones",
        "among them, `all`: down to 0.2. *score AUC*: the detector's own score as the verifier; *rejected by",
        "score alone*: false alarms a higher score threshold keeping as many real detections rejects.",
        "",
        "| set | detections | real | false alarms | AUC | false alarms rejected | real kept | score AUC | rejected by score alone |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for set_name, figures in metrics.items():
        if not isinstance(figures, dict) or "all" not in figures:
            continue
        for tag in ("cam", "cam_person", "all"):
            f = figures.get(tag)
            if f is None:
                continue
            lines.append(
                f"| {set_name} ({tag}) | {f['real'] + f['false_alarms']} | {f['real']} | {f['false_alarms']} | "
                f"{_fmt(f['auc'])} | {f['false_alarms_rejected']} of {f['false_alarms']} | "
                f"{f['real_kept']} of {f['real']} ({_fmt(f['real_kept_share'])}) | {_fmt(f['score_auc'])} | "
                f"{_fmt(f['score_rejects'])} |"
            )
    lines += [
        "",
        "## Limits",
        "",
        "* Valid only with the parent detector above (its features); `Verifier` refuses another.",
        "* A linear model on one frame's features: it does not see motion or time.",
        '* Not yet wired into the camera pipeline (docs/TRAINING.md, "Not yet").',
        "",
    ]
    return "\n".join(lines)


# --- the whole run ---------------------------------------------------------------------------------
def train_verifier(
    dataset_version_dir: Path | str,
    out_dir: Path | str,
    *,
    seed: int = 0,
    detector_model_dir: Path | str | None = None,
    eval_dataset_dirs: Iterable[Path | str] = (),
    l2: float = DEFAULT_L2,
    keep_true: float = 0.99,
    on_progress: Progress | None = None,
) -> dict[str, Any]:
    """Train a verifier on a dataset version and write its model directory; the metrics returned
    (and written to the card): 5-fold out-of-fold figures on the training set (folds by image) and
    figures on each ``eval_dataset_dirs`` version (held out: other clips / time ranges)."""
    version = DatasetVersion.open(dataset_version_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{out_dir}: exists and is not empty (a model directory is never overwritten)")
    cfg = NanoDetConfig(
        model_dir=Path(detector_model_dir or DEFAULT_MODEL_DIR), score_threshold=TRAIN_SCORE_THRESHOLD
    )
    tap = FeatureTapDetector(cfg)
    try:
        t0 = time.perf_counter()
        train = dataset_features(version, tap, on_progress=on_progress)
        t_feat = time.perf_counter() - t0
        if len(train) == 0:
            raise DatasetError(
                f"{version.path}: no detection matches an annotation or a negative: nothing to train on"
            )
        # out-of-fold scores for the threshold and an honest training figure
        folds = _folds(train.group, 5, seed)
        oof = np.zeros(len(train))
        for k in range(5):
            m = folds == k
            if m.all() or not m.any() or len(np.unique(train.y[~m])) < 2:
                oof[m] = 0.5
                continue
            oof[m] = fit_logistic(train.X[~m], train.y[~m], l2=l2).predict(train.X[m])
            if on_progress is not None:
                on_progress("folds", k + 1, 5)
        # chosen on what the cameras will ask about: detections at or above their score threshold
        cam = train.score >= CAMERA_SCORE_THRESHOLD
        if not (train.y[cam] > 0).any():
            cam = np.ones(len(train), bool)
        threshold = choose_threshold(train.y[cam], oof[cam], keep_true)
        t1 = time.perf_counter()
        model = fit_logistic(train.X, train.y, l2=l2)
        t_fit = time.perf_counter() - t1
        metrics: dict[str, Any] = {
            "train_oof": evaluate(train.y, oof, train.score, threshold, train.class_name)
        }
        held: dict[str, Any] = {}
        for d in eval_dataset_dirs:
            ev = DatasetVersion.open(d)
            fs = dataset_features(ev, tap, on_progress=on_progress)
            key = f"{ev.name}/{ev.tag}"
            metrics[key] = evaluate(fs.y, model.predict(fs.X), fs.score, threshold, fs.class_name)
            held[key] = fs.counts
        data = {
            "dataset": f"{version.name}/{version.tag}",
            "dataset_path": str(version.path),
            "dataset_made_by": version.manifest.get("created_by"),
            "dataset_source": version.manifest.get("footage") or version.manifest.get("sampler"),
            "counts": train.counts,
            "held_out": held,
            "per_class": {
                c: int((train.class_name == c).sum()) for c in sorted(set(train.class_name.tolist()))
            },
        }
        out = write_model_dir(
            out_dir,
            model,
            tap=tap,
            threshold=threshold,
            metrics=metrics,
            data=data,
            seed=seed,
            keep_true=keep_true,
        )
        verifier = Verifier(out, detector_sha256=tap.detector_sha256)
        x = train.X[:1]
        t2 = time.perf_counter()
        for _ in range(200):
            verifier.score(x)
        us_onnx = (time.perf_counter() - t2) / 200 * 1e6
        t2 = time.perf_counter()
        for _ in range(200):
            verifier.score_numpy(x)
        us_np = (time.perf_counter() - t2) / 200 * 1e6
        return {
            "out": str(out),
            "dataset": data["dataset"],
            "detector": tap.model_version,
            "sha256": verifier.manifest["sha256"],
            "threshold": threshold,
            "examples": len(train),
            "real": int(train.y.sum()),
            "false_alarms": int((train.y == 0).sum()),
            "feature_s": round(t_feat, 2),
            "fit_s": round(t_fit, 3),
            "newton_iterations": model.iterations,
            "score_us_onnx": round(us_onnx, 1),
            "score_us_numpy": round(us_np, 1),
            "metrics": metrics,
            "registry_metrics": registry_metrics(metrics),
        }
    finally:
        tap.close()


def registry_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Flat figures for ``ModelRegistry.register(metrics=...)``: ``verifier.<set>.<tag>.auc``, ..."""
    out: dict[str, float] = {}
    for set_name, figures in metrics.items():
        for tag, f in figures.items():
            for k in ("auc", "real_kept_share"):
                if f.get(k) is not None:
                    out[f"verifier.{set_name.replace('/', '.')}.{tag}.{k}"] = float(f[k])
            if f.get("false_alarms"):
                out[f"verifier.{set_name.replace('/', '.')}.{tag}.false_alarms_rejected_share"] = (
                    f["false_alarms_rejected"] / f["false_alarms"]
                )
    return out
