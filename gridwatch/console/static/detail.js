// The detail page is rendered by the server; this only watches the live stream and refreshes the
// page when this incident changes, unless the user is typing into one of its forms.

import { cfg, live } from "./common.js";

const banner = document.getElementById("changed");
document.getElementById("reload")?.addEventListener("click", () => location.reload());
let dirty = false;
document.querySelectorAll("form.act input, form.act select").forEach((f) =>
  f.addEventListener("input", () => { dirty = true; }));

live((events) => {
  if (!events.some((ev) => ev.incident_id === cfg.incident_id)) return;
  const typing = dirty || document.activeElement?.closest("form.act input, form.act select");
  if (typing) banner.classList.remove("hidden");
  else location.reload();
});
