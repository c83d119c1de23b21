"""`gridwatch dataset ...`: the commands as plain functions (gridwatch/cli.py wires them to typer).

Each draws progress and tables with rich on stderr and prints one JSON object as its last stdout
line (the summary a script reads); each raises `DatasetError` (message: file and problem) on bad
input, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gridwatch.dataset.errors import DatasetError

__all__ = [
    "DatasetError",
    "dataset_composite",
    "dataset_export",
    "dataset_import",
    "dataset_list",
    "dataset_sample",
]


@contextmanager
def _progress(console: Console) -> Iterator[Callable[[str, int, int], None]]:
    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:

        def report(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done, total=total)

        yield report


def _emit(summary: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(summary, ensure_ascii=False, sort_keys=False), flush=True)
    return summary


def dataset_sample(
    hard_examples_dir: Path,
    datasets_root: Path,
    name: str,
    *,
    seed: int = 0,
    per_camera_cap: int | None = 200,
    per_day_cap: int | None = 500,
    random_share: float = 0.05,
    positive_share: float = 0.5,
    threshold: float = 0.35,
    near_margin: float = 0.1,
    labels: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """`dataset sample --from HARD_EXAMPLES_DIR --to DATASETS_ROOT --name NAME`: a new version."""
    from pydantic import ValidationError

    from gridwatch.dataset.labels import LabelMap
    from gridwatch.dataset.sampler import SamplerParams, sample

    console = console or Console(stderr=True)
    try:
        params = SamplerParams(
            seed=seed,
            per_camera_cap=per_camera_cap,
            per_day_cap=per_day_cap,
            random_share=random_share,
            positive_share=positive_share,
            threshold=threshold,
            near_margin=near_margin,
        )
    except ValidationError as e:
        raise DatasetError(
            "; ".join(
                f"--{'-'.join(str(x) for x in err['loc']).replace('_', '-')}: {err['msg']}"
                for err in e.errors()
            )
        ) from None
    label_map = LabelMap.load(labels) if labels is not None else None
    with _progress(console) as report:
        v, summary = sample(
            hard_examples_dir, datasets_root, name, params, labels=label_map, on_progress=report
        )
    t = Table(title=f"{v.name} {v.tag} (parent {summary['parent'] or '-'})")
    for col in ("", "images"):
        t.add_column(col)
    for k, n in v.manifest["counts"]["per_reason"].items():
        t.add_row(f"reason {k}", str(n))
    for k, n in v.manifest["counts"]["per_verdict"].items():
        t.add_row(f"verdict {k}", str(n))
    for k, n in v.manifest["counts"]["per_camera"].items():
        t.add_row(f"camera {k}", str(n))
    console.print(t)
    return _emit(summary)


def dataset_export(
    version_dir: Path, fmt: str, out: Path, *, console: Console | None = None
) -> dict[str, Any]:
    """`dataset export VERSION_DIR --format coco|yolo --out DIR`."""
    from gridwatch.dataset.export import export_version

    console = console or Console(stderr=True)
    with _progress(console) as report:
        summary = export_version(version_dir, fmt, out, on_progress=report)
    console.print(f"{summary['dataset']} {summary['version']} -> {out} ({fmt}): {summary['images']} images")
    return _emit(summary)


def dataset_import(version_dir: Path, coco_json: Path, *, console: Console | None = None) -> dict[str, Any]:
    """`dataset import VERSION_DIR COCO_JSON`: a new version whose parent is VERSION_DIR."""
    from gridwatch.dataset.coco_import import import_coco

    console = console or Console(stderr=True)
    with _progress(console) as report:
        v, summary = import_coco(version_dir, coco_json, on_progress=report)
    console.print(
        f"{v.name} {v.tag} from {summary['parent']}: {summary['images_replaced']} images re-annotated, "
        f"{summary['annotations_before']} -> {summary['annotations_after']} annotations"
    )
    return _emit(summary)


def dataset_list(datasets_root: Path, *, console: Console | None = None) -> dict[str, Any]:
    """`dataset list DATASETS_ROOT`: every dataset and version with its counts."""
    from gridwatch.dataset.store import list_datasets

    console = console or Console(stderr=True)
    found = list_datasets(datasets_root)
    t = Table(title=str(datasets_root))
    for col in ("dataset", "version", "parent", "created", "by", "images", "annotations", "false alarms"):
        t.add_column(col)
    rows = []
    for name, vs in found.items():
        for v in vs:
            c = v.manifest["counts"]
            row = {
                "dataset": name,
                "version": v.tag,
                "parent": v.manifest.get("parent"),
                "created_at": v.manifest.get("created_at"),
                "created_by": v.manifest.get("created_by"),
                "images": c["images"],
                "annotations": c["annotations"],
                "false_alarms": c["per_verdict"].get("false_alarm", 0),
            }
            rows.append(row)
            t.add_row(*(str(x if x is not None else "-") for x in row.values()))
    console.print(t)
    return _emit({"root": str(datasets_root), "datasets": len(found), "versions": rows})


def dataset_composite(
    datasets_root: Path,
    name: str,
    *,
    images: int,
    seed: int = 0,
    layout: str = "native",
    split: str = "test",
    console: Console | None = None,
) -> dict[str, Any]:
    """`dataset composite NAME --images N --seed S --layout native|mirror`: a fully labelled frame
    set composited onto vtest.avi's empty background (gridwatch/dataset/composite.py)."""
    from gridwatch.dataset.composite import composite_dataset

    console = console or Console(stderr=True)
    with _progress(console) as report:
        v = composite_dataset(
            datasets_root, name, images=images, seed=seed, layout=layout, split=split, on_progress=report
        )
    counts = v.manifest["counts"]
    t = Table(title=f"{v.name} {v.tag}: {counts['images']} composite images ({layout}, seed {seed})")
    for col in ("class", "boxes"):
        t.add_column(col)
    for k, n in counts["per_class"].items():
        t.add_row(k, str(n))
    console.print(t)
    return _emit(
        {
            "dataset": v.name,
            "version": v.tag,
            "path": str(v.path),
            "layout": layout,
            "seed": seed,
            "split": split,
            "images": counts["images"],
            "annotations": counts["annotations"],
            "per_class": counts["per_class"],
        }
    )
