// multisk serve: the search page (no framework, no network access beyond this server).
"use strict";

const form = document.getElementById("search-form");
const box = document.getElementById("q");
const targetSelect = document.getElementById("target");
const resultsEl = document.getElementById("results");
const noticeEl = document.getElementById("notice");
const metaEl = document.getElementById("meta");

const TARGET_LABELS = { any: "everything", video: "pictures & videos", audio: "sounds", "video+audio": "pictures, videos & sounds" };

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value; else node.setAttribute(key, value);
  }
  for (const child of children || []) node.appendChild(child);
  return node;
}

function showNotice(text, isError) {
  noticeEl.hidden = !text;
  noticeEl.textContent = text || "";
  noticeEl.className = isError ? "error" : "";
}

function card(result) {
  const media = result.media || {};
  let visual;
  if (media.video) {
    const moment = result.start !== undefined ? `#t=${result.start},${result.end}` : "";
    visual = el("div", { class: "visual" }, [el("video", { src: media.video + moment, controls: "", preload: "metadata" })]);
  } else if (media.image) {
    visual = el("div", { class: "visual" }, [el("img", { src: media.image, alt: result.caption || result.id, loading: "lazy" })]);
  } else {
    visual = el("div", { class: "visual sound", text: "♪" });
  }
  // no caption: the file's name stands in, in grey (e.g. "apple_bitten_01.png" -> "apple bitten 01")
  const title = result.caption ||
    (result.file || result.id).split("/").pop().replace(/\.[^.]*$/, "").replace(/[_-]+/g, " ");
  const body = el("div", { class: "body" }, [
    el("div", { class: result.caption ? "caption" : "caption untitled", text: title }),
  ]);
  if (media.audio && !media.video) body.appendChild(el("audio", { src: media.audio, controls: "", preload: "none" }));
  if (result.start !== undefined) {
    body.appendChild(el("div", { class: "moment", text: `moment ${result.start}–${result.end} s` }));
  }
  body.appendChild(el("div", { class: "row" }, [
    el("span", { class: "file", text: result.file || result.id }),
    el("span", { class: "score", title: "cosine similarity with the query", text: result.score.toFixed(3) }),
  ]));
  if (result.category) body.appendChild(el("div", { class: "row", text: `category: ${result.category}` }));
  return el("div", { class: "card", "data-rank": String(result.rank) }, [visual, body]);
}

function render(data) {
  resultsEl.replaceChildren(...data.results.map(card));
  if (!data.results.length) resultsEl.appendChild(el("p", { class: "empty", text: "No results." }));
  showNotice(data.notice && data.low_confidence ? data.notice : "", false);
  const parts = [];
  if (data.categories && data.categories.length) {
    parts.push(el("span", { text: "closest categories: " }));
    for (const c of data.categories) parts.push(el("span", { class: "chip", text: `${c.name} ${c.score.toFixed(2)}` }));
  }
  if (data.words && data.words.unknown.length) {
    parts.push(el("span", { text: ` words not in the vocabulary: ${data.words.unknown.join(" ")}` }));
  }
  metaEl.replaceChildren(...parts);
  metaEl.hidden = parts.length === 0;
  document.body.dataset.state = "done";
}

async function search(query) {
  document.body.dataset.state = "searching";
  const params = new URLSearchParams({ q: query, target: targetSelect.value, top: "12" });
  history.replaceState(null, "", "?" + new URLSearchParams({ q: query, target: targetSelect.value }));
  const response = await fetch("/api/search?" + params);
  const data = await response.json();
  if (!response.ok) {
    resultsEl.replaceChildren();
    metaEl.hidden = true;
    showNotice(data.error || response.statusText, true);
    document.body.dataset.state = "error";
    return;
  }
  render(data);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (box.value.trim()) search(box.value.trim());
});

async function start() {
  const info = await (await fetch("/api/info")).json();
  for (const target of info.targets) {
    targetSelect.appendChild(el("option", { value: target, text: TARGET_LABELS[target] || target }));
  }
  document.getElementById("info").textContent =
    `${info.items} items` + (info.categories.length ? ` in ${info.categories.length} categories` : "") +
    (info.clip_seconds ? `; videos as ${info.clip_seconds}-second moments` : "");
  const params = new URLSearchParams(location.search);
  if (params.get("target") && info.targets.includes(params.get("target"))) targetSelect.value = params.get("target");
  document.body.dataset.state = "ready";
  if (params.get("q")) { box.value = params.get("q"); search(params.get("q")); }
}

start();
