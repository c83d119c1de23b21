"""docker-compose.yml and deploy/, checked without Docker (which cannot run here).

Structure: every service is supervised (health check, restart policy), images are pinned, every
`${VAR}` has an entry in .env.example, every mounted file exists, the gridwatch services run real
CLI commands and get exactly the secrets their config names, the Grafana provisioning and the
deploy config agree with the compose file.

Behaviour, on the real servers the tests already run: the mosquitto config, password entrypoint
and ACL on a real mosquitto; the PostgreSQL init script on the real PostgreSQL (owner migrates,
Grafana's role reads and cannot write); the services' heartbeat health check on the real InfluxDB.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import pytest
import yaml

from gridwatch.config import GridwatchConfig, load_config
from gridwatch.dashboards_gen.alerts import ALERT_ENV
from gridwatch.dashboards_gen.provisioning import DASHBOARDS_MOUNT, DATASOURCE_ENV, render_files
from gridwatch.devservers.process import free_port
from gridwatch.dispatch.mqtt_acl import acl_text
from gridwatch.influx import health_lines

REPO = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (REPO / "docker-compose.yml").read_text("utf-8")
COMPOSE = yaml.safe_load(COMPOSE_TEXT)  # SafeLoader resolves the `<<:` merge keys as compose does
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
TOP_VOLUMES = set(COMPOSE.get("volumes") or {})
GRIDWATCH_SERVICES = {name: s for name, s in SERVICES.items() if "build" in s}
DEPLOY_CONFIG = REPO / "deploy" / "gridwatch" / "gridwatch.yaml"
CONFIG_IN_CONTAINER = "/etc/gridwatch/gridwatch.yaml"

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}; `$$` is a literal dollar.
_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    out = {}
    for raw in (REPO / ".env.example").read_text("utf-8").splitlines():
        s = raw.strip()
        if s and not s.startswith("#"):
            key, _, value = s.partition("=")
            out[key.strip()] = value.strip().strip("'\"")
    return out


def resolve(text: str, env: dict[str, str] | None = None) -> str:
    """Compose interpolation of one string, with .env.example's values (or the defaults)."""
    env = env_example() if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        return arg if op in (":-", "-") else ""

    return _VAR.sub(sub, text)


# --- structure ----------------------------------------------------------------------------------
def test_every_service_is_supervised_and_pinned() -> None:
    assert {"mosquitto", "redpanda", "influxdb", "postgres", "grafana", "mediamtx"} <= set(SERVICES)
    assert {"bridge", "streams", "dispatch", "cameras"} == set(GRIDWATCH_SERVICES)
    for name, s in SERVICES.items():
        assert s.get("restart") in ("unless-stopped", "always", "on-failure"), name
        hc = s.get("healthcheck") or {}
        assert hc.get("test") and not hc.get("disable"), f"{name}: no health check"
        assert {"interval", "timeout", "retries", "start_period"} <= set(hc), name
        image = s["image"]
        if name in GRIDWATCH_SERVICES:
            assert s["build"] == {"context": ".", "dockerfile": "deploy/gridwatch/Dockerfile"}
        else:
            tag = image.rsplit(":", 1)[-1]
            assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+", tag), (
                f"{name}: unpinned {image}"
            )
        for dep in s.get("depends_on", {}):
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
    grafana = SERVICES["grafana"]["image"]
    assert re.fullmatch(r"grafana/grafana-oss:11\.3\.\d+", grafana)  # the schemaVersion 39 dashboards
    # named volumes are declared, and nothing that is scaled holds a named volume or a fixed port
    declared = set(COMPOSE["volumes"])
    for name, s in SERVICES.items():
        for v in s.get("volumes", []):
            src = v.split(":")[0]
            if not src.startswith((".", "/", "$")):
                assert src in declared, f"{name}: undeclared volume {src}"
    streams = SERVICES["streams"]
    assert "ports" not in streams and all(v.split(":")[0].startswith(".") for v in streams["volumes"])
    assert "container_name" not in streams


def test_every_variable_is_in_env_example_and_every_example_is_used() -> None:
    used = {m.group(1) for m in _VAR.finditer(COMPOSE_TEXT)}
    example = env_example()
    assert used - set(example) == set(), "add these to .env.example"
    # COMPOSE_PROJECT_NAME is read by compose itself (the file has no top-level `name:`)
    assert set(example) - used - {"COMPOSE_PROJECT_NAME"} == set(), (
        "these .env.example entries are used nowhere"
    )
    required = {m.group(1) for m in _VAR.finditer(COMPOSE_TEXT) if m.group(2) in (":?", "?")}
    assert all(example[v] for v in required), "required variables need an example value"


def test_mounted_files_exist_in_the_repository() -> None:
    fetch_script = (REPO / "scripts" / "fetch_footage.sh").read_text("utf-8")
    for name, s in SERVICES.items():
        for v in s.get("volumes", []):
            host, container = resolve(v).split(":")[:2]
            if not host.startswith((".", "/")):
                continue  # a named volume
            assert host.startswith("./"), f"{name}: bind mounts are relative to the repository: {v}"
            path = REPO / host
            if host.startswith("./var/"):
                # made on the host by scripts/fetch_footage.sh (never committed): check the script makes
                # the directory and every file MediaMTX plays from it
                assert (
                    'OUT="${GRIDWATCH_FOOTAGE_DIR:-var/footage}"' in fetch_script and container == "/footage"
                )
                played = re.findall(r"/footage/([\w.]+)", (REPO / "deploy/mediamtx/mediamtx.yml").read_text())
                assert played and all(f'$OUT/{f}"' in fetch_script for f in played), played
                continue
            assert path.exists(), f"{name}: {host} does not exist"
    dockerfile = (REPO / "deploy/gridwatch/Dockerfile").read_text("utf-8")
    for src in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", dockerfile, re.M)
    ignore = (REPO / "deploy/gridwatch/Dockerfile.dockerignore").read_text("utf-8")
    for src in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert f"!{src.rstrip('/')}" in ignore or f"!{src.rstrip('/')}/" in ignore, (
            f"{src} excluded from the context"
        )


def _cli_help(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gridwatch.cli", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )


def test_gridwatch_services_run_real_cli_commands() -> None:
    top = _cli_help()
    assert top.returncode == 0, top.stderr
    commands = set(re.findall(r"^[│|]? ?([a-z][\w-]*)\s{2,}", top.stdout, re.M))  # rows of the Commands box
    checked = []
    for name, s in GRIDWATCH_SERVICES.items():
        cmd = s["command"]
        path = [t for t in cmd[: next((i for i, t in enumerate(cmd) if t.startswith("-")), len(cmd))]]
        if path[0] not in commands:
            assert path == ["cameras", "worker"], f"{name}: `gridwatch {path[0]}` does not exist"
            continue  # the camera worker's command is still to come: skipped until it exists
        res = _cli_help(*path)
        assert res.returncode == 0, f"{name}: gridwatch {' '.join(path)}: {res.stderr}"
        for opt in (t for t in cmd if t.startswith("-")):
            assert opt in res.stdout, f"{name}: gridwatch {' '.join(path)} has no option {opt}"
        assert cmd[cmd.index("-c") + 1] == CONFIG_IN_CONTAINER
        checked.append(name)
    assert {"bridge", "streams", "dispatch"} <= set(checked)


# --- the deploy config and what each service gets ------------------------------------------------
@pytest.fixture(scope="module")
def deploy_cfg() -> GridwatchConfig:
    return load_config(DEPLOY_CONFIG)


def _env_names_used(cfg: GridwatchConfig) -> dict[str, set[str]]:
    """The secrets (environment variable names) each gridwatch service reads, from its config."""
    influx = {cfg.influx.token_env} - {None}
    return {
        "bridge": influx | {cfg.mqtt.password_env} - {None},
        "streams": set(influx),
        "dispatch": influx | {cfg.dispatch.ledger_password_env, cfg.dispatch.mqtt_password_env} - {None},
        "cameras": influx | {f.source.password_env for f in cfg.cameras.feeds} - {None},
    }


def test_each_service_gets_the_secrets_its_config_names_and_no_others(deploy_cfg: GridwatchConfig) -> None:
    secrets_of_all = set().union(*_env_names_used(deploy_cfg).values())
    for name, needed in _env_names_used(deploy_cfg).items():
        env = set(GRIDWATCH_SERVICES[name]["environment"])
        assert needed <= env, f"{name} lacks {needed - env}"
        assert not (env & secrets_of_all) - needed, (
            f"{name} gets secrets it does not use: {(env & secrets_of_all) - needed}"
        )
        for v in GRIDWATCH_SERVICES[name]["volumes"]:
            if v.startswith("./deploy/gridwatch/gridwatch.yaml:"):
                assert v.split(":")[1] == CONFIG_IN_CONTAINER
                break
        else:
            pytest.fail(f"{name}: the config file is not mounted")


def test_deploy_config_points_at_the_compose_services(deploy_cfg: GridwatchConfig) -> None:
    assert deploy_cfg.mqtt.host == "mosquitto" and deploy_cfg.kafka.profile == "production"
    assert {h.split(":")[0] for h in deploy_cfg.kafka.bootstrap_servers.split(",")} == {"redpanda"}
    assert urlsplit(deploy_cfg.influx.url).hostname == "influxdb"
    assert urlsplit(deploy_cfg.dispatch.ledger_url).hostname == "postgres"
    assert (
        urlsplit(deploy_cfg.dispatch.ledger_url).path == "/gridwatch"
    )  # made by deploy/postgres/init-ledger.sh
    influx_env = SERVICES["influxdb"]["environment"]
    assert influx_env["DOCKER_INFLUXDB_INIT_BUCKET"] == deploy_cfg.influx.bucket == "gridwatch"
    assert influx_env["DOCKER_INFLUXDB_INIT_ORG"] == deploy_cfg.influx.org
    assert SERVICES["grafana"]["environment"]["GRIDWATCH_INFLUX_DB"] == deploy_cfg.influx.bucket
    assert deploy_cfg.dispatch.api_host == "0.0.0.0"
    assert resolve(SERVICES["dispatch"]["ports"][0]).endswith(f":{deploy_cfg.dispatch.api_port}")
    paths = yaml.safe_load((REPO / "deploy/mediamtx/mediamtx.yml").read_text())["paths"]
    for feed in deploy_cfg.cameras.feeds:
        url = urlsplit(feed.source.url)
        assert (
            url.hostname == "mediamtx" and url.path.lstrip("/") in paths and feed.source.username == "viewer"
        )
    assert deploy_cfg.site.timezone == env_example()["GRIDWATCH_TIMEZONE"]


def test_the_retraining_loop_shares_its_directories(deploy_cfg: GridwatchConfig) -> None:
    """Verdicts (dispatch) copy the cameras' evidence and ask the camera workers for frames; the
    workers follow the registry: those directories must be one volume in both services."""

    def volume_for(service: str, path: Path) -> str | None:
        for v in SERVICES[service].get("volumes", []):
            src, dst = v.split(":")[:2]
            if not src.startswith(".") and (path == Path(dst) or Path(dst) in path.parents):
                return src
        return None

    shared = {
        "evidence": deploy_cfg.cameras.evidence.directory,
        "hard examples": deploy_cfg.dispatch.hard_examples_dir,
        "registry": deploy_cfg.models.registry_dir,
    }
    for what, path in shared.items():
        assert path is not None and path.is_absolute(), what
        vols = {volume_for(s, path) for s in ("dispatch", "cameras")}
        assert len(vols) == 1 and None not in vols, f"{what} ({path}): volumes {vols}"
        assert next(iter(vols)) in TOP_VOLUMES, what


def test_acl_is_what_gridwatch_generates(deploy_cfg: GridwatchConfig) -> None:
    committed = (REPO / "deploy/mosquitto/acl").read_text("utf-8")
    expected = acl_text(
        deploy_cfg.mqtt.topic_prefix,
        dispatch_user=deploy_cfg.dispatch.mqtt_username,
        bridge_user=deploy_cfg.mqtt.username,
    )
    assert committed.strip() == expected.strip(), (
        "regenerate: gridwatch dispatch mqtt-acl -c deploy/gridwatch/gridwatch.yaml"
    )


def test_grafana_provisioning_is_mounted_and_fed(deploy_cfg: GridwatchConfig) -> None:
    g = SERVICES["grafana"]
    env = g["environment"]
    assert set(DATASOURCE_ENV) <= set(env), f"grafana lacks {set(DATASOURCE_ENV) - set(env)}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in g["volumes"]}
    assert mounts[DASHBOARDS_MOUNT] == "./dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == "./dashboards/provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./dashboards/provisioning/dashboards"
    # alerting: the rules, contact point and policy; the webhook URL the contact point names is set
    alerting = mounts["/etc/grafana/provisioning/alerting"]
    assert alerting == "./dashboards/provisioning/alerting"
    assert {f"./dashboards/{rel}" for rel in render_files() if rel.startswith("provisioning/alerting/")} == {
        f"{alerting}/{p.name}" for p in (REPO / alerting).iterdir()
    }
    assert set(ALERT_ENV) <= set(env), f"grafana lacks {set(ALERT_ENV) - set(env)}"
    assert all(resolve(env[v]) for v in ALERT_ENV)  # required: Grafana would not start without it
    assert resolve(env["GF_SERVER_ROOT_URL"]).startswith("http")  # the links in alert messages
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].removeprefix(DASHBOARDS_MOUNT + "/")
    assert home in render_files() and (REPO / "dashboards" / home).is_file()
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GRIDWATCH_INFLUX_URL"] == deploy_cfg.influx.url
    assert env["GRIDWATCH_LEDGER_HOST"].split(":")[0] == urlsplit(deploy_cfg.dispatch.ledger_url).hostname


def _load_healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location(
        "gridwatch_healthcheck", REPO / "deploy/gridwatch/healthcheck.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_healthcheck_defaults_are_the_config_models_defaults() -> None:
    hc = _load_healthcheck()
    cfg = GridwatchConfig.model_validate({"version": 1, "city": {"geojson": "x.geojson"}})
    for key, value in hc.DEFAULTS.items():
        section, name = key.split(".")
        assert getattr(getattr(cfg, section), name) == value, key


# --- behaviour on real servers --------------------------------------------------------------------
def test_heartbeat_health_check_on_a_real_influxdb(influxdb) -> None:
    hc = _load_healthcheck()
    db = f"heartbeat_{uuid.uuid4().hex[:8]}"
    influxdb.create_database(db)
    cfg = {"influx": {"url": influxdb.url, "bucket": f"{db}/autogen"}, "mqtt": {"client_id": "bridge-a"}}
    assert hc.heartbeat(cfg, "bridge") == (
        False,
        f"no bridge health point in InfluxDB lately (database {db})",
    )
    now = int(time.time() * 1000)
    lines = health_lines(
        "bridge", f"{socket.gethostname()}:bridge-a", {"received": 1, "connected": True}, now
    )
    lines += health_lines("streams", "another-host:gridwatch-streams", {"readings": 5}, now)  # not us
    influxdb.write_lines(db, "\n".join(lines), precision="ms")
    assert hc.heartbeat(cfg, "bridge") == (True, "ok")
    assert hc.heartbeat(cfg, "streams")[0] is False  # another container's worker does not count
    # an old point is not a heartbeat
    old = health_lines("cameras", "cameras-0", {"frames": 1}, now - 10 * 60_000)
    influxdb.write_lines(db, "\n".join(old), precision="ms")
    assert hc.heartbeat(cfg, "cameras")[0] is False
    # the token is read from the variable the config names, and a missing one is reported, not sent
    cfg["influx"]["token_env"] = "GRIDWATCH_TEST_NO_SUCH_TOKEN"
    assert hc.heartbeat(cfg, "bridge") == (False, "GRIDWATCH_TEST_NO_SUCH_TOKEN is not set")
    assert hc.main(["http", f"http://127.0.0.1:{free_port()}/healthz"]) == 1
    assert hc.main(["bogus"]) == 2


def _connects(port: int, user: str, password: str) -> bool:
    got: dict[str, Any] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}")
    c.username_pw_set(user, password)
    c.on_connect = lambda cl, ud, flags, rc, props: got.setdefault("rc", rc)
    c.connect("127.0.0.1", port, 10)
    deadline = time.monotonic() + 10
    while "rc" not in got and time.monotonic() < deadline:
        c.loop(0.1)
    c.disconnect()
    return "rc" in got and not got["rc"].is_failure


@pytest.mark.servers  # runs the real mosquitto binary itself (no fixture marks it)
def test_mosquitto_config_entrypoint_and_acl_on_a_real_mosquitto(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "MQTT_PASSWD_FILE": str(data / "passwd"),
        "MQTT_BRIDGE_PASSWORD": "bridge-pw",
        "MQTT_DISPATCH_PASSWORD": "dispatch-pw",
        "MQTT_EXTRA_USERS": "g-01-01-01:team-pw, smoke-0001:sensor-pw",
    }
    script = REPO / "deploy/mosquitto/entrypoint.sh"
    res = subprocess.run(["sh", str(script), "true"], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    # no clear-text password in the file (check whole passwords: a hash may contain "pw" by chance)
    stored = (data / "passwd").read_text()
    assert "4 MQTT users" in res.stdout
    assert not any(p in stored for p in ("bridge-pw", "dispatch-pw", "team-pw", "sensor-pw"))
    bad = subprocess.run(["sh", str(script), "true"], env={**env, "MQTT_EXTRA_USERS": "nopassword"},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 2 and "name:password" in bad.stderr
    # the committed mosquitto.conf, with the container's paths and port moved into tmp_path
    port = free_port()
    conf = (REPO / "deploy/mosquitto/mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/data/", f"{data}/").replace(
        "/mosquitto/gridwatch/acl", str(REPO / "deploy/mosquitto/acl")
    )
    conf = conf.replace("listener 1883", f"listener {port} 127.0.0.1")
    conf += f"user {pwd.getpwuid(os.getuid()).pw_name}\n"  # as the dev servers do: stay who we are
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.05)
        assert _connects(port, "gridwatch-bridge", "bridge-pw")
        assert _connects(port, "g-01-01-01", "team-pw")
        assert not _connects(port, "gridwatch-bridge", "wrong")
        # the compose health check: an anonymous CONNECT is answered "not authorised"
        hc = SERVICES["mosquitto"]["healthcheck"]["test"][1].replace("-p 1883", f"-p {port}")
        assert subprocess.run(["sh", "-c", hc], timeout=30).returncode == 0
    finally:
        proc.terminate()
        proc.wait(10)


def test_postgres_init_script_makes_an_owner_and_a_read_only_reader(postgres) -> None:
    from sqlalchemy import create_engine, text

    from gridwatch.devservers.postgres import postgres_bindir
    from gridwatch.dispatch.ledger import Ledger

    suffix = uuid.uuid4().hex[:6]
    db, owner, reader = f"ledger_{suffix}", f"owner_{suffix}", f"reader_{suffix}"
    env = {
        "PATH": f"{postgres_bindir()}:{os.environ['PATH']}",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(postgres.port),
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": "postgres",
        "LEDGER_DB": db,
        "LEDGER_USER": owner,
        "LEDGER_READER": reader,
        "LEDGER_PASSWORD": "owner's pw",  # a quote in a password must not break the script
        "LEDGER_GRAFANA_PASSWORD": "reader-pw",
    }
    script = REPO / "deploy/postgres/init-ledger.sh"
    for _ in range(2):  # first start, then a re-run by hand (rotating passwords) changes nothing else
        res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
    base = f"postgresql+psycopg://{{}}@127.0.0.1:{postgres.port}/{db}"
    ledger = Ledger(base.format(owner))
    ledger.migrate()  # the owner creates the schema, as `gridwatch dispatch serve` does on start
    ledger.close()
    eng = create_engine(base.format(reader))
    try:
        with eng.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM incidents")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM transitions")).scalar() == 0
        with eng.connect() as conn, pytest.raises(Exception, match="permission denied"):
            conn.execute(text("DELETE FROM incidents"))
    finally:
        eng.dispose()
        admin = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/postgres",
                              isolation_level="AUTOCOMMIT")  # fmt: skip
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{db}" WITH (FORCE)'))
            conn.execute(text(f'DROP ROLE "{owner}"'))
            conn.execute(text(f'DROP ROLE "{reader}"'))
        admin.dispose()


def test_debian_docker_compose_and_compose_spec_accept_the_file() -> None:
    """Debian's docker-compose 1.29 (`config -q`) and the compose-spec JSON Schema both accept it."""
    import shutil
    import subprocess
    import sys

    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("Debian's docker-compose is not installed: run scripts/setup.sh")
    r = subprocess.run([compose, "--env-file", str(REPO / ".env.example"), "-f", str(REPO / "docker-compose.yml"),
                        "config", "-q"], capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert r.returncode == 0, r.stderr
    checker = Path(sys.executable).with_name("check-jsonschema")
    r = subprocess.run([str(checker), "--builtin-schema", "vendor.compose-spec", str(REPO / "docker-compose.yml")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
