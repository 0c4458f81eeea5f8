// The map page: the trajectory to scale, coloured by frame order, and the top-k poses of an image.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const state = { meta: null, view: null };

function colourAt(t) {
  const s = Math.min(Math.max(t, 0), 1) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(s), VIRIDIS.length - 2);
  const f = s - i;
  const c = VIRIDIS[i].map((v, j) => Math.round(v + (VIRIDIS[i + 1][j] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function niceLength(span) {
  const raw = span / 5;
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  return [1, 2, 5, 10].map((m) => m * p).filter((v) => v <= raw).pop() || p;
}

function setStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function drawTrajectory(meta, traj) {
  const svg = document.getElementById("trajectory");
  const e = meta.extent_m;
  const span = Math.max(e.x_max - e.x_min, e.y_max - e.y_min, 1);
  const pad = span * 0.06;
  const w = e.x_max - e.x_min + 2 * pad;
  const h = e.y_max - e.y_min + 2 * pad;
  // World x to the right, y up: one metre is the same length on both axes (drawn to scale).
  const view = { sx: (x) => x - e.x_min + pad, sy: (y) => e.y_max - y + pad, r: span / 250, w, h };
  state.view = view;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const n = traj.x.length;
  const points = el("g", { id: "scans" }, svg);
  for (let i = 0; i < n; i++) {
    const c = el("circle", {
      cx: view.sx(traj.x[i]), cy: view.sy(traj.y[i]), r: view.r, fill: colourAt(n > 1 ? i / (n - 1) : 0),
    }, points);
    const title = el("title", {}, c);
    title.textContent = `${traj.sequence[i]}/${String(traj.frame[i]).padStart(6, "0")}`;
  }
  const bar = niceLength(span);
  const y0 = h - pad * 0.4;
  const g = el("g", { id: "scale-bar" }, svg);
  el("line", { x1: pad, y1: y0, x2: pad + bar, y2: y0, stroke: "#1d232b", "stroke-width": view.r * 0.6 }, g);
  const label = el("text", { x: pad, y: y0 - view.r * 1.5, "font-size": view.r * 4 }, g);
  label.textContent = `${bar} m`;
  document.getElementById("scale-label").textContent = `scale bar: ${bar} m`;
  el("g", { id: "matches-layer" }, svg);
  document.getElementById("colour-bar").style.background =
    `linear-gradient(to right, ${VIRIDIS.map((c) => `rgb(${c.join(",")})`).join(",")})`;
}

function drawMatches(matches) {
  const layer = document.getElementById("matches-layer");
  layer.replaceChildren();
  const v = state.view;
  // Best match last so that it is drawn on top.
  for (const m of [...matches].reverse()) {
    const g = el("g", { class: "match-marker", "data-rank": m.rank, "data-frame": m.frame_id }, layer);
    const x = v.sx(m.x), y = v.sy(m.y);
    const len = v.r * 7;
    el("line", {
      x1: x, y1: y, x2: x + len * Math.cos(m.yaw_rad), y2: y - len * Math.sin(m.yaw_rad),
      "stroke-width": v.r * 0.8,
    }, g);
    el("circle", { cx: x, cy: y, r: v.r * (m.rank === 1 ? 3.2 : 2.2), "stroke-width": v.r * 0.5 }, g);
    const t = el("text", { x: x + v.r * 3.5, y: y - v.r * 3, "font-size": v.r * 5 }, g);
    t.textContent = `${m.rank} (${m.score.toFixed(2)})`;
  }
}

function drawPath(path) {
  // The best path of a sequence: each image's map place, oldest first (none off the map).
  const layer = document.getElementById("matches-layer");
  const v = state.view;
  const steps = path.filter((p) => p.frame_id !== null);
  const g = el("g", { id: "sequence-path" }, null);
  layer.insertBefore(g, layer.firstChild);  // under the poses
  el("polyline", {
    points: steps.map((p) => `${v.sx(p.x)},${v.sy(p.y)}`).join(" "), "stroke-width": v.r * 0.9,
  }, g);
  for (const p of steps) {
    const c = el("circle", { class: "path-step", cx: v.sx(p.x), cy: v.sy(p.y), r: v.r * 1.4,
      "stroke-width": v.r * 0.3, "data-frame": p.frame_id }, g);
    el("title", {}, c).textContent = `${p.image}: ${p.frame_id} (similarity ${p.similarity.toFixed(3)})`;
  }
}

function listMatches(matches) {
  const table = document.getElementById("matches");
  const body = table.querySelector("tbody");
  body.replaceChildren();
  for (const m of matches) {
    const row = document.createElement("tr");
    if (m.rank === 1) row.className = "best";
    for (const value of [m.rank, m.frame_id, m.score.toFixed(3), m.x.toFixed(1), m.y.toFixed(1), m.yaw_deg.toFixed(0)]) {
      const td = document.createElement("td");
      td.textContent = value;
      row.appendChild(td);
    }
    body.appendChild(row);
  }
  table.hidden = false;
}

function showRangeImages(matches) {
  const box = document.getElementById("range-images");
  box.replaceChildren();
  if (!state.meta.range_images) {
    box.textContent = "range images: start liploc serve with --data-root to show the retrieved scans";
    return;
  }
  for (const m of matches) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.className = "range-image";
    img.alt = `range image of ${m.frame_id}`;
    img.src = `/map/frames/${encodeURIComponent(m.sequence)}/${m.frame}/range.png`;
    const cap = document.createElement("figcaption");
    cap.textContent = `#${m.rank} ${m.frame_id} score ${m.score.toFixed(3)}`;
    fig.append(img, cap);
    box.appendChild(fig);
  }
}

async function localize(file) {
  const query = document.getElementById("query-image");
  query.src = URL.createObjectURL(file);
  document.getElementById("query-figure").hidden = false;
  const k = document.getElementById("k-input").value || "5";
  const form = new FormData();
  form.append("image", file, file.name);
  setStatus(`localizing ${file.name}...`, false);
  let body;
  try {
    const response = await fetch(`/localize?k=${encodeURIComponent(k)}`, { method: "POST", body: form });
    body = await response.json();
    if (!response.ok) {
      setStatus(`${response.status}: ${body.detail || body.error}`, true);
      return;
    }
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
    return;
  }
  drawMatches(body.matches);
  listMatches(body.matches);
  showRangeImages(body.matches);
  setStatus(`${file.name}: ${body.matches.length} poses in ${body.time_ms.total.toFixed(1)} ms (${body.backend})`, false);
}

async function localizeSequence(files) {
  const last = files[files.length - 1];
  const query = document.getElementById("query-image");
  query.src = URL.createObjectURL(last);
  document.getElementById("query-figure").hidden = false;
  const k = document.getElementById("k-input").value || "5";
  const travelled = document.getElementById("travelled-input").value.trim();
  const form = new FormData();
  for (const file of files) form.append("image", file, file.name);
  if (travelled) form.append("travelled", travelled);
  setStatus(`localizing a sequence of ${files.length} images...`, false);
  let body;
  try {
    const response = await fetch(`/localize/sequence?k=${encodeURIComponent(k)}`, { method: "POST", body: form });
    body = await response.json();
    if (!response.ok) {
      setStatus(`${response.status}: ${body.detail || body.error}`, true);
      return;
    }
  } catch (err) {
    setStatus(`request failed: ${err}`, true);
    return;
  }
  drawMatches(body.matches);
  drawPath(body.path);
  listMatches(body.matches);
  showRangeImages(body.matches);
  setStatus(
    `${last.name}, the last of ${files.length} images: ${body.matches.length} poses by sequence matching ` +
    `(score: the path's mean normalised similarity) in ${body.time_ms.total.toFixed(1)} ms (${body.backend})`,
    false,
  );
}

function localizeFiles(fileList) {
  const files = [...fileList].sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  if (files.length > 1) localizeSequence(files);
  else if (files.length === 1) localize(files[0]);
}

async function start() {
  try {
    const [meta, traj] = await Promise.all(["/map", "/map/trajectory"].map((u) => fetch(u).then((r) => r.json())));
    state.meta = meta;
    document.getElementById("map-name").textContent = meta.name;
    const e = meta.extent_m;
    document.getElementById("map-summary").textContent =
      `${meta.frames} scans in ${meta.sequences.map((s) => s.name).join(", ")}; ` +
      `${(e.x_max - e.x_min).toFixed(0)} m x ${(e.y_max - e.y_min).toFixed(0)} m; ` +
      `model ${meta.model.fingerprint.slice(0, 12)} (${meta.backend}); built ${meta.created}`;
    drawTrajectory(meta, traj);
    document.body.dataset.ready = "true";
  } catch (err) {
    setStatus(`cannot load the map: ${err}`, true);
  }
  const input = document.getElementById("image-input");
  input.addEventListener("change", () => localizeFiles(input.files));
  const zone = document.getElementById("drop-zone");
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    zone.classList.remove("over");
    localizeFiles(ev.dataTransfer.files);
  });
}

start();
