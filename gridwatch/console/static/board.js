// The incident board: open incidents in deadline order, a virtualised list (only the rows on
// screen exist in the DOM; pages of 100 are fetched as they scroll into view), a level x state
// summary, and live deltas from the event stream.

import {
  bindFilters, cfg, dueClass, dueText, el, fmtTime, getJSON, live, loadNodes, matches, nodeName, now, t, tv, url,
} from "./common.js";

const ROW_H = 46;
const PAGE = 100;
const listEl = document.getElementById("list");
const spacer = document.getElementById("spacer");
const countEl = document.getElementById("count");
const liveCount = document.getElementById("live-count");
const summaryEl = document.getElementById("summary");

let nodes = {};
let filters = {};
let total = 0;
let pages = new Map(); // page index -> rows
let inflight = new Map(); // page index -> promise
let generation = 0; // bumps on every filter change: late answers for old filters are dropped
let selected = -1;
let liveUpdates = 0;
const rendered = new Map(); // row index -> element

async function fetchPage(p, force = false) {
  if ((pages.has(p) && !force) || inflight.has(p)) return;
  const gen = generation;
  const pr = getJSON("/api/incidents", { ...filters, offset: p * PAGE, limit: PAGE })
    .then((res) => {
      if (gen !== generation) return;
      total = res.total;
      pages.set(p, res.rows);
      layout();
    })
    .catch((e) => console.warn("board: page", p, e))
    .finally(() => inflight.delete(p));
  inflight.set(p, pr);
}

function rowAt(i) {
  const page = pages.get(Math.floor(i / PAGE));
  return page ? page[i % PAGE] : undefined;
}

function layout() {
  spacer.style.height = `${total * ROW_H}px`;
  countEl.textContent = t("rows_count", { n: total });
  render();
}

function render() {
  const top = listEl.scrollTop;
  const h = listEl.clientHeight || 600;
  const first = Math.max(0, Math.floor(top / ROW_H) - 8);
  const last = Math.min(total - 1, Math.ceil((top + h) / ROW_H) + 8);
  for (let p = Math.floor(first / PAGE); p <= Math.floor(Math.max(first, last) / PAGE); p++) {
    if (p * PAGE < total || (p === 0 && total === 0)) fetchPage(p);
  }
  for (const [i, node] of rendered) {
    if (i < first || i > last) { node.remove(); rendered.delete(i); }
  }
  const nowMs = now();
  for (let i = first; i <= last; i++) {
    const r = rowAt(i);
    const key = r ? `${r.id}|${r.__seq ?? ""}|${i === selected}` : "loading";
    let node = rendered.get(i);
    if (node && node.dataset.key === key) {
      updateDue(node, r, nowMs);
      continue;
    }
    const fresh = r ? rowEl(r, nowMs) : el("div", { class: "row loading" }, el("span", { class: "muted" }, t("loading")));
    fresh.dataset.key = key;
    fresh.style.transform = `translateY(${i * ROW_H}px)`;
    if (i === selected) fresh.classList.add("selected");
    if (node) node.replaceWith(fresh); else listEl.append(fresh);
    rendered.set(i, fresh);
  }
  if (total === 0 && pages.has(0)) {
    listEl.querySelector(".empty") || listEl.append(el("div", { class: "empty muted" }, t("no_rows")));
  } else listEl.querySelector(".empty")?.remove();
}

function rowEl(r, nowMs) {
  const where = [r.town, r.community, r.grid].filter(Boolean).map((id) => nodeName(nodes, id)).join(" / ");
  const cls = dueClass(r.due_at, r.assigned_at, nowMs);
  const a = el(
    "a",
    { class: `row due-row-${cls}${r.__flash ? " just-changed" : ""}${r.__gone ? " gone" : ""}`, href: url(`/incidents/${encodeURIComponent(r.id)}`) },
    el("span", { class: `c-due due due-${cls}` }, dueText(r.due_at, nowMs),
      r.due_step ? el("small", {}, tv("step", r.due_step)) : null),
    el("span", { class: "c-incident", title: r.summary }, el("b", {}, tv("cat", r.category)), " ", el("span", { class: "muted" }, r.summary)),
    el("span", { class: "c-state" }, el("span", { class: `badge state-${r.state}` }, tv("state", r.state)),
      r.escalations ? el("small", { class: "esc" }, `↑${r.escalations}`) : null),
    el("span", { class: "c-node" }, el("small", { class: "lvl" }, tv("level", r.level)), " ", nodeName(nodes, r.node)),
    el("span", { class: "c-where", title: where }, where),
    el("span", { class: "c-source" }, el("span", { class: `badge src-${r.source}` }, tv("src", r.source)),
      r.sources > 1 ? el("small", {}, ` +${r.sources - 1}`) : null),
    el("span", { class: "c-severity" }, el("span", { class: `badge sev-${r.severity}` }, tv("sev", r.severity))),
    el("span", { class: "c-created" }, fmtTime(r.created_at, true)),
  );
  delete r.__flash;
  return a;
}

function updateDue(node, r, nowMs) {
  if (!r) return;
  const cell = node.querySelector(".c-due");
  const cls = dueClass(r.due_at, r.assigned_at, nowMs);
  const text = dueText(r.due_at, nowMs);
  if (cell.firstChild.textContent !== text) cell.firstChild.textContent = text;
  const want = `c-due due due-${cls}`;
  if (cell.className !== want) {
    cell.className = want;
    node.className = node.className.replace(/due-row-\w+/, `due-row-${cls}`);
  }
}

function resetData() {
  generation++;
  pages = new Map();
  inflight = new Map();
  for (const n of rendered.values()) n.remove();
  rendered.clear();
  fetchPage(0);
}

async function loadSummary() {
  const res = await getJSON("/api/summary", filters);
  const levels = ["grid", "community", "town", "district"];
  const states = ["pending_review", "dispatched", "acknowledged", "on_site", "resolved", "returned"];
  const cell = (lv, st) => res.cells.filter((c) => (!lv || c.level === lv) && (!st || c.state === st))
    .reduce((a, c) => a + c.n, 0);
  const link = (n, lv, st) => n
    ? el("a", { href: "#", onclick: (e) => { e.preventDefault(); api.set("level", lv || ""); if (st) api.set("state", st); } }, String(n))
    : el("span", { class: "muted" }, "0");
  const table = el("table", { class: "matrix" },
    el("thead", {}, el("tr", {}, el("th", {}, t("f_level")), ...states.map((s) => el("th", {}, tv("state", s))), el("th", {}, t("total")))),
    el("tbody", {}, ...levels.map((lv) => el("tr", {},
      el("th", {}, tv("level", lv)), ...states.map((s) => el("td", {}, link(cell(lv, s), lv, s))), el("td", { class: "sum" }, link(cell(lv), lv))))),
  );
  const open = cell();
  summaryEl.replaceChildren(
    el("div", { class: "kpis" },
      el("div", { class: "kpi" }, el("b", {}, String(open)), el("span", {}, t("open_incidents"))),
      el("div", { class: `kpi ${res.overdue ? "bad" : ""}` }, el("b", {}, String(res.overdue)), el("span", {}, t("overdue")))),
    table,
  );
}

// --- live ------------------------------------------------------------------------------
let refreshTimer = null;
function scheduleRefresh() {
  // Apply deltas at once; re-read the visible page(s) and the summary about once a second so
  // that order and counts catch up without reloading the whole list.
  refreshTimer ??= setTimeout(() => {
    refreshTimer = null;
    generation++;
    inflight = new Map();
    const first = Math.floor(listEl.scrollTop / ROW_H);
    const last = first + Math.ceil((listEl.clientHeight || 600) / ROW_H);
    const visible = new Set();
    for (let i = first; i <= last; i++) visible.add(Math.floor(i / PAGE));
    // Off-screen pages are dropped (fetched again when scrolled to); on-screen ones stay
    // visible until their fresh copy arrives, so nothing flickers.
    for (const p of [...pages.keys()]) if (!visible.has(p)) pages.delete(p);
    for (const p of visible) fetchPage(p, true);
    loadSummary().catch(() => {});
  }, 900);
}

function onEvents(events) {
  let touched = false;
  for (const ev of events) {
    const inc = ev.incident;
    if (!inc) continue;
    liveUpdates++;
    for (const rows of pages.values()) {
      const i = rows.findIndex((r) => r.id === inc.id);
      if (i >= 0) {
        rows[i] = { ...inc, __flash: true, __gone: !matches(inc, filters) };
        touched = true;
      }
    }
  }
  liveCount.textContent = t("updated_live", { n: liveUpdates });
  if (touched) render();
  scheduleRefresh();
}

// --- keyboard: j/k select, Enter open --------------------------------------------------------
document.addEventListener("keydown", (e) => {
  if ((e.target instanceof Element && e.target.closest("input, select, textarea, dialog")) || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "j" || e.key === "k") {
    selected = Math.max(0, Math.min(total - 1, selected + (e.key === "j" ? 1 : -1)));
    const y = selected * ROW_H;
    if (y < listEl.scrollTop) listEl.scrollTop = y;
    else if (y + ROW_H > listEl.scrollTop + listEl.clientHeight) listEl.scrollTop = y + ROW_H - listEl.clientHeight;
    render();
  } else if (e.key === "Enter" && selected >= 0) {
    const r = rowAt(selected);
    if (r) location.href = url(`/incidents/${encodeURIComponent(r.id)}`);
  }
});

listEl.addEventListener("scroll", () => requestAnimationFrame(render), { passive: true });
window.addEventListener("resize", () => render());
setInterval(render, 1000); // deadline ageing ticks

let api;
(async () => {
  nodes = await loadNodes();
  api = await bindFilters(document.getElementById("filters"), (v) => {
    filters = v;
    listEl.scrollTop = 0;
    selected = -1;
    resetData();
    loadSummary().catch(() => {});
  });
  filters = api.values();
  resetData();
  loadSummary().catch(() => {});
  live(onEvents, () => { resetData(); loadSummary(); });
})();
