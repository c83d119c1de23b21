"""The explicit label map of a dataset: detector class id <-> name <-> COCO category id.

A dataset never relies on a tool's numbering. `labels.json` beside the annotations says, for every
class the detector can output (its `class_id`, the index in the model's `labels` list), its name
and the `category_id` it has in the dataset's COCO file:

    {"format": "gridwatch-labels", "version": 1, "source": "models/nanodet-g-416/model.yaml",
     "labels": [{"class_id": 0, "name": "person", "coco_id": 1}, ...]}

When the names are exactly the 80 COCO 2017 detection classes in the usual order (the NanoDet
model's), the COCO ids are the official ones (1..90 with gaps: person 1, car 3, truck 8, ...), so
a dataset can be scored beside real COCO data; otherwise they are `class_id + 1`. YOLO txt uses
the `class_id` (the detector's own index). Importing a file matches categories by *name*
(CVAT and Label Studio renumber), so a corrected file's ids need not be ours.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gridwatch.dataset.errors import DatasetError

__all__ = ["COCO80_IDS", "COCO80_NAMES", "LABELS_FORMAT", "LabelMap"]

LABELS_FORMAT = "gridwatch-labels"

COCO80_NAMES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
"""The 80 COCO 2017 detection classes, in the usual (and the bundled model's) order."""
COCO80_IDS = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
    *range(84, 91),
)  # fmt: skip


@dataclass(frozen=True)
class LabelMap:
    names: tuple[str, ...]
    """Indexed by the detector's class id."""
    coco_ids: tuple[int, ...]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.names) != len(self.coco_ids):
            raise DatasetError("label map: as many COCO ids as names are needed")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise DatasetError(f"label map: duplicate names {dup}")
        if len(set(self.coco_ids)) != len(self.coco_ids):
            raise DatasetError("label map: duplicate COCO ids")

    # --- building --------------------------------------------------------------------------
    @classmethod
    def from_names(cls, names: Sequence[str], source: str = "") -> LabelMap:
        names = tuple(str(n) for n in names)
        ids = COCO80_IDS if names == COCO80_NAMES else tuple(range(1, len(names) + 1))
        return cls(names, tuple(ids), source)

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> LabelMap:
        path = Path(model_dir) / "model.yaml"
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise DatasetError(f"{path}: cannot read the model manifest: {e}") from None
        labels = raw.get("labels") if isinstance(raw, dict) else None
        if not isinstance(labels, list) or not labels:
            raise DatasetError(f"{path}: labels: a non-empty list of class names is needed")
        return cls.from_names(labels, source=str(path))

    @classmethod
    def default(cls) -> LabelMap:
        """The bundled detector's labels (models/nanodet-g-416)."""
        from gridwatch.detectors.nanodet import DEFAULT_MODEL_DIR

        m = cls.from_model_dir(DEFAULT_MODEL_DIR)
        return cls(m.names, m.coco_ids, f"models/{DEFAULT_MODEL_DIR.name}/model.yaml")

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        """A labels.json, or a model directory (its model.yaml's labels)."""
        path = Path(path)
        if path.is_dir():
            if (path / "labels.json").is_file():
                path = path / "labels.json"
            else:
                return cls.from_model_dir(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"{path}: cannot read the label map: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != LABELS_FORMAT:
            raise DatasetError(f"{path}: format: not a {LABELS_FORMAT} file")
        items = doc.get("labels")
        if not isinstance(items, list):
            raise DatasetError(f"{path}: labels: a list is needed")
        names: list[str] = []
        ids: list[int] = []
        for i, it in enumerate(items):
            if not isinstance(it, dict) or it.get("class_id") != i:
                raise DatasetError(f"{path}: labels[{i}].class_id: must be {i} (in order)")
            if not isinstance(it.get("name"), str) or not isinstance(it.get("coco_id"), int):
                raise DatasetError(f"{path}: labels[{i}]: needs a string name and an integer coco_id")
            names.append(it["name"])
            ids.append(it["coco_id"])
        try:
            return cls(tuple(names), tuple(ids), str(doc.get("source") or ""))
        except DatasetError as e:
            raise DatasetError(f"{path}: {e}") from None

    # --- using -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": LABELS_FORMAT,
            "version": 1,
            "source": self.source,
            "labels": [
                {"class_id": i, "name": n, "coco_id": c}
                for i, (n, c) in enumerate(zip(self.names, self.coco_ids, strict=True))
            ],
        }

    def same_labels(self, other: LabelMap) -> bool:
        return self.names == other.names and self.coco_ids == other.coco_ids

    def coco_categories(self) -> list[dict[str, Any]]:
        return [
            {"id": c, "name": n, "supercategory": "object"}
            for n, c in zip(self.names, self.coco_ids, strict=True)
        ]

    def class_id(self, name: str) -> int | None:
        try:
            return self.names.index(name)
        except ValueError:
            return None

    def coco_id(self, name: str) -> int | None:
        i = self.class_id(name)
        return None if i is None else self.coco_ids[i]

    def name_of_coco_id(self, coco_id: int) -> str | None:
        try:
            return self.names[self.coco_ids.index(coco_id)]
        except ValueError:
            return None
