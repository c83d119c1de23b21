// Shared by every console page: settings and labels from the page, time formatting in the
// centre's time zone, JSON calls with the CSRF token, the live event stream, the filter form.
// No text lives here: every label comes from the page's label table (gridwatch/console/i18n.py).

export const cfg = JSON.parse(document.getElementById("gw-config").textContent);
const L = cfg.labels;

export function t(key, vars) {
  let s = L[key] ?? key;
  if (vars) for (const [k, v] of Object.entries(vars)) s = s.replaceAll(`{${k}}`, String(v));
  return s;
}

export function tv(prefix, value) {
  if (value === null || value === undefined) return "";
  return L[`${prefix}_${value}`] ?? String(value);
}

// The server's clock is the one deadlines are counted on (a demo may run a manual clock):
// keep the offset to the browser's clock and refresh it with every answer.
let skew = cfg.now_ms - Date.now();
export function setServerNow(ms) {
  if (typeof ms === "number") skew = ms - Date.now();
}
export function now() {
  return Date.now() + skew;
}

const locale = cfg.lang === "zh" ? "zh-CN" : "en-GB";
const fmtFull = new Intl.DateTimeFormat(locale, {
  timeZone: cfg.tz, year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const fmtShort = new Intl.DateTimeFormat(locale, {
  timeZone: cfg.tz, month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", hour12: false,
});
export function fmtTime(ms, short = false) {
  if (ms === null || ms === undefined) return "";
  return (short ? fmtShort : fmtFull).format(new Date(ms));
}

// A wall-clock time of the centre's time zone ("2026-11-24T10:00:00", what a datetime-local input
// holds; the browser's own zone may differ) as epoch ms, or null when it is not one.
const fmtParts = new Intl.DateTimeFormat("en-US", {
  timeZone: cfg.tz, hourCycle: "h23", year: "numeric", month: "numeric", day: "numeric",
  hour: "numeric", minute: "numeric", second: "numeric",
});
function zoneOffset(ms) {
  const p = Object.fromEntries(fmtParts.formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second) - Math.floor(ms / 1000) * 1000;
}
export function wallToMs(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?$/.exec(value || "");
  if (!m) return null;
  const wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0), +(m[7] || "0").padEnd(3, "0"));
  const guess = wall - zoneOffset(wall);
  return wall - zoneOffset(guess); // the offset at the guess: right across a daylight-saving change
}

export function fmtDur(ms) {
  const s = Math.floor(Math.abs(ms) / 1000);
  if (s < 60) return t("d_sec", { n: s });
  const m = Math.floor(s / 60);
  if (m < 60) return t("d_min", { n: m });
  const h = Math.floor(m / 60);
  if (h < 24) return t("d_hour", { h, m: m % 60 });
  return t("d_day", { d: Math.floor(h / 24), h: h % 24 });
}

// Same rule as pages.due_class: late, near (<25% of the step's time left), soon (<50%), ok, none.
export function dueClass(due, assigned, nowMs = now()) {
  if (due === null || due === undefined) return "none";
  const left = due - nowMs;
  if (left < 0) return "late";
  const frac = left / Math.max(1, due - (assigned ?? nowMs));
  return frac < 0.25 ? "near" : frac < 0.5 ? "soon" : "ok";
}

export function dueText(due, nowMs = now()) {
  if (due === null || due === undefined) return t("no_clock");
  const left = due - nowMs;
  return left >= 0 ? t("left", { t: fmtDur(left) }) : t("late", { t: fmtDur(left) });
}

export function url(path, params) {
  const u = new URL(cfg.prefix + path, location.origin);
  if (params) for (const [k, v] of Object.entries(params)) if (v !== "" && v != null) u.searchParams.set(k, v);
  return u.pathname + u.search;
}

async function checked(resp) {
  if (resp.status === 401) {
    location.href = url("/login", { next: location.pathname + location.search });
    throw new Error("not logged in");
  }
  const body = resp.headers.get("content-type")?.includes("json") ? await resp.json() : null;
  if (!resp.ok) throw new Error((body && body.detail) || `${resp.status}`);
  if (body && typeof body.now_ms === "number") setServerNow(body.now_ms);
  return body;
}

export async function getJSON(path, params) {
  return checked(await fetch(url(path, params), { credentials: "same-origin" }));
}

export async function postJSON(path, body) {
  return checked(
    await fetch(url(path), {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": cfg.csrf },
      body: JSON.stringify(body),
    }),
  );
}

// crypto.randomUUID needs a secure context; a centre's LAN may serve plain http.
export function commandId() {
  const b = crypto.getRandomValues(new Uint8Array(12));
  return "console-" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

// A tiny DOM builder: text goes in as text (never as HTML).
export function el(tag, attrs, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") n.className = v;
    else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
    else n.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    n.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return n;
}

let nodesPromise = null;
export function loadNodes() {
  nodesPromise ??= getJSON("/api/nodes");
  return nodesPromise;
}

export function nodeName(nodes, id) {
  if (!id) return "";
  const n = nodes[id];
  if (!n) return id;
  return cfg.lang === "zh" ? n[2] : n[3];
}

// The live stream: calls onEvents(list) with batches of audit deltas, onResync() when the view
// should reload from scratch. EventSource reconnects by itself and resumes with Last-Event-ID.
export function live(onEvents, onResync) {
  const dot = document.getElementById("live");
  let es = null;
  let pending = [];
  let timer = null;
  const flush = () => {
    timer = null;
    const batch = pending;
    pending = [];
    if (batch.length) onEvents(batch);
  };
  const open = () => {
    es = new EventSource(url("/events"));
    es.addEventListener("open", () => {
      dot?.classList.remove("lost");
      dot?.setAttribute("title", t("live"));
    });
    es.addEventListener("error", () => {
      dot?.classList.add("lost");
      dot?.setAttribute("title", t("live_lost"));
    });
    es.addEventListener("change", (m) => {
      const ev = JSON.parse(m.data);
      if (ev.incident && typeof ev.incident === "object") ev.incident.__seq = ev.seq;
      pending.push(ev);
      timer ??= setTimeout(flush, 100); // coalesce bursts into one redraw
    });
    es.addEventListener("resync", () => {
      // Too far behind to replay: start afresh (a new EventSource forgets the old Last-Event-ID).
      es.close();
      onResync?.();
      setTimeout(open, 500);
    });
  };
  open();
  window.liveStream = () => es;
}

// The filter form shared by the board and the map: town -> community -> grid cascade, values kept
// in the page's URL so that a link or a reload shows the same selection.
export async function bindFilters(form, onChange) {
  const nodes = await loadNodes();
  const params = new URLSearchParams(location.search);
  const sel = (name) => form.elements.namedItem(name);
  const byLevel = (level, parent) =>
    Object.entries(nodes)
      .filter(([, n]) => n[0] === level && (!parent || n[1] === parent))
      .sort((a, b) => a[0].localeCompare(b[0]));
  const fill = (name, items) => {
    const s = sel(name);
    const keep = s.value;
    s.replaceChildren(el("option", { value: "" }, t("f_all")), ...items.map(([id, n]) =>
      el("option", { value: id }, cfg.lang === "zh" ? n[2] : n[3])));
    s.value = items.some(([id]) => id === keep) ? keep : "";
  };
  const cascade = () => {
    const town = sel("town").value;
    fill("community", town ? byLevel("community", town) : []);
    const com = sel("community").value;
    fill("grid", com ? byLevel("grid", com) : []);
    sel("community").disabled = !town;
    sel("grid").disabled = !com;
  };
  fill("town", byLevel("town"));
  for (const name of ["town", "community", "grid", "category", "source", "state", "level"]) {
    const s = sel(name);
    if (!s) continue;
    if (name === "town") s.value = params.get(name) || "";
    if (name === "community") { cascade(); s.value = params.get(name) || ""; }
    if (name === "grid") { cascade(); s.value = params.get(name) || ""; }
    if (!["town", "community", "grid"].includes(name)) s.value = params.get(name) || s.options[0]?.value || "";
  }
  cascade();
  if (params.get("grid")) sel("grid").value = params.get("grid");
  const values = () => {
    const v = {};
    for (const name of ["town", "community", "grid", "category", "source", "state", "level"]) {
      const s = sel(name);
      if (s && s.value) v[name] = s.value;
    }
    if (v.state === "open") delete v.state;
    return v;
  };
  const changed = () => {
    cascade();
    const v = values();
    const u = new URL(location.href);
    u.search = new URLSearchParams(v).toString();
    history.replaceState(null, "", u);
    onChange(v);
  };
  form.addEventListener("change", changed);
  form.addEventListener("reset", () => setTimeout(changed, 0));
  form.addEventListener("submit", (e) => e.preventDefault());
  return { values, set: (name, value) => { sel(name).value = value; changed(); } };
}

// Does an incident row still match the filters the view shows?
export function matches(row, f) {
  const terminal = row.state === "closed" || row.state === "false_alarm" || row.state === "merged";
  if (!f.state && terminal) return false;
  if (f.state && f.state !== "all" && row.state !== f.state) return false;
  for (const k of ["town", "community", "grid", "category", "source", "level"]) {
    if (f[k] && row[k] !== f[k]) return false;
  }
  return true;
}
