// The review queue: the newest incidents nobody has taken up, with every source's confidence and
// evidence. Keyboard: j/k move, c confirm, f false alarm (asks for a reason), Enter open.

import { commandId, el, fmtTime, getJSON, live, loadNodes, nodeName, postJSON, t, tv, url } from "./common.js";

const list = document.getElementById("queue");
const dialog = document.getElementById("fa-dialog");
const faForm = document.getElementById("fa-form");
const faReason = document.getElementById("fa-reason");
const showConfirmed = document.getElementById("show-confirmed");

let nodes = {};
let rows = [];
let sel = 0;
let perms = { can_confirm: false, can_false_alarm: false };

function evidenceEl(ev) {
  if (ev.url && (ev.kind === "snapshot" || ev.kind === "photo")) {
    return el("a", { href: ev.url, target: "_blank", rel: "noopener noreferrer", class: "thumb" },
      el("img", { src: ev.url, alt: ev.kind, loading: "lazy", referrerpolicy: "no-referrer" }));
  }
  return el("span", { class: "evidence-ref" }, `${ev.kind}: `, el("code", {}, ev.ref || ""));
}

function itemEl(r, i) {
  const where = [r.town, r.community, r.grid].filter(Boolean).map((id) => nodeName(nodes, id)).join(" / ");
  const done = r.confirmed ? el("span", { class: "badge ok" }, t("confirmed_by", { who: r.confirmed.display })) : null;
  return el("li", { class: `review-item${i === sel ? " selected" : ""}${r.confirmed ? " confirmed" : ""}`, "data-i": i,
      onclick: () => { sel = i; draw(); } },
    el("div", { class: "ri-head" },
      el("span", { class: `badge sev-${r.severity}` }, tv("sev", r.severity)), " ",
      el("b", {}, tv("cat", r.category)), " ", el("span", {}, r.summary), " ", done),
    el("div", { class: "ri-meta muted" }, fmtTime(r.created_at), " · ", where, " → ",
      tv("level", r.level), " ", nodeName(nodes, r.node), " · ", tv("state", r.state)),
    el("ul", { class: "ri-sources" }, ...r.source_list.map((s) => el("li", {},
      el("span", { class: `badge src-${s.kind}` }, tv("src", s.kind)), " ",
      el("code", {}, s.source_id), " ",
      el("span", { class: "conf" }, `${t("s_confidence")} ${Math.round(s.confidence * 100)}%`), " · ",
      el("code", {}, s.rule), s.model_version ? el("small", { class: "muted" }, ` ${s.model_version}`) : null,
      " · ", fmtTime(s.observed_at, true), " · ", s.summary,
      s.evidence.length ? el("div", { class: "ri-evidence" }, ...s.evidence.map(evidenceEl)) : null))),
    el("div", { class: "ri-actions" },
      perms.can_confirm ? el("button", { type: "button", class: "primary", onclick: (e) => { e.stopPropagation(); sel = i; confirm(); } },
        t("confirm"), el("kbd", {}, "c")) : null,
      perms.can_false_alarm ? el("button", { type: "button", class: "danger", onclick: (e) => { e.stopPropagation(); sel = i; falseAlarm(); } },
        t("false_alarm_btn"), el("kbd", {}, "f")) : null,
      el("a", { href: url(`/incidents/${encodeURIComponent(r.id)}`), class: "button" }, t("open_detail"), el("kbd", {}, "Enter"))),
  );
}

function draw() {
  if (!rows.length) {
    list.replaceChildren(el("li", { class: "muted" }, t("no_rows")));
    return;
  }
  sel = Math.max(0, Math.min(sel, rows.length - 1));
  list.replaceChildren(...rows.map(itemEl));
  list.children[sel]?.scrollIntoView({ block: "nearest" });
}

async function load() {
  const res = await getJSON("/api/review", { show_confirmed: showConfirmed.checked ? "1" : "" });
  const keep = rows[sel]?.id;
  rows = res.rows;
  perms = { can_confirm: res.can_confirm, can_false_alarm: res.can_false_alarm };
  const i = rows.findIndex((r) => r.id === keep);
  if (i >= 0) sel = i;
  draw();
}

function flash(kind, text) {
  const f = el("div", { class: `flash ${kind} toast` }, text);
  document.body.append(f);
  setTimeout(() => f.remove(), 4000);
}

async function confirm() {
  const r = rows[sel];
  if (!r || !perms.can_confirm) return;
  try {
    await postJSON(`/api/incidents/${encodeURIComponent(r.id)}/act`, { command: "confirm" });
    flash("ok", t("done_ok", { cmd: t("cmd_confirm") }));
    if (showConfirmed.checked) await load();
    else { rows.splice(sel, 1); draw(); }
  } catch (e) {
    flash("error", t("err_illegal", { why: e.message }));
  }
}

function falseAlarm() {
  if (!rows[sel] || !perms.can_false_alarm) return;
  faReason.value = "";
  dialog.showModal();
  faReason.focus();
}

faForm.addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = rows[sel];
  const reason = faReason.value.trim();
  if (!r || !reason) return;
  dialog.close();
  try {
    await postJSON(`/api/incidents/${encodeURIComponent(r.id)}/act`,
      { command: "false_alarm", reason, command_id: commandId() });
    flash("ok", t("done_ok", { cmd: t("cmd_false_alarm") }));
    rows.splice(sel, 1);
    draw();
  } catch (err) {
    flash("error", t("err_illegal", { why: err.message }));
  }
});
document.getElementById("fa-cancel").addEventListener("click", () => dialog.close());

document.addEventListener("keydown", (e) => {
  if (dialog.open || (e.target instanceof Element && e.target.closest("input, select, textarea")) || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "j") { sel = Math.min(rows.length - 1, sel + 1); draw(); }
  else if (e.key === "k") { sel = Math.max(0, sel - 1); draw(); }
  else if (e.key === "c") confirm();
  else if (e.key === "f") { e.preventDefault(); falseAlarm(); }
  else if (e.key === "Enter" && rows[sel]) location.href = url(`/incidents/${encodeURIComponent(rows[sel].id)}`);
  else return;
  e.preventDefault();
});

showConfirmed.addEventListener("change", load);

let timer = null;
(async () => {
  nodes = await loadNodes();
  await load();
  // New incidents arrive, others get taken up: re-read the queue (debounced) on any change.
  live(() => { timer ??= setTimeout(() => { timer = null; load(); }, 400); }, load);
})();
