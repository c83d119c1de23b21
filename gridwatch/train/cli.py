"""`gridwatch train ...`: the commands as plain functions (gridwatch/cli.py wires them to typer).

As gridwatch/dataset/cli.py: rich progress and a table on stderr, one JSON object as the last
stdout line, `DatasetError` (file and problem) on bad input, which the CLI turns into exit code 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gridwatch.dataset.cli import _progress
from gridwatch.dataset.errors import DatasetError

__all__ = [
    "DatasetError",
    "main",
    "parse_new_classes",
    "train_detector_cmd",
    "train_footage_dataset",
    "train_verifier_cmd",
]


def _emit(summary: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(summary, ensure_ascii=False), flush=True)
    return summary


def _f(v: Any) -> str:
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def train_verifier_cmd(
    dataset: Path,
    out: Path,
    *,
    seed: int = 0,
    detector: Path | None = None,
    eval_datasets: list[Path] | None = None,
    register: bool = False,
    registry_dir: Path | None = None,
    parent: str | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train a verifier on a dataset version into OUT; with ``register``, register OUT as a new
    ``verifier`` version (dataset, figures) in the registry at ``registry_dir``."""
    from gridwatch.train.verifier import train_verifier

    console = console or Console(stderr=True)
    with _progress(console) as report:
        result = train_verifier(
            dataset, out, seed=seed, detector_model_dir=detector, eval_dataset_dirs=eval_datasets or (),
            on_progress=report,
        )  # fmt: skip
    table = Table(
        title=f"verifier {result['sha256'][:12]} on {result['dataset']} (threshold {result['threshold']:.4f})"
    )
    for col in ("set", "real", "false alarms", "AUC", "rejected", "real kept", "score AUC", "by score alone"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name, figures in result["metrics"].items():
        for tag in ("cam", "cam_person", "all"):
            f = figures.get(tag)
            if f:
                table.add_row(f"{name} {tag}", str(f["real"]), str(f["false_alarms"]), _f(f["auc"]),
                              str(f["false_alarms_rejected"]), _f(f["real_kept_share"]), _f(f["score_auc"]),
                              _f(f["score_rejects"]))  # fmt: skip
    console.print(table)
    console.print(
        f"{result['examples']} examples ({result['real']} real, {result['false_alarms']} false alarms); features "
        f"{result['feature_s']} s, fit {result['fit_s']} s; scoring one detection: {result['score_us_onnx']} us "
        f"(onnxruntime), {result['score_us_numpy']} us (numpy)"
    )
    if register:
        from gridwatch.model_registry import ModelRegistry

        reg = ModelRegistry(registry_dir or Path("var/models"))
        v = reg.register(
            out, kind="verifier", metrics=result["registry_metrics"], parent=parent, dataset=result["dataset"],
            description=f"verifier on {result['dataset']}, detector {result['detector']}",
        )  # fmt: skip
        result["registered"] = v.as_dict()
        console.print(f"registered: verifier v{v.version} ({v.path})")
    return _emit(result)


def parse_new_classes(values: list[str] | None) -> dict[str, str] | None:
    """``--new-class bag=giraffe`` (name=the parent label whose slot it takes) or ``--new-class bag``
    (the first free slot of gridwatch.train.detector.SLOT_PREFERENCE) -> the mapping for train_detector."""
    if not values:
        return None
    from gridwatch.train.detector import SLOT_PREFERENCE

    out: dict[str, str] = {}
    for v in values:
        name, _, slot = v.partition("=")
        if not name.strip():
            raise DatasetError(f"--new-class {v!r}: NAME or NAME=SLOT (e.g. bag=toaster)")
        out[name.strip()] = slot.strip()
    free = [s for s in SLOT_PREFERENCE if s not in out.values()]
    return {n: (s or free.pop(0)) for n, s in out.items()}


def train_detector_cmd(
    dataset: Path,
    out: Path,
    *,
    parent: Path | None = None,
    steps: int = 300,
    batch: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    new_classes: list[str] | None = None,
    replay: float = 0.25,
    holdout: float = 0.2,
    eval_datasets: list[Path] | None = None,
    checkpoint_every: int = 25,
    resume: bool = False,
    threads: int | None = None,
    register: bool = False,
    registry_dir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Fine-tune the detector head on a dataset version into OUT (gridwatch/train/detector.py); with
    ``register``, register OUT/model as a new ``detector`` version (parent, dataset, figures)."""
    from gridwatch.detectors.nanodet import ModelIntegrityError
    from gridwatch.train.detector import train_detector

    console = console or Console(stderr=True)
    for p, what in [(dataset, "--dataset"), *((e, "--eval") for e in eval_datasets or [])]:
        if not (Path(p) / "manifest.json").is_file():
            raise DatasetError(
                f"{what} {p}: not a dataset version (no manifest.json; e.g. var/datasets/NAME/v1)"
            )
    try:
        with _progress(console) as report:
            result = train_detector(
                dataset, out, parent=parent, steps=steps, batch=batch, lr=lr, seed=seed,
                new_classes=parse_new_classes(new_classes), replay=replay, holdout=holdout,
                eval_datasets=eval_datasets or (), checkpoint_every=checkpoint_every, resume=resume,
                threads=threads, on_progress=report,
            )  # fmt: skip
    except ModelIntegrityError as e:
        raise DatasetError(str(e)) from None
    history = result.pop("history")
    result["loss_curve"] = [round(h["loss"], 4) for h in history[:: max(1, len(history) // 20)]]
    if not result["finished"]:
        console.print(f"stopped at step {result['step']} of {result['steps']}; resume with --resume")
        return _emit(result)
    table = Table(title=f"{result['model_version']} (from {result['parent']}, on {result['dataset']})")
    for col in ("set", "class", "AP50 after", "recall@0.35", "AP50 parent", "agreement person / car / truck"):
        table.add_column(col, justify="left" if col in ("set", "class") else "right")
    for name, m in result["metrics"].items():
        agree = " / ".join(_f(a["agreement"]) for a in m["agreement"].values())
        for cls, fig in m["new_classes"].items():
            table.add_row(name, cls, _f(fig["after"]["ap50"]), _f(fig["after"].get("recall_at_035")),
                          _f(fig["before_slot"]["ap50"]), agree)  # fmt: skip
    console.print(table)
    console.print(
        f"cache {result['cache_s']} s, {result['steps']} steps x {result['batch']} in {result['train_s']} s "
        f"({result['s_per_step']} s/step); loss {_f(result['loss_first'])} -> {_f(result['loss_last'])}; "
        f"model {result['model_dir']}"
    )
    if register:
        from gridwatch.model_registry import ModelRegistry

        reg = ModelRegistry(registry_dir or Path("var/models"))
        v = reg.register(
            result["model_dir"], kind="detector", metrics=result["registry_metrics"], parent=result["parent"],
            dataset=result["dataset"],
            description=f"head fine-tune of {result['parent']} on {result['dataset']}: "
            + ", ".join(f"{n} in slot {s['was']}" for n, s in result["slots"].items()),
        )  # fmt: skip
        result["registered"] = v.as_dict()
        console.print(f"registered: detector v{v.version} ({v.path})")
    return _emit(result)


def train_footage_dataset(
    video: Path,
    datasets_root: Path,
    name: str,
    *,
    start_s: float = 0.0,
    end_s: float | None = None,
    every_s: float = 1.0,
    window_s: float = 30.0,
    console: Console | None = None,
) -> dict[str, Any]:
    """A labelled dataset version from a static camera's footage (gridwatch.train.verifier.footage_dataset)."""
    from gridwatch.train.verifier import footage_dataset

    console = console or Console(stderr=True)
    with _progress(console) as report:
        v = footage_dataset(
            video, datasets_root, name, start_s=start_s, end_s=float("inf") if end_s is None else end_s,
            every_s=every_s, window_s=window_s, on_progress=report,
        )  # fmt: skip
    counts = v.manifest["counts"]
    console.print(
        f"{v.path}: {counts['images']} frames, {counts['annotations']} real detections, "
        f"{counts['negatives']} false alarms"
    )
    return _emit({"dataset": v.name, "version": v.tag, "path": str(v.path), "images": counts["images"],
                  "real": counts["annotations"], "false_alarms": counts["negatives"]})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """`python -m gridwatch.train.cli detector|verifier|footage-dataset ...`: the same commands before (or
    without) their `gridwatch train` wiring."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m gridwatch.train.cli")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verifier", help="train the false-alarm verifier on a dataset version")
    v.add_argument("--dataset", type=Path, required=True)
    v.add_argument("--out", type=Path, required=True)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--detector", type=Path, default=None, help="detector model directory (default: bundled)")
    v.add_argument("--eval", type=Path, action="append", default=[], help="held-out dataset version (repeat)")
    v.add_argument("--register", action="store_true")
    v.add_argument("--registry", type=Path, default=None, help="registry directory (default var/models)")
    v.add_argument("--parent", default=None)
    d = sub.add_parser("detector", help="fine-tune the detector head on a dataset version (new class)")
    d.add_argument("--dataset", type=Path, required=True)
    d.add_argument("--out", type=Path, required=True)
    d.add_argument(
        "--from", dest="parent", type=Path, default=None, help="parent model directory (default: bundled)"
    )
    d.add_argument("--steps", type=int, default=300)
    d.add_argument("--batch", type=int, default=8)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--new-class", action="append", default=[], help="NAME or NAME=SLOT (repeat)")
    d.add_argument("--replay", type=float, default=0.25)
    d.add_argument("--holdout", type=float, default=0.2)
    d.add_argument("--eval", type=Path, action="append", default=[], help="held-out dataset version (repeat)")
    d.add_argument("--checkpoint-every", type=int, default=25)
    d.add_argument("--resume", action="store_true")
    d.add_argument("--threads", type=int, default=None)
    d.add_argument("--register", action="store_true")
    d.add_argument("--registry", type=Path, default=None)
    f = sub.add_parser("footage-dataset", help="a labelled dataset version from a static camera's video")
    f.add_argument("video", type=Path)
    f.add_argument("--to", type=Path, required=True)
    f.add_argument("--name", required=True)
    f.add_argument("--start", type=float, default=0.0)
    f.add_argument("--end", type=float, default=None)
    f.add_argument("--every", type=float, default=1.0)
    f.add_argument("--window", type=float, default=30.0)
    a = ap.parse_args(argv)
    try:
        if a.cmd == "detector":
            train_detector_cmd(a.dataset, a.out, parent=a.parent, steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed,
                               new_classes=a.new_class, replay=a.replay, holdout=a.holdout, eval_datasets=a.eval,
                               checkpoint_every=a.checkpoint_every, resume=a.resume, threads=a.threads,
                               register=a.register, registry_dir=a.registry)  # fmt: skip
        elif a.cmd == "verifier":
            train_verifier_cmd(a.dataset, a.out, seed=a.seed, detector=a.detector, eval_datasets=a.eval,
                               register=a.register, registry_dir=a.registry, parent=a.parent)  # fmt: skip
        else:
            train_footage_dataset(a.video, a.to, a.name, start_s=a.start, end_s=a.end, every_s=a.every,
                                  window_s=a.window)  # fmt: skip
    except DatasetError as e:
        Console(stderr=True).print(f"[red]error[/red]\n{e}", highlight=False)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
