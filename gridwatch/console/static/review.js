// The review queue: incidents in `pending_review`, oldest first (first come, first reviewed), with
// every source's confidence, rule, model and annotated evidence, and what was merged into them.
// Keyboard: j/k move, c confirm, f false alarm (asks for a reason), m merge (asks for the target,
// suggests the nearest open incidents of the same category), r recategorise, n note, Enter open.
// After a decision the next item is selected; new items arrive live (the event stream).

import { commandId, el, fmtDur, fmtTime, getJSON, live, loadNodes, nodeName, now, postJSON, t, tv, url } from "./common.js";

const list = document.getElementById("queue");
const countEl = document.getElementById("review-count");
const dialogs = {
  fa: document.getElementById("fa-dialog"),
  merge: document.getElementById("merge-dialog"),
  recat: document.getElementById("recat-dialog"),
  note: document.getElementById("note-dialog"),
};
const faReason = document.getElementById("fa-reason");
const mergeInto = document.getElementById("merge-into");
const mergeSuggest = document.getElementById("merge-suggest");
const recatCategory = document.getElementById("recat-category");
const noteText = document.getElementById("note-text");

let nodes = {};
let rows = [];
let total = 0;
let sel = 0;
let busy = false;
let perms = { can_review: false, can_note: false };

function evidenceEl(ev) {
  if (ev.url && (ev.kind === "snapshot" || ev.kind === "photo")) {
    return el("a", { href: ev.url, target: "_blank", rel: "noopener noreferrer", class: "thumb" },
      el("img", { src: ev.url, alt: tv("evk", ev.kind), loading: "lazy", referrerpolicy: "no-referrer" }));
  }
  return el("span", { class: "evidence-ref" }, el("code", {}, ev.ref || ""));
}

function button(label, key, cls, fn) {
  return el("button", { type: "button", class: cls, onclick: (e) => { e.stopPropagation(); fn(); } },
    label, el("kbd", {}, key));
}

function itemEl(r, i) {
  const where = [r.town, r.community, r.grid].filter(Boolean).map((id) => nodeName(nodes, id)).join(" / ");
  const pick = () => { sel = i; };
  return el("li", { class: `review-item${i === sel ? " selected" : ""}`, "data-id": r.id, "data-i": i,
      onclick: () => { sel = i; draw(); } },
    el("div", { class: "ri-head" },
      el("span", { class: `badge sev-${r.severity}` }, tv("sev", r.severity)), " ",
      el("b", { class: "ri-cat" }, tv("cat", r.category)), " ", el("span", {}, r.summary),
      el("span", { class: "ri-age muted" }, fmtDur(now() - r.created_at))),
    el("div", { class: "ri-meta muted" }, fmtTime(r.created_at), " · ", el("span", { class: "ri-where" }, where),
      " · ", t("review_routed_to"), " ", tv("level", r.level), " ", nodeName(nodes, r.node),
      " · ", el("code", {}, r.id)),
    r.merged_in?.length
      ? el("div", { class: "ri-merged" }, t("review_merged_in", { what: "" }),
        ...r.merged_in.map((m) => el("code", {}, m.from)))
      : null,
    el("ul", { class: "ri-sources" }, ...r.source_list.map((s) => el("li", {},
      el("span", { class: `badge src-${s.kind}` }, tv("src", s.kind)), " ",
      el("code", {}, s.source_id), " ",
      el("span", { class: `conf${s.confidence < 0.7 ? " low" : ""}` }, `${t("s_confidence")} ${Math.round(s.confidence * 100)}%`),
      " · ", el("code", {}, s.rule), s.model_version ? el("code", { class: "muted" }, ` ${s.model_version}`) : null,
      " · ", fmtTime(s.observed_at, true), " · ", s.summary,
      s.evidence.length ? el("div", { class: "ri-evidence" }, ...s.evidence.map(evidenceEl)) : null))),
    el("div", { class: "ri-actions" },
      perms.can_review ? button(t("confirm"), "c", "primary", () => { pick(); confirm(); }) : null,
      perms.can_review ? button(t("false_alarm_btn"), "f", "danger", () => { pick(); ask("fa"); }) : null,
      perms.can_review ? button(t("merge_btn"), "m", "", () => { pick(); ask("merge"); }) : null,
      perms.can_review ? button(t("recat_btn"), "r", "", () => { pick(); ask("recat"); }) : null,
      perms.can_note ? button(t("note_btn"), "n", "", () => { pick(); ask("note"); }) : null,
      el("a", { href: url(`/incidents/${encodeURIComponent(r.id)}`), class: "button" }, t("open_detail"), el("kbd", {}, "Enter"))),
  );
}

function draw() {
  countEl.textContent = t("review_count", { n: total });
  if (!rows.length) {
    list.replaceChildren(el("li", { class: "muted empty" }, t("review_empty")));
    return;
  }
  sel = Math.max(0, Math.min(sel, rows.length - 1));
  list.replaceChildren(...rows.map(itemEl));
  list.children[sel]?.scrollIntoView({ block: "nearest" });
}

let loading = null;
let again = false;
async function load() {
  // One request at a time; a change that arrives meanwhile asks for one more read afterwards.
  if (loading) { again = true; return loading; }
  loading = (async () => {
    try {
      const res = await getJSON("/api/review");
      const keep = rows[sel]?.id;
      rows = res.rows;
      total = res.total;
      perms = { can_review: res.can_review, can_note: res.can_note };
      const i = rows.findIndex((r) => r.id === keep);
      if (i >= 0) sel = i; // the same item stays selected; if it is gone, the one now at its place
      draw();
    } finally {
      loading = null;
    }
  })();
  await loading;
  if (again) { again = false; await load(); }
}

function flash(kind, text) {
  const f = el("div", { class: `flash ${kind} toast` }, text);
  document.body.append(f);
  setTimeout(() => f.remove(), 4000);
}

// Send one command for the selected item; `leaves`: the item leaves the queue (select the next).
async function act(command, extra, leaves = true) {
  const r = rows[sel];
  if (!r || busy) return;
  busy = true;
  try {
    await postJSON(`/api/incidents/${encodeURIComponent(r.id)}/act`, { command, command_id: commandId(), ...extra });
    flash("ok", t("done_ok", { cmd: tv("cmd", command) }));
    const i = rows.findIndex((x) => x.id === r.id);
    if (leaves && i >= 0) { rows.splice(i, 1); total = Math.max(0, total - 1); sel = i; }
    else if (!leaves && i >= 0) sel = Math.min(rows.length - 1, i + (command === "note" ? 0 : 1));
    draw();
    load();
  } catch (e) {
    flash("error", t("err_illegal", { why: e.message }));
  } finally {
    busy = false;
  }
}

function confirm() {
  if (perms.can_review) act("confirm", {});
}

async function ask(which) {
  const r = rows[sel];
  if (!r || (which === "note" ? !perms.can_note : !perms.can_review)) return;
  const d = dialogs[which];
  if (which === "fa") faReason.value = "";
  if (which === "note") noteText.value = "";
  if (which === "recat") {
    for (const o of recatCategory.options) o.disabled = o.value === r.category;
    recatCategory.value = [...recatCategory.options].find((o) => !o.disabled)?.value ?? "";
  }
  if (which === "merge") {
    mergeInto.value = "";
    mergeSuggest.replaceChildren(el("li", { class: "muted" }, t("loading")));
  }
  d.showModal();
  ({ fa: faReason, merge: mergeInto, recat: recatCategory, note: noteText })[which].focus();
  if (which === "merge") {
    try {
      const res = await getJSON(`/api/incidents/${encodeURIComponent(r.id)}/nearby`);
      mergeSuggest.replaceChildren(...(res.rows.length ? res.rows.map((n) => el("li", {},
        el("button", { type: "button", class: "link suggestion", "data-id": n.id,
          onclick: () => { mergeInto.value = n.id; mergeInto.focus(); } },
          el("code", {}, n.id), " ", tv("state", n.state), " · ", t("merge_dist", { m: n.dist_m }), " · ",
          fmtTime(n.created_at, true), " · ", n.summary))) : [el("li", { class: "muted" }, t("merge_none"))]));
    } catch {
      mergeSuggest.replaceChildren();
    }
  }
}

function bindDialog(which, form, submit) {
  const d = dialogs[which];
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const ok = submit();
    if (ok !== false) d.close();
  });
  d.querySelector("button.cancel").addEventListener("click", () => d.close());
}

bindDialog("fa", document.getElementById("fa-form"), () => {
  const reason = faReason.value.trim();
  if (!reason) return false;
  act("false_alarm", { reason });
});
bindDialog("merge", document.getElementById("merge-form"), () => {
  const into = mergeInto.value.trim();
  if (!into) return false;
  act("merge", { into });
});
bindDialog("recat", document.getElementById("recat-form"), () => {
  if (!recatCategory.value) return false;
  act("recategorise", { category: recatCategory.value }, false);
});
bindDialog("note", document.getElementById("note-form"), () => {
  const note = noteText.value.trim();
  if (!note) return false;
  act("note", { note }, false);
});

document.addEventListener("keydown", (e) => {
  if (Object.values(dialogs).some((d) => d.open)) return;
  if ((e.target instanceof Element && e.target.closest("input, select, textarea")) || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === "j") { sel = Math.min(rows.length - 1, sel + 1); draw(); }
  else if (e.key === "k") { sel = Math.max(0, sel - 1); draw(); }
  else if (e.key === "c") confirm();
  else if (e.key === "f") ask("fa");
  else if (e.key === "m") ask("merge");
  else if (e.key === "r") ask("recat");
  else if (e.key === "n") ask("note");
  else if (e.key === "Enter" && rows[sel]) location.href = url(`/incidents/${encodeURIComponent(rows[sel].id)}`);
  else return;
  e.preventDefault();
});

// Live: a change that touches the queue (an item arrives, or someone else decided one) re-reads
// it at once; bursts are coalesced by load() (one read in flight, one more afterwards).
const touchesQueue = (ev) => ev.to_state === "pending_review" || ev.from_state === "pending_review"
  || ev.kind === "merged_in" || rows.some((r) => r.id === ev.incident_id);

(async () => {
  nodes = await loadNodes();
  await load();
  live((events) => { if (events.some(touchesQueue)) load(); }, load);
  setInterval(draw, 30_000); // ages
})();
