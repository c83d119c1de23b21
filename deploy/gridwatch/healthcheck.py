#!/usr/bin/env python3
"""Docker health checks of the gridwatch services (docker-compose.yml `healthcheck:`).

    gridwatch-healthcheck http URL              dispatch: the HTTP API answers GET /healthz with 2xx
    gridwatch-healthcheck heartbeat COMPONENT   bridge, streams, cameras: this container's process
                                                wrote its pipeline_health point to InfluxDB lately

A heartbeat proves more than a live PID: the process's health loop runs and its InfluxDB writes
land. It reads the gridwatch config ($GRIDWATCH_CONFIG) with plain YAML rather than
`gridwatch.config.load_config`, which imports the camera stack (OpenCV, onnxruntime) and reads
every sensor file: two seconds of CPU every 30 s per container. The defaults below are the
config models' own; tests/test_compose.py checks that they still agree.

The instance tag each component writes: bridge `{hostname}:{mqtt.client_id}`, streams
`{hostname}:{streams.app_id}` (each replica has its own hostname), cameras `cameras-0`.
Exit status 0: healthy; 1: not, with one line saying why (the token is never printed).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "influx.url": "http://127.0.0.1:8086",
    "influx.bucket": "gridwatch",
    "influx.token_env": None,
    "mqtt.client_id": "gridwatch-bridge",
    "streams.app_id": "gridwatch-streams",
    "bridge.health_interval_s": 5,
    "cameras.health_interval_s": 5,
}
COMPONENTS = ("bridge", "streams", "cameras")


def setting(cfg: dict[str, Any], key: str) -> Any:
    section, name = key.split(".")
    value = (cfg.get(section) or {}).get(name)
    return DEFAULTS[key] if value is None else value


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'")


def heartbeat_query(cfg: dict[str, Any], component: str, hostname: str) -> tuple[str, str, str]:
    """(InfluxDB base URL, InfluxQL database, query) for the component's latest health point."""
    if component == "bridge":
        instance = f"{hostname}:{setting(cfg, 'mqtt.client_id')}"
        interval = float(setting(cfg, "bridge.health_interval_s"))
    elif component == "streams":  # the stream workers write their health every bridge.health_interval_s
        instance = f"{hostname}:{setting(cfg, 'streams.app_id')}"
        interval = float(setting(cfg, "bridge.health_interval_s"))
    elif component == "cameras":
        instance = "cameras-0"
        interval = float(setting(cfg, "cameras.health_interval_s"))
    else:
        raise ValueError(f"unknown component {component!r} (one of {', '.join(COMPONENTS)})")
    max_age_s = int(3 * interval + 10)  # three missed reports, plus the writer's batching
    query = (
        f'SELECT * FROM "pipeline_health" WHERE "component" = \'{_quote(component)}\' '
        f"AND \"instance\" = '{_quote(instance)}' AND time > now() - {max_age_s}s ORDER BY time DESC LIMIT 1"
    )
    # `bucket` may be "database/retention" (1.8+ compatibility); InfluxQL wants the database.
    db = str(setting(cfg, "influx.bucket")).split("/")[0]
    return str(setting(cfg, "influx.url")).rstrip("/"), db, query


def heartbeat(cfg: dict[str, Any], component: str, *, timeout: float = 5.0) -> tuple[bool, str]:
    url, db, query = heartbeat_query(cfg, component, socket.gethostname())
    headers = {}
    token_env = setting(cfg, "influx.token_env")
    if token_env:
        token = os.environ.get(token_env)
        if not token:
            return False, f"{token_env} is not set"
        headers["Authorization"] = f"Token {token}"  # InfluxDB 2.x/3.x v1 API; ignored by an open 1.x
    params = urllib.parse.urlencode({"db": db, "q": query})
    req = urllib.request.Request(f"{url}/query?{params}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, ValueError) as e:
        return False, f"InfluxDB at {url}: {getattr(e, 'reason', e)}"
    results = body.get("results") or [{}]
    if "error" in body or "error" in results[0]:
        return False, f"InfluxDB: {body.get('error') or results[0]['error']}"
    if not results[0].get("series"):
        return False, f"no {component} health point in InfluxDB lately (database {db})"
    return True, "ok"


def http(url: str, *, timeout: float = 5.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300, f"HTTP {resp.status}"
    except (OSError, ValueError) as e:
        return False, f"{url}: {getattr(e, 'reason', e)}"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("http", "heartbeat"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    if argv[0] == "http":
        ok, why = http(argv[1])
    else:
        path = os.environ.get("GRIDWATCH_CONFIG", "/etc/gridwatch/gridwatch.yaml")
        try:
            with open(path, encoding="utf-8") as f:
                cfg = yaml.safe_load(f) or {}
            ok, why = heartbeat(cfg, argv[1])
        except (OSError, ValueError, yaml.YAMLError) as e:
            ok, why = False, f"{path}: {e}"
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
