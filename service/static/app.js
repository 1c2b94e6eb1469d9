// The emi service's page: plain JavaScript, no build step, no requests beyond this
// origin. Every value from the service is set as text (never as HTML).
"use strict";

const TOKEN_KEY = "emi-token";
const FINAL = ["succeeded", "failed", "cancelled"];
const POLL_MS = 1000;
let token = sessionStorage.getItem(TOKEN_KEY);
let folder = null; // the folder chosen in the browser
let polling = null;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const answer = await fetch(path, { ...options, headers });
  if (answer.status === 401) throw new Unauthorized();
  if (!answer.ok) {
    let detail = `${answer.status}`;
    try {
      const body = await answer.json();
      detail = Array.isArray(body.detail) ? body.detail.join("; ") : body.detail || body.error;
    } catch (_) { /* not JSON */ }
    throw new Error(detail);
  }
  return answer;
}

const json = async (path, options) => (await api(path, options)).json();

function fmt(value, digits = 3) {
  return value == null || Number.isNaN(value) ? "n/a" : Number(value).toFixed(digits);
}

function seconds(total) {
  if (total == null || !Number.isFinite(total)) return "n/a";
  const s = Math.max(0, Math.round(total));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h ? `${h} h ${m} min` : m ? `${m} min ${r} s` : `${r} s`;
}

// -- the token ----------------------------------------------------------------------

function askToken(message) {
  stopPolling();
  $("main").hidden = true;
  $("forget-token").hidden = true;
  $("token-panel").hidden = false;
  $("token-error").textContent = message || "";
  $("token-input").focus();
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token-input").value = "";
  start();
});

$("forget-token").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
  askToken("");
});

// -- heads ----------------------------------------------------------------------------

const LAYER_WORDS = { last: "the last layer", weighted: "a learned mix of layers" };

function layerWords(layer) {
  if (!layer) return "";
  return LAYER_WORDS[layer] || (/^\d+$/.test(String(layer)) ? `layer ${layer}` : String(layer));
}

function trainedOn(head) {
  return (head.features || [])
    .map((f) => `${f.backbone || "a backbone"}'s features (${f.feature_set || "?"}, ${(f.fingerprint || "").slice(0, 12)})`)
    .join(" + ");
}

function headRow(head, recommended) {
  const perTarget = el("details", {},
    el("summary", { text: fmt(head.val_pearson_mean) }),
    el("table", { class: "targets" },
      el("tbody", {}, ...Object.entries(head.val_pearson || {}).map(([target, r]) =>
        el("tr", {}, el("th", { scope: "row", text: target }), el("td", { class: "num", text: fmt(r) }))))));
  const box = el("input", { type: "checkbox", name: "head", value: head.name, id: `head-${head.name}` });
  if (head.error) box.disabled = true;
  const random = (head.features || []).some((f) => f.random_backbone === true);
  const name = el("td", { "data-label": "Name" }, el("label", { for: box.id, text: head.name }),
    recommended ? el("span", { class: "badge good", text: "recommended: best validation score" }) : null,
    random ? el("p", { class: "warning", text: "Trained on a random backbone: its scores measure the pipeline, not emotion." }) : null);
  return el("tr", { "data-head": head.name, class: random ? "random" : "" },
    el("td", { "data-label": "Use" }, box),
    name,
    el("td", { "data-label": "Trained on", text: head.error ? `unreadable: ${head.error}` : trainedOn(head) }),
    el("td", { "data-label": "Reads", text: layerWords(head.layer) }),
    el("td", { class: "num", "data-label": "Validation score" }, head.error ? "" : perTarget),
    el("td", { class: "num", "data-label": "Training time", text: head.train_seconds == null ? "n/a" : seconds(head.train_seconds) }));
}

async function loadHeads() {
  const { heads } = await json("/v1/heads");
  const body = $("heads").querySelector("tbody");
  const best = heads.find((h) => !h.error && h.val_pearson_mean != null);
  body.replaceChildren(...heads.map((h) => headRow(h, h === best)));
  if (!heads.length) body.append(el("tr", {}, el("td", { colspan: "6", text: "No heads in the registry yet." })));
  const first = body.querySelector("input[type=checkbox]:not(:disabled)");
  if (first && !body.querySelector("input:checked")) first.checked = true;
}

// -- sources ----------------------------------------------------------------------------

async function browse(path) {
  const query = path ? `?path=${encodeURIComponent(path)}` : "";
  const listing = await json(`/v1/sources${query}`);
  folder = listing.path;
  $("folder-path").replaceChildren(folder ? pathText(folder) : "(choose a root)");
  const items = [];
  if (listing.parent !== undefined && listing.path) {
    items.push(el("li", {}, el("button", {
      type: "button", class: "link", text: "..  (up)", onclick: () => browse(listing.parent || ""),
    })));
  }
  for (const entry of listing.folders) {
    const button = el("button", { type: "button", class: "link", onclick: () => browse(entry.path) });
    button.append(pathText(`${entry.name}/`.replace(/\/+$/, "/")));
    items.push(el("li", {}, button));
  }
  $("folders").replaceChildren(...items);
  $("folder-note").textContent = listing.path
    ? `${listing.audio_files} audio file${listing.audio_files === 1 ? "" : "s"} in this folder itself; files in its subfolders are scored too.`
    : "Choose one of the roots the operator allows.";
}

async function loadLimits() {
  const info = await json("/v1/service");
  const mb = (bytes) => `${Math.round(bytes / 2 ** 20)} MiB`;
  $("limits").textContent =
    `Limits: ${mb(info.limits.max_file_bytes)} per file, ${mb(info.limits.max_request_bytes)} ` +
    `per upload, ${info.limits.max_files} files per upload.` +
    (info.keep_days ? ` Uploads and results are kept ${info.keep_days} day${info.keep_days === 1 ? "" : "s"}.` : "");
  $("files").dataset.maxFile = info.limits.max_file_bytes;
  $("files").dataset.maxFiles = info.limits.max_files;
}

function showChosen() {
  const files = [...$("files").files];
  $("chosen-files").textContent = files.length ? `Chosen: ${files.map((f) => f.name).join(", ")}` : "";
  if (files.length) $("source-files").checked = true;
}

$("files").addEventListener("change", showChosen);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  $("files").files = event.dataTransfer.files;
  showChosen();
});

// -- submitting ------------------------------------------------------------------------

$("score-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = $("score-error");
  error.textContent = "";
  const heads = [...document.querySelectorAll("input[name=head]:checked")].map((b) => b.value);
  if (!heads.length) { error.textContent = "Tick at least one head."; return; }
  const button = $("score-submit");
  button.disabled = true;
  try {
    let source = folder;
    if ($("source-files").checked) {
      const files = [...$("files").files];
      if (!files.length) throw new Error("Choose or drop files first.");
      const tooBig = files.find((f) => f.size > Number($("files").dataset.maxFile));
      if (tooBig) throw new Error(`${tooBig.name} is over the per-file limit.`);
      if (files.length > Number($("files").dataset.maxFiles)) throw new Error("Too many files for one upload.");
      const form = new FormData();
      for (const f of files) form.append("files", f, f.name);
      button.textContent = "Uploading...";
      source = (await json("/v1/uploads", { method: "POST", body: form })).id;
    } else if (!source) {
      throw new Error("Choose a folder (open a root, then the folder).");
    }
    await json("/v1/jobs", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ kind: "score", source, heads }),
    });
    await refreshJobs();
  } catch (err) {
    if (err instanceof Unauthorized) askToken("The token was refused.");
    else error.textContent = err.message;
  } finally {
    button.disabled = false;
    button.textContent = "Start scoring";
  }
});

// -- jobs --------------------------------------------------------------------------------
// A job's card is made once and then updated in place (only what changed is touched),
// so a selection in it, an open details or a button being clicked survives the polling.

const cards = new Map(); // job id -> its card's parts

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function pathText(path) {
  // a path breaks after its slashes only, never inside a name (nor at a hyphen in one)
  const span = el("span", { class: "path" });
  String(path).split("/").forEach((part, i, all) => {
    const text = part + (i < all.length - 1 ? "/" : "");
    if (text) span.append(el("span", { class: "seg", text }));
    if (i < all.length - 1) span.append(el("wbr"));
  });
  return span;
}

const STAGES = { listing: "listing the files", extracting: "extracting features", predicting: "predicting",
  loading: "loading features", training: "training", queued: "waiting" };

function stateWords(job) {
  const p = job.progress || {};
  const total = p.clips_total || 0;
  if (job.state === "succeeded" && job.failures_count) {
    return [`succeeded, ${job.failures_count} of ${total} clip${total === 1 ? "" : "s"} failed`, "partial"];
  }
  if (job.state === "running") {
    return [`running: ${STAGES[p.stage] || p.stage || "starting"}`, "running"];
  }
  if (job.state === "cancelling") {
    return ["cancelling: stopping after the current batch", "running"];
  }
  if (job.state === "cancelled" && job.result && job.result.partial) {
    return [`cancelled: ${job.result.predicted} of ${total} clips finished and kept`, "cancelled"];
  }
  return [job.state, job.state];
}

function progressOf(job) {
  const p = job.progress || {};
  const total = p.clips_total || 0;
  const done = p.clips_done || 0;
  const started = job.started_at ? Date.parse(job.started_at) : null;
  const end = job.finished_at ? Date.parse(job.finished_at) : Date.now();
  const elapsed = started ? (end - started) / 1000 : null;
  const left = !FINAL.includes(job.state) && done > 0 && total > done && elapsed
    ? (elapsed * (total - done)) / done : null;
  return { p, total, done, elapsed, left };
}

function countsText(job) {
  const { p, total, done, elapsed, left } = progressOf(job);
  if (job.kind === "train") {
    return `${p.head ? p.head + ": " : ""}epoch ${p.epoch || 0} of ${p.epochs || "?"}; best validation ` +
      `mean Pearson ${fmt(p.best_val_pearson)}; elapsed ${seconds(elapsed)}`;
  }
  return `${done} of ${total} clips done (${p.clips_reused || 0} reused, ${p.clips_failed || 0} failed); ` +
    `${seconds(p.audio_seconds || 0)} of audio; elapsed ${seconds(elapsed)}` +
    (left != null ? `; about ${seconds(left)} left` : "");
}

function folderName(job) {
  const source = String(job.request.source || job.id).replace(/\/+$/, "");
  return source.slice(source.lastIndexOf("/") + 1) || job.id;
}

async function download(job, button) {
  try {
    const blob = await (await api(`/v1/jobs/${job.id}/predictions.csv`)).blob();
    const partial = job.result && job.result.partial ? "-partial" : "";
    const link = el("a", { href: URL.createObjectURL(blob), download: `${folderName(job)}-${job.id}${partial}.csv` });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (err) {
    button.textContent = `Download failed: ${err.message}`;
  }
}

function failureList(job) {
  // the reasons are fetched when opened (GET /v1/jobs/{id}/failures, the first 100)
  const list = el("ul", {});
  const summary = el("summary", {});
  const details = el("details", { class: "failures" }, summary, list);
  details.addEventListener("toggle", async () => {
    if (!details.open || list.childElementCount) return;
    const page = await json(`/v1/jobs/${job.id}/failures?limit=100`);
    list.append(...page.failures.map((f) => el("li", {}, el("code", { text: f.clip_id }), `: ${f.reason}`)));
    if (page.total > page.failures.length) list.append(el("li", { text: `... and ${page.total - page.failures.length} more` }));
  });
  return { details, summary };
}

function resultsTable(job) {
  // a finished score job's predictions: per-target means and the first 100 rows,
  // sortable by any column (fetched when opened)
  const body = el("div", {});
  const details = el("details", { class: "results" }, el("summary", { text: "Predictions" }), body);
  details.addEventListener("toggle", async () => {
    if (!details.open || body.childElementCount) return;
    const { predictions } = await json(`/v1/jobs/${job.id}/predictions.json`);
    const columns = predictions.length ? Object.keys(predictions[0]).filter((c) => c !== "clip_id") : [];
    const means = columns.map((c) => {
      const values = predictions.map((r) => r[c]).filter((v) => v != null);
      return values.length ? values.reduce((a, b) => a + b, 0) / values.length : null;
    });
    const table = el("table", { class: "predictions" });
    let order = { column: "clip_id", up: true };
    const rows = el("tbody", {});
    const fill = () => {
      const sorted = [...predictions].sort((a, b) => {
        const x = a[order.column], y = b[order.column];
        return (x < y ? -1 : x > y ? 1 : 0) * (order.up ? 1 : -1);
      });
      rows.replaceChildren(...sorted.slice(0, 100).map((r) => el("tr", {},
        el("td", { text: r.clip_id }), ...columns.map((c) => el("td", { class: "num", text: fmt(r[c]) })))));
    };
    const header = (name) => el("th", { scope: "col", class: name === "clip_id" ? "" : "num" },
      el("button", { type: "button", class: "link", text: name, title: "sort by this column",
        onclick: () => { order = { column: name, up: order.column === name ? !order.up : true }; fill(); } }));
    table.append(
      el("thead", {}, el("tr", {}, header("clip_id"), ...columns.map(header))),
      el("tfoot", {}, el("tr", {}, el("th", { scope: "row", text: "mean" }),
        ...means.map((m) => el("td", { class: "num", text: fmt(m) })))),
      rows);
    fill();
    body.append(
      el("p", { class: "hint", text: `Intensities 0-1, ${predictions.length} clips; the first 100 shown (click a column to sort), the means over all.` }),
      el("div", { class: "table-wrap" }, table));
  });
  return details;
}

function curve(job) {
  const points = (job.progress && job.progress.curve) || [];
  if (!points.length) return null;
  const w = 320, h = 120, pad = 28;
  const maxEpoch = Math.max(...points.map((q) => q.epoch), 2);
  const values = points.map((q) => q.val_pearson_mean).filter(Number.isFinite);
  const lo = Math.min(0, ...values), hi = Math.max(0.1, ...values);
  const x = (e) => pad + ((e - 1) / (maxEpoch - 1)) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / (hi - lo)) * (h - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "curve");
  svg.setAttribute("role", "img");
  const heads = [...new Set(points.map((q) => q.head))];
  heads.forEach((head, k) => {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.filter((q) => q.head === head && Number.isFinite(q.val_pearson_mean))
      .map((q) => `${x(q.epoch).toFixed(1)},${y(q.val_pearson_mean).toFixed(1)}`).join(" "));
    line.setAttribute("class", `series s${k % 4}`);
    svg.append(line);
  });
  for (const [text, tx, ty] of [[fmt(hi, 2), 2, pad], [fmt(lo, 2), 2, h - pad], ["epoch", w - pad - 20, h - 6]]) {
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", tx); label.setAttribute("y", ty); label.textContent = text;
    svg.append(label);
  }
  const best = job.result && job.result.best;
  svg.setAttribute("aria-label", `validation mean Pearson per epoch${best ? `; best ${fmt(best.val_pearson_mean)}` : ""}`);
  return el("figure", {}, svg, el("figcaption", { text:
    `Validation mean Pearson per epoch${best ? `; best: ${best.head} at ${fmt(best.val_pearson_mean)}` : ""}` }));
}

function actionsKey(job) {
  const partial = job.result && job.result.partial;
  const results = job.kind === "score" && (job.state === "succeeded" || (FINAL.includes(job.state) && partial));
  return `${FINAL.includes(job.state) ? "final" : "live"}|${job.cancel_requested}|${results}`;
}

function actionsOf(job) {
  const actions = [];
  if (!FINAL.includes(job.state)) {
    const button = el("button", { type: "button", class: "cancel",
      text: job.cancel_requested ? "Cancel requested: stopping after the current batch" : "Cancel" });
    button.disabled = job.cancel_requested;
    button.addEventListener("click", async () => {
      button.disabled = true;
      button.textContent = "Cancelling...";
      try {
        await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
        button.textContent = "Cancel requested: stopping after the current batch";
      } catch (err) {
        button.disabled = false;
        button.textContent = `Cancel failed: ${err.message}`;
      }
      refreshJobs();
    });
    actions.push(button);
  }
  const partial = job.result && job.result.partial;
  if (job.kind === "score" && (job.state === "succeeded" || (FINAL.includes(job.state) && partial))) {
    const button = el("button", { type: "button", class: "download",
      text: partial ? `Download CSV (partial: ${job.result.predicted} clips)` : "Download CSV" });
    button.addEventListener("click", () => download(job, button));
    actions.push(button);
  }
  return actions;
}

function makeCard(job) {
  const what = job.kind === "train"
    ? el("span", { class: "what", text: `train ${job.request.name} on ${job.request.store}` })
    : el("span", { class: "what" }, `${job.kind} `, pathText(job.request.source || ""),
      job.request.heads ? ` with ${job.request.heads.join(", ")}` : "");
  const card = {
    root: el("li", { class: "job", "data-job": job.id }),
    state: el("span", { class: "state" }),
    bar: el("progress", { "aria-label": job.kind === "train" ? "epochs" : "clips done" }),
    counts: el("p", { class: "counts" }),
    extra: el("div", {}),
    actions: el("div", { class: "actions" }),
  };
  card.root.append(
    el("div", { class: "job-head" }, card.state, el("code", { class: "id", text: job.id })),
    what, el("div", { class: "progress" }, card.bar, card.counts), card.extra, card.actions);
  return card;
}

function updateCard(card, job) {
  const [words, look] = stateWords(job);
  card.root.className = `job ${look}`;
  if (card.root.dataset.state !== job.state) card.root.dataset.state = job.state;
  card.state.className = `state ${look}`;
  setText(card.state, words);
  const { p, total, done } = progressOf(job);
  const [max, value] = job.kind === "train" ? [p.epochs || 1, p.epoch || 0] : [total || 1, done];
  if (card.bar.getAttribute("max") !== String(max)) card.bar.setAttribute("max", String(max));
  if (card.bar.getAttribute("value") !== String(value)) card.bar.setAttribute("value", String(value));
  setText(card.counts, countsText(job));
  const error = job.error ? `${job.error.error}: ${job.error.detail}` : "";
  if (error && !card.error) card.error = card.extra.appendChild(el("p", { class: "error" }));
  if (card.error) setText(card.error, error);
  if (job.failures_count && !card.failures) {
    card.failures = failureList(job);
    card.extra.append(card.failures.details);
  }
  if (card.failures) {
    setText(card.failures.summary, `${job.failures_count} failed clip${job.failures_count === 1 ? "" : "s"}`);
  }
  const points = ((job.progress || {}).curve || []).length;
  if (job.kind === "train" && points && card.points !== `${points}|${job.state}`) {
    card.points = `${points}|${job.state}`;
    const figure = curve(job);
    if (card.curve) card.curve.replaceWith(figure); else card.extra.prepend(figure);
    card.curve = figure;
  }
  const key = actionsKey(job);
  if (card.actionsKey !== key) {
    card.actionsKey = key;
    card.actions.replaceChildren(...actionsOf(job));
    if (key.endsWith("true") && !card.results) card.results = card.extra.appendChild(resultsTable(job));
  }
}

async function refreshJobs() {
  const { jobs } = await json("/v1/jobs?limit=20");
  const list = $("jobs");
  const shown = new Set(jobs.map((j) => j.id));
  for (const [id, card] of cards) {
    if (!shown.has(id)) { card.root.remove(); cards.delete(id); }
  }
  jobs.forEach((job, index) => {
    let card = cards.get(job.id);
    if (!card) { card = makeCard(job); cards.set(job.id, card); }
    if (card.updated !== job.updated_at) { updateCard(card, job); card.updated = job.updated_at; }
    if (list.children[index] !== card.root) list.insertBefore(card.root, list.children[index] || null);
  });
  const empty = list.querySelector(".empty");
  if (jobs.length && empty) empty.remove();
  if (!jobs.length && !empty) list.append(el("li", { class: "empty", text: "No jobs yet." }));
}

function stopPolling() {
  if (polling) clearInterval(polling);
  polling = null;
}

function guard(promise) {
  return promise.catch((err) => {
    if (err instanceof Unauthorized) askToken(token ? "The token was refused." : "");
    else $("score-error").textContent = err.message;
  });
}

async function start() {
  try {
    await loadHeads(); // the first call: 401 here means a token is needed
  } catch (err) {
    if (err instanceof Unauthorized) { askToken(token ? "The token was refused." : ""); return; }
    throw err;
  }
  $("token-panel").hidden = true;
  $("main").hidden = false;
  $("forget-token").hidden = !token;
  await guard(Promise.all([loadLimits(), browse(""), refreshJobs()]));
  stopPolling();
  polling = setInterval(() => guard(refreshJobs()), POLL_MS);
}

start();
