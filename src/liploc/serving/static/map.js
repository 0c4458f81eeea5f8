// The map page: the trajectory to scale, coloured by frame order, and the top-k poses of an image.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
const state = { meta: null, traj: null, view: null, whole: null, results: null };

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

function wholeMap(meta) {
  // The map's extent with a 6 % margin, in drawing units (metres from the extent's corner).
  const e = meta.extent_m;
  const span = Math.max(e.x_max - e.x_min, e.y_max - e.y_min, 1);
  const pad = span * 0.06;
  return { x: 0, y: 0, w: e.x_max - e.x_min + 2 * pad, h: e.y_max - e.y_min + 2 * pad, pad };
}

function drawTrajectory(meta, traj) {
  const svg = document.getElementById("trajectory");
  const e = meta.extent_m;
  const pad = wholeMap(meta).pad;
  // World x to the right, y up: one metre is the same length on both axes (drawn to scale).
  state.view = { sx: (x) => x - e.x_min + pad, sy: (y) => e.y_max - y + pad, r: 1 };
  state.whole = wholeMap(meta);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const n = traj.x.length;
  const points = el("g", { id: "scans" }, svg);
  for (let i = 0; i < n; i++) {
    const c = el("circle", {
      cx: state.view.sx(traj.x[i]), cy: state.view.sy(traj.y[i]), fill: colourAt(n > 1 ? i / (n - 1) : 0),
    }, points);
    const title = el("title", {}, c);
    title.textContent = `${traj.sequence[i]}/${String(traj.frame[i]).padStart(6, "0")}`;
  }
  el("g", { id: "scale-bar" }, svg);
  // Layers, bottom to top: the sequence's path, the poses (rings: the path shows through them),
  // then every label.
  el("g", { id: "path-layer" }, svg);
  el("g", { id: "matches-layer" }, svg);
  el("g", { id: "labels-layer" }, svg);
  document.getElementById("colour-bar").style.background =
    `linear-gradient(to right, ${VIRIDIS.map((c) => `rgb(${c.join(",")})`).join(",")})`;
  showView(state.whole);
}

function showView(box) {
  // Look at ``box`` (drawing units): the scans, the scale bar and the results are sized for it,
  // so that a zoomed view shows them at the same size on screen as the whole map does.
  const svg = document.getElementById("trajectory");
  const span = Math.max(box.w, box.h);
  state.view.r = span / 250;
  state.view.box = box;
  svg.setAttribute("viewBox", `${box.x} ${box.y} ${box.w} ${box.h}`);
  for (const c of document.querySelectorAll("#scans circle")) c.setAttribute("r", state.view.r);
  const g = document.getElementById("scale-bar");
  g.replaceChildren();
  const bar = niceLength(span);
  const x0 = box.x + span * 0.025, y0 = box.y + box.h - span * 0.025;
  el("line", { x1: x0, y1: y0, x2: x0 + bar, y2: y0, stroke: "#1d232b", "stroke-width": state.view.r * 0.6 }, g);
  const label = el("text", { x: x0, y: y0 - state.view.r * 1.5, "font-size": state.view.r * 4 }, g);
  label.textContent = `${bar} m`;
  document.getElementById("scale-label").textContent = `scale bar: ${bar} m`;
  const zoomed = box !== state.whole;
  document.getElementById("whole-map").hidden = !zoomed;
  document.getElementById("trajectory").dataset.zoomed = zoomed ? "true" : "false";
  if (state.results) drawResults(state.results);
}

function resultsView(results) {
  // The view of the poses and the path: the whole map, unless they lie in a small part of it
  // (a path of a few metres on a map of kilometres would be a dot under the markers).
  const v = state.view, whole = state.whole;
  const places = [...results.matches, ...(results.path || []).filter((p) => p.frame_id !== null)];
  const xs = places.map((p) => v.sx(p.x)), ys = places.map((p) => v.sy(p.y));
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const wholeSpan = Math.max(whole.w, whole.h);
  const size = Math.max(x1 - x0, y1 - y0, wholeSpan * 0.08);
  const pad = size * 0.35;
  if (size + 2 * pad > wholeSpan * 0.6) return whole;
  return { x: (x0 + x1) / 2 - size / 2 - pad, y: (y0 + y1) / 2 - size / 2 - pad, w: size + 2 * pad, h: size + 2 * pad };
}

function drawResults(results) {
  const layer = document.getElementById("matches-layer");
  layer.replaceChildren();
  document.getElementById("path-layer").replaceChildren();
  document.getElementById("labels-layer").replaceChildren();
  drawMatches(results.matches);
  if (results.path) drawPath(results.path);
  placeLabels(results.matches);
}

function clearResults() {
  // A new query (or a failed one) shows nothing of the previous answer.
  state.results = null;
  for (const id of ["matches-layer", "path-layer", "labels-layer", "range-images"]) {
    document.getElementById(id).replaceChildren();
  }
  const table = document.getElementById("matches");
  table.querySelector("tbody").replaceChildren();
  table.hidden = true;
}

function showResults(results) {
  state.results = results;
  showView(resultsView(results));  // draws them
}

function drawMatches(matches) {
  const layer = document.getElementById("matches-layer");
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
  }
}

function overlaps(a, b) {
  return a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
}

function placeLabels(matches) {
  // Each pose's "rank (score)" where it overlaps no label placed before it (best first): beside
  // its marker if there is room, else further up or down the side, with a line to the marker.
  const layer = document.getElementById("labels-layer");
  const v = state.view;
  const placed = [];
  const size = v.r * 5, gap = v.r * 0.8;
  for (const m of matches) {
    const x = v.sx(m.x), y = v.sy(m.y);
    const t = el("text", { class: "match-label", "data-rank": m.rank, "font-size": size, x, y }, layer);
    t.textContent = `${m.rank} (${m.score.toFixed(2)})`;
    const box = t.getBBox();
    const w = box.width + gap, h = box.height + gap;
    let chosen = null;
    for (let step = 0; step < 40 && !chosen; step++) {
      const rise = Math.ceil(step / 2) * (step % 2 ? -1 : 1) * h;  // 0, -h, +h, -2h, ...
      for (const side of [1, -1]) {
        const left = side > 0 ? x + v.r * 3.5 : x - v.r * 3.5 - w;
        const top = y - v.r * 3 - h + rise;
        const candidate = { x: left, y: top, w, h };
        if (!placed.some((p) => overlaps(p, candidate))) { chosen = candidate; break; }
      }
    }
    chosen = chosen || { x: x + v.r * 3.5, y: y - v.r * 3 - h, w, h };
    placed.push(chosen);
    t.setAttribute("x", chosen.x + gap / 2);
    t.setAttribute("y", chosen.y + h - gap / 2 - (box.y + box.height - y));
    const near = Math.abs(chosen.y + h - (y - v.r * 3)) < 1e-6;
    if (!near) {  // a line from the marker to a label moved away from it
      const lx = chosen.x < x ? chosen.x + w : chosen.x, ly = chosen.y + h / 2;
      const leader = el("line", { class: "label-leader", x1: x, y1: y, x2: lx, y2: ly, "stroke-width": v.r * 0.3 }, null);
      layer.insertBefore(leader, layer.firstChild);
    }
  }
}

function drawPath(path) {
  // The best path of a sequence: each image's map place, oldest first (none off the map), under
  // the poses' rings, with a white casing so that it reads on the scans.
  const layer = document.getElementById("path-layer");
  const v = state.view;
  const steps = path.filter((p) => p.frame_id !== null);
  const g = el("g", { id: "sequence-path" }, layer);
  const points = steps.map((p) => `${v.sx(p.x)},${v.sy(p.y)}`).join(" ");
  el("polyline", { class: "path-casing", points, "stroke-width": v.r * 3 }, g);
  el("polyline", { class: "path-line", points, "stroke-width": v.r * 1.6 }, g);
  for (const p of steps) {
    const c = el("circle", { class: "path-step", cx: v.sx(p.x), cy: v.sy(p.y), r: v.r * 1.5,
      "stroke-width": v.r * 0.5, "data-frame": p.frame_id }, g);
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

function showQuery(file) {
  // The query beside its results; a file the browser cannot show (not an image) shows nothing.
  const query = document.getElementById("query-image");
  const figure = document.getElementById("query-figure");
  figure.hidden = true;
  query.onload = () => { figure.hidden = false; };
  query.onerror = () => { figure.hidden = true; };
  query.src = URL.createObjectURL(file);
}

function failed(text) {
  clearResults();
  setStatus(text, true);
}

// POSTs the query images in `form` to `path` with the k chosen on the page: the JSON reply, or
// null once what failed (the service's message, or the network's) is shown.
async function postQuery(path, form) {
  const k = document.getElementById("k-input").value || "5";
  try {
    const response = await fetch(`${path}?k=${encodeURIComponent(k)}`, { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) {
      failed(`${response.status}: ${body.detail || body.error}`);
      return null;
    }
    return body;
  } catch (err) {
    failed(`request failed: ${err}`);
    return null;
  }
}

async function localize(file) {
  clearResults();
  showQuery(file);
  const form = new FormData();
  form.append("image", file, file.name);
  setStatus(`localizing ${file.name}...`, false);
  const body = await postQuery("/localize", form);
  if (body === null) return;
  showResults({ matches: body.matches });
  listMatches(body.matches);
  showRangeImages(body.matches);
  setStatus(`${file.name}: ${body.matches.length} poses in ${body.time_ms.total.toFixed(1)} ms (${body.backend})`, false);
}

async function localizeSequence(files) {
  const last = files[files.length - 1];
  clearResults();
  showQuery(last);
  const travelled = document.getElementById("travelled-input").value.trim();
  const form = new FormData();
  for (const file of files) form.append("image", file, file.name);
  if (travelled) form.append("travelled", travelled);
  setStatus(`localizing a sequence of ${files.length} images...`, false);
  const body = await postQuery("/localize/sequence", form);
  if (body === null) return;
  showResults({ matches: body.matches, path: body.path });
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
    state.traj = traj;
    drawTrajectory(meta, traj);
    document.body.dataset.ready = "true";
  } catch (err) {
    setStatus(`cannot load the map: ${err}`, true);
  }
  document.getElementById("whole-map").addEventListener("click", () => showView(state.whole));
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
