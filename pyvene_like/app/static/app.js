// pyvene_like browser app. Every piece of text from the server (tokens, contexts, file names)
// reaches the page through text nodes (el() / textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElementNS(
    attrs && attrs.svg ? "http://www.w3.org/2000/svg" : "http://www.w3.org/1999/xhtml", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "svg") continue;
    if (k === "onclick") node.addEventListener("click", v);
    else if (k === "style") node.setAttribute("style", v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function setRows(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows);
}

let pending = 0;
function busy(delta) {
  pending += delta;
  $("status").textContent = pending > 0 ? "working…" : "";
  document.body.dataset.busy = pending > 0 ? "1" : "0";
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function call(path, params, body) {
  busy(1);
  try {
    const query = params ? "?" + new URLSearchParams(params).toString() : "";
    const opts = body === undefined ? {} : {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
    const resp = await fetch(path + query, opts);
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    showError("");
    return data;
  } catch (e) {
    showError(e.message);
    throw e;
  } finally {
    busy(-1);
  }
}

function fillSelect(select, values, labels) {
  select.replaceChildren(...values.map((v, i) => el("option", {value: v}, labels ? labels[i] : v)));
}

// A handler whose failure is already on the page (call() shows the server's message).
const quiet = (fn) => (...args) => Promise.resolve().then(() => fn(...args)).catch(() => {});

const fmt = (x, d = 3) => (typeof x === "number" ? x.toFixed(d) : String(x));

// -- navigation -------------------------------------------------------------------------------
function showPage(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.page === name);
  for (const page of document.querySelectorAll(".page")) page.hidden = page.id !== "page-" + name;
  location.hash = name;
}

// -- codes ------------------------------------------------------------------------------------
let codeBooks = [];

async function loadBooks() {
  const records = $("codes-records").value;
  if (!records) return;
  codeBooks = await call("/api/codes/books", {records});
  fillSelect($("codes-book"), codeBooks.map((b) => b.name),
             codeBooks.map((b) => `layer ${b.layer} · ${b.component}`));
  fillHeads();
  await loadCodes();
}

function fillHeads() {
  const book = codeBooks.find((b) => b.name === $("codes-book").value);
  const heads = book ? book.heads : [];
  fillSelect($("codes-head"), ["", ...heads.map(String)], ["all", ...heads.map((h) => "head " + h)]);
}

async function loadCodes() {
  const params = {records: $("codes-records").value, codebook: $("codes-book").value, sort: $("codes-sort").value};
  if ($("codes-head").value !== "") params.head = $("codes-head").value;
  const rows = await call("/api/codes/list", params);
  setRows($("codes-table"), rows.map((r) => el("tr", {"data-row": r.row, onclick: (ev) => {
    for (const tr of $("codes-table").querySelectorAll("tr.selected")) tr.classList.remove("selected");
    ev.currentTarget.classList.add("selected");
    quiet(showCode)(r.row);
  }}, el("td", {}, r.code), el("td", {}, r.head === null ? "–" : r.head), el("td", {}, r.count),
      el("td", {}, fmt(r.frequency)), el("td", {}, r.top_tokens.join(" · ")))));
}

async function showCode(row) {
  const d = await call("/api/codes/code", {records: $("codes-records").value, row});
  $("code-title").textContent = `Code ${d.code}, layer ${d.layer}` + (d.head === null ? "" : `, head ${d.head}`) +
    ` (fires on ${d.count} tokens)`;
  $("code-contexts").replaceChildren(...d.contexts.map((c) =>
    el("li", {}, c.left, el("mark", {}, c.token), c.right, el("span", {class: "score"}, "  " + fmt(c.score, 2)))));
}

async function runSearch() {
  const rows = await call("/api/codes/search", undefined, {
    records: $("codes-records").value, pattern: $("search-pattern").value,
    min_fires: Number($("search-min-fires").value) || 1, sort_by: $("search-sort").value, top: 20});
  setRows($("search-table"), rows.map((m) => el("tr", {},
    el("td", {}, m.line), el("td", {}, fmt(m.precision)), el("td", {}, fmt(m.recall)), el("td", {}, fmt(m.f1)),
    el("td", {}, m.fires),
    el("td", {}, el("button", {class: "force-add", onclick: () => {
      const box = $("force-codes");
      box.value = (box.value.trim() ? box.value.trim() + "\n" : "") + m.line;
    }}, "force")))));
  if (!rows.length) setRows($("search-table"), [el("tr", {}, el("td", {colspan: 6}, "no code matches"))]);
}

async function runForce() {
  $("force-unsteered").textContent = "";
  $("force-steered").textContent = "";
  const d = await call("/api/codes/force", undefined, {
    codebooks: $("force-codebooks").value, prompt: $("force-prompt").value, codes: $("force-codes").value,
    mode: $("force-mode").value, max_new_tokens: Number($("force-tokens").value) || 20});
  $("force-unsteered").textContent = d.unsteered;
  $("force-steered").textContent = d.steered;
}

// -- SAE features -------------------------------------------------------------------------------
async function loadSae() {
  const params = {sae: $("sae-folder").value, prompts: $("sae-prompts").value};
  const s = await call("/api/sae/summary", params);
  $("sae-summary").textContent = `${s.d_sae} features on ${s.hook_name} (layer ${s.layer}, ${s.component}); ` +
    `${s.prompts} prompts, ${s.tokens} tokens; coverage ${fmt(s.coverage)} (features firing at least once)`;
  setRows($("sae-table"), s.features.map((f) => el("tr", {"data-feature": f.feature, onclick: () => quiet(showFeature)(f.feature)},
    el("td", {}, f.feature), el("td", {}, fmt(f.max)), el("td", {}, f.fires))));
}

async function showFeature(feature) {
  const d = await call("/api/sae/feature", {sae: $("sae-folder").value, prompts: $("sae-prompts").value, feature});
  $("sae-feature-title").textContent = `Feature ${d.feature}: top-activating contexts`;
  const peak = Math.max(1e-9, ...d.contexts.map((c) => c.value));
  $("sae-contexts").replaceChildren(...d.contexts.map((c) => el("li", {},
    ...c.tokens.map((t, i) => {
      const a = Math.max(0, Math.min(1, c.values[i] / peak));
      const span = el("span", {class: "tok", title: fmt(c.values[i]), style: `background: rgba(255,152,0,${a.toFixed(2)})`}, t);
      return i === c.position ? el("mark", {}, span) : span;
    }).flatMap((n) => [n, " "]),
    el("span", {class: "score"}, " " + fmt(c.value, 2)))));
  const box = $("steer-features");
  if (!box.value.split(",").map((x) => x.trim()).includes(String(feature))) {
    box.value = box.value.trim() ? `${box.value.trim()}, ${feature}` : String(feature);
  }
}

async function runScores() {
  const d = await call("/api/sae/scores", undefined, {
    sae: $("sae-folder").value, align: $("sae-align").value, reference: $("sae-ref").value,
    top_k: Number($("sae-topk").value) || 10});
  $("sae-score-summary").textContent = `coverage ${fmt(d.coverage)} (features firing on the reference set); ` +
    `reconstruction error on the target set ${fmt(d.reconstruction_error)} (fraction of variance unexplained)`;
  setRows($("sae-score-table"), d.features.map((f, i) => el("tr", {},
    el("td", {}, f), el("td", {}, fmt(d.scores[i], 5)),
    el("td", {}, el("button", {onclick: () => quiet(showFeature)(f)}, "contexts")))));
}

async function runSteer() {
  $("steer-unsteered").textContent = "";
  $("steer-steered").textContent = "";
  const features = $("steer-features").value.split(",").map((x) => x.trim()).filter(Boolean).map(Number);
  const d = await call("/api/sae/steer", undefined, {
    sae: $("sae-folder").value, prompt: $("steer-prompt").value, features,
    value: Number($("steer-value").value)});
  $("steer-unsteered").textContent = d.unsteered;
  $("steer-steered").textContent = d.steered;
}

// -- patching -----------------------------------------------------------------------------------
let patch = null;

async function loadPatching() {
  const path = $("patch-folder").value;
  if (!path) return;
  patch = await call("/api/patching", {path});
  $("patch-summary").textContent = `${patch.method} patching of ${patch.component}, ${patch.direction}; ` +
    `metric: clean ${fmt(patch.clean)}, corrupted ${fmt(patch.corrupted)}; axes ${patch.axes.join(" × ")}`;
  const third = patch.axes.length > 2 ? patch.axes[2] : null;
  $("patch-slice-label").hidden = !third;
  if (third) {
    $("patch-slice-name").textContent = third;
    fillSelect($("patch-slice"), patch.labels[third].map((_, i) => String(i)), patch.labels[third].map(String));
  }
  drawHeatmap();
}

function axisLabel(axis, value, i) {
  if (axis === "position" && patch.tokens && patch.tokens[i] !== undefined) return `${value} ${patch.tokens[i]}`;
  return String(value);
}

function drawHeatmap() {
  if (!patch) return;
  let grid = patch[$("patch-value").value];
  const [rowAxis, colAxis] = patch.axes;
  if (patch.axes.length > 2) {
    const k = Number($("patch-slice").value || 0);
    grid = grid.map((row) => row.map((cell) => cell[k]));
  }
  if (patch.axes.length === 1) grid = grid.map((v) => [v]);
  const rows = grid.length, cols = grid[0].length;
  const flat = grid.flat();
  const lo = Math.min(0, ...flat), hi = Math.max(1e-12, ...flat);
  const cell = 34, left = 70, top = 110;
  const svg = el("svg", {svg: true, width: left + cols * cell + 10, height: top + rows * cell + 10, id: "heatmap-svg"});
  const tooltip = $("tooltip");
  const colLabels = colAxis ? patch.labels[colAxis] : [""];
  for (let j = 0; j < cols; j++) {
    const x = left + j * cell + cell / 2;
    svg.append(el("text", {svg: true, x, y: top - 6, transform: `rotate(-60 ${x} ${top - 6})`},
                  colAxis ? axisLabel(colAxis, colLabels[j], j) : ""));
  }
  for (let i = 0; i < rows; i++) {
    svg.append(el("text", {svg: true, x: left - 6, y: top + i * cell + cell / 2 + 4, "text-anchor": "end"},
                  `${rowAxis} ${patch.labels[rowAxis][i]}`));
    for (let j = 0; j < cols; j++) {
      const v = grid[i][j];
      const t = (v - lo) / (hi - lo || 1);
      const color = `rgb(${Math.round(255 - 200 * t)}, ${Math.round(255 - 120 * t)}, ${Math.round(255 - 40 * t)})`;
      const where = `${rowAxis} ${patch.labels[rowAxis][i]}` + (colAxis ? `, ${colAxis} ${axisLabel(colAxis, colLabels[j], j)}` : "");
      const rect = el("rect", {svg: true, x: left + j * cell, y: top + i * cell, width: cell - 1, height: cell - 1,
                               fill: color, class: "cell", "data-i": i, "data-j": j, "data-value": v});
      rect.addEventListener("mousemove", (ev) => {
        tooltip.textContent = `${where}: ${fmt(v, 4)}`;
        tooltip.style.left = ev.clientX + 12 + "px";
        tooltip.style.top = ev.clientY + 12 + "px";
        tooltip.hidden = false;
      });
      rect.addEventListener("mouseleave", () => { tooltip.hidden = true; });
      svg.append(rect);
    }
  }
  $("heatmap").replaceChildren(svg);
}

// -- interventions ------------------------------------------------------------------------------
async function runIntervention() {
  const d = await call("/api/interventions/run", undefined, {
    folder: $("iv-folder").value, text: $("iv-text").value, source: $("iv-source").value,
    top_k: Number($("iv-topk").value) || 10});
  $("iv-summary").textContent = `${d.interventions.join(", ")}; KL(original ‖ intervened) = ${fmt(d.kl, 5)}`;
  const rows = (list) => list.map((t) => el("tr", {}, el("td", {}, el("code", {}, JSON.stringify(t.token))), el("td", {}, fmt(t.prob, 4))));
  setRows($("iv-original"), rows(d.original));
  setRows($("iv-intervened"), rows(d.intervened));
}

// -- start --------------------------------------------------------------------------------------
async function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showPage(tab.dataset.page));
  const {files} = await call("/api/files");
  fillSelect($("codes-records"), files.records);
  fillSelect($("force-codebooks"), files.codebooks);
  fillSelect($("sae-folder"), files.sae);
  for (const id of ["sae-prompts", "sae-align", "sae-ref"]) fillSelect($(id), files.prompts);
  if (files.prompts.length > 1) $("sae-ref").value = files.prompts[1];
  fillSelect($("patch-folder"), files.patching);
  fillSelect($("iv-folder"), files.interventions);
  const on = (id, event, fn) => $(id).addEventListener(event, quiet(fn));
  on("codes-records", "change", loadBooks);
  on("codes-book", "change", async () => { fillHeads(); await loadCodes(); });
  on("codes-head", "change", loadCodes);
  on("codes-sort", "change", loadCodes);
  on("search-run", "click", runSearch);
  on("force-run", "click", runForce);
  on("sae-load", "click", loadSae);
  on("sae-score", "click", runScores);
  on("steer-run", "click", runSteer);
  on("patch-folder", "change", loadPatching);
  on("patch-value", "change", drawHeatmap);
  on("patch-slice", "change", drawHeatmap);
  on("iv-run", "click", runIntervention);
  const page = location.hash.slice(1);
  if (["codes", "sae", "patching", "interventions"].includes(page)) showPage(page);
  await Promise.allSettled([loadBooks(), loadPatching()]);
  document.body.dataset.ready = "1";
}

window.addEventListener("DOMContentLoaded", () => { start().catch(() => { document.body.dataset.ready = "1"; }); });
