"""Server-side HTML of the console: the page frame, the log-in form and the incident detail.

Plain strings with every value escaped (`e()`); no template engine, so nothing to install. Pages
carry no inline script or style (the Content-Security-Policy forbids both): the browser scripts
read their settings and labels from a `<script type="application/json">` data block.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from gridwatch.city import CityModel, CityNode, Level
from gridwatch.console.auth import ConsoleUser
from gridwatch.console.i18n import Lang, labels, note_text, t, tv
from gridwatch.dispatch.models import (
    DeliveryAttemptRow,
    DeliveryRow,
    IncidentRow,
    IncidentSourceRow,
    TransitionRow,
)
from gridwatch.schemas import Category


def e(v: object) -> str:
    return escape("" if v is None else str(v), quote=True)


def json_block(obj: Any) -> str:
    # `<` escaped so that no `</script>` (or `<!--`) in the data can end the block.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


@dataclass
class PageCtx:
    lang: Lang
    prefix: str
    tz: str
    site: str
    now_ms: int
    static_v: str
    user: ConsoleUser | None = None
    csrf: str = ""
    flash: list[tuple[str, str]] = field(default_factory=list)
    path: str = ""
    """This page's path and query, where the language switch comes back to."""
    grafana: str = ""
    """The centre's Grafana (no trailing slash), or "" for no links."""

    def fmt_time(self, ms: int | None, seconds: bool = True) -> str:
        if ms is None:
            return ""
        d = dt.datetime.fromtimestamp(ms / 1000, ZoneInfo(self.tz))
        return d.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")

    def node_name(self, city: CityModel, node_id: str | None) -> str:
        if not node_id:
            return ""
        n = city.nodes.get(node_id)
        if n is None:
            return node_id
        return n.name_zh if self.lang == "zh" else (n.name_en or n.name_zh)


def times_in(ctx: PageCtx) -> str:
    """ "Times in <zone>", the zone's IANA name marked as a raw value (it is not translated)."""
    return e(t(ctx.lang, "times_in", tz="\0")).replace("\0", f'<span class="raw">{e(ctx.tz)}</span>')


def fmt_dur(lang: Lang, ms: int) -> str:
    s = abs(ms) // 1000
    if s < 60:
        return t(lang, "d_sec", n=s)
    m = s // 60
    if m < 60:
        return t(lang, "d_min", n=m)
    h, m = divmod(m, 60)
    if h < 24:
        return t(lang, "d_hour", h=h, m=m)
    d, h = divmod(h, 24)
    return t(lang, "d_day", d=d, h=h)


def due_class(due: int | None, assigned: int | None, now: int) -> str:
    """Deadline ageing: late (past), near (<25% of the step's time left), soon (<50%), ok, none."""
    if due is None:
        return "none"
    left = due - now
    if left < 0:
        return "late"
    frac = left / max(1, due - (assigned or now))
    return "near" if frac < 0.25 else "soon" if frac < 0.5 else "ok"


def due_text(lang: Lang, due: int | None, now: int) -> str:
    if due is None:
        return t(lang, "no_clock")
    left = due - now
    return t(lang, "left", t=fmt_dur(lang, left)) if left >= 0 else t(lang, "late", t=fmt_dur(lang, left))


def grafana_drilldown_url(base: str, row: IncidentRow) -> str | None:
    """The Grafana drill-down of the incident's town, community and grid (dashboards/ops)."""
    if not base or not row.town_id:
        return None
    q = {"var-town": row.town_id}
    if row.community_id:
        q["var-community"] = row.community_id
    if row.grid_id:
        q["var-grid"] = row.grid_id
    return f"{base}/d/gridwatch-drilldown/?{urlencode(q)}"


def _grafana_link(ctx: PageCtx, row: IncidentRow) -> str:
    url = grafana_drilldown_url(ctx.grafana, row)
    if url is None:
        return ""
    return f' <a class="ext" href="{e(url)}" target="_blank" rel="noopener">{e(t(ctx.lang, "d_grafana"))}</a>'


def frame(ctx: PageCtx, *, title: str, body: str, page: str, data: dict[str, Any] | None = None) -> str:
    """The page around `body`: header with navigation, user, language switch and log-out."""
    L, p = ctx.lang, ctx.prefix
    nav = ""
    if ctx.user is not None:
        items = [("board", "/", "nav_board"), ("map", "/map", "nav_map"), ("review", "/review", "nav_review")]
        links = "".join(
            f'<a href="{e(p + href)}" class="{"on" if page == key else ""}">{e(t(L, lab))}</a>'
            for key, href, lab in items
        )
        if ctx.grafana:
            links += (
                f'<a href="{e(ctx.grafana)}/d/gridwatch-wall?kiosk" target="_blank" rel="noopener" '
                f'class="ext">{e(t(L, "nav_wall"))}</a>'
            )
        other = "en" if L == "zh" else "zh"
        who = ctx.user.display_name
        role = t(L, f"role_{ctx.user.role}") + (f" · {ctx.user.node}" if ctx.user.node else "")
        nav = f"""
  <nav class="nav">{links}</nav>
  <div class="who">
    <span class="live" id="live" title="{e(t(L, "live"))}"><i></i>{e(t(L, "live"))}</span>
    <span class="user">{e(who)} <small>{e(role)}</small></span>
    <form method="post" action="{e(p)}/lang" class="inline">
      <input type="hidden" name="csrf" value="{e(ctx.csrf)}">
      <input type="hidden" name="lang" value="{other}">
      <input type="hidden" name="back" value="{e(ctx.path)}">
      <button type="submit" class="link" lang="{other}">{e(t(L, "lang_other"))}</button>
    </form>
    <form method="post" action="{e(p)}/logout" class="inline">
      <input type="hidden" name="csrf" value="{e(ctx.csrf)}">
      <button type="submit" class="link">{e(t(L, "logout"))}</button>
    </form>
  </div>"""
    flash = "".join(f'<div class="flash {e(kind)}">{e(msg)}</div>' for kind, msg in ctx.flash)
    cfg = {
        "prefix": p,
        "lang": L,
        "tz": ctx.tz,
        "now_ms": ctx.now_ms,
        "csrf": ctx.csrf,
        "page": page,
        "role": ctx.user.role if ctx.user else None,
        "node": ctx.user.node if ctx.user else None,
        "labels": labels(L),
        **(data or {}),
    }
    script = (
        f'<script type="module" src="{e(p)}/static/{page}.js?v={ctx.static_v}"></script>'
        if page in ("board", "map", "review", "detail")
        else ""
    )
    html_lang = "zh-CN" if L == "zh" else "en"
    return f"""<!doctype html>
<html lang="{html_lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · {e(ctx.site)}</title>
<link rel="stylesheet" href="{e(p)}/static/console.css?v={ctx.static_v}">
</head>
<body class="page-{page}">
<header class="top">
  <a class="brand" href="{e(p)}/"><span class="raw">{e(ctx.site)}</span> <small>{e(t(L, "app_title"))}</small></a>{nav}
</header>
{flash}
{body}
<script type="application/json" id="gw-config">{json_block(cfg)}</script>
{script}
</body>
</html>"""


def login_page(ctx: PageCtx, *, login_token: str, error: str | None, name: str, next_url: str) -> str:
    L, p = ctx.lang, ctx.prefix
    other = "en" if L == "zh" else "zh"
    err = f'<p class="flash error">{e(error)}</p>' if error else ""
    body = f"""
<main class="login">
  <form method="post" action="{e(p)}/login" class="card">
    <h1>{e(t(L, "login_title"))}</h1>
    {err}
    <input type="hidden" name="login_token" value="{e(login_token)}">
    <input type="hidden" name="next" value="{e(next_url)}">
    <label>{e(t(L, "login_name"))}<input name="name" autocomplete="username" required value="{e(name)}" autofocus></label>
    <label>{e(t(L, "login_password"))}<input name="password" type="password" autocomplete="current-password" required></label>
    <button type="submit" class="primary">{e(t(L, "login_submit"))}</button>
    <p class="lang-switch"><a href="{e(p)}/login?lang={other}" lang="{other}">{e(t(L, "lang_other"))}</a></p>
  </form>
</main>"""
    return frame(ctx, title=t(L, "login_title"), body=body, page="login")


def message_page(ctx: PageCtx, title: str, message: str) -> str:
    body = f"""<main class="message card"><h1>{e(title)}</h1><p>{e(message)}</p>
<p><a href="{e(ctx.prefix)}/">{e(t(ctx.lang, "back_board"))}</a></p></main>"""
    return frame(ctx, title=title, body=body, page="message")


# --- the incident detail ---------------------------------------------------------------------------


def _badge(kind: str, value: str, text: str) -> str:
    return f'<span class="badge {kind}-{e(value)}">{e(text)}</span>'


def node_options(ctx: PageCtx, city: CityModel, exclude: str | None) -> str:
    """Every ladder node as <option>s, grouped by town, indented by level."""
    L = ctx.lang
    out = []
    districts = [n for n in city.nodes.values() if n.level is Level.DISTRICT]

    def opt(n: CityNode, depth: int) -> str:
        dis = " disabled" if n.id == exclude else ""
        pad = "\u00a0\u00a0" * depth
        return f'<option value="{e(n.id)}"{dis}>{pad}{e(ctx.node_name(city, n.id))} · {e(tv(L, "level", n.level.value))}</option>'

    for d in districts:
        out.append(f'<optgroup label="{e(ctx.node_name(city, d.id))}">{opt(d, 0)}</optgroup>')
        for town in city.children(d.id):
            inner = [opt(town, 0)]
            for com in city.children(town.id):
                inner.append(opt(com, 1))
                inner.extend(opt(g, 2) for g in city.children(com.id))
            out.append(f'<optgroup label="{e(ctx.node_name(city, town.id))}">{"".join(inner)}</optgroup>')
    return "".join(out)


def action_forms(
    ctx: PageCtx, city: CityModel, row: IncidentRow, allowed: list[str], command_id: str, acting_for: bool
) -> str:
    L, p = ctx.lang, ctx.prefix
    if not allowed:
        return f'<p class="muted">{e(t(L, "no_actions"))}</p>'
    action = f"{p}/incidents/{quote(row.incident_id)}/act"
    hidden = (
        f'<input type="hidden" name="csrf" value="{e(ctx.csrf)}">'
        f'<input type="hidden" name="command_id" value="{e(command_id)}">'
    )
    forms = []
    for cmd in allowed:
        label = e(t(L, f"cmd_{cmd}"))
        head = f'<form method="post" action="{e(action)}" class="act act-{cmd}">{hidden}<input type="hidden" name="command" value="{cmd}">'
        if cmd in ("acknowledge", "arrive", "confirm"):
            forms.append(f'{head}<button type="submit" class="primary">{label}</button></form>')
        elif cmd == "recategorise":
            opts = "".join(
                f'<option value="{e(c.value)}">{e(tv(L, "cat", c.value))}</option>'
                for c in Category
                if c.value != row.category
            )
            forms.append(
                f'{head}<select name="category" required><option value="">{e(t(L, "category"))}: {e(t(L, "choose"))}</option>'
                f'{opts}</select><button type="submit">{label}</button></form>'
            )
        elif cmd == "merge":
            forms.append(
                f'{head}<input name="into" placeholder="{e(t(L, "into"))}" maxlength="128" required autocomplete="off">'
                f'<button type="submit">{label}</button></form>'
            )
        elif cmd == "note":
            forms.append(
                f'{head}<input name="note" placeholder="{e(t(L, "note"))}" maxlength="2000" required>'
                f'<button type="submit">{label}</button></form>'
            )
        elif cmd == "resolve":
            forms.append(
                f'{head}<input name="note" placeholder="{e(t(L, "note"))}" maxlength="2000">'
                f'<button type="submit" class="primary">{label}</button></form>'
            )
        elif cmd in ("reject", "false_alarm", "escalate"):
            req = " required" if cmd != "escalate" else ""
            forms.append(
                f'{head}<input name="reason" placeholder="{e(t(L, "reason"))}" maxlength="2000"{req}>'
                f'<button type="submit" class="{"danger" if cmd == "false_alarm" else ""}">{label}</button></form>'
            )
        elif cmd in ("transfer", "redispatch"):
            req = " required" if cmd == "transfer" else ""
            forms.append(
                f'{head}<select name="to_node" required><option value="">{e(t(L, "to_node"))}: {e(t(L, "choose"))}</option>'
                f"{node_options(ctx, city, row.node_id)}</select>"
                f'<input name="reason" placeholder="{e(t(L, "reason"))}" maxlength="2000"{req}>'
                f'<button type="submit">{label}</button></form>'
            )
        elif cmd == "missed":
            # the form is a dialog (missed_dialog); detail.js opens it and posts the command
            forms.append(
                f'{head}<button type="button" id="missed-open" aria-haspopup="dialog">{label}</button></form>'
            )
        elif cmd == "verify":
            forms.append(
                # The first submit button is the one Enter in the note field would press: a disabled
                # one, so that a verification is always a deliberate click on ok or not ok.
                f'{head}<button type="submit" disabled hidden aria-hidden="true"></button>'
                f'<input name="note" placeholder="{e(t(L, "note"))}" maxlength="2000">'
                f'<button type="submit" name="ok" value="1" class="primary">{e(t(L, "verify_ok"))}</button>'
                f'<button type="submit" name="ok" value="0" class="danger">{e(t(L, "verify_not_ok"))}</button></form>'
            )
    team = city.nodes.get(row.node_id)
    team_name = ""
    if team is not None and team.team is not None:
        team_name = team.team.name_zh if L == "zh" else (team.team.name_en or team.team.name_zh)
    note = (
        f'<p class="muted small">{e(t(L, "acting_for", team=team_name or row.node_id))}</p>'
        if acting_for
        else ""
    )
    return note + "".join(forms)


def missed_dialog(ctx: PageCtx, row: IncidentRow) -> str:
    """The miss report: camera (filled nearest first by detail.js from /api/incidents/{id}/cameras),
    when it was visible (default: the incident's creation, as a wall-clock time of the centre's
    zone; detail.js sends epoch ms), and a note."""
    L = ctx.lang
    at = dt.datetime.fromtimestamp(row.created_at / 1000, ZoneInfo(ctx.tz)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"""
  <dialog id="missed-dialog" aria-labelledby="missed-title">
    <form method="dialog" id="missed-form">
      <h2 id="missed-title">{e(t(L, "missed_prompt"))}</h2>
      <p class="muted small">{e(t(L, "missed_hint"))}</p>
      <label class="field"><span>{e(t(L, "missed_camera"))}</span>
        <select name="camera_id" id="missed-camera" required><option value="">{e(t(L, "loading"))}</option></select></label>
      <label class="field"><span>{e(t(L, "missed_at"))} · <small>{times_in(ctx)}</small></span>
        <input type="datetime-local" name="at" id="missed-at" step="1" required value="{e(at)}"></label>
      <label class="field"><span>{e(t(L, "missed_note"))}</span>
        <input name="note" id="missed-note" maxlength="2000" autocomplete="off"></label>
      <p class="flash error hidden" id="missed-error" role="alert"></p>
      <menu><button value="cancel" type="button" class="cancel">{e(t(L, "cancel"))}</button>
        <button value="ok" class="primary" type="submit">{e(t(L, "submit"))}</button></menu>
    </form>
  </dialog>"""


def _evidence_html(ctx: PageCtx, iid: str, src: IncidentSourceRow) -> str:
    L = ctx.lang
    if not src.evidence:
        return f'<span class="muted">{e(t(L, "s_no_evidence"))}</span>'
    items = []
    for i, ev in enumerate(src.evidence):
        ref = str(ev.get("ref") or "")
        kind = str(ev.get("kind") or "")
        note = f' <span class="muted raw">{e(ev.get("note"))}</span>' if ev.get("note") else ""
        url = evidence_url(ctx.prefix, iid, src.candidate_id, i, ref)
        if kind == "detections":
            url = None  # a JSON sidecar for training (docs/DATASETS.md); the evidence route serves images
        if url and kind in ("snapshot", "photo", "frame"):
            items.append(
                f'<figure class="evidence"><a href="{e(url)}" target="_blank" rel="noopener noreferrer">'
                f'<img src="{e(url)}" alt="{e(tv(L, "evk", kind))}" loading="lazy" referrerpolicy="no-referrer"></a>'
                f"<figcaption>{e(tv(L, 'evk', kind))}{note}<br><code>{e(ref)}</code></figcaption></figure>"
            )
        elif url:
            items.append(
                f'<div class="evidence-ref">{e(tv(L, "evk", kind))}: <a href="{e(url)}" target="_blank" '
                f'rel="noopener noreferrer"><code>{e(ref)}</code></a>{note}</div>'
            )
        else:
            items.append(
                f'<div class="evidence-ref">{e(tv(L, "evk", kind))}: <code>{e(ref)}</code>{note}</div>'
            )
    return "".join(items)


def evidence_url(prefix: str, iid: str, candidate_id: str, n: int, ref: str) -> str | None:
    """Where the browser gets a piece of evidence: local files through the guarded route,
    http(s) directly (camera snapshot servers on the centre's network); None for anything else."""
    low = ref.lower()
    if low.startswith("file:"):
        return f"{prefix}/incidents/{quote(iid)}/evidence/{quote(candidate_id)}/{n}"
    if low.startswith(("http://", "https://")):
        return ref
    return None


def detail_page(
    ctx: PageCtx,
    city: CityModel,
    row: IncidentRow,
    transitions: list[TransitionRow],
    sources: list[IncidentSourceRow],
    deliveries: list[tuple[DeliveryRow, list[DeliveryAttemptRow]]],
    allowed: list[str],
    command_id: str,
    acting_for: bool,
) -> str:
    L, now = ctx.lang, ctx.now_ms
    nn = lambda nid: ctx.node_name(city, nid)  # noqa: E731
    node = city.nodes.get(row.node_id)
    team = node.team if node is not None else None
    team_name = (team.name_zh if L == "zh" else (team.name_en or team.name_zh)) if team else ""
    where = " / ".join(x for x in (nn(row.town_id), nn(row.community_id), nn(row.grid_id)) if x)
    loc = f"{where} ({row.lon:.5f}, {row.lat:.5f})" if row.lon is not None and row.lat is not None else where
    dl_items = []
    for step in ("ack", "arrive", "resolve"):
        due = (row.deadlines or {}).get(step)
        if due is None:
            continue
        pending = row.next_due_step == step and row.next_due_at is not None
        cls = due_class(due, row.assigned_at, now) if pending else "idle"
        extra = f' <span class="due due-{cls}">{e(due_text(L, due, now))}</span>' if pending else ""
        dl_items.append(f"<li>{e(tv(L, 'step', step))}: {e(ctx.fmt_time(due))}{extra}</li>")
    deadlines = f"<ul class='plain'>{''.join(dl_items)}</ul>" if dl_items else e(t(L, "no_clock"))
    if row.top_level_overdue and row.state not in ("closed", "false_alarm", "merged"):
        missed = ", ".join(tv(L, "step", st) for st in row.top_level_overdue)
        deadlines += f"<p class='due due-late'>{e(t(L, 'd_top_overdue'))}: {e(missed)}</p>"
    chain = " → ".join(e(nn(n)) for n in row.chain)
    facts = [
        ("d_state", _badge("state", row.state, tv(L, "state", row.state))),
        ("d_severity", _badge("sev", row.severity, tv(L, "sev", row.severity))),
        ("d_level", e(tv(L, "level", row.level))),
        ("d_node", f"{e(nn(row.node_id))} <code>{e(row.node_id)}</code>"),
        ("d_team", e(team_name) + (f" · {e(t(L, 'd_leader'))} {e(team.leader)}" if team else "")),
        ("d_location", e(loc) + _grafana_link(ctx, row)),
        ("d_platform", e(row.platform)),
        ("d_created", e(ctx.fmt_time(row.created_at))),
        ("d_assigned", e(ctx.fmt_time(row.assigned_at))),
        ("d_deadlines", deadlines),
        ("d_chain", chain),
        ("d_escalations", e(row.escalations)),
        ("d_reopened", e(row.reopened)),
        ("d_sources_n", e(row.source_count)),
    ]
    facts_html = "".join(f"<dt>{e(t(L, k))}</dt><dd>{v}</dd>" for k, v in facts)

    esc = [tr for tr in transitions if tr.kind == "escalate"]
    esc_html = (
        "<ol class='plain'>"
        + "".join(
            f"<li><time>{e(ctx.fmt_time(tr.at_ms))}</time> {e(nn(tr.from_node))} → {e(nn(tr.to_node))}"
            f" · {e(tv(L, 'actor', tr.actor))} {e(tv(L, 'by', tr.by))} · {e(note_text(L, tr.note))}"
            + ("" if tr.changed else f" <span class='muted'>({e(t(L, 't_nochange'))})</span>")
            + "</li>"
            for tr in esc
        )
        + "</ol>"
        if esc
        else f"<p class='muted'>{e(t(L, 'no_escalations'))}</p>"
    )

    trail_rows = "".join(
        f"<tr class='{'' if tr.changed else 'nochange'}'><td>{tr.seq}</td><td><time>{e(ctx.fmt_time(tr.at_ms))}</time></td>"
        f"<td>{e(tv(L, 'cmd', tr.kind))}</td><td>{e(tv(L, 'actor', tr.actor))}</td><td class='by'>{e(tv(L, 'by', tr.by))}</td>"
        f"<td>{e(tv(L, 'state', tr.from_state) or '—')} → {e(tv(L, 'state', tr.to_state))}</td>"
        f"<td>{e(nn(tr.from_node) or '—')} → {e(nn(tr.to_node))}</td><td>{e(tv(L, 'level', tr.level))}</td>"
        f"<td>{e(note_text(L, tr.note))}{'' if tr.changed else ' (' + e(t(L, 't_nochange')) + ')'}</td></tr>"
        for tr in transitions
    )
    trail = (
        f"<table class='grid-table trail'><thead><tr><th>{e(t(L, 't_seq'))}</th><th>{e(t(L, 't_time'))}</th>"
        f"<th>{e(t(L, 't_kind'))}</th><th>{e(t(L, 't_actor'))}</th><th>{e(t(L, 't_by'))}</th>"
        f"<th>{e(t(L, 't_state'))}</th><th>{e(t(L, 't_node'))}</th><th>{e(t(L, 't_level'))}</th>"
        f"<th>{e(t(L, 't_note'))}</th></tr></thead><tbody>{trail_rows}</tbody></table>"
    )

    src_html = "".join(
        f"<article class='source'><h3>{_badge('src', s.source_kind, tv(L, 'src', s.source_kind))} <code>{e(s.source_id)}</code>"
        f" · {e(tv(L, 'cat', s.category))} · {_badge('sev', s.severity, tv(L, 'sev', s.severity))}</h3>"
        f"<dl class='facts small'><dt>{e(t(L, 's_confidence'))}</dt><dd>{s.confidence:.0%}</dd>"
        f"<dt>{e(t(L, 's_observed'))}</dt><dd>{e(ctx.fmt_time(s.observed_at))}</dd>"
        f"<dt>{e(t(L, 's_rule'))}</dt><dd><code>{e(s.rule)}</code></dd>"
        f"<dt>{e(t(L, 's_action'))}</dt><dd>{e(tv(L, 'fusion', s.action))}</dd>"
        + (
            f"<dt>{e(t(L, 's_model'))}</dt><dd><code>{e(s.model_version)}</code></dd>"
            if s.model_version
            else ""
        )
        + f"<dt>{e(t(L, 'd_summary'))}</dt><dd>{e(s.summary)}</dd></dl>"
        f"<div class='evidence-list'>{_evidence_html(ctx, row.incident_id, s)}</div></article>"
        for s in sources
    )

    def attempts_html(atts: list[DeliveryAttemptRow]) -> str:
        if not atts:
            return ""
        return (
            "<ul class='plain attempts'>"
            + "".join(
                f"<li><time>{e(ctx.fmt_time(a.at_ms))}</time> "
                f"<span class='badge {'ok' if a.ok else 'bad'}'>{e(t(L, 'p_ok' if a.ok else 'p_fail'))}</span>"
                f" {a.duration_ms:.0f} ms {e(a.error or '')}</li>"
                for a in atts
            )
            + "</ul>"
        )

    push_rows = "".join(
        f"<tr><td>{e(ctx.fmt_time(d.created_at))}</td><td><code>{e(d.channel)}</code></td>"
        f"<td>{e(tv(L, 'ev', d.event))}</td><td>{e(nn(d.node_id))}</td>"
        f"<td>{_badge('dst', d.status, tv(L, 'dst', d.status))}</td><td>{d.attempts}</td>"
        f"<td>{e(ctx.fmt_time(d.sent_at))}</td><td>{e(d.last_error or '')}{attempts_html(atts)}</td></tr>"
        for d, atts in deliveries
    )
    pushes = (
        f"<table class='grid-table pushes'><thead><tr><th>{e(t(L, 'p_created'))}</th><th>{e(t(L, 'p_channel'))}</th>"
        f"<th>{e(t(L, 'p_event'))}</th><th>{e(t(L, 'p_node'))}</th><th>{e(t(L, 'p_status'))}</th>"
        f"<th>{e(t(L, 'p_attempts'))}</th><th>{e(t(L, 'p_sent'))}</th><th>{e(t(L, 'p_error'))}</th></tr></thead>"
        f"<tbody>{push_rows}</tbody></table>"
        if deliveries
        else f"<p class='muted'>{e(t(L, 'p_none'))}</p>"
    )

    body = f"""
<main class="detail" data-incident="{e(row.incident_id)}">
  <div class="banner hidden" id="changed">{e(t(L, "changed_banner"))} <button type="button" id="reload">{e(t(L, "reload"))}</button></div>
  <header class="incident-head">
    <p class="crumbs"><a href="{e(ctx.prefix)}/">← {e(t(L, "back_board"))}</a> · <code>{e(row.incident_id)}</code></p>
    <h1>{_badge("cat", row.category, tv(L, "cat", row.category))} {e(row.summary)}</h1>
  </header>
  <div class="cols">
    <section class="card"><dl class="facts">{facts_html}</dl></section>
    <section class="card actions"><h2>{e(t(L, "actions"))}</h2>{action_forms(ctx, city, row, allowed, command_id, acting_for)}</section>
  </div>
  <section class="card"><h2>{e(t(L, "sec_escalations"))}</h2>{esc_html}</section>
  <section class="card"><h2>{e(t(L, "sec_trail"))}</h2>{trail}</section>
  <section class="card"><h2>{e(t(L, "sec_sources"))}</h2>{src_html}</section>
  <section class="card"><h2>{e(t(L, "sec_pushes"))}</h2>{pushes}</section>
  <p class="muted small">{times_in(ctx)}</p>{missed_dialog(ctx, row) if "missed" in allowed else ""}
</main>"""
    return frame(
        ctx,
        title=f"{t(L, 'detail_title')} {row.incident_id}",
        body=body,
        page="detail",
        data={"incident_id": row.incident_id, "version": row.version, "created_at": row.created_at},
    )
