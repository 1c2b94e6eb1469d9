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

function headRow(head) {
  const features = (head.features || [])
    .map((f) => `${f.feature_set || "?"} (${(f.fingerprint || "").slice(0, 12)})`)
    .join(" + ");
  const perTarget = el("details", {},
    el("summary", { text: fmt(head.val_pearson_mean) }),
    el("table", { class: "targets" },
      el("tbody", {}, ...Object.entries(head.val_pearson || {}).map(([target, r]) =>
        el("tr", {}, el("th", { scope: "row", text: target }), el("td", { class: "num", text: fmt(r) }))))));
  const box = el("input", { type: "checkbox", name: "head", value: head.name, id: `head-${head.name}` });
  if (head.error) box.disabled = true;
  return el("tr", { "data-head": head.name },
    el("td", {}, box),
    el("td", {}, el("label", { for: box.id, text: head.name })),
    el("td", { text: head.error ? `unreadable: ${head.error}` : features }),
    el("td", { text: head.layer || "" }),
    el("td", { class: "num" }, head.error ? "" : perTarget),
    el("td", { class: "num", text: head.train_seconds == null ? "n/a" : fmt(head.train_seconds, 1) }));
}

async function loadHeads() {
  const { heads } = await json("/v1/heads");
  const body = $("heads").querySelector("tbody");
  body.replaceChildren(...heads.map(headRow));
  if (!heads.length) body.append(el("tr", {}, el("td", { colspan: "6", text: "No heads in the registry yet." })));
  const first = body.querySelector("input[type=checkbox]:not(:disabled)");
  if (first && !body.querySelector("input:checked")) first.checked = true;
}

// -- sources ----------------------------------------------------------------------------

async function browse(path) {
  const query = path ? `?path=${encodeURIComponent(path)}` : "";
  const listing = await json(`/v1/sources${query}`);
  folder = listing.path;
  $("folder-path").textContent = folder || "(choose a root)";
  const items = [];
  if (listing.parent !== undefined && listing.path) {
    items.push(el("li", {}, el("button", {
      type: "button", class: "link", text: "..  (up)", onclick: () => browse(listing.parent || ""),
    })));
  }
  for (const entry of listing.folders) {
    items.push(el("li", {}, el("button", {
      type: "button", class: "link", text: `${entry.name}/`, onclick: () => browse(entry.path),
    })));
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

function bar(job) {
  const { p, total, done, elapsed, left } = progressOf(job);
  if (job.kind === "train") {
    const epochs = p.epochs || 0, epoch = p.epoch || 0;
    return el("div", { class: "progress" },
      el("progress", { max: String(epochs || 1), value: String(epoch), "aria-label": "epochs" }),
      el("p", { class: "counts", text:
        `${p.head ? p.head + ": " : ""}epoch ${epoch} of ${epochs || "?"}; best validation mean Pearson ${fmt(p.best_val_pearson)}; ` +
        `elapsed ${seconds(elapsed)}` }));
  }
  const hours = (p.audio_seconds || 0) / 3600;
  return el("div", { class: "progress" },
    el("progress", { max: String(total || 1), value: String(done), "aria-label": "clips done" }),
    el("p", { class: "counts", text:
      `${done} of ${total} clips done (${p.clips_reused || 0} reused, ${p.clips_failed || 0} failed); ` +
      `${fmt(hours, 3)} h of audio (${seconds(p.audio_seconds || 0)}); elapsed ${seconds(elapsed)}` +
      (left != null ? `; about ${seconds(left)} left` : "") }));
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

async function download(job, button) {
  try {
    const blob = await (await api(`/v1/jobs/${job.id}/predictions.csv`)).blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: `${job.id}.csv` });
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
  const details = el("details", { class: "failures" },
    el("summary", { text: `${job.failures_count} failed clip${job.failures_count === 1 ? "" : "s"}` }), list);
  details.addEventListener("toggle", async () => {
    if (!details.open || list.childElementCount) return;
    const page = await json(`/v1/jobs/${job.id}/failures?limit=100`);
    list.append(...page.failures.map((f) => el("li", {}, el("code", { text: f.clip_id }), `: ${f.reason}`)));
    if (page.total > page.failures.length) list.append(el("li", { text: `... and ${page.total - page.failures.length} more` }));
  });
  return details;
}

function jobCard(job) {
  const what = job.kind === "train"
    ? `train ${job.request.name} on ${job.request.store}`
    : `${job.kind} ${job.request.source}${job.request.heads ? ` with ${job.request.heads.join(", ")}` : ""}`;
  const actions = el("div", { class: "actions" });
  if (!FINAL.includes(job.state)) {
    actions.append(el("button", { type: "button", class: "cancel", text: job.cancel_requested ? "Cancelling..." : "Cancel",
      onclick: async (event) => { event.target.disabled = true; await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" }); refreshJobs(); } }));
  }
  const partial = job.result && job.result.partial;
  if (job.kind === "score" && (job.state === "succeeded" || (FINAL.includes(job.state) && partial))) {
    actions.append(el("button", { type: "button", class: "download",
      text: partial ? `Download CSV (partial: ${job.result.predicted} clips)` : "Download CSV",
      onclick: (event) => download(job, event.target) }));
  }
  const failures = job.failures_count ? failureList(job) : null;
  const error = job.error ? el("p", { class: "error", text: `${job.error.error}: ${job.error.detail}` }) : null;
  return el("li", { class: `job ${job.state}`, "data-job": job.id, "data-state": job.state },
    el("div", { class: "job-head" },
      el("span", { class: `state ${job.state}`, text: job.state }),
      el("span", { class: "what", text: what }),
      el("code", { class: "id", text: job.id })),
    bar(job), curve(job), error, failures, actions);
}

async function refreshJobs() {
  const { jobs } = await json("/v1/jobs?limit=20");
  const list = $("jobs");
  const open = new Set([...list.querySelectorAll("details[open]")].map((d) => d.closest("[data-job]").dataset.job));
  list.replaceChildren(...jobs.map(jobCard));
  for (const id of open) {
    const details = list.querySelector(`[data-job="${id}"] details`);
    if (details) details.open = true;
  }
  if (!jobs.length) list.append(el("li", { class: "empty", text: "No jobs yet." }));
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
