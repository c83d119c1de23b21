"""The `gridwatch` command line. Every subcommand has --help."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from gridwatch.config import ConfigError, GridwatchConfig, demo_config_path, load_config

app = typer.Typer(
    help="gridwatch: command-centre analytics for grid-based city governance.", no_args_is_help=True
)
config_app = typer.Typer(help="Check and describe configuration files.", no_args_is_help=True)
streams_app = typer.Typer(help="Faust stream workers.", no_args_is_help=True)
bench_app = typer.Typer(
    help="Benchmarks: each prints one JSON object as its last line.", no_args_is_help=True
)
app.add_typer(config_app, name="config")
app.add_typer(streams_app, name="streams")
dispatch_app = typer.Typer(help="The dispatch loop: ledger, pushes, deadlines, API.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(dispatch_app, name="dispatch")
report_app = typer.Typer(help="Reports from the incident ledger.", no_args_is_help=True)
app.add_typer(report_app, name="report")
cameras_app = typer.Typer(
    help="Camera workers: RTSP -> detector -> zones and rules -> candidates.", no_args_is_help=True
)
app.add_typer(cameras_app, name="cameras")
eval_app = typer.Typer(
    help="Evaluate the camera detectors on labelled clips (events) and labelled frames (COCO mAP).",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")
dashboards_app = typer.Typer(help="Grafana wall screens: dashboards as code.", no_args_is_help=True)
app.add_typer(dashboards_app, name="dashboards")

console = Console(stderr=True)
ConfigOpt = typer.Option(
    None, "--config", "-c", help="gridwatch YAML file (default: the embedded demo config)."
)


def _load(path: Path | None) -> GridwatchConfig:
    try:
        return load_config(path or demo_config_path())
    except ConfigError as e:
        console.print(f"[red]configuration error[/red]\n{e}")
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="The YAML file to validate.")) -> None:
    """Validate a configuration file (and its sensor files and city map); print a summary."""
    cfg = _load(file)
    from gridwatch.city import CityModel, CityModelError
    from gridwatch.registry import build_sensor_registry

    try:
        city = CityModel.load(cfg.city.geojson)
        registry = build_sensor_registry(cfg, city)
    except (CityModelError, ConfigError) as e:
        console.print(f"[red]configuration error[/red]\n{e}")
        raise typer.Exit(2) from None
    outside = [s.id for s in registry.values() if s.grid_id is None]
    counts = city.counts()
    console.print(
        f"[green]OK[/green] {file}: {len(cfg.sensors)} sensors of {len(cfg.sensor_types)} types; city "
        f"{counts.get('district', 0)} district / {counts.get('town', 0)} towns / {counts.get('community', 0)} "
        f"communities / {counts.get('grid', 0)} grids"
    )
    if outside:
        console.print(
            f"[yellow]warning[/yellow]: {len(outside)} sensors are outside every grid: {outside[:5]}"
        )


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of the configuration file (every field with its description)."""
    print(json.dumps(GridwatchConfig.model_json_schema(), indent=2, ensure_ascii=False))


@app.command("schemas")
def schemas(markdown: bool = typer.Option(False, help="Markdown tables instead of JSON Schema.")) -> None:
    """Print the event schemas shared by every part of gridwatch."""
    from gridwatch.schemas import ALL_SCHEMAS

    if not markdown:
        print(json.dumps({m.schema_name: m.model_json_schema() for m in ALL_SCHEMAS}, indent=2))
        return
    for m in ALL_SCHEMAS:
        print(f"## `{m.schema_name}` v{m.version}\n\n{(m.__doc__ or '').strip()}\n")
        print("| field | type | required | description |\n|---|---|---|---|")
        props = m.model_json_schema().get("properties", {})
        required = set(m.model_json_schema().get("required", []))
        for name, p in props.items():
            typ = p.get("type") or ", ".join(
                x.get("type", x.get("$ref", "?").split("/")[-1]) for x in p.get("anyOf", [])
            )
            print(
                f"| `{name}` | {typ or p.get('$ref', '').split('/')[-1]} | {'yes' if name in required else 'no'} | {p.get('description', '')} |"
            )
        print()


@app.command("topics")
def topics(
    config: Path = ConfigOpt, create: bool = typer.Option(False, help="Create the Kafka topics up front.")
) -> None:
    """List gridwatch's Kafka topics (and create them with --create)."""
    from gridwatch.kafka import ensure_topics_sync, topic_partitions
    from gridwatch.topics import ALL_KAFKA_TOPICS

    cfg = _load(config)
    parts = topic_partitions(cfg.kafka)
    for t in ALL_KAFKA_TOPICS:
        print(f"{t.name}\t{parts[t.name]} partitions\t{t.schema}\t{t.description}")
    if create:
        ensure_topics_sync(cfg.kafka)


@app.command("bridge")
def bridge(config: Path = ConfigOpt, log_level: str = typer.Option("info", help="Log level.")) -> None:
    """Run the MQTT -> Kafka sensor bridge until interrupted."""
    _logging(log_level)
    cfg = _load(config)

    async def main() -> None:
        from gridwatch.influx import InfluxSink
        from gridwatch.ingest.mqtt_bridge import SensorBridge

        async with InfluxSink(cfg.influx, name="bridge-influx") as sink:
            b = SensorBridge(cfg, influx=sink)
            import signal

            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, b.stop)
            await b.run_forever()

    from gridwatch.kafka import TopicSetupError

    try:
        asyncio.run(main())
    except TopicSetupError as e:
        console.print(f"[red]cannot start the bridge[/red]: {e}")
        raise typer.Exit(2) from None


@streams_app.command("worker")
def streams_worker(
    config: Path = ConfigOpt, log_level: str = typer.Option("info", help="Log level.")
) -> None:
    """Run a Faust stream worker (windows + rules -> InfluxDB and incident candidates)."""
    _logging(log_level)
    cfg = _load(config)
    from gridwatch.city import CityModel
    from gridwatch.registry import build_sensor_registry
    from gridwatch.streams.app import run_worker

    registry = build_sensor_registry(cfg, CityModel.load(cfg.city.geojson))
    sys.argv = [sys.argv[0], "worker"]  # Faust's Worker reads argv
    run_worker(cfg, registry, loglevel=log_level)


@dispatch_app.command("serve")
def dispatch_serve(
    config: Path = ConfigOpt, log_level: str = typer.Option("info", help="Log level.")
) -> None:
    """Run the dispatch service: candidates -> incidents -> pushes, deadlines, feedback, KPIs, HTTP API."""
    _logging(log_level)
    cfg = _load(config)
    from gridwatch.dispatch.service import run_service
    from gridwatch.kafka import TopicSetupError

    try:
        run_service(cfg)
    except TopicSetupError as e:
        console.print(f"[red]cannot start dispatch[/red]: {e}")
        raise typer.Exit(2) from None


@dispatch_app.command("migrate")
def dispatch_migrate(config: Path = ConfigOpt) -> None:
    """Create or upgrade the ledger's tables (Alembic `upgrade head`)."""
    cfg = _load(config)
    from gridwatch.config import secret_from_env
    from gridwatch.dispatch.ledger import Ledger

    led = Ledger(
        cfg.dispatch.ledger_url,
        password=secret_from_env(cfg.dispatch.ledger_password_env, what="dispatch.ledger_password_env"),
    )
    led.migrate()
    console.print(f"[green]ledger schema up to date[/green] ({led.engine.dialect.name})")


@dispatch_app.command("token")
def dispatch_token(
    name: str = typer.Argument(..., help="Who the token is for (a team, an operator)."),
    role: str = typer.Option("team", help="team, operator, supervisor or viewer."),
    node: str | None = typer.Option(None, help="Ladder node id (role team)."),
) -> None:
    """Make an API token: prints the token once (give it to its owner) and the config entry (its hash)."""
    import secrets

    from gridwatch.dispatch.api import hash_token

    token = secrets.token_urlsafe(24)
    console.print(f"token for {name} (shown once): [bold]{token}[/bold]")
    entry = {
        "name": name,
        "role": role,
        **({"node": node} if node else {}),
        "token_sha256": hash_token(token),
    }
    print(json.dumps(entry, ensure_ascii=False))


@dispatch_app.command("mqtt-acl")
def dispatch_mqtt_acl(
    config: Path = ConfigOpt,
    dispatch_user: str = typer.Option("gridwatch-dispatch", help="MQTT user of the dispatch service."),
    bridge_user: str = typer.Option("gridwatch-bridge", help="MQTT user of the sensor bridge."),
) -> None:
    """Print a mosquitto ACL file: each team (username = node id) reaches only its own topics."""
    from gridwatch.dispatch.mqtt_acl import acl_text

    print(acl_text(_load(config).mqtt.topic_prefix, dispatch_user=dispatch_user, bridge_user=bridge_user))


@cameras_app.command("worker")
def cameras_worker(
    config: Path = ConfigOpt, log_level: str = typer.Option("info", help="Log level.")
) -> None:
    """Run every configured camera: RTSP -> motion gate -> detector -> tracker, zones, rules -> Kafka."""
    _logging(log_level)
    cfg = _load(config)
    if not cfg.cameras.feeds:
        console.print("[yellow]no cameras configured (cameras.feeds is empty)[/yellow]")
        raise typer.Exit(2)
    from gridwatch.detectors.worker import run_camera_worker

    run_camera_worker(cfg)


@eval_app.command("detectors")
def eval_detectors(
    clips_dir: Path = typer.Argument(..., help="Folder of NAME.mp4 + NAME.json clips (e.g. var/eval-clips)."),
    config: Path | None = ConfigOpt,
    fps: float | None = typer.Option(
        None, "--fps", help="Analysed fps (default: the first camera's, else 2)."
    ),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="Write every candidate as a JSON line."
    ),
    verifier: Path | None = typer.Option(
        None, "--verifier", help="A false-alarm verifier directory (overrides cameras.verifier.model_dir)."
    ),
) -> None:
    """Run labelled clips through the camera pipeline and score the candidates (JSON last line)."""
    cfg = _load(config)
    if verifier is not None:
        v = cfg.cameras.verifier.model_copy(update={"model_dir": verifier})
        cfg = cfg.model_copy(update={"cameras": cfg.cameras.model_copy(update={"verifier": v})})
    from gridwatch.detectors.evaluate import EvalError, run_eval

    try:
        result = run_eval(clips_dir, cfg, fps=fps, predictions_path=predictions, console=console)
    except EvalError as e:
        console.print(f"[red]evaluation error[/red]\n{e}", highlight=False)
        raise typer.Exit(2) from None
    print(json.dumps(result))


@eval_app.command("frames")
def eval_frames(
    dataset: Path = typer.Argument(..., help="A dataset version directory, e.g. var/datasets/composite/v1."),
    model: str = typer.Option(
        ..., "--model", help="A model directory (model.yaml + ONNX) or detector:VERSION / detector@ALIAS."
    ),
    config: Path | None = ConfigOpt,
) -> None:
    """Frame-level COCO mAP / AP50 / AP75, per-class AP and false alarms of a detector model (JSON last line)."""
    cfg = _load(config)
    from gridwatch.detectors.frame_eval import FrameEvalError, run_frame_eval

    try:
        result = run_frame_eval(dataset, model, cfg, console=console)
    except FrameEvalError as e:
        console.print(f"[red]evaluation error[/red]\n{e}", highlight=False)
        raise typer.Exit(2) from None
    print(json.dumps(result))


@dashboards_app.command("push")
def dashboards_push(
    url: str = typer.Option(..., help="Grafana base URL, e.g. http://grafana:3000."),
    token_env: str = typer.Option(
        "GRAFANA_TOKEN", help="Environment variable holding a Grafana service-account token."
    ),
    datasources: bool = typer.Option(
        True, help="Also create / update the InfluxDB and PostgreSQL datasources."
    ),
    dir: Path | None = typer.Option(
        None, "--dir", help="Dashboards directory (default: the committed dashboards/)."
    ),
    insecure: bool = typer.Option(False, help="Do not verify Grafana's TLS certificate."),
    alerts: bool = typer.Option(True, help="Also create / update the alert rules (provisioning API)."),
) -> None:
    """Create folders, datasources, dashboards and alert rules in Grafana through its HTTP API (docs/DASHBOARDS.md)."""
    from gridwatch.config import secret_from_env
    from gridwatch.dashboards_gen.push import PushError, push_dashboards

    try:
        token = secret_from_env(token_env, what="--token-env")
        assert token is not None
        report = push_dashboards(
            url, token, datasources=datasources, dashboards_dir=dir, verify_tls=not insecure, alerts=alerts
        )
    except (ConfigError, PushError) as e:
        console.print(f"[red]dashboards push failed[/red]: {e}")
        raise typer.Exit(2) from None
    for o in report.objects:
        print(f"{o.kind:<10} {o.uid:<28} {o.action:<9} {o.title}")


dataset_app = typer.Typer(
    help="Datasets for retraining: hard examples -> versions, COCO / YOLO export, COCO import.",
    no_args_is_help=True,
)
app.add_typer(dataset_app, name="dataset")


def _dataset_errors(fn: Callable[[], object]) -> None:
    from gridwatch.dataset.cli import DatasetError

    try:
        fn()
    except DatasetError as e:
        console.print(f"[red]dataset error[/red]\n{e}", highlight=False)
        raise typer.Exit(2) from None


@dataset_app.command("sample")
def dataset_sample_cmd(
    from_dir: Path = typer.Option(..., "--from", help="The hard-example store (dispatch.hard_examples_dir)."),
    to: Path = typer.Option(..., "--to", help="The datasets root; the version goes to ROOT/NAME/v<N>."),
    name: str = typer.Option(..., "--name", help="The dataset's name."),
    seed: int = typer.Option(0, help="Seed of every random draw (same seed, same version)."),
    per_camera_cap: int | None = typer.Option(200, help="Most images of one camera in the version."),
    per_day_cap: int | None = typer.Option(500, help="Most images of one UTC day in the version."),
    random_share: float = typer.Option(0.05, help="Share of all examples picked at random."),
    positive_share: float = typer.Option(0.5, help="Share of the other confirmed/verified examples picked."),
    threshold: float = typer.Option(0.35, help="The detector's score threshold."),
    near_margin: float = typer.Option(
        0.1, help="Confidence within threshold + this is 'near the threshold'."
    ),
    labels: Path | None = typer.Option(
        None, help="labels.json or a model directory (default: the bundled model's)."
    ),
) -> None:
    """Sample hard examples into a new dataset version (docs/DATASETS.md); JSON summary last."""
    from gridwatch.dataset.cli import dataset_sample

    _dataset_errors(
        lambda: dataset_sample(
            from_dir,
            to,
            name,
            seed=seed,
            per_camera_cap=per_camera_cap,
            per_day_cap=per_day_cap,
            random_share=random_share,
            positive_share=positive_share,
            threshold=threshold,
            near_margin=near_margin,
            labels=labels,
            console=console,
        )  # fmt: skip
    )


@dataset_app.command("export")
def dataset_export_cmd(
    version_dir: Path = typer.Argument(..., help="A dataset version, e.g. var/datasets/city/v3."),
    fmt: str = typer.Option(..., "--format", help="coco or yolo."),
    out: Path = typer.Option(..., "--out", help="An absent or empty directory."),
) -> None:
    """Export a dataset version as COCO JSON or YOLO txt; JSON summary last."""
    from gridwatch.dataset.cli import dataset_export

    _dataset_errors(lambda: dataset_export(version_dir, fmt, out, console=console))


@dataset_app.command("import")
def dataset_import_cmd(
    version_dir: Path = typer.Argument(..., help="The version the file was exported from (the parent)."),
    coco_json: Path = typer.Argument(..., help="Corrected COCO JSON (CVAT, Label Studio, ...)."),
) -> None:
    """Import corrected COCO annotations as a NEW version (parent VERSION_DIR); JSON summary last."""
    from gridwatch.dataset.cli import dataset_import

    _dataset_errors(lambda: dataset_import(version_dir, coco_json, console=console))


@dataset_app.command("list")
def dataset_list_cmd(
    datasets_root: Path = typer.Argument(..., help="The datasets root, e.g. var/datasets."),
) -> None:
    """Every dataset and version with its counts; JSON summary last."""
    from gridwatch.dataset.cli import dataset_list

    _dataset_errors(lambda: dataset_list(datasets_root, console=console))


@dataset_app.command("composite")
def dataset_composite_cmd(
    name: str = typer.Argument(..., help="The dataset's name; the version goes to ROOT/NAME/v<N>."),
    to: Path = typer.Option(Path("var/datasets"), "--to", help="The datasets root."),
    images: int = typer.Option(200, "--images", help="How many composite images."),
    seed: int = typer.Option(0, "--seed", help="Seed of every draw (same seed, layout, footage: same set)."),
    layout: str = typer.Option("native", "--layout", help="native (768x576) or mirror (the held-out view)."),
    split: str = typer.Option("test", "--split", help="Split name recorded in the manifest and images."),
) -> None:
    """A fully labelled frame set composited onto vtest.avi's empty background (docs/DATASETS.md)."""
    from gridwatch.dataset.cli import dataset_composite

    _dataset_errors(
        lambda: dataset_composite(
            to, name, images=images, seed=seed, layout=layout, split=split, console=console
        )
    )


models_app = typer.Typer(
    help="The model registry: versions, lineage, figures; promote, roll back (docs/MODELS.md).",
    no_args_is_help=True,
)
app.add_typer(models_app, name="models")


def _registry(config: Path | None) -> Any:
    cfg = _load(config)
    try:
        from gridwatch.model_registry import ModelRegistry
    except ImportError:
        console.print("[red]the model registry needs the `train` extra[/red]: pip install -e '.[train]'")
        raise typer.Exit(2) from None
    return ModelRegistry(cfg.models.registry_dir)


def _registry_errors(fn: Callable[[], object]) -> object:
    from gridwatch.model_registry import RegistryError

    try:
        return fn()
    except RegistryError as e:
        console.print(f"[red]refused[/red]: {e}", highlight=False)
        raise typer.Exit(2) from None


@models_app.command("list")
def models_list(
    kind: str = typer.Option("detector", help="detector or verifier."), config: Path = ConfigOpt
) -> None:
    """Every version with its aliases, lineage and headline figures; JSON last."""
    reg = _registry(config)
    vs = _registry_errors(lambda: reg.versions(kind))
    from rich.table import Table

    t = Table(title=f"{kind} versions ({reg.root})")
    for col in ("version", "aliases", "parent", "dataset", "clips F1", "clips S", "sha256"):
        t.add_column(col)
    for v in vs:  # type: ignore[attr-defined]
        t.add_row(
            str(v.version), ", ".join(v.aliases), v.parent or "-", v.dataset or "-",
            str(v.metrics.get("clips.overall.f1", "-")), str(v.metrics.get("clips.overall.s_score", "-")),
            v.sha256[:12],
        )  # fmt: skip
    console.print(t)
    print(json.dumps({"kind": kind, "versions": [v.as_dict() for v in vs]}))  # type: ignore[attr-defined]


@models_app.command("show")
def models_show(
    kind: str = typer.Argument(..., help="detector or verifier."),
    ref: str = typer.Argument(..., help="A version number or an alias (production, shadow, candidate)."),
    config: Path = ConfigOpt,
) -> None:
    """One version: files, sha256, parent, dataset, every metric, aliases; and the promotion history."""
    reg = _registry(config)
    v = _registry_errors(lambda: reg.get(kind, ref))
    print(json.dumps({**v.as_dict(), "history": reg.history(kind)}, indent=1))  # type: ignore[attr-defined]


@models_app.command("register")
def models_register(
    model_dir: Path = typer.Argument(..., help="A model directory: one .onnx plus its card and label map."),
    kind: str = typer.Option("detector", help="detector or verifier."),
    eval_json: Path | None = typer.Option(
        None, help="The last line of `gridwatch eval detectors` on the standard clips: its figures."
    ),
    frames_json: Path | None = typer.Option(
        None, help="The last line of `gridwatch eval frames` on the standard frame set: its figures."
    ),
    parent: str | None = typer.Option(None, help="The version it was trained from."),
    dataset: str | None = typer.Option(None, help="The dataset version it was trained on."),
    description: str = typer.Option("", help="One line on what changed."),
    config: Path = ConfigOpt,
) -> None:
    """Register a new version (sha256, lineage, figures); JSON last."""
    from gridwatch.detectors.frame_eval import frames_metrics
    from gridwatch.model_registry import flatten_eval

    metrics: dict[str, float] = {}
    for path, command, key, flatten in (
        (eval_json, "eval detectors", "overall", flatten_eval),
        (frames_json, "eval frames", "map", frames_metrics),
    ):
        if path is None:
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[-1])
            if not isinstance(doc, dict) or key not in doc:
                raise ValueError(f"no {key!r} key")
            metrics |= flatten(doc)
        except (OSError, ValueError, IndexError, AttributeError) as e:
            console.print(f"[red]{path}[/red]: not the JSON figures of `gridwatch {command}` ({e})")
            raise typer.Exit(2) from None
    reg = _registry(config)
    v = _registry_errors(
        lambda: reg.register(
            model_dir, kind=kind, metrics=metrics, parent=parent, dataset=dataset, description=description
        )
    )
    print(json.dumps(v.as_dict()))  # type: ignore[attr-defined]


@models_app.command("promote")
def models_promote(
    kind: str = typer.Argument(..., help="detector or verifier."),
    version: int = typer.Argument(..., help="The version to point the alias at."),
    alias: str = typer.Option("production", help="production, shadow or candidate."),
    force: bool = typer.Option(False, help="Promote even if worse than production on a standard metric."),
    reason: str = typer.Option("", help="Why (required with --force; recorded)."),
    by: str = typer.Option("", help="Who (recorded)."),
    config: Path = ConfigOpt,
) -> None:
    """Point an alias at a version; production refuses a version worse than the current one."""
    reg = _registry(config)
    d = _registry_errors(lambda: reg.promote(kind, version, alias=alias, force=force, reason=reason, by=by))
    print(json.dumps({"kind": kind, "alias": alias, "version": d.version, "sha256": d.sha256}))  # type: ignore[attr-defined]


@models_app.command("rollback")
def models_rollback(
    kind: str = typer.Argument(..., help="detector or verifier."),
    alias: str = typer.Option("production", help="production, shadow or candidate."),
    reason: str = typer.Option("", help="Why (recorded)."),
    by: str = typer.Option("", help="Who (recorded)."),
    config: Path = ConfigOpt,
) -> None:
    """Back to the version the alias held before its latest promotion."""
    reg = _registry(config)
    d = _registry_errors(lambda: reg.rollback(kind, alias=alias, reason=reason, by=by))
    print(json.dumps({"kind": kind, "alias": alias, "version": d.version, "sha256": d.sha256}))  # type: ignore[attr-defined]


@models_app.command("unset")
def models_unset(
    kind: str = typer.Argument(..., help="detector or verifier."),
    alias: str = typer.Option(..., help="shadow or candidate (production is never unset)."),
    reason: str = typer.Option("", help="Why (recorded)."),
    by: str = typer.Option("", help="Who (recorded)."),
    config: Path = ConfigOpt,
) -> None:
    """Take an alias off its version: `--alias shadow` ends a shadow run (workers stop it at their next poll)."""
    reg = _registry(config)
    held = _registry_errors(lambda: reg.unset(kind, alias=alias, reason=reason, by=by))
    print(json.dumps({"kind": kind, "alias": alias, "unset": held}))


@models_app.command("compare")
def models_compare(
    records: Path | None = typer.Option(
        None, "--records", help="Shadow record directory (default: cameras.shadow.record_dir)."
    ),
    hours: float | None = typer.Option(None, "--hours", help="Only the last N hours of records."),
    camera: list[str] = typer.Option([], "--camera", help="Only this camera (repeatable)."),
    shadow_version: int | None = typer.Option(None, "--shadow-version", help="Only this shadow version."),
    window_s: float = typer.Option(10.0, "--window-s", help="Candidates within this many seconds pair."),
    miss_window_s: float = typer.Option(
        600.0,
        "--miss-window-s",
        help="A shadow candidate up to this long before a person's report catches it.",
    ),
    ledger: str | None = typer.Option(
        None, "--ledger", help="Ledger URL for the operators' verdicts (default: dispatch.ledger_url)."
    ),
    no_ledger: bool = typer.Option(False, "--no-ledger", help="Do not read verdicts."),
    clips: Path | None = typer.Option(None, "--clips", help="Offline: labelled clips (e.g. var/eval-clips)."),
    production: str = typer.Option(
        "production", "--production", help="--clips: model dir, alias or version."
    ),
    shadow: str = typer.Option("shadow", "--shadow", help="--clips: model dir, alias or version."),
    fps: float | None = typer.Option(
        None, "--fps", help="--clips: analysed fps (default as eval detectors)."
    ),
    config: Path = ConfigOpt,
) -> None:
    """The shadow against production: agreement, false alarms avoided, misses caught, cost per frame."""
    import time

    from gridwatch import model_compare as mc

    cfg = _load(config)
    if clips is not None:
        from gridwatch.detectors.evaluate import EvalError

        try:
            p_dir, s_dir = mc.resolve_model_ref(production, cfg), mc.resolve_model_ref(shadow, cfg)
            report = mc.compare_clips(clips, cfg, p_dir, s_dir, fps=fps, window_s=window_s, console=console)
        except (EvalError, ValueError) as e:
            console.print(f"[red]compare error[/red]\n{e}", highlight=False)
            raise typer.Exit(2) from None
        mc.print_report(console, report)
        print(json.dumps(report))
        return
    since = int((time.time() - hours * 3600) * 1000) if hours is not None else None
    recs = mc.read_records(records or cfg.cameras.shadow.record_dir, cameras=camera or None, since_ms=since)
    verdicts = None
    url = ledger or cfg.dispatch.ledger_url
    local = url.removeprefix("sqlite:///")
    if not no_ledger and (not url.startswith("sqlite:///") or Path(local).is_file()):
        from gridwatch.config import secret_from_env
        from gridwatch.dispatch.ledger import Ledger

        try:
            pw = secret_from_env(cfg.dispatch.ledger_password_env, what="dispatch.ledger_password_env")
            led = Ledger(url, password=pw)
            try:
                verdicts = mc.ledger_verdicts(led, since_ms=since)
            finally:
                led.close()
        except Exception as e:  # noqa: BLE001 - no verdicts is a smaller report, not a failure
            console.print(f"[yellow]no verdicts[/yellow]: the ledger could not be read ({type(e).__name__})")
    report = mc.compare_records(
        recs, verdicts, window_s=window_s, miss_window_s=miss_window_s, shadow_version=shadow_version
    )
    mc.print_report(console, report)
    print(json.dumps(report))


train_app = typer.Typer(
    help="Training on this machine's CPU: the false-alarm verifier (docs/TRAINING.md).", no_args_is_help=True
)
app.add_typer(train_app, name="train")


@train_app.command("verifier")
def train_verifier_cli(
    dataset: Path = typer.Option(..., "--dataset", help="A dataset version, e.g. var/datasets/city/v3."),
    out: Path = typer.Option(..., "--out", help="The model directory to write (absent or empty)."),
    seed: int = typer.Option(0, help="Seed of the fold assignment (same data and seed: same model.onnx)."),
    detector: Path | None = typer.Option(
        None, help="Detector model directory whose features it uses (default: the bundled NanoDet-g 416)."
    ),
    eval_sets: list[Path] | None = typer.Option(
        None, "--eval", help="A held-out dataset version to report figures on (repeatable)."
    ),
    register: bool = typer.Option(
        False, help="Register OUT as a new `verifier` version (models.registry_dir)."
    ),
    parent: str | None = typer.Option(None, help="The verifier version it was trained to replace (lineage)."),
    config: Path = ConfigOpt,
) -> None:
    """Train the false-alarm verifier on a dataset version (docs/TRAINING.md); JSON summary last."""
    from gridwatch.train.cli import train_verifier_cmd

    registry_dir = _load(config).models.registry_dir if register else None
    _dataset_errors(
        lambda: _registry_errors(
            lambda: train_verifier_cmd(
                dataset,
                out,
                seed=seed,
                detector=detector,
                eval_datasets=eval_sets or [],
                register=register,
                registry_dir=registry_dir,
                parent=parent,
                console=console,
            )  # fmt: skip
        )
    )


@train_app.command("footage-dataset")
def train_footage_dataset_cli(
    video: Path = typer.Argument(..., help="A static camera's video (e.g. var/footage/vtest.h264.mp4)."),
    to: Path = typer.Option(..., "--to", help="The datasets root; the version goes to ROOT/NAME/v<N>."),
    name: str = typer.Option(..., "--name", help="The dataset's name."),
    start: float = typer.Option(0.0, help="First second used."),
    end: float | None = typer.Option(None, help="Seconds after this are not used (default: the end)."),
    every: float = typer.Option(1.0, help="One frame every this many seconds."),
    window: float = typer.Option(30.0, help="Seconds of video in each empty-scene median."),
) -> None:
    """A labelled dataset version from static-camera footage (background-model labels, docs/TRAINING.md)."""
    from gridwatch.train.cli import train_footage_dataset

    _dataset_errors(
        lambda: train_footage_dataset(
            video, to, name, start_s=start, end_s=end, every_s=every, window_s=window, console=console
        )
    )


@train_app.command("detector")
def train_detector_cli(
    dataset: Path = typer.Option(
        ..., "--dataset", help="A dataset version with the new class, e.g. var/datasets/bags/v1."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Run directory: cache, checkpoint, and the model in OUT/model."
    ),
    parent: Path | None = typer.Option(
        None, "--from", help="Parent model directory (default: the bundled NanoDet-g 416)."
    ),
    steps: int = typer.Option(300, help="Training steps."),
    batch: int = typer.Option(8, help="Images per step."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate (warm-up, then cosine to 10 %)."),
    seed: int = typer.Option(0, help="Seed of the batch draws (same data and seed: same run)."),
    new_class: list[str] | None = typer.Option(
        None,
        "--new-class",
        help="NAME or NAME=SLOT (a parent label to reuse, e.g. bag=toaster); repeatable. "
        "Default: the dataset's categories the parent lacks, in free slots (toaster, hair drier, giraffe...).",
    ),
    replay: float = typer.Option(0.25, help="Share of each batch from images without the new class."),
    holdout: float = typer.Option(
        0.2, help="Share of the dataset (its last images) held out for the figures."
    ),
    eval_sets: list[Path] | None = typer.Option(
        None, "--eval", help="Another held-out dataset version (repeatable)."
    ),
    checkpoint_every: int = typer.Option(25, help="Steps between checkpoints."),
    resume: bool = typer.Option(False, help="Continue the run in OUT from its checkpoint (and cache)."),
    threads: int | None = typer.Option(None, help="torch threads (default: torch's)."),
    register: bool = typer.Option(
        False, help="Register OUT/model as a new `detector` version (models.registry_dir)."
    ),
    config: Path = ConfigOpt,
) -> None:
    """Fine-tune the detector's head on this CPU to add a class (docs/TRAINING.md); JSON summary last."""
    from gridwatch.train.cli import train_detector_cmd

    registry_dir = _load(config).models.registry_dir if register else None
    _dataset_errors(
        lambda: _registry_errors(
            lambda: train_detector_cmd(
                dataset,
                out,
                parent=parent,
                steps=steps,
                batch=batch,
                lr=lr,
                seed=seed,
                new_classes=new_class,
                replay=replay,
                holdout=holdout,
                eval_datasets=eval_sets or [],
                checkpoint_every=checkpoint_every,
                resume=resume,
                threads=threads,
                register=register,
                registry_dir=registry_dir,
                console=console,
            )  # fmt: skip
        )
    )


@report_app.command("monthly")
def report_monthly(
    month: str = typer.Option(..., help="The month, YYYY-MM (the centre's time zone)."),
    town: str | None = typer.Option(
        None, help="A town id: rank its grids (default: the district, ranking towns)."
    ),
    out: Path = typer.Option(Path("var/reports"), help="Output directory."),
    config: Path = ConfigOpt,
    pdf: bool = typer.Option(True, help="Also print a PDF with headless Chromium."),
) -> None:
    """The monthly bulletin: KPIs, ranking of towns or grids, charts; HTML and PDF."""
    cfg = _load(config)
    from gridwatch.city import CityModel
    from gridwatch.config import secret_from_env
    from gridwatch.dispatch.ledger import Ledger
    from gridwatch.dispatch.report import build_monthly_report, write_pdf

    led = Ledger(
        cfg.dispatch.ledger_url,
        password=secret_from_env(cfg.dispatch.ledger_password_env, what="dispatch.ledger_password_env"),
    )
    try:
        rep = build_monthly_report(led, CityModel.load(cfg.city.geojson), month, cfg.site.timezone, town)
    except (ValueError, KeyError) as e:
        console.print(f"[red]cannot build the report[/red]: {str(e).strip(chr(39))}")
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"bulletin-{rep.scope_id}-{month}"
    stem.with_suffix(".html").write_text(rep.html, encoding="utf-8")
    console.print(
        f"wrote {stem.with_suffix('.html')} ({rep.total.received} incidents, {len(rep.ranking)} ranked)"
    )
    if pdf:
        write_pdf(stem.with_suffix(".html"), stem.with_suffix(".pdf"))
        console.print(f"wrote {stem.with_suffix('.pdf')}")


@app.command("demo")
def demo(
    workdir: Path = typer.Option(
        Path("var/demo"), help="Where the embedded servers keep their data and logs."
    ),
    history_hours: float = typer.Option(3.0, help="Hours of sensor history to replay."),
    live_s: float = typer.Option(20.0, help="Seconds of live feed after the replay."),
    keep: bool = typer.Option(False, help="Keep the servers running after the summary until Ctrl-C."),
    loop: bool = typer.Option(
        True, help="End with the retraining loop (dataset, verifier, fine-tune, shadow, promotion)."
    ),
) -> None:
    """Run the whole sensor loop on embedded servers: MQTT -> Kafka -> Faust -> InfluxDB + candidates."""
    from gridwatch.demo import run_demo

    code = run_demo(
        workdir=workdir, history_hours=history_hours, live_s=live_s, keep=keep, console=console, loop=loop
    )
    raise typer.Exit(code)


@bench_app.command("train")
def bench_train_cmd(
    batch: int = typer.Option(8, help="Images per detector step (416x416 neck features)."),
    steps: int = typer.Option(10, help="Timed steps per phase (medians, after one warm-up step)."),
    rows: int = typer.Option(1904, help="Verifier rows (343 features each)."),
    threads: int = typer.Option(2, help="torch threads."),
) -> None:
    """Seconds per step and peak memory of the detector head fine-tune and the verifier fit, beside their raw limits."""
    from gridwatch.train.bench import bench_train

    r = bench_train(batch=batch, steps=steps, verifier_rows=rows, threads=threads)
    for part in ("detector_head", "verifier"):
        f = r[part]
        console.print(
            f"{part}: {f['s_per_step']} s/step vs raw {f['raw_s_per_step']} s (x{f['ratio']}); "
            f"peak RSS {f['peak_rss_mb']} MB (raw {f['raw_peak_rss_mb']} MB, {f['rss_before_mb']} MB before)"
        )
    print(json.dumps(r))


@bench_app.command("city")
def bench_city(lookups: int = typer.Option(100_000, help="Point lookups to time.")) -> None:
    """Point -> grid lookup time on the demo city, beside a bare STRtree query."""
    from gridwatch.bench.city import run_city_bench

    print(json.dumps(run_city_bench(lookups=lookups)))


@bench_app.command("dispatch")
def bench_dispatch(
    incidents: int = typer.Option(10_000, help="Open incidents to create (distinct matters)."),
    due: int = typer.Option(1000, help="How many of them fall due during the run."),
    db: str = typer.Option(
        "sqlite", help="Ledger database: sqlite (embedded) or postgresql (started for the run)."
    ),
    spread_s: float = typer.Option(30.0, help="Seconds over which those deadlines fall due."),
) -> None:
    """Incidents/s through fusion, routing and the ledger (beside bare inserts); escalation lag p50/p99."""
    from gridwatch.bench.dispatch import run_dispatch_bench

    if db not in ("sqlite", "postgresql"):
        console.print(f"[red]--db: {db!r} is not sqlite or postgresql[/red]")
        raise typer.Exit(2)
    print(
        json.dumps(
            run_dispatch_bench(incidents=incidents, due=due, db=db, spread_s=spread_s, console=console)
        )
    )


@bench_app.command("console")
def bench_console(
    open_: int = typer.Option(10_000, "--open", help="Open incidents in the ledger during the run."),
    events: int = typer.Option(200, help="Candidates to time, one at a time."),
) -> None:
    """Candidate on Kafka -> its row in the console in headless chromium, p50/p99, beside the bare event stream."""
    from gridwatch.bench.console import run_console_bench

    print(json.dumps(run_console_bench(open_incidents=open_, events=events, console=console)))


@bench_app.command("cameras")
def bench_cameras(
    cameras: str = typer.Option("4,8,12,16,20", help="Camera counts to try, comma-separated (a ladder)."),
    fps: float = typer.Option(1.0, help="Analysed frames per second per camera."),
    duration: float = typer.Option(20.0, help="Seconds measured per step (after warm-up)."),
) -> None:
    """How many 640x480 25 fps RTSP cameras this machine analyses at --fps, beside a decode+gate+inference loop."""
    from gridwatch.bench.cameras import run_cameras_bench

    counts = [int(c) for c in cameras.split(",")]
    print(json.dumps(run_cameras_bench(cameras=counts, fps=fps, duration_s=duration, console=console)))


@bench_app.command("sensors")
def bench_sensors(
    rates: str = typer.Option(
        "5000,10000,20000,30000", help="Offered readings/s, comma-separated (a ladder)."
    ),
    duration: float = typer.Option(20.0, help="Seconds per offered rate."),
    sensors: int = typer.Option(2000, help="Simulated sensors."),
    workdir: Path = typer.Option(Path("var/bench-sensors"), help="Servers' data and logs."),
) -> None:
    """End-to-end readings/s and p50/p99 latency MQTT -> Kafka -> Faust -> InfluxDB, stages beside raw limits."""
    import shutil

    from gridwatch.bench.sensors import run_sensors_bench

    if workdir.exists():
        shutil.rmtree(workdir)
    result = run_sensors_bench(
        rates=[int(r) for r in rates.split(",")],
        duration_s=duration,
        sensors=sensors,
        workdir=workdir,
        console=console,
    )
    print(json.dumps(result))


@bench_app.command("eval")
def bench_eval(
    clips_dir: Path = typer.Option(
        Path("var/eval-clips"), "--clips-dir", help="The shipped clips (scripts/make_eval_clips.py)."
    ),
    clips: str | None = typer.Option(
        None, "--clips", help="Comma-separated clip names (default: all of CLIPS_DIR)."
    ),
    fps: float | None = typer.Option(None, "--fps", help="Analysed fps (default: as `eval detectors`)."),
    dataset: Path | None = typer.Option(
        None,
        "--dataset",
        help="Dataset version for `eval frames` (default: a composite set made for the run).",
    ),
    images: int = typer.Option(100, "--images", help="Composite images made when --dataset is not given."),
    config: Path | None = ConfigOpt,
) -> None:
    """`eval detectors` clips/s vs real time and `eval frames` frames/s, each beside a bare detector loop."""
    cfg = _load(config)
    from gridwatch.bench.eval import run_eval_bench
    from gridwatch.detectors.evaluate import EvalError
    from gridwatch.detectors.frame_eval import FrameEvalError

    names = [c.strip() for c in clips.split(",") if c.strip()] if clips else None
    try:
        result = run_eval_bench(
            cfg, clips_dir=clips_dir, clips=names, fps=fps, dataset=dataset, images=images, console=console
        )
    except (EvalError, FrameEvalError, ValueError) as e:
        console.print(f"[red]bench error[/red]\n{e}", highlight=False)
        raise typer.Exit(2) from None
    print(json.dumps(result))


if __name__ == "__main__":  # pragma: no cover
    app()
