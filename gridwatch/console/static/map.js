// The grid map: the city model's polygons as SVG (no tiles, works offline), open incidents as
// markers. Projection: equirectangular around the city's centre, x scaled by cos(latitude), in
// metres. Zoom and pan change one transform; strokes keep their width (non-scaling-stroke),
// markers keep their size (their radius is divided by the zoom), labels are placed in screen
// space so their text never scales.

import {
  bindFilters, cfg, dueClass, dueText, el, getJSON, live, loadNodes, matches, t, tv, url,
} from "./common.js";

const SVG = "http://www.w3.org/2000/svg";
const svg = document.getElementById("map");
const legend = document.getElementById("map-legend");
const countEl = document.getElementById("map-count");
const svgEl = (tag, attrs = {}) => {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
};

const view = svgEl("g", { class: "view" });
const layers = {};
for (const lv of ["town", "community", "grid", "district"]) layers[lv] = view.appendChild(svgEl("g", { class: `lv lv-${lv}` }));
const markerLayer = view.appendChild(svgEl("g", { class: "markers" }));
const labelLayer = svgEl("g", { class: "labels" });
svg.append(view, labelLayer);
const tip = document.body.appendChild(el("div", { class: "map-tip hidden" }));

let filters = {};
let lon0 = 0, lat0 = 0, kx = 1;
let bounds = null; // projected [minx, miny, maxx, maxy]
let s = 1, tx = 0, ty = 0; // screen = (x * s + tx, y * s + ty)
const labels = []; // {x, y, level, node}
const markers = new Map(); // id -> {data, node}

const M_LAT = 110540, M_LON = 111320;
const proj = (lon, lat) => [(lon - lon0) * kx * M_LON, -(lat - lat0) * M_LAT];

function ringPath(ring) {
  let d = "";
  ring.forEach(([lon, lat], i) => {
    const [x, y] = proj(lon, lat);
    d += `${i ? "L" : "M"}${x.toFixed(1)} ${y.toFixed(1)}`;
  });
  return d + "Z";
}

function drawCity(gj) {
  let minLon = 180, maxLon = -180, minLat = 90, maxLat = -90;
  const district = gj.features.filter((f) => f.properties.level === "district");
  for (const f of district.length ? district : gj.features) {
    const polys = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
    for (const poly of polys) for (const [lon, lat] of poly[0]) {
      minLon = Math.min(minLon, lon); maxLon = Math.max(maxLon, lon);
      minLat = Math.min(minLat, lat); maxLat = Math.max(maxLat, lat);
    }
  }
  lon0 = (minLon + maxLon) / 2;
  lat0 = (minLat + maxLat) / 2;
  kx = Math.cos((lat0 * Math.PI) / 180);
  const [x0, y0] = proj(minLon, maxLat);
  const [x1, y1] = proj(maxLon, minLat);
  bounds = [x0, y0, x1, y1];
  const towns = gj.features.filter((f) => f.properties.level === "town").map((f) => f.properties.id);
  for (const f of gj.features) {
    const p = f.properties;
    const polys = f.geometry.type === "Polygon" ? [f.geometry.coordinates] : f.geometry.coordinates;
    const d = polys.map((poly) => poly.map(ringPath).join("")).join("");
    const path = svgEl("path", { d, class: `area a-${p.level}`, "data-id": p.id });
    if (p.level === "town") path.classList.add(`town-${towns.indexOf(p.id) % 8}`);
    const title = svgEl("title");
    title.textContent = `${cfg.lang === "zh" ? p.zh : p.en} · ${tv("level", p.level)}`;
    path.append(title);
    layers[p.level]?.append(path);
    if (p.level !== "district") {
      const [x, y] = proj(p.lx, p.ly);
      const text = svgEl("text", { class: `label l-${p.level}` });
      text.textContent = cfg.lang === "zh" ? p.zh : p.en;
      labelLayer.append(text);
      labels.push({ x, y, level: p.level, node: text });
    }
  }
}

function fit() {
  const r = svg.getBoundingClientRect();
  const pad = 24;
  s = Math.min((r.width - 2 * pad) / (bounds[2] - bounds[0]), (r.height - 2 * pad) / (bounds[3] - bounds[1]));
  tx = (r.width - (bounds[2] - bounds[0]) * s) / 2 - bounds[0] * s;
  ty = (r.height - (bounds[3] - bounds[1]) * s) / 2 - bounds[1] * s;
  fitScale = s;
  apply();
}
let fitScale = 1;

let frame = 0;
function apply() {
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(() => {
    view.setAttribute("transform", `translate(${tx} ${ty}) scale(${s})`);
    // Marker radius in map units, so that it stays ~5 px on screen. A custom property set through
    // the CSSOM (a <style> element would be inline style, which the CSP forbids).
    const px = markers.size > 3000 ? 3 : markers.size > 800 ? 4 : 5; // thousands: smaller dots
    svg.style.setProperty("--mr", `${(px / s).toFixed(3)}px`);
    svg.style.setProperty("--mr-hl", `${((px + 3) / s).toFixed(3)}px`);
    const zoom = s / fitScale;
    svg.classList.toggle("z-community", zoom >= 2.2);
    svg.classList.toggle("z-grid", zoom >= 6);
    const r = svg.getBoundingClientRect();
    for (const lb of labels) {
      const visible = lb.level === "town" || (lb.level === "community" && zoom >= 2.2) || (lb.level === "grid" && zoom >= 6);
      // With grid names shown, community names move up a line: their label points often coincide.
      const X = lb.x * s + tx, Y = lb.y * s + ty - (lb.level === "community" && zoom >= 6 ? 14 : 0);
      const on = visible && X > -50 && Y > -20 && X < r.width + 50 && Y < r.height + 20;
      lb.node.style.display = on ? "" : "none";
      if (on) { lb.node.setAttribute("x", X.toFixed(1)); lb.node.setAttribute("y", Y.toFixed(1)); }
    }
  });
}

function zoomAt(cx, cy, f) {
  const ns = Math.min(Math.max(s * f, fitScale * 0.5), fitScale * 60);
  f = ns / s;
  tx = cx - (cx - tx) * f;
  ty = cy - (cy - ty) * f;
  s = ns;
  apply();
}

svg.addEventListener("wheel", (e) => {
  e.preventDefault();
  const r = svg.getBoundingClientRect();
  zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
}, { passive: false });

let drag = null;
svg.addEventListener("pointerdown", (e) => {
  drag = { x: e.clientX, y: e.clientY, tx, ty, moved: false };
  svg.setPointerCapture(e.pointerId);
});
svg.addEventListener("pointermove", (e) => {
  if (drag) {
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 4) drag.moved = true;
    if (drag.moved) { tx = drag.tx + dx; ty = drag.ty + dy; apply(); tip.classList.add("hidden"); return; }
  }
  const target = document.elementFromPoint(e.clientX, e.clientY);
  if (target?.classList?.contains("mk")) showTip(target, e);
  else tip.classList.add("hidden");
});
svg.addEventListener("pointerup", (e) => {
  const wasDrag = drag?.moved;
  drag = null;
  if (wasDrag) return;
  const target = document.elementFromPoint(e.clientX, e.clientY);
  if (target?.classList?.contains("mk")) location.href = url(`/incidents/${encodeURIComponent(target.dataset.id)}`);
});
document.getElementById("zoom-in").addEventListener("click", () => {
  const r = svg.getBoundingClientRect(); zoomAt(r.width / 2, r.height / 2, 1.6);
});
document.getElementById("zoom-out").addEventListener("click", () => {
  const r = svg.getBoundingClientRect(); zoomAt(r.width / 2, r.height / 2, 1 / 1.6);
});
document.getElementById("zoom-reset").addEventListener("click", fit);
window.addEventListener("resize", () => apply());

const colourBy = document.getElementById("colour-by");
colourBy.value = new URLSearchParams(location.search).get("colour") || "state";
const setColour = () => {
  svg.classList.remove("by-state", "by-level", "by-due");
  svg.classList.add(`by-${colourBy.value}`);
  drawLegend();
};
colourBy.addEventListener("change", setColour);

function drawLegend() {
  const mode = colourBy.value;
  const items = mode === "state"
    ? ["pending_review", "dispatched", "acknowledged", "on_site", "resolved", "returned"].map((v) => [`st-${v}`, tv("state", v)])
    : mode === "level"
      ? ["grid", "community", "town", "district"].map((v) => [`lv-${v}`, tv("level", v)])
      : ["ok", "soon", "near", "late", "none"].map((v) => [`due-${v}`, t(`due_${v}`)]);
  legend.replaceChildren(...items.map(([cls, text]) => el("div", { class: "lg" }, el("i", { class: `sw ${mode} ${cls}` }), text)));
}

// --- markers ----------------------------------------------------------------------------------
// m = [id, lon, lat, level, state, due_at, assigned_at, category]
function markerClass(m) {
  return `mk st-${m[4]} lv-${m[3]} due-${dueClass(m[5], m[6])}`;
}

function putMarker(m) {
  let rec = markers.get(m[0]);
  if (!rec) {
    const [x, y] = proj(m[1], m[2]);
    const c = svgEl("circle", { cx: x.toFixed(1), cy: y.toFixed(1), "data-id": m[0] });
    markerLayer.append(c);
    rec = { data: m, node: c };
    markers.set(m[0], rec);
  }
  rec.data = m;
  rec.node.setAttribute("class", markerClass(m));
}

function dropMarker(id) {
  const rec = markers.get(id);
  if (rec) { rec.node.remove(); markers.delete(id); }
}

function showCount() {
  countEl.textContent = t("rows_count", { n: markers.size });
}

async function loadMarkers() {
  const res = await getJSON("/api/markers", filters);
  const seen = new Set();
  for (const m of res.markers) { putMarker(m); seen.add(m[0]); }
  for (const id of [...markers.keys()]) if (!seen.has(id)) dropMarker(id);
  showCount();
  apply();
}

function showTip(node, e) {
  const rec = markers.get(node.dataset.id);
  if (!rec) return;
  const m = rec.data;
  tip.replaceChildren(
    el("b", {}, tv("cat", m[7])), el("br"),
    tv("state", m[4]), " · ", tv("level", m[3]), el("br"),
    el("span", { class: `due due-${dueClass(m[5], m[6])}` }, dueText(m[5])),
  );
  tip.style.left = `${e.clientX + 14}px`;
  tip.style.top = `${e.clientY + 10}px`;
  tip.classList.remove("hidden");
}

function onEvents(events) {
  for (const ev of events) {
    const r = ev.incident;
    if (!r || r.lon == null) continue;
    if (matches(r, filters)) {
      putMarker([r.id, r.lon, r.lat, r.level, r.state, r.due_at, r.assigned_at, r.category]);
      const rec = markers.get(r.id);
      rec.node.classList.add("hl");
      setTimeout(() => rec.node.classList.remove("hl"), 2500);
    } else dropMarker(r.id);
  }
  showCount();
}

// Deadlines age: recolour every few seconds (only the class changes).
setInterval(() => {
  if (colourBy.value !== "due") return;
  for (const rec of markers.values()) rec.node.setAttribute("class", markerClass(rec.data));
}, 5000);

(async () => {
  await loadNodes();
  const gj = await getJSON("/api/city.geojson");
  drawCity(gj);
  fit();
  setColour();
  const f = await bindFilters(document.getElementById("filters"), (v) => { filters = v; loadMarkers(); });
  filters = f.values();
  await loadMarkers();
  live(onEvents, loadMarkers);
})();
