// The search page: starts from the server's defaults (GET settings), calls GET search and renders
// hits; highlights come from the server as [start, end) offsets in code points of each snippet
// (never as HTML).
"use strict";

let defaults = null; // GET settings: the server's k, candidates, depth, rerank, model, explain

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function highlighted(snippet, spans) {
  const chars = Array.from(snippet); // code points, like the server's offsets
  const p = el("p", "snippet");
  let at = 0;
  for (const [a, b] of spans || []) {
    if (a > at) p.append(chars.slice(at, a).join(""));
    p.append(el("mark", "", chars.slice(a, b).join("")));
    at = b;
  }
  if (at < chars.length) p.append(chars.slice(at).join(""));
  return p;
}

function matchesLine(matches) {
  const p = el("p", "matches");
  matches.forEach((m, i) => {
    if (i) p.append(" · ");
    p.append(el("span", "qw", m.query_word), " → " + m.words.map((w) => w.word).join(", "));
  });
  return p;
}

function render(data) {
  const list = $("results");
  list.replaceChildren();
  const hits = data.results[0].hits;
  for (const h of hits) {
    const li = el("li", "hit");
    const head = el("div", "hit-head");
    head.append(el("span", "doc-id", h.doc_id), el("span", "title", h.title || ""),
                el("span", "score", "score " + h.score.toFixed(4)));
    li.append(head, highlighted(h.snippet, h.highlights));
    if (h.matches) li.append(matchesLine(h.matches));
    list.append(li);
  }
  const s = data.settings;
  const note = data.results[0].note;
  $("status").textContent = `${hits.length} hits in ${data.took_ms.toFixed(0)} ms — ${s.candidates}` +
    (s.rerank === "mice" ? ` top-${s.depth} → MICE` : "") + (s.filter ? ` where ${s.filter}` : "") +
    (note ? ` (${note})` : "");
}

async function search(event) {
  if (event) event.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  const params = new URLSearchParams({ q, candidates: $("candidates").value, rerank: $("rerank").value,
                                       explain: $("explain").checked });
  for (const name of ["k", "depth"]) if ($(name).value) params.set(name, $(name).value);
  if ($("filter").value.trim()) params.set("filter", $("filter").value.trim());
  $("status").className = "muted";
  $("status").textContent = "searching…";
  try {
    const response = await fetch("search?" + params);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    render(data);
    history.replaceState(null, "", "?" + params);
  } catch (err) {
    $("results").replaceChildren();
    $("status").className = "error";
    $("status").textContent = "error: " + err.message;
  }
}

async function loadInfo() {
  try {
    const info = await (await fetch("info")).json();
    const model = defaults ? defaults.model : info.model;
    $("index-info").textContent = `${info.num_docs.toLocaleString()} documents · codec ${info.codec} · model ${model}`;
    const fields = info.fields || [];  // the filter box only for an index with document fields
    $("filter-label").hidden = fields.length === 0 && !$("filter").value;
    $("filter").title = "fields: " + fields.map((f) => `${f.name} (${f.type})`).join(", ");
  } catch (err) {
    $("index-info").textContent = "";
  }
}

async function loadDefaults() {
  try {
    defaults = await (await fetch("settings")).json();
  } catch (err) {
    return; // the form keeps its own defaults
  }
  $("candidates").value = defaults.candidates;
  $("rerank").value = defaults.rerank;
  $("k").placeholder = `default ${defaults.k}`;
  $("depth").placeholder = `default ${defaults.depth}`;
  $("explain-text").textContent = defaults.explain.text + " ";
  $("candidates").title = "bm25: " + defaults.bm25_fallback;
}

async function start() {
  $("search-form").addEventListener("submit", search);
  await loadDefaults();
  const initial = new URLSearchParams(location.search);
  for (const name of ["q", "k", "candidates", "depth", "rerank", "filter"]) {
    if (initial.get(name)) $(name).value = initial.get(name);
  }
  if (initial.has("explain")) $("explain").checked = initial.get("explain") === "true";
  await loadInfo();
  if ($("q").value) search();
}

start();
