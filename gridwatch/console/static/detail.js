// The detail page is rendered by the server; this watches the live stream and refreshes the page
// when this incident changes, unless the user is typing into one of its forms or has a dialog
// open. It also drives the miss report dialog.

import { cfg, commandId, el, getJSON, live, postJSON, t, wallToMs } from "./common.js";

const banner = document.getElementById("changed");
document.getElementById("reload")?.addEventListener("click", () => location.reload());
let dirty = false;
document.querySelectorAll("form.act input, form.act select").forEach((f) =>
  f.addEventListener("input", () => { dirty = true; }));

// --- the miss report: a camera showed this incident and no detector raised it --------------------
// Camera (nearest to the incident first, from /api/incidents/{id}/cameras), when it was visible (a
// wall-clock time of the centre's zone, default the incident's creation; sent as epoch ms), a
// note. Posted like every console command; the API's refusal (422: unknown camera, a time in the
// future or over 7 days ago) is shown in the dialog, which stays open.
const missed = document.getElementById("missed-dialog");
if (missed) {
  const form = document.getElementById("missed-form");
  const camera = document.getElementById("missed-camera");
  const at = document.getElementById("missed-at");
  const note = document.getElementById("missed-note");
  const error = document.getElementById("missed-error");
  const submit = form.querySelector("button[type=submit]");
  let cameras = null;
  const showError = (text) => {
    error.textContent = text;
    error.classList.toggle("hidden", !text);
  };
  const cameraLabel = (c) => [c.id, c.zones.join(" / "), c.dist_m === null ? "" : t("missed_dist", { m: c.dist_m })]
    .filter(Boolean).join(" · ");

  document.getElementById("missed-open").addEventListener("click", async () => {
    at.value = at.defaultValue;
    note.value = "";
    showError("");
    missed.showModal();
    camera.focus();
    if (cameras) return;
    try {
      const res = await getJSON(`/api/incidents/${encodeURIComponent(cfg.incident_id)}/cameras`);
      cameras = res.rows;
      camera.replaceChildren(...cameras.map((c) => el("option", { value: c.id }, cameraLabel(c))));
    } catch (e) {
      showError(t("err_illegal", { why: e.message }));
    }
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    // untouched: exactly the incident's creation (the input holds whole seconds)
    let atMs = wallToMs(at.value);
    if (atMs !== null && atMs === wallToMs(at.defaultValue)) atMs = cfg.created_at;
    if (!camera.value || atMs === null) return;
    submit.disabled = true;
    try {
      await postJSON(`/api/incidents/${encodeURIComponent(cfg.incident_id)}/act`, {
        command: "missed", command_id: commandId(), camera_id: camera.value, at_ms: atMs, note: note.value.trim(),
      });
      missed.close();
      location.reload(); // the audit trail shows the report
    } catch (err) {
      showError(t("err_illegal", { why: err.message }));
    } finally {
      submit.disabled = false;
    }
  });
  missed.querySelector("button.cancel").addEventListener("click", () => missed.close());
}

live((events) => {
  if (!events.some((ev) => ev.incident_id === cfg.incident_id)) return;
  const typing = dirty || missed?.open || document.activeElement?.closest("form.act input, form.act select");
  if (typing) banner.classList.remove("hidden");
  else location.reload();
});
