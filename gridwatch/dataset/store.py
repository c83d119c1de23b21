"""The versioned dataset store: `<root>/<name>/v<N>/`, written once, never overwritten.

    <root>/<name>/v<N>/images/<file_name>         the training images (raw frames, JPEG)
    <root>/<name>/v<N>/annotations.coco.json      COCO detection format (+ gridwatch's `extra` fields)
    <root>/<name>/v<N>/labels.json                the explicit label map (gridwatch/dataset/labels.py)
    <root>/<name>/v<N>/manifest.json              version, parent, when, how, counts, sha256 of every file

A version is built in a hidden temporary directory beside it and renamed into place, so a reader
never sees half a version and an existing version is never touched: if `v<N>` appears meanwhile the
build fails and says so. Images are hard-linked from the parent version when the file system
allows (they are immutable), else copied. docs/DATASETS.md describes the formats.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gridwatch.dataset.errors import DatasetError
from gridwatch.dataset.labels import LabelMap

__all__ = [
    "ANNOTATIONS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "DatasetVersion",
    "Progress",
    "coco_counts",
    "list_datasets",
    "next_version_dir",
    "sha256_file",
    "versions",
    "write_version",
]

ANNOTATIONS = "annotations.coco.json"
LABELS = "labels.json"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "gridwatch-dataset"
_VERSION = re.compile(r"^v([1-9][0-9]*)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")

Progress = Callable[[str, int, int], None]
"""on_progress(what, done, total): long work reports here (the CLI draws a rich progress bar)."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise DatasetError(
            f"dataset name {name!r}: letters, digits, '_', '.', '-' only (1-100 characters, not starting with a dot)"
        )
    return name


@dataclass(frozen=True)
class DatasetVersion:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: Path | str) -> DatasetVersion:
        path = Path(path)
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise DatasetError(f"{path}: not a dataset version ({MANIFEST} missing)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except ValueError as e:
            raise DatasetError(f"{mpath}: not JSON: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise DatasetError(f"{mpath}: format: not a {MANIFEST_FORMAT} manifest")
        return cls(path, manifest)

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def tag(self) -> str:
        return f"v{self.version}"

    @property
    def images_dir(self) -> Path:
        return self.path / "images"

    def coco(self) -> dict[str, Any]:
        return json.loads((self.path / ANNOTATIONS).read_text(encoding="utf-8"))

    def labels(self) -> LabelMap:
        return LabelMap.load(self.path / LABELS)

    def verify(self) -> list[str]:
        """Problems found by re-hashing every file against the manifest (empty: intact)."""
        bad = []
        for item in self.manifest.get("images", []):
            p = self.images_dir / item["file_name"]
            if not p.is_file():
                bad.append(f"{p}: missing")
            elif sha256_file(p) != item["sha256"]:
                bad.append(f"{p}: sha256 differs from the manifest")
        for name, digest in self.manifest.get("files", {}).items():
            p = self.path / name
            if not p.is_file() or sha256_file(p) != digest:
                bad.append(f"{p}: missing or sha256 differs from the manifest")
        return bad


def versions(dataset_dir: Path) -> list[DatasetVersion]:
    """The versions of one dataset, oldest first (only complete ones: they have a manifest)."""
    if not dataset_dir.is_dir():
        return []
    found = []
    for p in dataset_dir.iterdir():
        m = _VERSION.match(p.name)
        if m and p.is_dir() and (p / MANIFEST).is_file():
            found.append((int(m.group(1)), p))
    return [DatasetVersion.open(p) for _, p in sorted(found)]


def list_datasets(root: Path) -> dict[str, list[DatasetVersion]]:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    out = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and not d.name.startswith("."):
            vs = versions(d)
            if vs:
                out[d.name] = vs
    return out


def next_version_dir(dataset_dir: Path) -> Path:
    """`v<N+1>` after the highest existing `v<N>` (complete or not: a number is never reused)."""
    taken = [int(m.group(1)) for p in dataset_dir.glob("v*") if (m := _VERSION.match(p.name))]
    return dataset_dir / f"v{max(taken, default=0) + 1}"


def coco_counts(coco: dict[str, Any], labels: LabelMap) -> dict[str, Any]:
    """Counts of a COCO file with gridwatch's image `extra`: per verdict, class, camera, day, reason."""
    by_img = Counter(a["image_id"] for a in coco["annotations"])
    per_class: Counter[str] = Counter()
    pseudo = 0
    for a in coco["annotations"]:
        per_class[labels.name_of_coco_id(a["category_id"]) or str(a["category_id"])] += 1
        pseudo += bool((a.get("extra") or {}).get("pseudo"))
    ex = [im.get("extra") or {} for im in coco["images"]]
    return {
        "images": len(coco["images"]),
        "annotations": len(coco["annotations"]),
        "pseudo_annotations": pseudo,
        "background_images": sum(1 for im in coco["images"] if by_img[im["id"]] == 0),
        "negatives": sum(len(e.get("negatives") or []) for e in ex),
        "needs_labelling": sum(len(e.get("unlabelled") or []) for e in ex),
        "per_verdict": dict(sorted(Counter(str(e.get("verdict")) for e in ex).items())),
        "per_reason": dict(sorted(Counter(str(e.get("reason")) for e in ex).items())),
        "per_camera": dict(sorted(Counter(str(e.get("camera_id")) for e in ex).items())),
        "per_day": dict(sorted(Counter(str(e.get("day")) for e in ex).items())),
        "per_class": dict(sorted(per_class.items())),
    }


def _place(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_version(
    dataset_dir: Path,
    *,
    coco: dict[str, Any],
    labels: LabelMap,
    images: dict[str, Path],
    parent: DatasetVersion | None,
    created_by: str,
    details: dict[str, Any],
    created_at: datetime | None = None,
    on_progress: Progress | None = None,
) -> DatasetVersion:
    """Write a new version `v<N+1>` of `dataset_dir` (atomic; never over an existing one).

    `images` maps every COCO `file_name` to the file to store; `details` (sampler parameters,
    import summary...) goes into the manifest beside the counts and hashes."""
    check_name(dataset_dir.name)
    names = [im["file_name"] for im in coco["images"]]
    if sorted(names) != sorted(images):
        missing = sorted(set(names) - set(images))[:5]
        extra = sorted(set(images) - set(names))[:5]
        raise DatasetError(
            f"{dataset_dir}: images and annotations disagree (missing {missing}, extra {extra})"
        )
    dataset_dir.mkdir(parents=True, exist_ok=True)
    final = next_version_dir(dataset_dir)
    n = int(final.name[1:])
    when = (created_at or datetime.now(UTC)).astimezone(UTC)
    coco = {
        **coco,
        "info": {
            "description": f"gridwatch dataset {dataset_dir.name} v{n}",
            "version": f"v{n}",
            "date_created": when.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "contributor": "gridwatch",
        },
    }
    tmp = dataset_dir / f".v{n}.tmp{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    try:
        rows = []
        for k, im in enumerate(coco["images"]):
            dst = tmp / "images" / im["file_name"]
            _place(images[im["file_name"]], dst)
            ex = im.get("extra") or {}
            rows.append(
                {
                    "file_name": im["file_name"],
                    "sha256": sha256_file(dst),
                    "bytes": dst.stat().st_size,
                    "candidate_id": ex.get("candidate_id"),
                    "camera_id": ex.get("camera_id"),
                    "day": ex.get("day"),
                    "verdict": ex.get("verdict"),
                    "reason": ex.get("reason"),
                }
            )
            if on_progress is not None:
                on_progress("images", k + 1, len(coco["images"]))
        (tmp / ANNOTATIONS).write_text(json.dumps(coco, ensure_ascii=False, indent=1), encoding="utf-8")
        (tmp / LABELS).write_text(
            json.dumps(labels.to_json(), ensure_ascii=False, indent=1), encoding="utf-8"
        )
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": 1,
            "name": dataset_dir.name,
            "version": n,
            "parent": parent.tag if parent is not None else None,
            "created_at": coco["info"]["date_created"],
            "created_by": created_by,
            **details,
            "counts": coco_counts(coco, labels),
            "files": {ANNOTATIONS: sha256_file(tmp / ANNOTATIONS), LABELS: sha256_file(tmp / LABELS)},
            "images": rows,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        if final.exists():
            raise DatasetError(f"{final}: appeared while this version was being built; run again")
        try:
            os.rename(tmp, final)  # fails if `final` was created meanwhile and is not empty
        except OSError as e:
            raise DatasetError(f"{final}: could not be created ({e}); run again") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return DatasetVersion.open(final)


def renumber(coco: dict[str, Any]) -> dict[str, Any]:
    """Annotation ids 1..N in image order, then in their order within an image (deterministic)."""
    order = {im["id"]: k for k, im in enumerate(coco["images"])}
    anns = sorted(coco["annotations"], key=lambda a: order[a["image_id"]])  # stable
    return {**coco, "annotations": [{**a, "id": i + 1} for i, a in enumerate(anns)]}


def iter_progress(items: Iterable[Any], what: str, total: int, on_progress: Progress | None) -> Iterable[Any]:
    for k, it in enumerate(items):
        yield it
        if on_progress is not None:
            on_progress(what, k + 1, total)
