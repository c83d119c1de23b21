"""`gridwatch demo`, last act: the retraining loop (issue 8; docs/TRAINING.md, docs/MODELS.md).

Runs after the dispatch loop, while the camera worker keeps analysing the campus camera:

1. **dataset**: the verdicts of this run (teams' false alarms, the operator's confirmations,
   cameras' verified closures: the hard-example store) become a dataset version (the sampler);
2. **verifier**: the false-alarm verifier is retrained in seconds on the campus camera's
   frames (background-model labels) plus the run's own dataset, and registered;
3. **detector**: a short head-only fine-tune teaches the detector a class it lacks (`bag`,
   dumped sacks) on composited frames of the same camera, and is registered;
4. **evaluation beside production**: frame-level AP of both detectors on held-out frames of
   another view (the mirrored camera), so the gain and what was kept are figures;
5. **shadow**: the new detector runs beside production on the live camera; its candidates are
   recorded, never dispatched; `models compare` reports agreement and cost;
6. **promotion**: through the registry's gate (a forced promotion needs a recorded reason);
   the running camera worker swaps to it without a restart (pipeline_health.model_version).

Each stage is the same function the CLI runs (`gridwatch dataset sample`, `train verifier`,
`train detector`, `eval frames`, `models compare`, `models promote`), called in-process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gridwatch.localrun import LocalPipeline

DEMO_CAMERA = "cam-campus"
BUNDLED_DETECTOR = Path(__file__).resolve().parents[1] / "models" / "nanodet-g-416"


@dataclass
class LoopStage:
    name: str
    ok: bool
    seconds: float
    what: str


@dataclass
class LoopReport:
    stages: list[LoopStage] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.stages) and all(s.ok for s in self.stages)

    def table(self) -> Table:
        t = Table(title="the retraining loop (verdicts -> dataset -> train -> evaluate -> shadow -> promote)")
        for col in ("stage", "ok", "s", "what"):
            t.add_column(col, overflow="fold")
        for s in self.stages:
            t.add_row(s.name, "yes" if s.ok else "[red]no[/red]", f"{s.seconds:.1f}", s.what)
        return t


def register_bundled_production(registry_dir: Path) -> int:
    """Before the cameras start: the bundled detector as registry version 1, `production`, so the
    swap later in the loop is one the camera worker follows (cameras.follow_registry)."""
    from gridwatch.model_registry import ModelRegistry

    reg = ModelRegistry(registry_dir)
    if not reg.versions("detector"):
        v = reg.register(BUNDLED_DETECTOR, kind="detector", description="bundled NanoDet-g 416 (COCO)")
        reg.promote("detector", v.version, by="demo", reason="the bundled detector")
    return 1


def demo_loop_overrides(workdir: Path) -> dict[str, Any]:
    """Config for the loop: a registry in the demo's workdir, followed by the camera worker."""
    return {
        "models": {"registry_dir": str(workdir / "models")},
        "cameras": {"follow_registry": True, "registry_poll_s": 1.0},
    }


def camera_model_version(pipe: LocalPipeline) -> str | None:
    """What the running camera worker reports it runs (its last pipeline_health point)."""
    rows = pipe.influxql("SELECT last(model_version) FROM pipeline_health WHERE component='cameras'")
    try:
        return str(rows[0]["values"][0][1])
    except (IndexError, KeyError, TypeError):
        return None


class _Stages:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.report = LoopReport()

    def run(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        t0 = time.monotonic()
        with self.console.status(f"retraining loop: {name} ..."):
            try:
                ok, what = fn()
            except Exception as e:  # a stage that fails is shown, and the demo says it failed
                ok, what = False, f"{type(e).__name__}: {e}"
        self.report.stages.append(LoopStage(name, ok, time.monotonic() - t0, what))
        return ok


def run_loop(pipe: LocalPipeline, console: Console, *, workdir: Path, cameras: bool) -> LoopReport:
    """The loop on this demo run; every stage's outcome is in the report (and its table)."""
    from gridwatch.dataset.hard_examples import HardExampleStore
    from gridwatch.dataset.sampler import SamplerParams, sample
    from gridwatch.model_registry import ModelRegistry

    root = workdir / "loop"
    datasets = root / "datasets"
    reg = ModelRegistry(pipe.cfg.models.registry_dir)
    st = _Stages(console)
    state: dict[str, Any] = {}

    def dataset() -> tuple[bool, str]:
        hx_dir = pipe.cfg.dispatch.hard_examples_dir
        if hx_dir is None or not Path(hx_dir).is_dir():
            return False, "no hard-example store"
        counts = {k: v for k, v in HardExampleStore(hx_dir).counts().items() if v}
        version, summary = sample(hx_dir, datasets, "demo-verdicts", SamplerParams(seed=0))
        state["verdicts"] = version
        c = version.manifest["counts"]
        return c["images"] > 0, (
            f"this run's verdicts {counts} -> {version.name}/{version.tag}: {c['images']} images, "
            f"{c['annotations']} boxes, {c['negatives']} false-alarm boxes"
        )

    def verifier() -> tuple[bool, str]:
        from gridwatch.demo_cameras import FOOTAGE
        from gridwatch.train.verifier import footage_dataset, registry_metrics, train_verifier

        # The verifier learns from boxes: the campus camera's frames labelled by the background
        # model (docs/TRAINING.md). The run's verdicts so far are aggregate ones (a crowd that was
        # not one): their boxes are all kept as real, so they check what the verifier keeps.
        video = FOOTAGE / "vtest.h264.mp4"
        train = footage_dataset(video, datasets, "campus", end_s=40, every_s=2)
        held = footage_dataset(video, datasets, "campus-later", start_s=45, every_s=3)
        verdicts = state["verdicts"]
        out = root / "verifier"
        r = train_verifier(train.path, out, eval_dataset_dirs=[held.path, verdicts.path])
        v = reg.register(out, kind="verifier", metrics=registry_metrics(r["metrics"]),
                         dataset=r["dataset"], description="demo: campus camera")  # fmt: skip
        f = r["metrics"][f"{held.name}/{held.tag}"]["all"]
        fv = r["metrics"][f"{verdicts.name}/{verdicts.tag}"]["all"]
        return True, (
            f"{r['examples']} detections of the camera's frames, fit in {r['fit_s']} s; held-out later "
            f"frames: AUC {f['auc']:.3f}, false alarms rejected {f['false_alarms_rejected']}/{f['false_alarms']}, "
            f"real kept {f['real_kept_share']:.1%}; the run's verdict frames: real kept "
            f"{fv['real_kept']}/{fv['real']}; registered verifier v{v.version}"
        )

    st.run("1 dataset from verdicts", dataset)
    if "verdicts" in state:
        st.run("2 verifier retrain", verifier)
    return st.report
