"""`gridwatch demo`, last act: the retraining loop (issue 8; docs/TRAINING.md, docs/MODELS.md).

Runs after the dispatch loop, while the camera worker keeps analysing the campus camera:

1. **dataset**: the verdicts of this run (teams' false alarms, the operator's confirmations,
   cameras' verified closures: the hard-example store) become a dataset version (the sampler);
2. **verifier**: the false-alarm verifier is retrained in seconds on the campus camera's
   frames (background-model labels), checked on later frames and on the run's verdict frames,
   and registered;
3. **detector**: a short head-only fine-tune teaches the detector a class it lacks (`bag`,
   dumped sacks) on composited frames of the same camera, and is registered;
4. **evaluation beside production**: frame-level AP of both detectors on held-out frames of
   the mirrored view (same scene, other draws), so the gain and what was kept are figures;
5. **shadow**: the new detector runs beside production on the live camera; its candidates are
   recorded, never dispatched; `models compare` reports agreement and cost;
6. **promotion**: through the registry's gate (a forced promotion needs a recorded reason);
   the running camera worker swaps to it without a restart (pipeline_health.model_version).

Each stage is the same function the CLI runs (`gridwatch dataset sample`, `train verifier`,
`train detector`, `eval frames`, `models compare`, `models promote`), called in-process.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gridwatch.localrun import LocalPipeline

DEMO_CAMERA = "cam-campus"
FT_IMAGES = 48  # composited frames the demo's fine-tune trains on
HELD_IMAGES = 32  # held-out frames of the mirrored view, for the evaluation beside production
FT_STEPS = 60  # head-only steps of 8 images (docs/TRAINING.md has the longer run's figures)
SHADOW_S = 25.0  # seconds the new detector runs beside production on the live camera
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
    #: stages a complete loop has (a stage after a failed one is not run)
    expected: int = 6
    #: the figures each stage measured, by stage (written to <workdir>/loop/report.json)
    figures: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "stages": [vars(s) for s in self.stages], "figures": self.figures}

    @property
    def ok(self) -> bool:
        return len(self.stages) == self.expected and all(s.ok for s in self.stages)

    def table(self) -> Table:
        t = Table(title="the retraining loop (verdicts -> dataset -> train -> evaluate -> shadow -> promote)")
        for col in ("stage", "ok", "s", "what"):
            t.add_column(col, overflow="fold")
        for s in self.stages:
            t.add_row(s.name, "yes" if s.ok else "[red]no[/red]", f"{s.seconds:.1f}", s.what)
        return t


def register_bundled_production(registry_dir: Path) -> int:
    """Before the cameras start: the bundled detector registered and `production` (unless the
    registry already has a production detector), so the swap later in the loop is one the camera
    worker follows (cameras.follow_registry). Returns the production version."""
    from gridwatch.model_registry import ModelRegistry, RegistryError

    reg = ModelRegistry(registry_dir)
    try:
        return reg.get("detector", "production").version
    except RegistryError:
        v = reg.register(BUNDLED_DETECTOR, kind="detector", description="bundled NanoDet-g 416 (COCO)")
        reg.promote("detector", v.version, by="demo", reason="the bundled detector")
        return v.version


def demo_loop_overrides(workdir: Path) -> dict[str, Any]:
    """Config for the loop: a registry in the demo's workdir, followed by the camera worker."""
    return {
        "models": {"registry_dir": str(workdir / "models")},
        "cameras": {
            "follow_registry": True,
            "registry_poll_s": 1.0,
            # every analysed frame of the campus camera: the demo's shadow run is short
            "shadow": {
                "enabled": True,
                "frame_share": 1.0,
                "cameras": [DEMO_CAMERA],
                "record_dir": str(workdir / "shadow"),
            },  # fmt: skip
        },
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
    st.report.expected = 6 if cameras else 4
    state: dict[str, Any] = {}
    figures = st.report.figures

    def dataset() -> tuple[bool, str]:
        hx_dir = pipe.cfg.dispatch.hard_examples_dir
        if hx_dir is None or not Path(hx_dir).is_dir():
            return False, "no hard-example store"
        counts = {k: v for k, v in HardExampleStore(hx_dir).counts().items() if v}
        version, summary = sample(hx_dir, datasets, "demo-verdicts", SamplerParams(seed=0))
        state["verdicts"] = version
        c = version.manifest["counts"]
        figures["dataset"] = {"verdicts": counts, "version": f"{version.name}/{version.tag}", "counts": c}
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
        figures["verifier"] = {"version": v.version, "held_out": f, "verdict_frames": fv}
        return True, (
            f"{r['examples']} detections of the camera's frames, fit in {r['fit_s']} s; held-out later "
            f"frames: AUC {f['auc']:.3f}, false alarms rejected {f['false_alarms_rejected']}/{f['false_alarms']}, "
            f"real kept {f['real_kept_share']:.1%}; the run's verdict frames: real kept "
            f"{fv['real_kept']}/{fv['real']}; registered verifier v{v.version}"
        )

    def finetune() -> tuple[bool, str]:
        from gridwatch.dataset.composite import composite_dataset
        from gridwatch.train.detector import registry_metrics, train_detector

        # the campus camera's own scene with people, vehicles and dumped sacks pasted in, every
        # object labelled (docs/EVALUATION.md); the mirrored view is held out (the same scene flipped, not another camera)
        train = composite_dataset(
            datasets, "campus-bags", images=FT_IMAGES, seed=1, layout="native", split="train"
        )
        held = composite_dataset(datasets, "campus-bags-mirror", images=HELD_IMAGES, seed=2, layout="mirror")
        state["held_frames"] = held
        out = root / "detector"
        r = train_detector(train, out, steps=FT_STEPS, seed=0, eval_datasets=[held])
        state["finetune"] = r
        model_dir = out / "model"
        parent = str(reg.get("detector", "production").version)
        v = reg.register(model_dir, kind="detector", metrics=registry_metrics(r["metrics"]), parent=parent,
                         dataset=f"{train.name}/{train.tag}", description="demo: head fine-tune, new class bag")  # fmt: skip
        state["detector"] = v
        state["detector_dir"] = model_dir
        figures["finetune"] = {k: r[k] for k in ("model_version", "steps", "cache_s", "s_per_step", "loss_first",
                                                  "loss_last", "slots")} | {"version": v.version}  # fmt: skip
        slots = ", ".join(f"{n} in the slot of {d['was']!r}" for n, d in r["slots"].items())
        return True, (
            f"{r['steps']} steps of the detector's head on {train.name}/{train.tag} ({FT_IMAGES} images): "
            f"features cached in {r['cache_s']} s, {r['s_per_step']} s per step, loss {r['loss_first']:.2f} -> "
            f"{r['loss_last']:.2f}; new class {slots}; registered detector v{v.version} ({r['model_version']})"
        )

    def evaluate() -> tuple[bool, str]:
        from gridwatch.detectors.frame_eval import frames_metrics, run_frame_eval

        held = state["held_frames"]
        quiet = Console(file=io.StringIO())
        production = reg.get("detector", "production")
        prod = run_frame_eval(held.path, production.path, pipe.cfg, console=quiet)
        new = run_frame_eval(held.path, state["detector_dir"], pipe.cfg, console=quiet)
        reg.record_metrics("detector", production.version, frames_metrics(prod))
        v = reg.record_metrics("detector", state["detector"].version, frames_metrics(new))
        state["detector"] = v

        def ap50(r: dict[str, Any], cls: str) -> str:
            f = (r.get("classes") or {}).get(cls) or {}
            return "-" if f.get("ap50") is None else f"{f['ap50']:.2f}"

        classes = ("bag", "person", "car", "truck")
        figures["evaluation"] = {
            "dataset": f"{held.name}/{held.tag}",
            "production": {"map": prod["map"], "classes": prod["classes"]},
            "new": {"map": new["map"], "classes": new["classes"]},
        }
        return True, (
            f"held-out mirrored view ({held.name}/{held.tag}, {HELD_IMAGES} images), AP50 production -> new: "
            + ", ".join(f"{c} {ap50(prod, c)} -> {ap50(new, c)}" for c in classes)
            + f"; mAP {prod['map']:.3f} -> {new['map']:.3f} (recorded on both versions for the gate)"
        )

    def shadow() -> tuple[bool, str]:
        from gridwatch.dispatch.ledger import Ledger
        from gridwatch.model_compare import compare_records, ledger_verdicts, read_records

        v = state["detector"]
        since = int(time.time() * 1000)
        reg.promote("detector", v.version, alias="shadow", by="demo", reason="beside production")
        time.sleep(SHADOW_S)
        reg.unset("detector", alias="shadow", by="demo", reason="shadow run done")
        records = pipe.cfg.cameras.shadow.record_dir
        report: dict[str, Any] = {}
        deadline = time.monotonic() + 10 + 3 * pipe.cfg.cameras.registry_poll_s
        while time.monotonic() < deadline:  # the worker writes the run's cost lines when it stops it
            report = compare_records(read_records(records, since_ms=since), None, shadow_version=v.version)
            if report["cost"]["shadow_frames"]:
                break
            time.sleep(0.5)
        ledger = Ledger(pipe.cfg.dispatch.ledger_url)
        try:
            verdicts = ledger_verdicts(ledger)
        finally:
            ledger.close()
        report = compare_records(read_records(records, since_ms=since), verdicts, shadow_version=v.version)
        figures["shadow"] = report
        c = report["cost"]
        return bool(c["shadow_frames"]), (
            f"detector v{v.version} beside production on {', '.join(report['cameras']) or '-'} for {SHADOW_S:g} s "
            f"({c['shadow_frames']}/{c['frames']} frames, {c['shadow_skipped']} skipped for the CPU budget): "
            f"both raised {report['agreement']} ({report['carried_over']} raised by production before the shadow "
            f"started), production only {report['production_only']}, shadow only "
            f"{report['shadow_only']}; operators' false alarms it would have avoided {report['false_alarms_avoided']}"
            f"/{report['false_alarms']}; ms per frame {c['shadow_ms_per_frame']} (shadow) vs "
            f"{c['production_ms_per_shadowed_frame']} (production, same frames); nothing dispatched"
        )

    def promote() -> tuple[bool, str]:
        from gridwatch.model_registry import PromotionRefused

        v = state["detector"]
        gate = "passed the gate"
        worse = reg.worse_than_production("detector", v)
        try:
            reg.promote("detector", v.version, by="demo")
        except PromotionRefused:
            # what an engineer would do after reading the refusal: force it, saying why (recorded)
            reason = "demo: the new class is worth it; the figures it loses are recorded"
            reg.promote("detector", v.version, by="demo", force=True, reason=reason)
            gate = f"refused by the gate ({'; '.join(worse)}), then forced with a recorded reason"
        want = f"@{v.sha256[:12]}"
        deadline = time.monotonic() + 20 + 3 * pipe.cfg.cameras.registry_poll_s
        running = camera_model_version(pipe)
        while time.monotonic() < deadline and not (running or "").endswith(want):
            time.sleep(0.5)
            running = camera_model_version(pipe)
        ok = (running or "").endswith(want)
        figures["promotion"] = {"version": v.version, "gate": gate, "camera_reports": running, "swapped": ok}
        return (
            ok,
            f"detector v{v.version} to production: {gate}; the running camera worker now reports {running}"
            + ("" if ok else " (it did not swap in time)"),
        )

    # each stage runs only if the one it builds on succeeded: a model that was not evaluated is
    # never put in shadow nor promoted
    if st.run("1 dataset from verdicts", dataset):
        st.run("2 verifier retrain", verifier)
        if (
            st.run("3 detector fine-tune", finetune)
            and st.run("4 evaluation beside production", evaluate)
            and cameras
        ):
            st.run("5 shadow run", shadow) and st.run("6 promotion, hot swap", promote)
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.json").write_text(
        json.dumps(st.report.as_dict(), indent=1, default=str), encoding="utf-8"
    )
    return st.report
