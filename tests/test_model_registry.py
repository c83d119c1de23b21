"""The model registry on a real MLflow registry (SQLite + file artifacts): register with lineage and
figures, aliases, the promotion gate, forced promotions with reasons, rollback, sha256 checks, the
pointer files camera workers read, and the `gridwatch models` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gridwatch.model_registry import (
    ModelRegistry,
    PromotionRefused,
    RegistryError,
    flatten_eval,
    read_deployed,
)

pytest.importorskip("mlflow")

BUNDLED = Path(__file__).resolve().parents[1] / "models" / "nanodet-g-416"
GOOD = {"clips.overall.f1": 0.91, "clips.overall.s_score": 0.898, "clips.overall.delay_rmse_s": 3.5}


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    return ModelRegistry(tmp_path_factory.mktemp("registry"))


def variant(tmp_path: Path, name: str, payload: bytes) -> Path:
    """A model directory like the bundled one with a different ONNX file (the registry does not run it)."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(BUNDLED / "MODEL_CARD.md", d / "MODEL_CARD.md")
    (d / "model.onnx").write_bytes(payload)
    return d


def test_register_promote_gate_force_rollback(reg: ModelRegistry, tmp_path: Path) -> None:
    v1 = reg.register(BUNDLED, kind="detector", metrics=GOOD, description="NanoDet-g 416 as converted")
    assert v1.version == 1 and v1.parent is None and v1.metrics == GOOD
    assert (v1.path / "nanodet-g-416.onnx").read_bytes() == (BUNDLED / "nanodet-g-416.onnx").read_bytes()
    assert read_deployed(reg.root, "detector") is None
    d1 = reg.promote("detector", 1, by="engineer")
    assert read_deployed(reg.root, "detector") == d1 and d1.sha256 == v1.sha256
    assert reg.get("detector", "production").version == 1

    worse = {**GOOD, "clips.overall.f1": 0.85, "clips.overall.delay_rmse_s": 1.0}
    v2 = reg.register(variant(tmp_path, "v2", b"fine-tuned"), kind="detector", metrics=worse, parent="1",
                      dataset="city/v3")  # fmt: skip
    assert (v2.version, v2.parent, v2.dataset) == (2, "1", "city/v3")
    with pytest.raises(PromotionRefused, match=r"clips.overall.f1: 0.91 \(v1\) -> 0.85"):
        reg.promote("detector", 2)
    # figures of a new standard set join a version; existing figures are never rewritten
    assert reg.record_metrics("detector", 1, {"frames.person.ap50": 0.8}).metrics["frames.person.ap50"] == 0.8
    with pytest.raises(RegistryError, match=r"already has other figures for frames.person.ap50"):
        reg.record_metrics("detector", 1, {"frames.person.ap50": 0.9})
    with pytest.raises(RegistryError, match=r"not a number: frames.car.ap50"):
        reg.record_metrics("detector", 1, {"frames.car.ap50": float("nan")})
    assert (
        reg.history("detector")[-1]["op"] == "metrics" and "frames" in reg.history("detector")[-1]["reason"]
    )
    assert reg.record_metrics("detector", 2, {"frames.person.ap50": 0.7}).metrics["frames.person.ap50"] == 0.7
    with pytest.raises(PromotionRefused, match=r"frames.person.ap50: 0.8 \(v1\) -> 0.7"):
        reg.promote("detector", 2)
    # lower-is-better figures (delay) do not block; shadow and candidate are not gated
    assert reg.promote("detector", 2, alias="shadow").version == 2
    with pytest.raises(RegistryError, match="needs a reason"):
        reg.promote("detector", 2, force=True)
    reg.promote("detector", 2, force=True, reason="cones are new; F1 loss is on dumping only", by="lead")
    assert read_deployed(reg.root, "detector").version == 2
    last = reg.history("detector")[-1]
    assert last["forced"] and last["previous"] == 1 and "cones" in last["reason"] and last["worse"]
    assert set(reg.get("detector", 2).aliases) == {"production", "shadow"}
    # ending the shadow run: the alias and its pointer go, the history says so; production stays
    assert read_deployed(reg.root, "detector", "shadow").version == 2
    assert reg.unset("detector", alias="shadow", reason="compared", by="lead") == 2
    assert read_deployed(reg.root, "detector", "shadow") is None
    assert set(reg.get("detector", 2).aliases) == {"production"}
    assert reg.history("detector")[-1] | {"at_ms": 0} == {
        "op": "unset", "alias": "shadow", "version": None, "previous": 2, "by": "lead",
        "reason": "compared", "forced": False, "worse": [], "at_ms": 0}  # fmt: skip
    with pytest.raises(RegistryError, match="points at no version"):
        reg.unset("detector", alias="shadow")
    with pytest.raises(RegistryError, match="production cannot be unset"):
        reg.unset("detector", alias="production")

    back = reg.rollback("detector", reason="false alarms at night", by="lead")
    assert back.version == 1 and read_deployed(reg.root, "detector").version == 1
    assert [h["op"] for h in reg.history("detector")][-2:] == ["rollback", "promote"]
    # a second rollback undoes the first
    assert reg.rollback("detector", reason="undo").version == 2
    with pytest.raises(RegistryError, match="no earlier version"):
        reg.rollback("detector", alias="candidate")


def test_a_tampered_file_cannot_be_promoted(reg: ModelRegistry, tmp_path: Path) -> None:
    v = reg.register(variant(tmp_path, "v", b"original"), kind="verifier", metrics={"auc": 0.98})
    (v.path / "model.onnx").write_bytes(b"swapped on disk")
    with pytest.raises(RegistryError, match="does not match its registered sha256"):
        reg.promote("verifier", v.version)


def test_errors_name_the_problem(reg: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="kind must be one of detector, verifier"):
        reg.register(BUNDLED, kind="tracker")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RegistryError, match="exactly one .onnx file"):
        reg.register(empty, kind="detector")
    with pytest.raises(RegistryError, match="no detector version 99 in the registry"):
        reg.get("detector", 99)
    with pytest.raises(RegistryError, match="alias must be one of"):
        reg.promote("detector", 1, alias="staging")


def test_eval_figures_flatten_to_metrics() -> None:
    result = {
        "overall": {"f1": 0.9, "precision": 1.0, "delay_rmse_s": None, "events": 11},
        "categories": {"gathering": {"recall": 0.5}},
    }
    assert flatten_eval(result) == {
        "clips.overall.f1": 0.9,
        "clips.overall.precision": 1.0,
        "clips.overall.events": 11.0,
        "clips.gathering.recall": 0.5,
    }


def test_the_models_commands(tmp_path: Path) -> None:
    from gridwatch.cli import app
    from gridwatch.config import demo_config_path

    cfg = yaml.safe_load(demo_config_path().read_text(encoding="utf-8"))
    cfg["sensor_files"] = [
        str((demo_config_path().parent / p).resolve()) for p in cfg.get("sensor_files", [])
    ]
    cfg["models"] = {"registry_dir": str(tmp_path / "reg")}
    conf = tmp_path / "gridwatch.yaml"
    conf.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    ev = tmp_path / "eval.jsonl"
    ev.write_text("progress...\n" + json.dumps({"overall": {"f1": 0.91}, "categories": {}}) + "\n")
    run = CliRunner()

    def gw(*args: str) -> dict:
        r = run.invoke(app, [*args, "--config", str(conf)])
        assert r.exit_code == 0, r.output
        return json.loads(r.output.strip().splitlines()[-1])

    frames = tmp_path / "frames.jsonl"
    frames.write_text(json.dumps({"map": 0.6, "classes": {"person": {"ap": 0.7, "ap50": 0.95}}}) + "\n")
    registered = gw("models", "register", str(BUNDLED), "--eval-json", str(ev), "--frames-json", str(frames))
    assert registered["metrics"] == {
        "clips.overall.f1": 0.91, "frames.map": 0.6, "frames.person.ap": 0.7, "frames.person.ap50": 0.95}  # fmt: skip
    r = run.invoke(app, ["models", "register", str(BUNDLED), "--frames-json", str(ev), "--config", str(conf)])
    assert r.exit_code == 2 and "JSON figures of `gridwatch eval frames` (no 'map' key)" in " ".join(
        r.output.split()
    )
    assert gw("models", "promote", "detector", "1", "--by", "me")["version"] == 1
    listed = gw("models", "list")
    assert [(v["version"], v["aliases"]) for v in listed["versions"]] == [(1, ["production"])]
    r = run.invoke(app, ["models", "rollback", "detector", "--config", str(conf)])
    assert r.exit_code == 2 and "no earlier version" in r.output
    assert gw("models", "promote", "detector", "1", "--alias", "shadow")["version"] == 1
    assert gw("models", "unset", "detector", "--alias", "shadow", "--reason", "done") == {
        "kind": "detector", "alias": "shadow", "unset": 1}  # fmt: skip
    r = run.invoke(app, ["models", "unset", "detector", "--alias", "production", "--config", str(conf)])
    assert r.exit_code == 2 and "production cannot be unset" in r.output
