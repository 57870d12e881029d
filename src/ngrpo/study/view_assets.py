# ruff: noqa: E501  (the page template: HTML, CSS and script lines, not Python)
"""The page template of `ngrpo view` (`ngrpo.study.view`): HTML, CSS and a plain script, no
library and nothing fetched. `__TITLE__` and `__DATA__` (the runs as JSON) are filled in.

Text from runs is only ever set with `textContent`, never parsed as HTML. Script errors are shown
in the page (`#errors`) and counted in `document.body.dataset.errors`, so a headless browser's
DOM dump shows them too."""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ngrpo view: __TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { padding: 10px 18px; background: #24324a; color: #fff; }
header h1 { font-size: 18px; margin: 0; }
section { padding: 8px 18px; }
h2 { font-size: 16px; margin: 10px 0 6px; }
#charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 10px; }
.chart { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 4px 6px; }
.chart .t { font-weight: 600; font-size: 13px; }
.chart svg { width: 100%; height: 170px; }
.legend span { margin-right: 12px; font-size: 12px; }
.legend i { display: inline-block; width: 12px; height: 3px; margin-right: 4px; vertical-align: middle; }
#browser { display: flex; gap: 12px; align-items: flex-start; }
#groups { flex: 1; min-width: 0; }
#detail { width: 300px; position: sticky; top: 8px; background: #fff; border: 1px solid #ddd;
  border-radius: 4px; padding: 8px; font-size: 13px; white-space: pre-wrap; }
.controls select { margin-right: 10px; }
.group { background: #fff; border: 1px solid #ddd; border-radius: 4px; margin: 8px 0; padding: 6px 8px; }
.prompt { color: #555; margin-bottom: 4px; }
table.resp { border-collapse: collapse; width: 100%; }
table.resp td, table.resp th { border-top: 1px solid #eee; padding: 3px 6px; vertical-align: top;
  text-align: left; font-size: 12px; }
td.text { font-family: ui-monospace, monospace; font-size: 12px; }
span.tok { white-space: pre-wrap; }
span.mx { background: #ffd84d; border-bottom: 2px solid #d08c00; cursor: pointer; border-radius: 2px; }
span.mx.pinned { background: #ff9f43; }
.pos { color: #1a7f37; } .neg { color: #b42318; }
#errors { color: #b42318; white-space: pre-wrap; }
.muted { color: #777; }
</style></head>
<body>
<header><h1>ngrpo view: __TITLE__</h1></header>
<div id="errors"></div>
<section><h2>Curves</h2>
<div class="controls">add a metric: <select id="addMetric"><option value="">choose...</option></select></div>
<div class="legend" id="legend"></div>
<div id="charts"></div></section>
<section><h2>Completions</h2>
<div class="controls">run <select id="selRun"></select> step <select id="selFile"></select>
prompt <select id="selGroup"></select> <span class="muted" id="summary"></span></div>
<div id="browser"><div id="groups"></div>
<div id="detail">Hover over or click a highlighted token: the input at that position was a mix
of its anchor and neighbours.</div></div></section>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
document.body.dataset.errors = "0";
window.addEventListener("error", function (e) {
  document.body.dataset.errors = String(Number(document.body.dataset.errors) + 1);
  document.getElementById("errors").textContent += "script error: " + e.message + "\n";
});
const DATA = JSON.parse(document.getElementById("data").textContent);
const COLORS = ["#2f6fdb", "#e4572e", "#17a398", "#8e44ad", "#f0a202", "#555555", "#c2185b"];
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const k in attrs || {}) node.setAttribute(k, attrs[k]);
  if (text !== undefined) node.textContent = text;
  return node;
}
function svg(tag, attrs) {
  const node = document.createElementNS(SVGNS, tag);
  for (const k in attrs) node.setAttribute(k, attrs[k]);
  return node;
}
function fmt(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(2) : String(Math.round(v * 1000) / 1000);
}

// ------------------------------------------------------------------------------------ curves
function allKeys() {
  const keys = new Set();
  DATA.runs.forEach(r => Object.keys(r.series).forEach(k => keys.add(k)));
  return Array.from(keys).sort();
}
function chart(key, label) {
  const box = el("div", {class: "chart", "data-metric": key});
  box.appendChild(el("div", {class: "t"}, label + (label === key ? "" : "  (" + key + ")")));
  const W = 340, H = 170, L = 44, R = 8, T = 8, B = 22;
  const s = svg("svg", {viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none"});
  const lines = DATA.runs.map(r => r.series[key] || []);
  const pts = [].concat.apply([], lines);
  if (!pts.length) return null;
  let x0 = Math.min.apply(null, pts.map(p => p[0])), x1 = Math.max.apply(null, pts.map(p => p[0]));
  let y0 = Math.min.apply(null, pts.map(p => p[1])), y1 = Math.max.apply(null, pts.map(p => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const X = x => L + (x - x0) / (x1 - x0) * (W - L - R);
  const Y = y => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  s.appendChild(svg("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"}));
  s.appendChild(svg("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"}));
  [[y0, H - B], [y1, T + 8]].forEach(([v, y]) => {
    const t = svg("text", {x: 2, y: y, "font-size": 10, fill: "#555"}); t.textContent = fmt(v); s.appendChild(t);
  });
  [[x0, L, "start"], [x1, W - R, "end"]].forEach(([v, x, a]) => {
    const t = svg("text", {x: x, y: H - 6, "font-size": 10, fill: "#555", "text-anchor": a});
    t.textContent = "step " + fmt(v); s.appendChild(t);
  });
  lines.forEach((line, i) => {
    if (!line.length) return;
    const color = COLORS[i % COLORS.length];
    const d = line.map((p, j) => (j ? "L" : "M") + X(p[0]).toFixed(1) + " " + Y(p[1]).toFixed(1)).join(" ");
    s.appendChild(svg("path", {d: d, fill: "none", stroke: color, "stroke-width": 1.8}));
    line.forEach(p => {
      const c = svg("circle", {cx: X(p[0]), cy: Y(p[1]), r: 2.2, fill: color});
      const tip = svg("title", {}); tip.textContent = DATA.runs[i].name + " step " + p[0] + ": " + fmt(p[1]);
      c.appendChild(tip); s.appendChild(c);
    });
  });
  box.appendChild(s);
  return box;
}
function drawCharts() {
  const charts = document.getElementById("charts"), keys = allKeys(), shown = new Set();
  DATA.defaults.forEach(([pattern, label]) => {
    const re = new RegExp("^" + pattern + "$");
    keys.filter(k => re.test(k)).forEach(k => {
      const box = chart(k, label);
      if (box) { charts.appendChild(box); shown.add(k); }
    });
  });
  const menu = document.getElementById("addMetric");
  keys.filter(k => !shown.has(k)).forEach(k => menu.appendChild(el("option", {value: k}, k)));
  menu.addEventListener("change", () => {
    if (!menu.value) return;
    const box = chart(menu.value, menu.value);
    if (box) charts.insertBefore(box, charts.firstChild);
    menu.remove(menu.selectedIndex); menu.value = "";
  });
  const legend = document.getElementById("legend");
  DATA.runs.forEach((r, i) => {
    const item = el("span"); const swatch = el("i"); swatch.style.background = COLORS[i % COLORS.length];
    item.appendChild(swatch); item.appendChild(document.createTextNode(r.name)); legend.appendChild(item);
  });
}

// ------------------------------------------------------------------------------- completions
const state = {run: 0, file: 0, group: "all", pinned: null};
function hashState() {
  const h = new URLSearchParams(location.hash.slice(1));
  if (h.has("run")) state.run = Math.max(0, Math.min(DATA.runs.length - 1, Number(h.get("run")) || 0));
  const files = DATA.runs[state.run].completions;
  if (h.has("file")) { const i = files.findIndex(f => f.name === h.get("file")); if (i >= 0) state.file = i; }
  else { const i = files.map(f => f.name.indexOf("step-") === 0).lastIndexOf(true); state.file = Math.max(0, i); }
  if (h.has("group")) state.group = h.get("group");
}
function mixText(m) {
  const parts = ["sampled token: " + m.token, "anchor: " + m.anchor + "  (weight " + fmt(m.anchor_weight) + ")"];
  m.neighbors.forEach(n => parts.push("neighbour: " + n.token + "  (weight " + fmt(n.weight) + ")"));
  if (m.noise_norm !== null && m.noise_norm !== undefined) parts.push("noise norm: " + fmt(m.noise_norm));
  parts.push("next token: " + (m.next === null ? "(end)" : m.next));
  parts.push("position: " + m.position);
  return parts.join("\n");
}
function responseCell(row) {
  const td = el("td", {class: "text"});
  const tokens = row.tokens || [row.response];
  const mixed = {};
  (row.mixed || []).forEach(m => { mixed[m.position] = m; });
  tokens.forEach((tok, t) => {
    if (t > 0 && row.sep) td.appendChild(document.createTextNode(row.sep));
    const m = mixed[t];
    const span = el("span", {class: m ? "tok mx" : "tok"}, tok);
    if (m) {
      span.title = mixText(m);
      span.addEventListener("mouseenter", () => { if (!state.pinned) showDetail(m); });
      span.addEventListener("click", () => {
        if (state.pinned) state.pinned.classList.remove("pinned");
        state.pinned = span; span.classList.add("pinned"); showDetail(m);
      });
    }
    td.appendChild(span);
  });
  return td;
}
function showDetail(m) { document.getElementById("detail").textContent = mixText(m); }
function drawGroups() {
  const run = DATA.runs[state.run], box = document.getElementById("groups");
  box.textContent = "";
  const file = run.completions[state.file];
  if (!file) { box.appendChild(el("p", {class: "muted"}, "no completion files in this run (logging.completions_every)")); return; }
  const groups = [];
  file.rows.forEach(r => { const g = String(r.group); if (groups.indexOf(g) < 0) groups.push(g); });
  const sel = document.getElementById("selGroup");
  sel.textContent = ""; sel.appendChild(el("option", {value: "all"}, "all"));
  groups.forEach(g => sel.appendChild(el("option", {value: g}, g)));
  if (state.group !== "all" && groups.indexOf(state.group) < 0) state.group = "all";
  sel.value = state.group;
  let mixedShown = 0;
  groups.filter(g => state.group === "all" || g === state.group).forEach(g => {
    const rows = file.rows.filter(r => String(r.group) === g);
    const div = el("div", {class: "group"});
    div.appendChild(el("div", {class: "prompt"}, "prompt " + g + ": " + rows[0].prompt));
    const table = el("table", {class: "resp"});
    const head = el("tr");
    ["#", "reward", "advantage", "length", "mixed", "response"].forEach(h => head.appendChild(el("th", {}, h)));
    table.appendChild(head);
    rows.forEach(r => {
      const tr = el("tr");
      tr.appendChild(el("td", {}, String(r.sample)));
      const rewardText = fmt(r.reward) + (r.rewards && Object.keys(r.rewards).length > 1 ?
        " (" + Object.keys(r.rewards).map(k => k + " " + fmt(r.rewards[k])).join(", ") + ")" : "");
      tr.appendChild(el("td", {}, rewardText));
      const adv = r.advantage === undefined ? "" : fmt(r.advantage);
      tr.appendChild(el("td", {class: r.advantage > 0 ? "pos" : r.advantage < 0 ? "neg" : ""}, adv));
      tr.appendChild(el("td", {}, (r.length === undefined ? "" : String(r.length)) + (r.truncated ? " (cut)" : "")));
      tr.appendChild(el("td", {}, String((r.mixed || []).length)));
      mixedShown += (r.mixed || []).length;
      tr.appendChild(responseCell(r));
      table.appendChild(tr);
    });
    div.appendChild(table); box.appendChild(div);
  });
  document.getElementById("summary").textContent = file.rows.length + " responses, " + mixedShown + " mixed tokens shown";
  document.body.dataset.mixedShown = String(mixedShown);
}
function drawFiles() {
  const sel = document.getElementById("selFile"); sel.textContent = "";
  DATA.runs[state.run].completions.forEach((f, i) => sel.appendChild(el("option", {value: i}, f.name)));
  sel.value = String(state.file);
}
function setupBrowser() {
  const selRun = document.getElementById("selRun");
  DATA.runs.forEach((r, i) => selRun.appendChild(el("option", {value: i}, r.name)));
  hashState();
  selRun.value = String(state.run);
  drawFiles(); drawGroups();
  selRun.addEventListener("change", () => {
    state.run = Number(selRun.value); state.file = 0; state.group = "all"; drawFiles(); drawGroups();
  });
  document.getElementById("selFile").addEventListener("change", e => { state.file = Number(e.target.value); drawGroups(); });
  document.getElementById("selGroup").addEventListener("change", e => { state.group = e.target.value; drawGroups(); });
  if (new URLSearchParams(location.hash.slice(1)).has("pin")) {  // pin the first mixed token
    const first = document.querySelector("span.mx");
    if (first) first.click();
  }
}
drawCharts();
setupBrowser();
document.body.dataset.ready = "1";
</script></body></html>
"""
