"""Push gridwatch's folders, datasources, dashboards and alert rules to a running Grafana (HTTP API).

For a Grafana that is not provisioned from files (a shared or hosted Grafana, where gridwatch
cannot mount `dashboards/provisioning/`). The objects are the same ones the provisioning files
describe: `provisioning.datasource_definitions()` with its `${VAR}`s expanded from the
environment, and `build_dashboards()` (or the JSON files of a dashboards directory).

Client: `grafana-api` 1.0.3, the pinned dependency the design brief names (docs/DASHBOARDS.md
"Pushing to Grafana" says why not `grafana-client`). It predates Grafana's alerting provisioning
API, so the alert rules go through its generic request methods (`GrafanaAPI.GET/POST/PUT`, which
add the same token and base URL): `/api/v1/provisioning/alert-rules` (GET by uid, then POST to
create or PUT to update), then the rule group's evaluation interval (a POST ignores it). No
`X-Disable-Provenance` header: pushed rules are marked as provisioned (provenance "api") and
cannot be edited in Grafana's UI, like the provisioned dashboards; change the generator and push.
The contact point and notification policy are not pushed: on a shared Grafana the policy tree
belongs to its administrators (the API replaces it whole); route on the rules' `system=gridwatch`
label there. With files (docker-compose), `provisioning/alerting/` provides both.

The API token is sent only in the `Authorization: Bearer` header by the client; it is never
logged, never put in an exception, and never part of a returned object. Datasource passwords
are likewise kept out of logs and errors.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field

from gridwatch.dashboards_gen.alerts import ALERTS_FOLDER, RULE_GROUP, RULE_INTERVAL, rule_payloads
from gridwatch.dashboards_gen.dashboards import FOLDERS, DashboardSettings, build_dashboards
from gridwatch.dashboards_gen.provisioning import ALERT_RULES_FILE, DATASOURCE_ENV, datasource_definitions

__all__ = ["PushError", "PushReport", "datasource_payloads", "push_dashboards"]

log = logging.getLogger(__name__)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PushError(RuntimeError):
    """Grafana refused a request, or the push could not be prepared. Never carries a secret."""


class PushedObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["folder", "datasource", "dashboard", "alert_rule", "rule_group"] = Field(
        title="Kind", description="What was pushed."
    )
    uid: str = Field(title="UID", description="Its uid in Grafana.")
    title: str = Field(title="Title", description="Its title or name.")
    action: Literal["created", "updated", "unchanged"] = Field(
        title="Action",
        description="What was done (a dashboard or alert rule is always saved; dashboard version 1 means created).",
    )
    url: str | None = Field(None, title="URL", description="Grafana's path to it (dashboards).")


class PushReport(BaseModel):
    """What `push_dashboards` did, in order."""

    model_config = ConfigDict(extra="forbid")

    grafana_url: str = Field(title="Grafana URL", description="Base URL pushed to (no credentials).")
    objects: list[PushedObject] = Field(default_factory=list, title="Objects", description="In push order.")

    def of(self, kind: str) -> list[PushedObject]:
        return [o for o in self.objects if o.kind == kind]


def _expand(value: Any, env: Mapping[str, str], missing: set[str]) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in env:
                missing.add(m.group(1))
                return ""
            return env[m.group(1)]

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, missing) for v in value]
    return value


def datasource_payloads(env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The provisioning file's datasources with `${VAR}` expanded from `env` (default: os.environ).

    Raises PushError naming the missing variables (never their values).
    """
    env = os.environ if env is None else env
    missing: set[str] = set()
    out = [_expand(d, env, missing) for d in datasource_definitions()]
    if missing:
        described = "; ".join(f"{v} ({DATASOURCE_ENV.get(v, '?')})" for v in sorted(missing))
        raise PushError(f"datasource settings missing from the environment: {described}")
    return out


def _load_dashboards(
    dashboards_dir: Path | None, settings: DashboardSettings | None
) -> list[tuple[str, dict[str, Any]]]:
    """(folder uid, dashboard JSON) pairs: from a dashboards directory, or built in memory."""
    if dashboards_dir is None:
        return [(d.folder.uid, d.to_json()) for d in build_dashboards(settings)]
    out = []
    for folder in FOLDERS:
        for p in sorted((dashboards_dir / folder.directory).glob("*.json")):
            try:
                out.append((folder.uid, json.loads(p.read_text("utf-8"))))
            except (OSError, ValueError) as e:
                raise PushError(f"{p}: not a dashboard JSON file: {e}") from None
    if not out:
        raise PushError(f"{dashboards_dir}: no dashboards under {', '.join(f.directory for f in FOLDERS)}/")
    return out


def _load_alert_rules(
    dashboards_dir: Path | None, settings: DashboardSettings | None
) -> list[dict[str, Any]]:
    """The alert rules as API payloads: built in memory, or read from a dashboards directory's
    alerting provisioning file (the file's link fields become the API's annotations only)."""
    if dashboards_dir is None:
        return rule_payloads(settings)
    path = dashboards_dir / ALERT_RULES_FILE
    try:
        doc = yaml.safe_load(path.read_text("utf-8"))
        groups = doc["groups"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PushError(f"{path}: not an alerting provisioning file: {e}") from None
    out = []
    for g in groups:
        if g.get("folder") != ALERTS_FOLDER.title or g.get("name") != RULE_GROUP:
            raise PushError(f"{path}: unexpected rule group {g.get('name')!r} in folder {g.get('folder')!r}")
        for r in g["rules"]:
            body = {k: v for k, v in r.items() if k not in ("dashboardUid", "panelId")}
            out.append({**body, "folderUID": ALERTS_FOLDER.uid, "ruleGroup": RULE_GROUP})
    return out


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def _status(e: Exception) -> int | None:
    return getattr(e, "status_code", None)


def _message(e: Exception) -> str:
    # grafana-api keeps Grafana's decoded answer in `.response` (its `.message` is generic for 400 and
    # 401); neither holds the request, so neither holds the token.
    response = getattr(e, "response", None)
    if isinstance(response, dict) and response.get("message"):
        return str(response["message"])
    return str(getattr(e, "message", "") or e or type(e).__name__)


def push_dashboards(
    grafana_url: str,
    token: str,
    *,
    datasources: bool = True,
    env: Mapping[str, str] | None = None,
    dashboards_dir: Path | None = None,
    settings: DashboardSettings | None = None,
    alerts: bool = True,
    message: str = "gridwatch dashboards push",
    timeout_s: float = 10.0,
    verify_tls: bool = True,
) -> PushReport:
    """Create or update gridwatch's folders, datasources (optional) and dashboards in Grafana.

    grafana_url: Grafana's base URL, e.g. ``https://grafana.example.org`` or
        ``http://grafana:3000/grafana`` (a sub-path is kept); must not contain credentials.
    token: a service account token with Editor rights (Admin for datasources).
    datasources: also create/update the two datasources, from the environment variables the
        provisioning file names (`GRIDWATCH_INFLUX_*`, `GRIDWATCH_LEDGER_*`; `env`, default os.environ).
    dashboards_dir: push the JSON files of this dashboards/ directory instead of building them.
    settings: generator settings when building (ignored with `dashboards_dir`).
    alerts: also create/update the alert rules (in their own folder, `gridwatch-alerts`), built or
        read from `dashboards_dir/provisioning/alerting/gridwatch-alerts.yaml`; the rules need the
        InfluxDB datasource (uid `gridwatch-influxql`) to exist in that Grafana.

    Idempotent: folders, datasources and alert rules are looked up first and updated in place;
    dashboards are saved with `overwrite`. Raises PushError on the first refusal (status and Grafana's message).
    """
    from grafana_api.grafana_face import GrafanaFace  # the client is only needed here

    parts = urlsplit(grafana_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(f"grafana_url must be http(s)://host[:port][/path], got {parts.scheme or '?'}://…")
    if parts.username or parts.password:
        raise PushError("grafana_url must not carry credentials: pass the token separately")
    if not token:
        raise PushError("no Grafana API token given")
    base = (
        f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path.rstrip('/')}"
    )
    prefix = parts.path.strip("/")
    # Prepare everything before the first request: a missing variable should not leave half a push.
    ds_payloads = datasource_payloads(env) if datasources else []
    boards = _load_dashboards(dashboards_dir, settings)
    rules = _load_alert_rules(dashboards_dir, settings) if alerts else []

    api = GrafanaFace(
        auth=token,
        host=parts.hostname,
        port=parts.port,
        protocol=parts.scheme,
        url_path_prefix=f"{prefix}/" if prefix else "",
        verify=verify_tls,
        timeout=timeout_s,
    )
    report = PushReport(grafana_url=base)

    def refused(what: str, e: Exception) -> PushError:
        status = _status(e)
        return PushError(f"Grafana at {base} refused {what}: {status or ''} {_message(e)}".replace("  ", " "))

    for folder in (*FOLDERS, ALERTS_FOLDER) if alerts else FOLDERS:
        try:
            existing = api.folder.get_folder(folder.uid)
        except Exception as e:
            if _status(e) != 404:
                raise refused(f"reading folder {folder.uid}", e) from None
            existing = None
        try:
            if existing is None:
                api.folder.create_folder(folder.title, uid=folder.uid)
                action = "created"
            elif existing.get("title") != folder.title:
                api.folder.update_folder(folder.uid, folder.title, overwrite=True)
                action = "updated"
            else:
                action = "unchanged"
        except Exception as e:
            raise refused(f"saving folder {folder.uid}", e) from None
        log.info("grafana: folder %s %s", folder.uid, action)
        report.objects.append(PushedObject(kind="folder", uid=folder.uid, title=folder.title, action=action))

    for ds in ds_payloads:
        name = ds["name"]
        try:
            existing = api.datasource.find_datasource(quote(name, safe=""))
        except Exception as e:
            if _status(e) != 404:
                raise refused(f"reading datasource {ds['uid']}", e) from None
            existing = None
        try:
            if existing is None:
                api.datasource.create_datasource(ds)
                action = "created"
            else:
                api.datasource.update_datasource(existing["id"], {**ds, "id": existing["id"]})
                action = "updated"
        except Exception as e:
            raise refused(f"saving datasource {ds['uid']}", e) from None
        log.info("grafana: datasource %s %s", ds["uid"], action)
        report.objects.append(PushedObject(kind="datasource", uid=ds["uid"], title=name, action=action))

    for folder_uid, dash in boards:
        body = {
            "dashboard": {**dash, "id": None},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": message,
        }
        try:
            res = api.dashboard.update_dashboard(body)
        except Exception as e:
            raise refused(f"saving dashboard {dash.get('uid')}", e) from None
        action = "created" if res.get("version") == 1 else "updated"
        log.info("grafana: dashboard %s %s (version %s)", dash.get("uid"), action, res.get("version"))
        report.objects.append(
            PushedObject(
                kind="dashboard",
                uid=str(dash.get("uid")),
                title=str(dash.get("title")),
                action=action,
                url=res.get("url"),
            )
        )

    for rule in rules:
        uid = rule["uid"]
        try:
            api.api.GET(f"/v1/provisioning/alert-rules/{quote(uid, safe='')}")
            exists = True
        except Exception as e:
            if _status(e) != 404:
                raise refused(f"reading alert rule {uid}", e) from None
            exists = False
        try:
            if exists:
                api.api.PUT(f"/v1/provisioning/alert-rules/{quote(uid, safe='')}", json=rule)
            else:
                api.api.POST("/v1/provisioning/alert-rules", json=rule)
        except Exception as e:
            raise refused(f"saving alert rule {uid}", e) from None
        action = "updated" if exists else "created"
        log.info("grafana: alert rule %s %s", uid, action)
        report.objects.append(PushedObject(kind="alert_rule", uid=uid, title=rule["title"], action=action))

    if rules:
        # a POST puts a new group on Grafana's default interval: set ours on the group as stored
        path = f"/v1/provisioning/folder/{ALERTS_FOLDER.uid}/rule-groups/{quote(RULE_GROUP, safe='')}"
        try:
            group = api.api.GET(path)
            action = "unchanged"
            if group.get("interval") != _seconds(RULE_INTERVAL):
                api.api.PUT(path, json={**group, "interval": _seconds(RULE_INTERVAL)})
                action = "updated"
        except Exception as e:
            raise refused(f"setting the interval of rule group {RULE_GROUP}", e) from None
        log.info("grafana: rule group %s %s (interval %s)", RULE_GROUP, action, RULE_INTERVAL)
        report.objects.append(
            PushedObject(kind="rule_group", uid=RULE_GROUP, title=RULE_GROUP, action=action)
        )
    return report
